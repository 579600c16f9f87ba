"""Expert demonstrations in the robot's HDF5 format, recorded the way the lab's collector records them.

An episode is `frames` (18) frames: frame 0 is `episode_start` with a zero action, then one frame per key
press: the camera frame at the moment of the press and the command pressed (the robot then moves for 0.4 s
and stops). Once the expert has arrived it sends zero commands, recorded as `stop_action`. Files are named
like the lab's, `episode_<YYYYmmdd>_<HHMMSS>_<scenario>.h5`, with a made-up timestamp derived from the seed
and the episode index, so names are unique within a run and the same for the same seed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mobile_vla.data.episodes import Scenario, write_episode
from mobile_vla.sim.env import LabEnv, SimConfig
from mobile_vla.sim.expert import STYLES, ExpertPolicy
from mobile_vla.sim.layouts import resolve_scenarios, sample_layout
from mobile_vla.sim.seeds import episode_seed

logger = logging.getLogger(__name__)

ACTION_CHUNK_SIZE = 8  # the lab's collector attribute; recorded as the robot's files carry it
_EPOCH = datetime(2025, 9, 1, 9, 0, 0)


def episode_timestamp(seed: int, index: int) -> datetime:
    """A made-up collection time: each seed gets its own ~11-day window, episodes 20 s apart within it."""
    return _EPOCH + timedelta(seconds=(seed % 1000) * 1_000_000 + index * 20)


@dataclass
class CollectionReport:
    """What `collect_episodes` did."""

    paths: list[Path] = field(default_factory=list)
    retried: int = 0  # episodes whose first layout the expert failed (a new layout was drawn)
    skipped: list[str] = field(default_factory=list)  # scenario names the expert failed every attempt
    seconds: float = 0.0

    @property
    def episodes_per_second(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else float("nan")


def record_episode(
    env: LabEnv, expert: ExpertPolicy, scenario: Scenario, layout_seed: int, frames: int = 18
) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Run the expert once: (images [T,H,W,3], actions [T,3], event types [T], outcome)."""
    if frames < 2:
        raise ValueError(f"an episode needs at least 2 frames (episode_start + one press), got {frames}")
    layout = sample_layout(scenario, layout_seed)
    frame = env.reset(layout, max_steps=frames - 1)
    expert.reset()
    images = [frame]
    actions = [np.zeros(3)]
    events = ["episode_start"]
    for _ in range(frames - 1):
        action = expert.act(frame, env.instruction)
        images.append(frame)  # the frame captured at the press, before the robot moves
        actions.append(action)
        events.append("start_action" if np.any(np.abs(action) > 1e-9) else "stop_action")
        env.step(action)
        frame = env.render()
    return np.stack(images), np.asarray(actions, dtype=np.float32), events, env.outcome()


MIX_FACTORS = ("side", "pattern", "distance", "layout", "boxes")


def parse_mix(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"left=3,right=1,core=4,variant=1"`` -> ``{"left": 3.0, ...}`` (a mapping is checked and copied).

    A key is a value of one scenario factor (`MIX_FACTORS`: side left/right, pattern core/variant, distance
    close/medium/far, layout vert/hori, boxes 1box/2box); a weight is a number > 0."""
    if text is None:
        return {}
    items = (
        text.items()
        if isinstance(text, Mapping)
        else (
            part.split("=", 1) if "=" in part else (part, "") for part in str(text).split(",") if part.strip()
        )
    )
    known = {v: f for f, values in _FACTOR_VALUES.items() for v in values}
    mix: dict[str, float] = {}
    for key, value in items:
        key = str(key).strip()
        if key not in known:
            raise ValueError(
                f"mix: unknown key {key!r}; expected values of {', '.join(MIX_FACTORS)}: {sorted(known)}"
            )
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"mix: {key}={value!r} is not a number") from None
        if not weight > 0 or weight == float("inf"):
            raise ValueError(f"mix: {key}={value!r} must be a finite number > 0")
        mix[key] = weight
    return mix


_FACTOR_VALUES = {
    "side": ("left", "right"),
    "pattern": ("core", "variant"),
    "distance": ("close", "medium", "far"),
    "layout": ("vert", "hori"),
    "boxes": ("1box", "2box"),
}


def scenario_weight(scenario: Scenario, mix: Mapping[str, float]) -> float:
    """The product of `mix`'s weights of the scenario's factor values (1 for a value not in `mix`)."""
    values = (scenario.side, scenario.pattern, scenario.distance, scenario.layout, f"{scenario.num_boxes}box")
    weight = 1.0
    for value in values:
        weight *= float(mix.get(str(value), 1.0))
    return weight


def mixed_schedule(
    scenarios: Sequence[Scenario], episodes: int, mix: Mapping[str, float], seed: int = 0
) -> list[Scenario]:
    """`episodes` scenarios drawn in proportion to `scenario_weight`, deterministically for a seed and
    interleaved (smooth weighted round-robin over a seeded order of the scenarios: each scenario's count is
    within one of its share, and consecutive episodes spread over the scenarios rather than coming in blocks).
    With an empty mix: the scenarios in order, cycled."""
    if not mix:
        return [scenarios[i % len(scenarios)] for i in range(episodes)]
    order = np.random.default_rng([seed, 0x6D6978]).permutation(len(scenarios))
    scenarios = [scenarios[i] for i in order]
    weights = [scenario_weight(s, mix) for s in scenarios]
    total = sum(weights)
    credit = [0.0] * len(scenarios)
    out: list[Scenario] = []
    for _ in range(episodes):
        credit = [c + w for c, w in zip(credit, weights, strict=True)]
        best = max(range(len(scenarios)), key=lambda i: credit[i])
        credit[best] -= total
        out.append(scenarios[best])
    return out


def collect_episodes(
    out_dir: str | Path,
    episodes: int,
    seed: int = 0,
    scenarios: Sequence[str] | None = None,
    style: str = "teleop",
    frames: int = 18,
    config: SimConfig | None = None,
    max_attempts: int = 3,
    progress: bool = True,
    mix: str | Mapping[str, float] | None = None,
) -> CollectionReport:
    """Write `episodes` expert episodes to `out_dir`, cycling through the requested scenarios in order (so
    every scenario gets `episodes / len(scenarios)` episodes, give or take one); with `mix` (see `parse_mix`,
    e.g. ``left=3,right=1,core=4,variant=1``) in proportion to its weights instead (`mixed_schedule`): a
    deliberately imbalanced dataset, as real collections are.

    A layout the expert fails on (rare; see the expert's success rate) is replaced by a fresh one, up to
    `max_attempts` times; the report counts them.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = resolve_scenarios(scenarios)
    schedule = mixed_schedule(chosen, episodes, parse_mix(mix), seed)
    config = config or SimConfig()
    env = LabEnv(config)
    expert = ExpertPolicy(env, style=style, seed=seed)
    report = CollectionReport()
    started = time.perf_counter()
    try:
        for index in tqdm(range(episodes), desc="collect", unit="episode", disable=not progress):
            scenario = schedule[index]
            for attempt in range(max_attempts):
                layout_seed = episode_seed(seed, index, "collect", attempt)
                images, actions, events, outcome = record_episode(env, expert, scenario, layout_seed, frames)
                if outcome["success"]:
                    break
                report.retried += 1
            else:
                logger.warning(
                    "expert failed %s (episode %d) %d times; episode skipped",
                    scenario.full_name,
                    index,
                    max_attempts,
                )
                report.skipped.append(scenario.full_name)
                continue
            when = episode_timestamp(seed, index)
            name = f"episode_{when:%Y%m%d_%H%M%S}_{scenario.full_name}.h5"
            attrs = {
                "total_duration": float((frames - 1) * config.control_period),
                "action_chunk_size": ACTION_CHUNK_SIZE,
                "obstacle_layout_type": f"{scenario.num_boxes}box_{scenario.layout}",
                "time_period": env.layout.time_period,
                "collection_datetime": when.isoformat(),
                "provenance": "sim",
                "seed": layout_seed,
                "collection_seed": seed,
                "episode_index": index,
                "expert_style": style,
                "sim_success": bool(outcome["success"]),
                "sim_distance_to_goal": float(outcome["distance_to_goal"]),
                "sim_path_length": float(outcome["path_length"]),
                "sim_config": json.dumps(config.to_dict()),
            }
            report.paths.append(
                write_episode(
                    out_dir / name, images, actions, events, instruction=env.instruction, attrs=attrs
                )
            )
    finally:
        env.close()
    report.seconds = time.perf_counter() - started
    return report
