"""What a run is set up with before its loop starts: the seeded RNGs, the frozen backbone its config names (and
the record of it that goes into ``config.json``), and the DataLoader whose batch order depends only on
(seed, epoch), so that a resumed or data-parallel run sees exactly the batches one uninterrupted process sees.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mobile_vla.training.config import TrainConfig
from mobile_vla.training.distributed import DistributedContext, GlobalBatchSampler
from mobile_vla.training.sampling import WeightedGlobalBatchSampler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_backbone(config: TrainConfig, device: str) -> Any:
    from mobile_vla.backbones import create_backbone

    kwargs: dict[str, Any] = {"device": device, "dtype": config.backbone_dtype}
    if config.backbone_path:
        kwargs["path"] = config.backbone_path
    return create_backbone(config.backbone, **kwargs)


def backbone_record(backbone: Any) -> dict[str, Any]:
    return {
        "profile": backbone.profile,
        "spec": backbone.spec(),
        "fingerprint": backbone.fingerprint,
        "fingerprint_hash": backbone.fingerprint_hash,
        "pretrained": bool(backbone.pretrained),
    }


def make_loader(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    num_workers: int,
    context: DistributedContext | None = None,
    weights: np.ndarray | None = None,
) -> DataLoader:
    """A DataLoader whose shuffle order depends only on (seed, epoch), so a resumed run sees the same batches.

    With a distributed ``context``, this rank's slice of each global batch (``GlobalBatchSampler``). With
    ``weights`` (``training.sampling``), ``len(dataset)`` draws with replacement instead of a shuffle.
    """
    from mobile_vla.data.dataset import collate_batch

    generator = torch.Generator()  # also seeds the workers, so loading never draws from the global RNG
    generator.manual_seed(seed * 100_003 + epoch)
    if weights is not None:
        sampler = WeightedGlobalBatchSampler(
            weights, batch_size, context or DistributedContext(), seed=seed, epoch=epoch
        )
    else:
        sampler = GlobalBatchSampler(
            len(dataset), batch_size, context or DistributedContext(), shuffle=shuffle, seed=seed, epoch=epoch
        )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        generator=generator,
        collate_fn=collate_batch,
        num_workers=num_workers,
    )
