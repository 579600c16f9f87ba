"""Sweep cost: the seed's training loop (frozen backbone inside every step) against the cached path.

    python benchmarks/sweep.py                                  # full-size Kosmos-2 (random weights), fp32
    python benchmarks/sweep.py --backbone kosmos2-tiny --epochs 3 --seeds 0   # a quick smoke run

Both paths run the toolkit's own `Trainer` on the same synthetic episodes (the robot's format, 720x1280,
18 frames), the same cases, seeds, epochs and recipe (batch 2, random training frame per episode per epoch,
every validation frame; early stopping off so every run trains all its epochs):

- cached: `CachedFeatureProvider` over an empty `FeatureCache`: each frame goes through the backbone the
  first time a run needs it (inside that run's first epoch), every later epoch, seed and case reads it back.
  The cached runs are run in full (or, with `--cached-epochs K`, for K epochs; the remaining epochs are then
  extrapolated from the mean of epochs 2..K, and the JSON says so).
- seed-style: `FeatureProvider` with the instruction recomputed in every step, as the seed's
  `extract_language_features` did (no memo), so the backbone runs for every sample of every step. It is far
  too slow to run in full, so for each case the first epoch's training steps and `--seed-style-val-batches`
  validation batches are timed with the real trainer, then multiplied by the number of training steps and
  validation batches of the whole sweep. Per-epoch bookkeeping (checkpoints, metrics) is left out of the
  seed-style figure, which makes it an underestimate, so the ratio is conservative.

The backbone: `Kosmos2Config()` defaults (microsoft/kosmos-2-patch14-224's architecture, 1.66 B parameters)
with RANDOM weights built locally (no hub); random weights cost the same time as trained ones. Case 2's
CLIP comes from the toolkit's usual resolution (offline: the tiny random CLIP), which makes the seed-style
cost lower than with the real ViT-B/32 (about 3% of a Kosmos-2 vision pass).

Writes benchmarks/results/sweep.json: `seed_style_s`, `cached_s`, `ratio` and the details.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import machine, random_kosmos2, write_result

from mobile_vla.data.cache import FeatureCache
from mobile_vla.data.synthetic import write_synthetic_dataset
from mobile_vla.features.cached import CachedFeatureProvider
from mobile_vla.features.providers import FeatureProvider
from mobile_vla.training.config import TrainConfig
from mobile_vla.training.trainer import Callback, Trainer


class BackboneCounter:
    """Counts the frames and strings the backbone encodes (wraps the instance's methods)."""

    def __init__(self, backbone: Any, *, seed_style_text: bool = False) -> None:
        self.images = self.texts = 0
        images, texts = backbone.encode_images_with_tokens, backbone.encode_texts

        def count_images(batch):
            self.images += len(batch)
            return images(batch)

        def count_texts(batch):
            self.texts += len(batch)
            if seed_style_text:  # the seed ran the text model on every step's padded batch
                with torch.no_grad():
                    return backbone._encode_texts(list(batch)).float()
            return texts(batch)

        backbone.encode_images_with_tokens, backbone.encode_texts = count_images, count_texts


class StopTiming(Exception):
    """Ends a seed-style timing run once enough steps were timed."""


class TimedProvider(FeatureProvider):
    """The seed-style provider: records when each training step and validation batch asks for features."""

    def __init__(self, backbone: Any, val_batches: int) -> None:
        super().__init__(backbone, cache_text=False)
        self.val_batches = val_batches
        self.calls: list[tuple[float, bool, float]] = []  # (start, training?, seconds in the provider)

    def __call__(self, batch, names):
        start = time.perf_counter()
        training = torch.is_grad_enabled()  # validation runs under no_grad
        if not training and sum(not t for _, t, _ in self.calls) >= self.val_batches:
            self.calls.append((start, training, 0.0))
            raise StopTiming
        out = super().__call__(batch, names)
        self.calls.append((start, training, time.perf_counter() - start))
        return out

    def step_times(self) -> tuple[list[float], list[float]]:
        """Seconds per training step (call to next call) and per validation batch (provider + head)."""
        train, val = [], []
        for (t0, training, _), (t1, _, _) in zip(self.calls, self.calls[1:], strict=False):
            (train if training else val).append(t1 - t0)
        return train, val


class EpochTimes(Callback):
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer, record) -> None:
        self.records.append(dict(record))


def build_backbone(name: str, dtype: str) -> Any:
    if name == "kosmos2-full-random":
        return random_kosmos2(dtype)
    from mobile_vla.backbones import create_backbone

    return create_backbone(name, device="cpu", dtype=dtype)


def config_for(case: str, args: argparse.Namespace, seed: int, epochs: int) -> TrainConfig:
    return TrainConfig(
        case=case,
        backbone="kosmos2" if args.backbone == "kosmos2-full-random" else args.backbone,
        epochs=epochs,
        seed=seed,
        early_stopping_patience=0,
        device="cpu",
        backbone_dtype=args.dtype,
    )


def run_cached(args, data: Path, work: Path, backbone: Any, cache: FeatureCache) -> dict[str, Any]:
    counter = BackboneCounter(backbone)
    runs = []
    epochs_run = min(args.cached_epochs or args.epochs, args.epochs)
    for case in args.cases:
        for seed in args.seeds:
            images, texts = counter.images, counter.texts
            timer = EpochTimes()
            start = time.perf_counter()
            trainer = Trainer(
                config_for(case, args, seed, epochs_run),
                data,
                work / f"cached_{case}_{seed}",
                backbone=backbone,
                feature_provider=CachedFeatureProvider(backbone, cache),
                callbacks=[timer],
                progress=False,
            )
            trainer.fit()
            wall = time.perf_counter() - start
            epoch_times = [r["epoch_time_s"] for r in timer.records]
            extrapolated = 0.0
            if epochs_run < args.epochs:
                later = epoch_times[1:] or epoch_times
                extrapolated = (args.epochs - epochs_run) * sum(later) / len(later)
            record = timer.records[-1]
            runs.append(
                {
                    "case": case,
                    "seed": seed,
                    "epochs_run": epochs_run,
                    "wall_s": round(wall, 3),
                    "first_epoch_s": round(epoch_times[0], 3),
                    "later_epoch_mean_s": round(sum(epoch_times[1:]) / max(len(epoch_times) - 1, 1), 4),
                    "extrapolated_s": round(extrapolated, 3),
                    "backbone_images": counter.images - images,
                    "backbone_texts": counter.texts - texts,
                    "n_train_per_epoch": record["n_train"],
                    "n_val_per_epoch": record["n_val"],
                }
            )
            print(
                f"cached {case} seed {seed}: {wall:8.1f} s for {epochs_run} epochs "
                f"(first {epoch_times[0]:.1f} s, later {runs[-1]['later_epoch_mean_s']:.3f} s/epoch), "
                f"backbone: {runs[-1]['backbone_images']} frames, {runs[-1]['backbone_texts']} texts",
                flush=True,
            )
    return {"runs": runs, "total_s": sum(r["wall_s"] + r["extrapolated_s"] for r in runs)}


def time_seed_style(args, data: Path, work: Path, backbone: Any, case: str) -> dict[str, Any]:
    counter = BackboneCounter(backbone, seed_style_text=True)
    provider = TimedProvider(backbone, args.seed_style_val_batches)
    trainer = Trainer(
        config_for(case, args, args.seeds[0], 1),
        data,
        work / f"seed_style_{case}",
        backbone=backbone,
        feature_provider=provider,
        progress=False,
    )
    with contextlib.suppress(StopTiming):
        trainer.fit()
    train, val = provider.step_times()
    return {
        "case": case,
        "train_steps_timed": len(train),
        "train_step_s": [round(t, 3) for t in train],
        "val_batches_timed": len(val),
        "val_batch_s": [round(t, 3) for t in val],
        "backbone_images": counter.images,
        "backbone_texts": counter.texts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="kosmos2-full-random", help="kosmos2-full-random | a profile")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--cases", nargs="+", default=["case1", "case2", "case3", "case4"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=6, help="synthetic episodes (split 70/15/15)")
    parser.add_argument("--image-size", default="720x1280")
    parser.add_argument("--cached-epochs", type=int, default=0, help="run K epochs, extrapolate the rest")
    parser.add_argument("--seed-style-val-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="sweep.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.image_size.split("x"))
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="sweep."))
    try:
        data = work / "episodes"
        write_synthetic_dataset(data, episodes=args.episodes, seed=0, image_size=(height, width))
        start = time.perf_counter()
        backbone = build_backbone(args.backbone, args.dtype)
        print(
            f"backbone {args.backbone} ({args.dtype}) built in {time.perf_counter() - start:.0f} s",
            flush=True,
        )

        cached = run_cached(args, data, work, backbone, FeatureCache(work / "cache", memory_bytes=4 << 30))

        seed_style = {}
        for case in args.cases:
            timing = time_seed_style(args, data, work, build_fresh_texts(backbone), case)
            runs = [r for r in cached["runs"] if r["case"] == case]
            train_steps = sum(math.ceil(r["n_train_per_epoch"] / 2) for r in runs) * args.epochs
            val_batches = sum(math.ceil(r["n_val_per_epoch"] / 2) for r in runs) * args.epochs
            train_s = sum(timing["train_step_s"]) / max(len(timing["train_step_s"]), 1)
            val_s = sum(timing["val_batch_s"]) / max(len(timing["val_batch_s"]), 1)
            timing.update(
                sweep_train_steps=train_steps,
                sweep_val_batches=val_batches,
                mean_train_step_s=round(train_s, 3),
                mean_val_batch_s=round(val_s, 3),
                extrapolated_s=round(train_steps * train_s + val_batches * val_s, 1),
            )
            seed_style[case] = timing
            print(
                f"seed-style {case}: {train_s:.2f} s/step ({timing['train_steps_timed']} timed), "
                f"{val_s:.2f} s/val batch ({timing['val_batches_timed']} timed) -> "
                f"{timing['extrapolated_s']:.0f} s for {train_steps} steps + {val_batches} val batches",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    seed_style_s = sum(t["extrapolated_s"] for t in seed_style.values())
    cached_s = cached["total_s"]
    payload = {
        "seed_style_s": round(seed_style_s, 1),
        "cached_s": round(cached_s, 1),
        "ratio": round(seed_style_s / cached_s, 1),
        "backbone": {
            "name": args.backbone,
            "weights": "random (timing only)"
            if args.backbone == "kosmos2-full-random"
            else "profile default",
            "parameters": getattr(backbone, "num_parameters", None),
            "dtype": args.dtype,
        },
        "sweep": {
            "cases": args.cases,
            "seeds": args.seeds,
            "epochs": args.epochs,
            "episodes": args.episodes,
            "frames_per_episode": 18,
            "image_size": [height, width],
            "batch_size": 2,
            "frame_selection": "random (train), all (validation)",
            "early_stopping": "off",
        },
        "extrapolated": {
            "seed_style": "per case: mean time of the timed training steps and validation batches x the "
            "sweep's training steps and validation batches (all seeds, all epochs); per-epoch bookkeeping "
            "not included",
            "cached": "nothing"
            if not args.cached_epochs or args.cached_epochs >= args.epochs
            else f"epochs {args.cached_epochs + 1}..{args.epochs} of every run, at the mean time of "
            f"epochs 2..{args.cached_epochs}",
        },
        "cached": cached,
        "seed_style": seed_style,
        "machine": info,
        "command": " ".join(["python", "benchmarks/sweep.py", *sys.argv[1:]]),
    }
    print(json.dumps({k: payload[k] for k in ("seed_style_s", "cached_s", "ratio")}))
    write_result(args.out, payload)


def build_fresh_texts(backbone: Any) -> Any:
    """The same backbone with its instruction memo emptied (the seed had none)."""
    memo = getattr(backbone, "_text_memo", None)
    if memo is not None:
        memo.clear()
    return backbone


if __name__ == "__main__":
    main()
