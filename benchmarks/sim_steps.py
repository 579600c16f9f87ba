"""Simulator closed-loop steps per second with the `lite` policy.

    python benchmarks/sim_steps.py [--episodes 16] [--run-dir RUN ...] [--runtimes torch,onnxruntime]

Each step is what `mobile-vla sim evaluate` does: render the robot's camera frame, `policy.act(frame,
instruction)`, hold the command for one control period (collision-checked motion). The policy is a Case 1
head on the `lite` backbone (EfficientNet-Lite0 + MiniLM, pretrained, offline) wrapped as `load_policy` wraps
a run (the instruction's features are computed once); without `--run-dir` the head is untrained,
which costs exactly the same time. Episodes run all 18 steps (no stop at a collision), over the lab's eight
scenarios.

Each policy is measured once per vision-tower executor (`backbones.vision_runtime`: eager torch and
onnxruntime, side by side in one run) and the ratio is written. Reports steps/s over all steps (n = steps)
with the range over episodes, and the time split (render, policy, motion). Writes
benchmarks/results/sim.json with `steps_per_s` (the fastest configuration) and every configuration's figures.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from common import machine, write_result

from mobile_vla.backbones.vision_runtime import RUNTIME_ENV
from mobile_vla.features.providers import FeatureProvider
from mobile_vla.policies import FeatureDims, create_policy, load_policy
from mobile_vla.policies.inference import InferencePolicy

SCENARIOS = [
    f"{n}box_{layout}_{side}" for n in (1, 2) for layout in ("vert", "hori") for side in ("left", "right")
]


def lite_policy(run_dir: str | None) -> InferencePolicy:
    if run_dir:
        return load_policy(run_dir, device="cpu")
    from mobile_vla.backbones import create_backbone

    backbone = create_backbone("lite", device="cpu")
    torch.manual_seed(0)
    head = create_policy("case1", FeatureDims.from_backbone(backbone)).eval()
    record = {"case": "case1", "action_dims": list(head.action_dims), "backbone": {}, "data": {}}
    return InferencePolicy(head, FeatureProvider(backbone), record, "cpu")


def measure(policy: InferencePolicy, episodes: int, steps_per_episode: int) -> dict:
    """Closed-loop episodes one at a time (as on the robot): steps/s and the time split."""
    from mobile_vla.sim.env import LabEnv, SimConfig  # the simulator is imported only when run
    from mobile_vla.sim.evaluate import run_episode

    config = SimConfig(stop_on_collision=False)
    env = LabEnv(config)
    run_episode(env, policy, 0, SCENARIOS[0], max_steps=2)  # warm-up: renderer, instruction features

    per_episode, policy_s, render_s, steps = [], 0.0, 0.0, 0
    start = time.perf_counter()
    for i in range(episodes):
        started = time.perf_counter()
        record = run_episode(
            env, policy, 1000 + i, SCENARIOS[i % len(SCENARIOS)], max_steps=steps_per_episode
        )
        elapsed = time.perf_counter() - started
        taken = record["steps_taken"]
        steps += taken
        per_episode.append(taken / elapsed)
        policy_s += float(record["policy_ms"]) / 1e3 * taken  # run_episode's per-step means
        render_s += float(record["render_ms"]) / 1e3 * max(taken - 1, 0)
    wall = time.perf_counter() - start
    env.close()
    return {
        "steps_per_s": round(steps / wall, 2),
        "n_steps": steps,
        "episodes": episodes,
        "episode_steps_per_s_range": [round(min(per_episode), 2), round(max(per_episode), 2)],
        "episode_steps_per_s_p2.5_p97.5": [
            round(float(np.percentile(per_episode, q)), 2) for q in (2.5, 97.5)
        ],
        "split_s_per_step": {
            "policy": round(policy_s / steps, 4),
            "render": round(render_s / steps, 4),
            "motion_and_rest": round((wall - policy_s - render_s) / steps, 4),
        },
        "sim": {
            "image_size": list(config.image_size),
            "stop_on_collision": False,
            "max_steps": steps_per_episode,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=18, help="steps per episode (the lab's node: 18)")
    parser.add_argument(
        "--run-dir",
        action="append",
        default=None,
        help="a trained lite run (repeatable; default: an untrained case1 head)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a busy box)")
    parser.add_argument(
        "--runtimes",
        default="torch,onnxruntime",
        help="vision-tower executors to measure side by side (backbones.vision_runtime)",
    )
    parser.add_argument("--out", default="sim.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    results: dict[str, dict] = {}
    for run_dir in args.run_dir or [None]:
        for runtime in runtimes:
            os.environ[RUNTIME_ENV] = runtime  # the backbone (and Case 2's reference) built by load_policy
            policy = lite_policy(run_dir)
            label = f"{policy.record.get('case', 'case1')}/{runtime}"
            result = measure(policy, args.episodes, args.steps)
            result["policy"] = f"{label} on lite" + (f" ({run_dir})" if run_dir else " (untrained head)")
            results[label] = result
            split = result["split_s_per_step"]
            print(
                f"{label}: {result['steps_per_s']:.1f} steps/s over {result['n_steps']} steps; per step: "
                f"policy {1e3 * split['policy']:.1f} ms, render {1e3 * split['render']:.1f} ms"
            )
    ratios = {}
    for label, result in results.items():
        case, runtime = label.split("/")
        base = results.get(f"{case}/torch")
        if runtime != "torch" and base:
            ratios[f"{case}: {runtime} / torch"] = round(result["steps_per_s"] / base["steps_per_s"], 2)
    best = max(results.values(), key=lambda r: r["steps_per_s"])
    payload = {
        "steps_per_s": best["steps_per_s"],
        "steps_per_s_policy": best["policy"],
        "results": results,
        "ratios": ratios,
        "threads": args.threads,
        "machine": info,
    }
    print("ratios:", ratios)
    write_result(args.out, payload)


if __name__ == "__main__":
    main()
