"""Per-step inference latency of each backbone profile in fp32 and bf16, against the backbone's own forward.

    python benchmarks/inference.py [--profiles kosmos2 lite kosmos2-tiny] [--dtypes fp32 bf16] [--repeats 10]

One control step is `InferencePolicy.act(frame, instruction)` (mobile_vla.policies.inference, what the
simulator and the server call): a 720x1280 uint8 frame and the lab's instruction (its features computed once,
on the first step) -> a Case 1 head -> one velocity command. It is compared with the backbone's own forward
on the same uint8 frame, `backbone.encode_images([frame])` (its image conversion and processor included, as
in the step): the target is a step at most 1.15x that.

`kosmos2` is the full-size Kosmos-2 architecture (1.66 B parameters) with RANDOM weights built locally (no
hub), timing only; `lite` and `kosmos2-tiny` are the toolkit's profiles. FLOPs of the backbone forward are
counted with torch.utils.flop_counter.FlopCounterMode; the machine's matmul rate is measured in the same
dtype, so `fraction_of_matmul_peak` says how close the forward runs to the hardware's practical limit.

Writes benchmarks/results/inference.json: one entry per profile and dtype with `backbone_ms`, `total_ms`,
`ratio_to_backbone`, `gflops`, `machine_gflops_per_s` (medians over `--repeats` steps, with n and the
2.5-97.5 percentile range).
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import numpy as np
import torch
from common import count_gflops, machine, matmul_gflops_per_s, random_kosmos2, summary, timed, write_result
from PIL import Image

from mobile_vla.data.episodes import instruction_for_side
from mobile_vla.features.providers import FeatureProvider
from mobile_vla.policies import FeatureDims, create_policy
from mobile_vla.policies.inference import InferencePolicy


def build_backbone(profile: str, dtype: str) -> Any:
    if profile == "kosmos2":
        return random_kosmos2(dtype)
    from mobile_vla.backbones import create_backbone

    return create_backbone(profile, device="cpu", dtype=dtype)


def inference_policy(backbone: Any, case: str) -> InferencePolicy:
    """A Case head over `backbone`, wrapped exactly as `load_policy` wraps a trained run."""
    torch.manual_seed(0)
    policy = create_policy(case, FeatureDims.from_backbone(backbone)).eval()
    record = {
        "case": case,
        "action_dims": list(policy.action_dims),
        "backbone": {"profile": backbone.profile, "fingerprint_hash": backbone.fingerprint_hash},
        "data": {},
    }
    return InferencePolicy(policy, FeatureProvider(backbone), record, "cpu")


def measure(profile: str, dtype: str, args: argparse.Namespace, rates: dict[str, float]) -> dict[str, Any]:
    start = time.perf_counter()
    backbone = build_backbone(profile, dtype)
    built_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)  # the robot camera's size
    pil = Image.fromarray(frame)
    instruction = instruction_for_side("left")
    policy = inference_policy(backbone, args.case)

    # The backbone's own forward on the frame exactly as a step receives it (a uint8 array): its conversion
    # and image processor are part of it, as they are part of the step.
    repeats = args.kosmos2_repeats if profile == "kosmos2" else args.repeats
    gflops = count_gflops(lambda: backbone.encode_images([pil]))
    # Backbone forwards and control steps alternate, so both see the same load on a shared machine; the
    # ratio is taken per pair, then its median.
    backbone.encode_images([frame])
    policy.act(frame, instruction)  # warm-up; encodes the instruction once
    backbone_times, step_times, splits = [], [], []
    for _ in range(repeats):
        backbone_times += timed(lambda: backbone.encode_images([frame]), repeats=1, warmup=0)
        step_times += timed(lambda: policy.act(frame, instruction), repeats=1, warmup=0)
        splits.append(dict(policy.timings))
    paired = [s / b for s, b in zip(step_times, backbone_times, strict=True)]
    backbone_ms = summary(backbone_times)
    total_ms = summary(step_times)
    split_ms = {key: round(float(np.median([s[key] for s in splits])), 3) for key in splits[0]}
    # What a step adds to its own backbone call, from the step's internal split: free of the load noise
    # between two separate calls.
    within = [s["total_ms"] / s["backbone_ms"] for s in splits]
    overhead = [s["total_ms"] - s["backbone_ms"] for s in splits]
    achieved = gflops / (backbone_ms["median_ms"] / 1e3)
    entry = {
        "profile": profile,
        "dtype": dtype,
        "weights": "random (timing only)" if profile == "kosmos2" else "profile default",
        "case": args.case,
        "backbone_ms": backbone_ms["median_ms"],
        "total_ms": total_ms["median_ms"],
        "ratio_to_backbone": round(float(np.median(paired)), 3),
        "ratio_of_medians": round(total_ms["median_ms"] / backbone_ms["median_ms"], 3),
        "ratio_within_step": round(float(np.median(within)), 4),
        "step_overhead_ms": round(float(np.median(overhead)), 3),
        "ratio_p2.5_p97.5": [round(float(np.percentile(paired, q)), 3) for q in (2.5, 97.5)],
        "gflops": round(gflops, 4),
        "machine_gflops_per_s": rates[dtype],
        "achieved_gflops_per_s": round(achieved, 1),
        "fraction_of_matmul_peak": round(achieved / rates[dtype], 3),
        "backbone_timing": backbone_ms,
        "step_timing": total_ms,
        "step_split_ms": split_ms,
        "build_s": round(built_s, 1),
    }
    print(
        f"{profile:<13} {dtype}: backbone {entry['backbone_ms']:9.1f} ms, step {entry['total_ms']:9.1f} ms, "
        f"ratio {entry['ratio_to_backbone']:.3f} (within step {entry['ratio_within_step']:.3f}, "
        f"+{entry['step_overhead_ms']:.1f} ms), {gflops:8.2f} GFLOP -> {achieved:6.1f} GFLOP/s "
        f"({100 * entry['fraction_of_matmul_peak']:.0f}% of matmul {rates[dtype]:.0f}), n={repeats}",
        flush=True,
    )
    gc.collect()
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", default=["kosmos2", "lite", "kosmos2-tiny"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--case", default="case1")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--kosmos2-repeats", type=int, default=10, help="fewer for the 1.66 B model")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="inference.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    rates = {dtype: matmul_gflops_per_s(dtype)["gflops_per_s"] for dtype in args.dtypes}
    print(f"matmul GFLOP/s: {rates}")
    entries = [measure(p, d, args, rates) for p in args.profiles for d in args.dtypes]
    write_result(
        args.out,
        {
            "entries": entries,
            "target_ratio_to_backbone": 1.15,
            "machine": info,
            "matmul": {d: matmul_gflops_per_s(d) for d in args.dtypes},
        },
    )


if __name__ == "__main__":
    main()
