"""Which training items an epoch draws: `uniform` (every item once, shuffled) or `balanced`.

The seed's update log plans a *core/variant sampling strategy*: draw episodes balanced by scenario and by
`core`/`variant` pattern, with a configurable ratio, instead of uniformly. Uniform draws train mostly on
whatever the lab recorded most (three times as many `2box_vert_left_core` episodes as
`1box_hori_right_variant` ones), and the lab measured the consequence on its robot: a head that never prefers
left, FORWARD on 75% of frames ("forward collapse").

`balanced` gives every training item a probability and draws `len(dataset)` items **with replacement** each
epoch (an epoch stays as long as a uniform one):

    P(item) = P(pattern) x P(group | pattern) x P(episode | group, pattern) x P(frame | episode)

- pattern: `variant`, or `core` (episodes whose file name names no pattern count with `core`: the lab's
  collector writes `_variant` only when the operator departed from the guide). `P(variant) = variant_ratio`
  (e.g. 0.3); with `variant_ratio=None` it is the share of `variant` episodes in the data. A pattern with no
  episodes gets no draws (its share goes to the other one).
- group: the scenario's task x side x distance (`2box_vert_left_medium`, parsed from the file name; an
  episode without a parsable scenario is in the group `unknown`); every group present in a pattern gets the
  same share of it.
- episode: uniform within its (group, pattern) cell, whatever its length.
- frame (`frame_selection: all`): uniform within the episode, or, with `class_balance`, proportional to the
  capped inverse frequency of the frame's action class (`Episode.action_classes`; frequencies counted under the episode
  draw above), normalised within the episode, so the scenario and pattern shares stay exact and only the mix of
  actions inside each episode moves towards the rare keys (pairs with a key-class head).

The draw depends on (seed, epoch) and the training episodes only: every DDP rank computes the same global
draw and takes its slice of each global batch (`GlobalBatchSampler`), and a resumed run redraws epoch k exactly
as the uninterrupted run drew it; no sampler state is saved.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mobile_vla.data.action_space import KEY_CLASSES
from mobile_vla.data.episodes import Scenario
from mobile_vla.training.distributed import DistributedContext, GlobalBatchSampler

SAMPLING_STRATEGIES = ("uniform", "balanced")
UNKNOWN_GROUP = "unknown"


def _item_classes(episodes: Sequence[Any], refs: Sequence[tuple[int, int]]) -> list[str]:
    """The key class of every (episode, frame) item: `Episode.action_classes` (the file's own classes when it
    stores them, else derived from the velocities), computed once per episode and cached there."""
    return [KEY_CLASSES[int(episodes[e].action_classes[f])] for e, f in refs]


def scenario_group(scenario: Scenario | None) -> str:
    """The balance group of an episode: task x side x distance (`2box_vert_left_medium`), `unknown` if none."""
    if scenario is None:
        return UNKNOWN_GROUP
    return f"{scenario.name}_{scenario.distance}" if scenario.distance else scenario.name


def scenario_pattern(scenario: Scenario | None) -> str:
    """`variant` or `core` (no pattern in the file name counts as `core`)."""
    return "variant" if scenario is not None and scenario.pattern == "variant" else "core"


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling fields of a `TrainConfig` (see its docstring)."""

    strategy: str = "uniform"
    variant_ratio: float | None = None
    class_balance: bool = False
    class_weight_cap: float = 5.0

    @classmethod
    def from_config(cls, config: Any) -> SamplingSettings:
        return cls(
            strategy=config.sampling,
            variant_ratio=config.variant_ratio,
            class_balance=config.class_balance,
            class_weight_cap=config.class_weight_cap,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "variant_ratio": self.variant_ratio,
            "class_balance": self.class_balance,
            "class_weight_cap": self.class_weight_cap,
        }


def _items(dataset: Any) -> tuple[list[Any], list[tuple[int, int]]]:
    """(episodes, frame_refs) of an `EpisodeDataset` or `WindowDataset`."""
    return list(dataset.episodes), list(dataset.frame_refs)


def episode_weights(episodes: Sequence[Any], variant_ratio: float | None) -> np.ndarray:
    """P(episode) under the balanced draw (pattern, then scenario group, then uniform); sums to 1."""
    n = len(episodes)
    if n == 0:
        return np.zeros(0)
    patterns = [scenario_pattern(e.scenario) for e in episodes]
    groups = [scenario_group(e.scenario) for e in episodes]
    present = sorted(set(patterns))
    if variant_ratio is None:
        share = {p: patterns.count(p) / n for p in present}
    else:
        share = {"variant": float(variant_ratio), "core": 1.0 - float(variant_ratio)}
        total = sum(share[p] for p in present)
        share = {p: share[p] / total if total > 0 else 1.0 / len(present) for p in present}
    cells = Counter(zip(groups, patterns, strict=True))
    groups_in = {p: len({g for (g, q) in cells if q == p}) for p in present}
    w = np.array(
        [share[p] / groups_in[p] / cells[(g, p)] for g, p in zip(groups, patterns, strict=True)],
        dtype=np.float64,
    )
    return w / w.sum()


def item_weights(dataset: Any, settings: SamplingSettings) -> np.ndarray:
    """P(item) for every item of `dataset` (its `frame_refs` of the current epoch); sums to 1.

    `uniform` gives every item the same probability (what a shuffle of all items draws on average).
    """
    episodes, refs = _items(dataset)
    if not refs:
        return np.zeros(0)
    if settings.strategy == "uniform":
        return np.full(len(refs), 1.0 / len(refs))
    if settings.strategy != "balanced":
        raise ValueError(f"sampling must be one of {SAMPLING_STRATEGIES}, got {settings.strategy!r}")
    per_episode = episode_weights(episodes, settings.variant_ratio)
    frames_of: dict[int, list[int]] = defaultdict(list)
    for item, (e, _) in enumerate(refs):
        frames_of[e].append(item)
    frame_share = np.zeros(len(refs))
    if settings.class_balance:
        classes = _item_classes(episodes, refs)
        mass: Counter[str] = Counter()
        for e, items in frames_of.items():
            for i in items:
                mass[classes[i]] += per_episode[e] / len(items)
        total = sum(mass.values())
        freq = {c: m / total for c, m in mass.items()}
        # Inverse frequency relative to a uniform class mix, capped so a key seen once is not drawn 100x.
        inv = {c: min(settings.class_weight_cap, 1.0 / (len(freq) * f)) for c, f in freq.items()}
        for items in frames_of.values():
            w = np.array([inv[classes[i]] for i in items])
            frame_share[items] = w / w.sum()
    else:
        for items in frames_of.values():
            frame_share[items] = 1.0 / len(items)
    # Episodes the dataset selected no frame of (none in practice) leave their mass out: renormalise.
    weights = np.array([per_episode[e] for e, _ in refs]) * frame_share
    return weights / weights.sum()


def draw_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch `epoch`'s draw: a function of (seed, epoch) only (resume, DDP)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 100_003 + epoch)
    return generator


def draw(weights: np.ndarray, count: int, seed: int, epoch: int) -> list[int]:
    """`count` item indices drawn with replacement with probabilities `weights`."""
    if count <= 0 or len(weights) == 0:
        return []
    probs = torch.as_tensor(weights, dtype=torch.float64)
    return torch.multinomial(probs, count, replacement=True, generator=draw_generator(seed, epoch)).tolist()


class WeightedGlobalBatchSampler(GlobalBatchSampler):
    """`GlobalBatchSampler` over a weighted draw with replacement instead of a shuffle: every rank draws the
    same global order from (seed, epoch) and takes its slice of each global batch."""

    def __init__(
        self,
        weights: np.ndarray,
        batch_size: int,
        context: DistributedContext,
        *,
        seed: int = 0,
        epoch: int = 0,
        count: int | None = None,
    ) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        super().__init__(
            len(self.weights) if count is None else int(count),
            batch_size,
            context,
            shuffle=True,
            seed=seed,
            epoch=epoch,
        )

    def order(self) -> list[int]:
        return draw(self.weights, self.size, self.seed, self.epoch)


def epoch_weights(dataset: Any, settings: SamplingSettings) -> np.ndarray | None:
    """What the trainer asks each epoch: None for `uniform` (the plain shuffle), else the item weights."""
    if settings.strategy == "uniform":
        return None
    return item_weights(dataset, settings)


# --- what a strategy draws, next to what the data holds ---------------------------------------------------
def draw_shares(dataset: Any, weights: np.ndarray) -> dict[str, dict[str, float]]:
    """Expected share of draws per scenario group, pattern and action class under `weights`."""
    episodes, refs = _items(dataset)
    out: dict[str, dict[str, float]] = {"scenario": {}, "pattern": {}, "action_class": {}}
    for (e, _), cls, w in zip(refs, _item_classes(episodes, refs), weights, strict=True):
        scenario = episodes[e].scenario
        for key, value in (
            ("scenario", scenario_group(scenario)),
            ("pattern", scenario_pattern(scenario)),
            ("action_class", cls),
        ):
            out[key][value] = out[key].get(value, 0.0) + float(w)
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def strategy_comparison(
    dataset: Any, strategies: Mapping[str, SamplingSettings]
) -> dict[str, dict[str, dict[str, float]]]:
    """`{"data": shares in the data, name: shares a strategy draws, ...}`: per scenario, pattern and class.

    "data" counts the items as they are (each frame of `dataset` once), i.e. what `uniform` draws.
    """
    out = {"data": draw_shares(dataset, item_weights(dataset, SamplingSettings("uniform")))}
    for name, settings in strategies.items():
        out[name] = draw_shares(dataset, item_weights(dataset, settings))
    return out


def sampling_record(dataset: Any, settings: SamplingSettings) -> dict[str, Any]:
    """What config.json records about the sampler: its settings and the shares it draws in epoch 0."""
    record: dict[str, Any] = settings.to_dict()
    episodes, refs = _items(dataset)
    record["num_items"] = len(refs)
    if settings.strategy != "uniform" and refs:
        shares = draw_shares(dataset, item_weights(dataset, settings))
        data = draw_shares(dataset, item_weights(dataset, SamplingSettings("uniform")))
        record["groups"] = len(shares["scenario"])
        record["variant_share"] = {
            "data": round(data["pattern"].get("variant", 0.0), 6),
            "drawn": round(shares["pattern"].get("variant", 0.0), 6),
        }
    return record
