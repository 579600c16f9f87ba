"""Case 4's training cost per sample on a CPU: the seed's configuration, the demo's before and after issue 12.

    python benchmarks/case4_training.py [--repeats 10] [--threads 1] [--epoch-windows 748]

One training step = forward, loss (chunk, task, state and variance terms), backward and the AdamW update of the
real `RoboVLMsCompleteModel`, on features of the `lite` backbone's sizes (pooled 1280-d, 7x7 = 49 tokens of
1280-d per frame, 384-d text), a 4-frame history, 5-step chunks and 5 future frames: what one batch of the
window dataset gives it once every frame's features are cached (feature values are random; the cost does
not depend on them).

- `seed`: the seed's Case 4 (``use_vision_resampler: true``): every frame of every window goes through the
  64-latent, 2-block resampler, i.e. 4 resampler passes per sample per step (the resampler is trainable, so
  nothing of it can be cached), at the seed's batch 2 and at 8.
- `demo_before`: what the demo trained before (``use_vision_resampler: false``, ``action_space: keys``,
  batch 32): cheap per sample, but it drove in 50% of the demo's episodes.
- `demo_raw`: the seed's recipe (regression, batch 2) with the frames' pooled features projected
  (``use_vision_resampler: false``), at batch 2, 8 and 32.
- `demo`: what the demo trains now: `demo_raw` at batch 2 plus the weight average (``ema_decay: 0.999``)
  updated after every step.

At batch 2 a step of this 15 M-parameter head is bound by touching its weights (forward, backward, clipping,
AdamW all read or write every parameter), not by arithmetic, so a sample costs far more than at batch 32.

Reports samples/s per configuration at its batch size(s) (median over `repeats` timed steps, the range, n),
the seconds an epoch over `--epoch-windows` training windows costs (the demo's training split with mirroring:
748), and the ratios to the seed at batch 2. Writes benchmarks/results/case4_training.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine, write_result

from mobile_vla.policies.base import FeatureDims
from mobile_vla.policies.registry import create_policy
from mobile_vla.training.averaging import WeightAverage

DIMS = FeatureDims(vision=1280, text=384, token_dim=1280, num_image_tokens=49)
W, K, H = 4, 5, 5


def batch_of(size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(size)
    features = {
        "history_tokens": torch.randn(size, W, 49, 1280, generator=g),
        "history_vision": torch.randn(size, W, 1280, generator=g),
        "history_mask": torch.ones(size, W),
        "text": torch.randn(size, 384, generator=g),
        "vision": torch.randn(size, 1280, generator=g),
        "future_vision": torch.randn(size, H, 1280, generator=g),
    }
    targets = {
        "action": torch.randn(size, 2, generator=g),
        "action_chunk": torch.randn(size, K, 2, generator=g),
        "action_chunk_mask": torch.ones(size, K),
        "task": torch.randint(0, 8, (size,), generator=g),
        "future_mask": torch.ones(size, H),
    }
    return features, targets


# name -> (policy overrides, batch sizes, ema_decay); the first batch size is the one it trains with.
CONFIGS: dict[str, tuple[dict, tuple[int, ...], float]] = {
    "seed": ({"use_vision_resampler": True}, (2, 8), 0.0),
    "demo_before": ({"use_vision_resampler": False, "action_space": "keys"}, (32,), 0.0),
    "demo_raw": ({"use_vision_resampler": False}, (2, 8, 32), 0.0),
    "demo": ({"use_vision_resampler": False}, (2,), 0.999),
}


def step_times(
    policy_overrides: dict, size: int, repeats: int, ema_decay: float = 0.0
) -> tuple[list[float], int]:
    torch.manual_seed(0)
    policy = create_policy("case4", DIMS, **policy_overrides)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=1e-3, fused=True)
    if ema_decay:  # the demo's weight average, updated after every step as the Trainer does
        WeightAverage(policy.parameters(), ema_decay).attach(optimizer)
    features, targets = batch_of(size)

    def step() -> None:
        outputs = policy(features)
        loss, _ = policy.compute_loss(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times, policy.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epoch-windows", type=int, default=748)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"machine": machine(), "repeats": args.repeats, "epoch_windows": args.epoch_windows}
    result["configs"] = {}
    for name, (overrides, sizes, ema_decay) in CONFIGS.items():
        entry: dict = {
            "policy": overrides,
            "ema_decay": ema_decay,
            "trains_at_batch": sizes[0],
            "batch_sizes": {},
        }
        for size in sizes:
            times, params = step_times(overrides, size, args.repeats, ema_decay)
            rates = sorted(size / t for t in times)
            median = statistics.median(rates)
            entry["trainable_parameters"] = params
            entry["batch_sizes"][str(size)] = {
                "samples_per_s": round(median, 2),
                "range": [round(rates[0], 2), round(rates[-1], 2)],
                "n_steps": len(times),
                "n_samples": size * len(times),
                "epoch_s": round(args.epoch_windows / median, 1),
            }
            print(f"{name:11s} batch {size:3d}: {median:8.1f} samples/s (range {rates[0]:.1f}-{rates[-1]:.1f}, "
                  f"n={len(times)} steps), epoch {args.epoch_windows / median:6.1f} s, {params:,} trainable")  # fmt: skip
        result["configs"][name] = entry

    def rate(name: str, size: int | None = None) -> float:
        entry = result["configs"][name]
        return entry["batch_sizes"][str(size or entry["trains_at_batch"])]["samples_per_s"]

    # Each configuration at the batch size it trains with, against the seed's at its batch 2.
    result["ratio_to_seed_batch2"] = {name: round(rate(name) / rate("seed", 2), 2) for name in CONFIGS}
    print("samples/s relative to the seed's Case 4 at batch 2:", result["ratio_to_seed_batch2"])
    write_result("case4_training.json", result)


if __name__ == "__main__":
    main()
