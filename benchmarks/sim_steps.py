"""Simulator closed-loop steps per second with the `lite` policy.

    python benchmarks/sim_steps.py [--episodes 16] [--run-dir RUN]

Each step is what `mobile-vla sim evaluate` does: render the robot's camera frame, `policy.act(frame,
instruction)`, hold the command for one control period (collision-checked motion). The policy is a Case 1
head on the `lite` backbone (EfficientNet-Lite0 + MiniLM, pretrained, offline) wrapped as `load_policy` wraps
a run (the instruction's features are computed once); without `--run-dir` the head is untrained,
which costs exactly the same time. Episodes run all 18 steps (no stop at a collision), over the lab's eight
scenarios.

Reports steps/s over all steps (n = steps) with the range over episodes, and the time split (render,
policy, motion). Writes benchmarks/results/sim.json with `steps_per_s`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import machine, write_result

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=18, help="steps per episode (the lab's node: 18)")
    parser.add_argument("--run-dir", default=None, help="a trained lite run (default: an untrained head)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a busy box)")
    parser.add_argument("--out", default="sim.json")
    args = parser.parse_args()
    from mobile_vla.sim.env import LabEnv, SimConfig  # the simulator is imported only when run
    from mobile_vla.sim.evaluate import run_episode

    torch.set_num_threads(args.threads)
    info = machine()
    policy = lite_policy(args.run_dir)
    config = SimConfig(stop_on_collision=False)
    env = LabEnv(config)
    run_episode(env, policy, 0, SCENARIOS[0], max_steps=2)  # warm-up: renderer, instruction features

    per_episode, policy_s, render_s, steps = [], 0.0, 0.0, 0
    start = time.perf_counter()
    for i in range(args.episodes):
        started = time.perf_counter()
        record = run_episode(env, policy, 1000 + i, SCENARIOS[i % len(SCENARIOS)], max_steps=args.steps)
        elapsed = time.perf_counter() - started
        taken = record["steps_taken"]
        steps += taken
        per_episode.append(taken / elapsed)
        policy_s += float(record["policy_ms"]) / 1e3 * taken  # run_episode's per-step means
        render_s += float(record["render_ms"]) / 1e3 * max(taken - 1, 0)
    wall = time.perf_counter() - start
    steps_per_s = steps / wall
    payload = {
        "steps_per_s": round(steps_per_s, 2),
        "n_steps": steps,
        "episodes": args.episodes,
        "episode_steps_per_s_range": [round(min(per_episode), 2), round(max(per_episode), 2)],
        "episode_steps_per_s_p2.5_p97.5": [
            round(float(np.percentile(per_episode, q)), 2) for q in (2.5, 97.5)
        ],
        "split_s_per_step": {
            "policy": round(policy_s / steps, 4),
            "render": round(render_s / steps, 4),
            "motion_and_rest": round((wall - policy_s - render_s) / steps, 4),
        },
        "policy": "case1 head on lite" + (f" ({args.run_dir})" if args.run_dir else " (untrained)"),
        "sim": {"image_size": list(config.image_size), "stop_on_collision": False, "max_steps": args.steps},
        "threads": args.threads,
        "machine": info,
    }
    print(
        f"{steps_per_s:.1f} steps/s over {steps} steps ({args.episodes} episodes; per episode "
        f"{min(per_episode):.1f}-{max(per_episode):.1f}); per step: policy {1e3 * policy_s / steps:.1f} ms, "
        f"render {1e3 * render_s / steps:.1f} ms"
    )
    write_result(args.out, payload)


if __name__ == "__main__":
    main()
