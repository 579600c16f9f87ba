"""Head training throughput on cached features: samples per second through the real `Trainer`.

    python benchmarks/head_training.py [--case case1] [--batch-sizes 2 32 256] [--epochs 6]

The features are those of the full-size Kosmos-2 (1024-d pooled vision, 2048-d text, 256 x 1024 tokens),
but their values come from a stand-in encoder (random, fixed per frame): head training never looks at where
a feature came from, only at its size, and the point here is the cost of the training loop once every
feature is cached. The cache is filled first (untimed); then every epoch is a pure cached epoch: no frame is
read from disk, no backbone runs. No validation split (the target is the training rate); each epoch's time
includes the trainer's per-epoch checkpoint writes.

Reports, per batch size, samples/s over the timed epochs (the first epoch is dropped as warm-up): the median
and the range over epochs, with n = epochs x samples. Writes benchmarks/results/head_training.json.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import machine, write_result

from mobile_vla.data.cache import FeatureCache
from mobile_vla.data.synthetic import write_synthetic_dataset
from mobile_vla.features.cached import CachedFeatureProvider
from mobile_vla.training.config import TrainConfig
from mobile_vla.training.trainer import Callback, Trainer


class Kosmos2SizedFeatures:
    """Stand-in backbone with Kosmos-2's feature sizes; each frame's features are seeded by its pixels."""

    profile = "kosmos2-sized-random-features"
    pretrained = False
    vision_dim, text_dim, token_dim, num_image_tokens = 1024, 2048, 1024, 256

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.dtype = "fp32"
        self.fingerprint = {"profile": self.profile, "dims": [1024, 2048, 1024, 256]}
        self.fingerprint_hash = hashlib.sha256(str(self.fingerprint).encode()).hexdigest()[:16]

    def spec(self) -> dict[str, Any]:
        return {"profile": self.profile}

    @staticmethod
    def _generator(item: Any) -> torch.Generator:
        digest = hashlib.sha256(item.tobytes() if hasattr(item, "tobytes") else str(item).encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    def encode_images_with_tokens(self, images):
        pooled, tokens = [], []
        for image in images:
            g = self._generator(image)
            pooled.append(torch.randn(self.vision_dim, generator=g))
            tokens.append(torch.randn(self.num_image_tokens, self.token_dim, generator=g))
        return torch.stack(pooled), torch.stack(tokens)

    def encode_images(self, images):
        return self.encode_images_with_tokens(images)[0]

    def encode_image_tokens(self, images):
        return self.encode_images_with_tokens(images)[1]

    def encode_texts(self, texts):
        return torch.stack([torch.randn(self.text_dim, generator=self._generator(t)) for t in texts])


class EpochTimes(Callback):
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer, record) -> None:
        self.records.append(dict(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="case1")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 32, 256])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per batch size (the first is warm-up)")
    parser.add_argument(
        "--episodes",
        type=int,
        default=192,
        help="synthetic episodes x 18 frames per epoch (amortises checkpoints)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: fastest on a busy 2-core box; try 2 on an idle one)",
    )
    parser.add_argument("--out", default="head_training.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="head_training."))
    results = []
    try:
        write_synthetic_dataset(work / "episodes", episodes=args.episodes, seed=0, image_size=(48, 64))
        backbone = Kosmos2SizedFeatures()
        cache = FeatureCache(work / "cache", memory_bytes=8 << 30, durable=False)

        def config(batch_size: int, epochs: int) -> TrainConfig:
            return TrainConfig(
                case=args.case,
                backbone="kosmos2",
                epochs=epochs,
                batch_size=batch_size,
                frame_selection="all",
                split_ratios=(1.0, 0.0, 0.0),  # all episodes train: the rate of the training loop itself
                early_stopping_patience=0,
                device="cpu",
            )

        start = time.perf_counter()
        warm = Trainer(
            config(256, 1),
            work / "episodes",
            work / "warm",
            backbone=backbone,
            feature_provider=CachedFeatureProvider(backbone, cache, keep_tokens=False),
            progress=False,
        )
        warm.fit()
        print(f"cache filled in {time.perf_counter() - start:.0f} s ({cache.stats.misses} features)")
        for batch_size in args.batch_sizes:
            timer = EpochTimes()
            # A fresh cache object on the same directory: its first (untimed) epoch reads the entries from disk.
            provider = CachedFeatureProvider(
                backbone, FeatureCache(cache.root, memory_bytes=8 << 30), keep_tokens=False
            )
            Trainer(
                config(batch_size, args.epochs),
                work / "episodes",
                work / f"bs{batch_size}",
                backbone=backbone,
                feature_provider=provider,
                callbacks=[timer],
                progress=False,
            ).fit()
            assert provider.cache.stats.misses == 0, "a timed epoch computed features"
            timed = timer.records[1:]
            rates = [r["n_train"] / r["epoch_time_s"] for r in timed]
            samples = sum(r["n_train"] for r in timed)
            result = {
                "batch_size": batch_size,
                "samples_per_s": round(statistics.median(rates), 1),
                "min_samples_per_s": round(min(rates), 1),
                "max_samples_per_s": round(max(rates), 1),
                "epochs_timed": len(timed),
                "samples_timed": samples,
                "samples_per_epoch": timed[0]["n_train"],
            }
            results.append(result)
            print(
                f"{args.case} batch {batch_size:>4}: {result['samples_per_s']:8.0f} samples/s "
                f"(range {result['min_samples_per_s']:.0f}-{result['max_samples_per_s']:.0f} over "
                f"{len(timed)} epochs, n={samples} samples)",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result(
        args.out,
        {
            "case": args.case,
            "target_samples_per_s": 5000,
            "threads": args.threads,
            "note": "per-step costs (optimizer over 1.2 M parameters, backward, loader) dominate small batches",
            "features": "Kosmos-2 sizes (1024 vision, 2048 text), values from a stand-in encoder",
            "results": results,
            "machine": info,
        },
    )


if __name__ == "__main__":
    main()
