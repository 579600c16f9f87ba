"""Eval-mode predictions of a head over a dataset (``predict_dataset``): what the trainer's validation and
offline evaluation both call, so the two compute the same numbers. It needs a policy, a feature provider and a
dataset, nothing of training or evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mobile_vla.data.dataset import collate_batch
from mobile_vla.features.providers import FeatureProvider
from mobile_vla.policies.base import Policy


def predict_dataset(
    policy: Policy,
    provider: FeatureProvider,
    dataset: Any,
    *,
    batch_size: int,
    device: str,
    progress: bool = False,
    desc: str = "predict",
) -> dict[str, Any]:
    """Eval-mode predictions over a dataset: ``{"predictions", "targets", "loss", "action_loss", "episode_ids",
    "frame_indices", "stored_classes", ...}``, plus ``predicted_classes`` (the arg-max class) for a key-class
    head. ``loss`` is the case's whole training loss (Case 4: action chunk + task + state terms);
    ``action_loss`` the Huber loss of the predicted action alone (the ``action_loss`` the case logs), which is
    what early stopping and the best checkpoint follow."""
    # Dataset order, one batch after another (the trainer's loader without shuffle, on one process).
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batch, num_workers=0
    )
    policy.eval()
    preds, targets, episode_ids, frame_indices = [], [], [], []
    stored_classes: list[np.ndarray] = []
    predicted_classes: list[np.ndarray] = []
    chunks: dict[str, list[np.ndarray]] = {"chunk_predictions": [], "chunk_targets": [], "chunk_mask": []}
    loss_sum, action_loss_sum, n = 0.0, 0.0, 0
    with torch.no_grad():
        for batch in progress_bar(loader, progress, desc):
            features = to_device(provider(batch, policy.feature_names(training=True)), device)
            outputs = policy(features)
            loss, logs = policy.compute_loss(outputs, batch)
            b = len(batch["action"])
            loss_sum += float(loss) * b
            action_loss_sum += float(logs.get("action_loss", loss)) * b
            n += b
            preds.append(outputs["action"].float().cpu().numpy())
            targets.append(batch["action"].float().cpu().numpy())
            episode_ids += list(batch.get("episode_id", [""] * b))
            frame_indices += [int(i) for i in batch.get("frame_index", [-1] * b)]
            stored = batch.get("key_class")
            stored_classes.append(
                np.full(b, -1, np.int64) if stored is None else np.asarray(stored, np.int64)
            )
            if "action_logits" in outputs:  # action_space: keys
                predicted_classes.append(outputs["action_logits"].argmax(-1).cpu().numpy().astype(np.int64))
            if "action_chunk" in outputs and "action_chunk" in batch:  # chunking cases (Case 4)
                chunks["chunk_predictions"].append(outputs["action_chunk"].float().cpu().numpy())
                chunks["chunk_targets"].append(batch["action_chunk"].float().cpu().numpy())
                chunks["chunk_mask"].append(batch["action_chunk_mask"].bool().cpu().numpy())
    a = len(policy.action_dims)
    out = {
        "predictions": np.concatenate(preds) if preds else np.zeros((0, a), np.float32),
        "targets": np.concatenate(targets) if targets else np.zeros((0, a), np.float32),
        "loss": loss_sum / n if n else float("nan"),
        "action_loss": action_loss_sum / n if n else float("nan"),
        "n": n,
        "episode_ids": episode_ids,
        "frame_indices": frame_indices,
        # The file's stored key class of each frame (KEY_CLASSES index, -1 = none stored).
        "stored_classes": np.concatenate(stored_classes) if stored_classes else np.zeros(0, np.int64),
    }
    if predicted_classes:  # the arg-max key class (index into policy.key_space.names)
        out["predicted_classes"] = np.concatenate(predicted_classes)
    if chunks["chunk_predictions"]:
        out.update({k: np.concatenate(v) for k, v in chunks.items()})
    return out


def to_device(features: Mapping[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device=device, dtype=torch.float32) for k, v in features.items()}


def progress_bar(iterable: Iterable, enabled: bool, desc: str, **kwargs: Any) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, **kwargs)
