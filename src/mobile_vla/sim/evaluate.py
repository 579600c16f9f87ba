"""Closed-loop evaluation: drive a policy in the simulator from what the robot sees, as the lab's node does.

Each step the policy gets the camera frame (uint8 [H, W, 3]) and the instruction and returns a command over
its `action_dims`; the command is held for the control period (0.4 s) and the robot stops. After `max_steps`
steps (the lab's node stops after 18) the episode is judged: success = the robot stands within the goal
tolerance of the point in front of the bottle, facing it, and never collided. Metrics come overall, per
scenario (`1box_vert_left`, ...) and per start distance, each with its n and a 95% interval (Wilson for the
rates; for SPL, a normal interval on the mean).

SPL (success weighted by path length, Anderson et al. 2018) = mean over episodes of S * l / max(p, l), with
l the shortest collision-free route to the goal on the scenario's side and p the path driven.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from mobile_vla.evaluation.intervals import wilson_interval
from mobile_vla.policies.protocol import BatchControlPolicy
from mobile_vla.sim.env import LabEnv, SimConfig, full_action
from mobile_vla.sim.expert import ExpertPolicy, RandomPolicy, key_for_action
from mobile_vla.sim.layouts import resolve_scenarios, sample_layout
from mobile_vla.sim.seeds import episode_seed
from mobile_vla.sim.video import annotate_frame, write_gif

if TYPE_CHECKING:
    from mobile_vla.policies.protocol import ControlPolicy

BUILTIN_POLICIES = ("expert", "random")


def _rate(flags: Sequence[bool]) -> dict[str, Any]:
    n = len(flags)
    k = int(sum(bool(f) for f in flags))
    return {"rate": k / n, "ci95": list(wilson_interval(k, n)), "n": n}


def _mean(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Mean with a normal-approximation 95% interval, clipped to the quantity's `bounds`."""
    n = len(values)
    mean = float(np.mean(values))
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci95": [max(bounds[0], mean - half), min(bounds[1], mean + half)], "n": n}


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, collision rate, SPL and mean steps of a group of episode records, each with n and a 95%
    interval."""
    success = _rate([r["success"] for r in records])
    collision = _rate([r["collided"] for r in records])
    spl = _mean([r["spl"] for r in records])
    steps = _mean([float(r["steps"]) for r in records], bounds=(0.0, math.inf))
    distance = _mean([float(r["distance_to_goal"]) for r in records], bounds=(0.0, math.inf))
    return {
        "n": len(records),
        "success_rate": success["rate"],
        "success_rate_ci95": success["ci95"],
        "collision_rate": collision["rate"],
        "collision_rate_ci95": collision["ci95"],
        "spl": spl["mean"],
        "spl_ci95": spl["ci95"],
        "mean_steps": steps["mean"],
        "mean_distance_to_goal": distance["mean"],
        # An interval for the unbounded means needs two episodes or more (none is written otherwise).
        **{
            f"{key}_ci95": value["ci95"]
            for key, value in (("mean_steps", steps), ("mean_distance_to_goal", distance))
            if all(math.isfinite(x) for x in value["ci95"])
        },
    }


def _builtin_policy(name: str, env: LabEnv, seed: int, expert_style: str) -> Any:
    if name == "expert":
        return ExpertPolicy(env, style=expert_style, seed=seed)
    if name == "random":
        return RandomPolicy(seed=seed)
    raise ValueError(
        f"unknown built-in policy {name!r}: expected one of {BUILTIN_POLICIES} or a policy object"
    )


class _Episode:
    """One closed-loop episode in progress on its own environment (see `run_episode`)."""

    def __init__(
        self, env: LabEnv, layout_seed: int, scenario, max_steps: int, video_path: str | Path | None
    ) -> None:
        self.env, self.max_steps, self.video_path = env, max_steps, video_path
        self.layout = sample_layout(scenario, layout_seed)
        self.frame = env.reset(self.layout, max_steps=max_steps)
        self.instruction = env.instruction
        self.actions: list[list[float]] = []
        self.last_moving_step = 0
        self.invalid_actions = 0
        self.policy_seconds = self.render_seconds = 0.0
        self.video: list[np.ndarray] = []
        self.done = False

    def apply(self, action: np.ndarray, dims: tuple[str, ...], policy_seconds: float) -> None:
        """Hold ``action`` for one control period, then render the next frame (unless the episode ended)."""
        env, step = self.env, len(self.actions)
        self.policy_seconds += policy_seconds
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(action)):  # the robot's safe stop: a broken output becomes zero velocity
            self.invalid_actions += 1
            action = np.zeros_like(action)
        if self.video_path is not None:
            self.video.append(
                annotate_frame(
                    self.frame,
                    self.instruction,
                    step + 1,
                    self.max_steps,
                    action,
                    key=key_for_action(full_action(action, dims)),
                    overview=env.render(camera="overview"),
                )
            )
        result = env.step(action, dims)
        self.actions.append(action.tolist())
        if result.moved > 1e-6:
            self.last_moving_step = step + 1
        if (result.collided and env.config.stop_on_collision) or step + 1 >= self.max_steps:
            self.done = True
            return
        started = time.perf_counter()
        self.frame = env.render()
        self.render_seconds += time.perf_counter() - started

    def record(self) -> dict[str, Any]:
        env, layout, taken = self.env, self.layout, len(self.actions)
        outcome = env.outcome()
        record = {
            "scenario": layout.scenario.full_name,
            "task": layout.scenario.name,
            "distance": layout.scenario.distance,
            "pattern": layout.scenario.pattern,
            "seed": layout.seed,
            "instruction": self.instruction,
            **outcome,
            "steps": self.last_moving_step,
            "steps_taken": taken,
            "invalid_actions": self.invalid_actions,
            "actions": self.actions,
            "policy_ms": 1000 * self.policy_seconds / max(1, taken),
            "render_ms": 1000 * self.render_seconds / max(1, taken - 1),
        }
        if self.video_path is not None:
            status = "success" if outcome["success"] else "collision" if outcome["collided"] else "failure"
            self.video.append(
                annotate_frame(
                    env.render(),
                    self.instruction,
                    taken,
                    self.max_steps,
                    None,
                    status=f"{status}: {outcome['distance_to_goal']:.2f} m from the goal",
                    overview=env.render(camera="overview"),
                )
            )
            self.video[-1:] = [self.video[-1]] * 3  # hold the last frame a little
            record["video"] = str(write_gif(self.video_path, self.video))
        return record


def run_episode(
    env: LabEnv,
    policy: ControlPolicy,
    layout_seed: int,
    scenario,
    max_steps: int = 18,
    video_path: str | Path | None = None,
) -> dict[str, Any]:
    """One closed-loop episode; returns its record (outcome, actions, timings)."""
    episode = _Episode(env, layout_seed, scenario, max_steps, video_path)
    policy.reset()
    dims = tuple(policy.action_dims)
    while not episode.done:
        started = time.perf_counter()
        action = policy.act(episode.frame, episode.instruction)
        episode.apply(action, dims, time.perf_counter() - started)
    return episode.record()


def run_episodes_lockstep(
    envs: Sequence[LabEnv],
    policy: BatchControlPolicy,
    jobs: Sequence[tuple[int, Any, str | Path | None]],
    max_steps: int = 18,
) -> list[dict[str, Any]]:
    """Episodes ``jobs`` (``(layout seed, scenario, video path)``), one per environment, stepped in
    lockstep: each step the frames of every running episode go to the policy in one batch
    (``policy.act_slots``), so the frozen backbone runs once per step for all of them. Each episode's actions
    depend only on its own frames (the policy keeps one history per slot), so the records equal those of
    `run_episode` one by one."""
    if len(jobs) > len(envs):
        raise ValueError(f"{len(jobs)} episodes need as many environments, got {len(envs)}")
    episodes = [_Episode(env, *job[:2], max_steps, job[2]) for env, job in zip(envs, jobs, strict=False)]
    slots = list(range(len(episodes)))
    policy.reset_slots(slots)
    dims = tuple(policy.action_dims)
    while True:
        running = [i for i in slots if not episodes[i].done]
        if not running:
            break
        started = time.perf_counter()
        actions = policy.act_slots(
            [episodes[i].frame for i in running], [episodes[i].instruction for i in running], running
        )
        seconds = (time.perf_counter() - started) / len(running)  # each episode's share of the batch
        for i, action in zip(running, actions, strict=True):
            episodes[i].apply(action, dims, seconds)
    return [episode.record() for episode in episodes]


def evaluate_closed_loop(
    policy: ControlPolicy | str,
    episodes: int = 48,
    seed: int = 0,
    scenarios: Sequence[str] | str | None = None,
    max_steps: int = 18,
    config: SimConfig | None = None,
    video_dir: str | Path | None = None,
    expert_style: str = "teleop",
    progress: bool = True,
    policy_name: str | None = None,
    lockstep: int = 16,
) -> dict[str, Any]:
    """Run `episodes` closed-loop episodes (cycling through `scenarios`, default all 48) and summarise them.

    `policy` is any `ControlPolicy` or `"expert"` / `"random"`. Episode i uses the layout seed
    `episode_seed(seed, i, "evaluate")`, so the same arguments give the same episodes (and never the layouts
    `collect` demonstrated with the same seed). Returns the overall metrics at the top level (`n`,
    `success_rate`, `collision_rate`, `spl`, `mean_steps`, each rate with `*_ci95`), `per_scenario` and
    `per_distance` breakdowns, `timing` and the per-episode `records`.

    A policy that can act for several episodes at once (a `BatchControlPolicy`, e.g. a loaded
    `InferencePolicy`) runs up to `lockstep` episodes side by side, one environment each, its backbone
    batched over them; the records are the same as one episode at a time (`lockstep=1`).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    chosen = resolve_scenarios(scenarios)
    config = config or SimConfig()
    name = policy_name or (policy if isinstance(policy, str) else type(policy).__name__)
    batched = not isinstance(policy, str) and lockstep > 1 and isinstance(policy, BatchControlPolicy)
    envs = [LabEnv(config) for _ in range(min(lockstep, episodes) if batched else 1)]
    if isinstance(policy, str):
        policy = _builtin_policy(policy, envs[0], seed, expert_style)
    jobs = []
    for index in range(episodes):
        scenario = chosen[index % len(chosen)]
        video_path = None
        if video_dir is not None:
            video_path = Path(video_dir) / f"{index:04d}_{scenario.full_name}.gif"
        jobs.append((episode_seed(seed, index, "evaluate"), scenario, video_path))
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(total=episodes, desc=f"evaluate {name}", unit="episode", disable=not progress)
    try:
        group = len(envs)
        for first in range(0, episodes, group):
            chunk = jobs[first : first + group]
            if batched:
                records.extend(run_episodes_lockstep(envs, policy, chunk, max_steps))
            else:
                records.append(run_episode(envs[0], policy, *chunk[0][:2], max_steps, chunk[0][2]))
            bar.update(len(chunk))
    finally:
        bar.close()
        for env in envs:
            env.close()
    wall = time.perf_counter() - started

    groups: dict[str, dict[str, list]] = {
        "per_scenario": defaultdict(list),
        "per_distance": defaultdict(list),
    }
    for record in records:
        groups["per_scenario"][record["task"]].append(record)
        groups["per_distance"][record["distance"]].append(record)
    steps = sum(r["steps_taken"] for r in records)
    return {
        "policy": name,
        "episodes": episodes,
        "seed": seed,
        "max_steps": max_steps,
        "scenarios": [s.full_name for s in chosen],
        **summarize(records),
        "per_scenario": {k: summarize(v) for k, v in sorted(groups["per_scenario"].items())},
        "per_distance": {k: summarize(v) for k, v in groups["per_distance"].items()},
        "timing": {
            "wall_s": wall,
            "steps": steps,
            "steps_per_s": steps / wall if wall > 0 else float("nan"),
            "policy_ms_per_step": float(np.mean([r["policy_ms"] for r in records])),
            "render_ms_per_frame": float(np.mean([r["render_ms"] for r in records])),
        },
        "config": config.to_dict(),
        "records": records,
    }
