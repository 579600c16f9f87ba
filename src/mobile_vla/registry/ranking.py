"""Honest ranking: who is better, only where the numbers can say so.

The seed ranked dummy-data results beside real ones and ordered cases by point estimates from 12 test
frames. The rules here:

1. **Like with like.** Runs are ranked only against runs evaluated on the same episodes: the same training
   dataset fingerprint, the same split, the same episode ids in that split (and, when ``evaluate`` recorded
   it, the same content hash of the evaluated episodes). Each such set is a *group*, ranked on its own.
2. **No dummies among the real ones.** Runs on synthetic data (provenance ``synthetic``, or ``mixed``/unknown
   provenance that may include synthetic episodes) or with any random-weight frozen encoder (the backbone,
   or any other encoder the run's config records with ``pretrained``/``*_pretrained`` false, e.g. Case 2's
   ``clip-tiny`` fallback; see `mobile_vla.registry.record.frozen_encoders`) go to a separate, labelled
   section. They are listed with their numbers and the reason, never ranked.
3. **The key.** Closed-loop success rate (higher is better) when every run of the group has one, measured
   under the same protocol (seed, episodes, scenarios); otherwise offline test MAE (lower is better). Closed
   loop is preferred because it measures what the robot needs (reaching the bottle), which offline MAE on a
   few frames only approximates.
4. **Ties.** Every value carries its ``n`` and 95% interval. Whether two runs differ is decided by a
   **paired** comparison on the units both were measured on (`mobile_vla.evaluation.paired`): the exact
   McNemar test on the same closed-loop seeds, or a paired bootstrap of the MAE difference resampling the same
   test episodes. Overlapping marginal intervals are the fallback only where the per-unit results are not
   available (``outcomes`` not given, or an artifact missing), and the comparison says so. Runs not told apart
   are joined into tie groups (connected components of "not distinguishable"), so they always share a rank.
   Ranks are competition-style: a tie group of two at the top is ``1, 1``, then ``3``. A run without an
   interval for the key cannot be placed and is listed as unranked with that reason.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobile_vla.evaluation.intervals import intervals_overlap
from mobile_vla.evaluation.paired import mcnemar_exact, paired_bootstrap_difference
from mobile_vla.registry.record import CLOSED_LOOP_FILE, StoredRun

# Per-unit results of one run for a ranking key: ``{unit: value}`` (closed loop: ``(seed, scenario)`` ->
# success; offline: ``(episode_id, frame_index)`` -> the frame's mean absolute error), or None.
Outcomes = Callable[[StoredRun, str, str], "Mapping[tuple, float] | None"]

RANKED_PROVENANCES = ("real", "sim")
CLOSED_LOOP_KEY = "closed_loop/success_rate"


@dataclass
class Score:
    """One run's value of its group's ranking key, with n and its 95% interval."""

    run: StoredRun
    key: str
    value: float
    interval: tuple[float, float] | None
    n: int | None
    rank: int | None = None
    tied_with: list[str] = field(default_factory=list)
    n_episodes: int | None = None


@dataclass
class Comparison:
    """How two runs of a group were compared: the test, its result, and whether they differ."""

    a: str
    b: str
    method: str  # "exact McNemar", "paired bootstrap by episode" or "overlapping 95% intervals"
    distinguishable: bool
    detail: str


@dataclass
class RankedGroup:
    """Runs evaluated on the same episodes, ranked against each other."""

    dataset: str
    provenance: str
    split: str
    split_fingerprint: str | None
    key: str
    higher_is_better: bool
    scores: list[Score]
    unranked: list[tuple[StoredRun, str]] = field(default_factory=list)
    note: str = ""
    comparisons: list[Comparison] = field(default_factory=list)

    def comparison(self, a: str, b: str) -> Comparison | None:
        return next((c for c in self.comparisons if {c.a, c.b} == {a, b}), None)

    @property
    def label(self) -> str:
        return f"dataset {self.dataset} ({self.provenance}), split {self.split}"


@dataclass
class Ranking:
    split: str
    groups: list[RankedGroup]
    separate: list[tuple[StoredRun, str]]  # synthetic data / random weights: shown, never ranked
    excluded: list[tuple[StoredRun, str]]  # not finished, or not evaluated on this split


def separation_reason(run: StoredRun) -> str | None:
    """Why a run belongs to the separate, never-ranked section (None when it may be ranked)."""
    reasons = []
    if run.provenance == "synthetic":
        reasons.append("synthetic data")
    elif run.provenance not in RANKED_PROVENANCES:
        reasons.append(f"{run.provenance} data provenance (may include synthetic episodes)")
    if run.pretrained is False:
        reasons.append("random-weight backbone")
    elif run.pretrained is None:
        reasons.append("backbone weights not recorded as pretrained")
    random = sorted(name for name, ok in run.encoders.items() if name != "backbone" and ok is False)
    if random:
        reasons.append(f"random-weight frozen encoder{'s' if len(random) > 1 else ''}: {', '.join(random)}")
    return "; ".join(reasons) or None


def group_key(run: StoredRun, split: str) -> tuple[str, str, str | None, str | None]:
    return (
        run.dataset_fingerprint,
        split,
        run.split_fingerprint(split),
        run.tags.get(f"mobile_vla.eval.{split}.data_fingerprint"),
    )


def score(run: StoredRun, key: str, split: str) -> Score | None:
    """The run's value of ``key`` (``closed_loop/success_rate`` or a ``{split}/metric`` key) or None."""
    if key == CLOSED_LOOP_KEY:
        result = run.closed_loop()
        metric = "success_rate"
    else:
        result = run.evaluation(split)
        metric = key.split("/", 1)[1]
    if result is None or metric not in result["metrics"]:
        return None
    interval = result["intervals"].get(metric)
    episodes = result.get("n_episodes") if key != CLOSED_LOOP_KEY else None
    return Score(
        run=run,
        key=key,
        value=result["metrics"][metric],
        interval=(float(interval[0]), float(interval[1])) if interval else None,
        n=result["n"],
        n_episodes=int(episodes) if episodes is not None else None,
    )


def compare_pair(a: Score, b: Score, outcomes: Outcomes | None = None, split: str = "test") -> Comparison:
    """Can the data tell ``a`` and ``b`` apart? Paired on their common units when ``outcomes`` has them for
    both (the same units), else by overlapping marginal intervals (said so in ``method``)."""
    ua = outcomes(a.run, a.key, split) if outcomes else None
    ub = outcomes(b.run, b.key, split) if outcomes else None
    if ua and ub and set(ua) == set(ub):
        units = sorted(ua)
        if a.key == CLOSED_LOOP_KEY:
            test = mcnemar_exact([ua[u] for u in units], [ub[u] for u in units])
            detail = (
                f"exact McNemar on the same {test['n']} seeds: {test['a_only']} won only by {a.run.name}, "
                f"{test['b_only']} only by {b.run.name}, p={test['p_value']:.3g}"
            )
        else:
            test = paired_bootstrap_difference(
                [ua[u] for u in units], [ub[u] for u in units], groups=[u[0] for u in units]
            )
            low, high = test["interval"]
            detail = (
                f"paired bootstrap by episode on the same {test['n']} frames of {test['n_groups']} episodes: "
                f"MAE {a.run.name} - {b.run.name} = {test['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"
            )
        return Comparison(a.run.name, b.run.name, test["method"], test["distinguishable"], detail)
    missing = "not the same units" if ua and ub else "no per-unit results"
    overlap = intervals_overlap(a.interval, b.interval)
    return Comparison(
        a.run.name,
        b.run.name,
        "overlapping 95% intervals",
        not overlap,
        f"marginal 95% intervals {'overlap' if overlap else 'are disjoint'} (no paired test: {missing})",
    )


def assign_ranks(
    scores: Sequence[Score],
    higher_is_better: bool,
    outcomes: Outcomes | None = None,
    split: str = "test",
    comparisons: list[Comparison] | None = None,
) -> list[Score]:
    """Competition ranks over tie groups (connected components of "not distinguishable", `compare_pair`);
    best first. The comparisons made are appended to ``comparisons`` when given.

    Every score must have an interval. Tie groups are ordered by their best point value; within a tie group
    the order shown is by point value, then by trainable parameters (fewer first: between equal estimates,
    the model that is cheaper to run on the robot), the rank equal.
    """
    n = len(scores)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            result = compare_pair(scores[i], scores[j], outcomes, split)
            if comparisons is not None:
                comparisons.append(result)
            if not result.distinguishable:
                parent[find(i)] = find(j)
    groups: dict[int, list[Score]] = {}
    for i, s in enumerate(scores):
        groups.setdefault(find(i), []).append(s)
    sign = -1.0 if higher_is_better else 1.0
    ordered = sorted(groups.values(), key=lambda g: min(sign * s.value for s in g))
    out: list[Score] = []
    for group in ordered:
        rank = len(out) + 1
        # Equal point values: the smaller model first (cheaper on the robot's computer), else the given order.
        for s in sorted(group, key=lambda s: (sign * s.value, _size(s))):
            s.rank = rank
            s.tied_with = sorted(o.run.name for o in group if o is not s)
            out.append(s)
    return out


def _size(score: Score) -> float:
    """A run's trainable parameters (``model/trainable_params``); unknown sorts last."""
    return float(score.run.metrics.get("model/trainable_params", math.inf))


def rank_runs(
    runs: Iterable[StoredRun],
    split: str = "test",
    dataset: str | None = None,
    outcomes: Outcomes | None = None,
) -> Ranking:
    """Sort runs into ranked groups, the separate synthetic/random-weight section, and the excluded.

    ``dataset`` keeps only runs whose dataset fingerprint starts with it. ``outcomes`` gives each run's
    per-unit results for the paired comparisons (`artifact_outcomes(registry)` reads them from the store);
    without it ties fall back to overlapping intervals.
    """
    groups: dict[tuple, list[StoredRun]] = {}
    separate: list[tuple[StoredRun, str]] = []
    excluded: list[tuple[StoredRun, str]] = []
    for run in runs:
        if dataset and not run.dataset_fingerprint.startswith(dataset):
            continue
        if run.status != "FINISHED":
            excluded.append((run, f"run {run.status_text}"))
            continue
        if run.evaluation(split) is None and (run.closed_loop() is None or split != "test"):
            excluded.append(
                (run, f"not evaluated on {split} (run `mobile-vla evaluate {run.run_dir} --split {split}`)")
            )
            continue
        reason = separation_reason(run)
        if reason:
            separate.append((run, reason))
            continue
        groups.setdefault(group_key(run, split), []).append(run)
    ranked = [
        _rank_group(key, members, split, outcomes)
        for key, members in sorted(groups.items(), key=lambda kv: kv[0][0])
    ]
    return Ranking(split=split, groups=ranked, separate=separate, excluded=excluded)


def _rank_group(
    key: tuple, members: list[StoredRun], split: str, outcomes: Outcomes | None = None
) -> RankedGroup:
    dataset, _, split_fp, _ = key
    protocols = {m.tags.get("mobile_vla.closed_loop.protocol") for m in members}
    closed = [score(m, CLOSED_LOOP_KEY, split) for m in members]
    note = ""
    if all(s is not None and s.interval is not None for s in closed) and len(protocols) == 1:
        rank_key, higher, candidates = CLOSED_LOOP_KEY, True, closed
    else:
        rank_key, higher = f"{split}/mae", False
        candidates = [score(m, rank_key, split) for m in members]
        if any(s is not None for s in closed):
            note = (
                "ranked by offline MAE: not every run here has a closed-loop result under the same protocol"
                if len(protocols) == 1 or None in protocols
                else "ranked by offline MAE: the closed-loop results were measured under different protocols"
            )
    placeable = [s for s in candidates if s is not None and s.interval is not None]
    unranked = [
        (m, f"no {rank_key} value" if s is None else f"no interval for {rank_key}")
        for m, s in zip(members, candidates, strict=True)
        if s is None or s.interval is None
    ]
    comparisons: list[Comparison] = []
    scores = assign_ranks(placeable, higher, outcomes, split, comparisons)
    return RankedGroup(
        dataset=dataset,
        provenance="/".join(sorted({m.provenance for m in members})),
        split=split,
        split_fingerprint=split_fp,
        key=rank_key,
        higher_is_better=higher,
        scores=scores,
        unranked=unranked,
        note=note,
        comparisons=comparisons,
    )


def artifact_outcomes(registry: Any) -> Outcomes:
    """Per-unit results of stored runs, for `rank_runs`' paired comparisons, read from the store's artifacts
    (``closed_loop.json``'s per-episode records; ``eval/predictions_{split}.npz``'s per-frame predictions, with
    their episode ids and frame indices) or, failing that, from the run directory."""
    cache: dict[tuple[str, str, str], Mapping[tuple, float] | None] = {}

    def fetch(run: StoredRun, name: str, folder: Path) -> Path | None:
        path = registry.download_artifact(run.run_id, name, folder)
        if path is not None and path.is_file():
            return path
        local = Path(run.run_dir) / Path(name).name if run.run_dir else None
        return local if local is not None and local.is_file() else None

    def load(run: StoredRun, key: str, split: str) -> Mapping[tuple, float] | None:
        slot = (run.run_id, key, split)
        if slot not in cache:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    if key == CLOSED_LOOP_KEY:
                        path = fetch(run, CLOSED_LOOP_FILE, Path(tmp))
                        cache[slot] = closed_loop_outcomes(json.loads(path.read_text())) if path else None
                    else:
                        path = fetch(run, f"eval/predictions_{split}.npz", Path(tmp))
                        cache[slot] = offline_outcomes(path) if path else None
                except (OSError, ValueError, KeyError):
                    cache[slot] = None
        return cache[slot]

    return load


def closed_loop_outcomes(result: Mapping[str, Any]) -> dict[tuple, float] | None:
    """``{(layout seed, scenario): 1.0 | 0.0}`` from `evaluate_closed_loop`'s per-episode ``records``."""
    records = result.get("records")
    if not records:
        return None
    out = {(int(r["seed"]), str(r["scenario"])): float(bool(r["success"])) for r in records}
    return out if len(out) == len(records) else None


def offline_outcomes(npz: Path) -> dict[tuple, float] | None:
    """``{(episode_id, frame_index): mean |prediction - target| over the axes}`` from ``predictions_*.npz``."""
    with np.load(npz) as data:
        if "episode_ids" not in data or "frame_indices" not in data:
            return None
        errors = np.abs(data["predictions"] - data["targets"]).mean(axis=1)  # (N,)
        keys = list(zip(data["episode_ids"].tolist(), data["frame_indices"].tolist(), strict=True))
    out = {(str(e), int(f)): float(v) for (e, f), v in zip(keys, errors, strict=True)}
    return out if len(out) == len(keys) else None
