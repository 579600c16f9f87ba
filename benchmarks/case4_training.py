"""Case 4's training cost per sample on a CPU: the seed's configuration vs the demo's.

    python benchmarks/case4_training.py [--batch-sizes 8 32] [--repeats 5] [--threads 1]

One training step = forward, loss (chunk, task, state and variance terms), backward and the AdamW update of the
real `RoboVLMsCompleteModel`, on features of the `lite` backbone's sizes (pooled 1280-d, 7x7 = 49 tokens of
1280-d per frame, 384-d text), a 4-frame history, 5-step chunks and 5 future frames: what one batch of the
window dataset gives it once every frame's features are cached (feature values are random; the cost does
not depend on them).

- `seed`: the seed's Case 4 (``use_vision_resampler: true``): every frame of every window goes through the
  64-latent, 2-block resampler, i.e. 4 resampler passes per sample per step (the resampler is trainable, so
  nothing of it can be cached).
- `demo`: ``use_vision_resampler: false``, the frames' pooled features projected (what the demo trains).

Reports samples/s per configuration and batch size (median over `repeats` timed steps, the range, n) and
the ratio demo/seed. Writes benchmarks/results/case4_training.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine, write_result

from mobile_vla.policies.base import FeatureDims
from mobile_vla.policies.registry import create_policy

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


def step_times(use_resampler: bool, size: int, repeats: int) -> tuple[list[float], int]:
    torch.manual_seed(0)
    policy = create_policy("case4", DIMS, use_vision_resampler=use_resampler)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=1e-3)
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
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"machine": machine(), "repeats": args.repeats, "configs": {}}
    for name, use_resampler in (("seed", True), ("demo", False)):
        entry: dict = {"use_vision_resampler": use_resampler, "batch_sizes": {}}
        for size in args.batch_sizes:
            times, params = step_times(use_resampler, size, args.repeats)
            rates = sorted(size / t for t in times)
            entry["trainable_parameters"] = params
            entry["batch_sizes"][str(size)] = {
                "samples_per_s": round(statistics.median(rates), 2),
                "range": [round(rates[0], 2), round(rates[-1], 2)],
                "n_steps": len(times),
                "n_samples": size * len(times),
            }
            print(f"{name:5s} batch {size:3d}: {statistics.median(rates):8.1f} samples/s "
                  f"(range {rates[0]:.1f}-{rates[-1]:.1f}, n={len(times)} steps), {params:,} trainable")  # fmt: skip
        result["configs"][name] = entry
    result["ratio_demo_to_seed"] = {
        str(size): round(
            result["configs"]["demo"]["batch_sizes"][str(size)]["samples_per_s"]
            / result["configs"]["seed"]["batch_sizes"][str(size)]["samples_per_s"],
            2,
        )
        for size in args.batch_sizes
    }
    print("ratio demo/seed:", result["ratio_demo_to_seed"])
    write_result("case4_training.json", result)


if __name__ == "__main__":
    main()
