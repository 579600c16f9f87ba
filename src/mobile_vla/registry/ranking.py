"""Honest ranking: who is better, only where the numbers can say so.

The seed ranked dummy-data results beside real ones and ordered cases by point estimates from 12 test
frames. The rules here:

1. **Like with like.** Runs are ranked only against runs evaluated on the same episodes: the same training
   dataset fingerprint, the same split, the same episode ids in that split (and, when ``evaluate`` recorded
   it, the same content hash of the evaluated episodes). Each such set is a *group*, ranked on its own.
2. **No dummies among the real ones.** Runs on synthetic data (provenance ``synthetic``, or ``mixed``/unknown
   provenance that may include synthetic episodes) or with a random-weight backbone (``pretrained=False``)
   go to a separate, labelled section. They are listed with their numbers, never ranked.
3. **The key.** Closed-loop success rate (higher is better) when every run of the group has one, measured
   under the same protocol (seed, episodes, scenarios); otherwise offline test MAE (lower is better). Closed
   loop is preferred because it measures what the robot needs (reaching the bottle), which offline MAE on a
   few frames only approximates.
4. **Ties.** Every value carries its ``n`` and 95% interval. Two runs whose intervals overlap are not ordered:
   runs are joined into tie groups (connected components of "intervals overlap"), so any two overlapping runs
   always share a rank. Ranks are competition-style: a tie group of two at the top is ``1, 1``, then ``3``.
   A run without an interval for the key cannot be placed and is listed as unranked with that reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mobile_vla.evaluation.intervals import intervals_overlap
from mobile_vla.registry.record import StoredRun

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
    return Score(
        run=run,
        key=key,
        value=result["metrics"][metric],
        interval=(float(interval[0]), float(interval[1])) if interval else None,
        n=result["n"],
    )


def assign_ranks(scores: Sequence[Score], higher_is_better: bool) -> list[Score]:
    """Competition ranks over tie groups (connected components of overlapping intervals); best first.

    Every score must have an interval. Within a tie group the order shown is by point value, the rank equal.
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
            if intervals_overlap(scores[i].interval, scores[j].interval):
                parent[find(i)] = find(j)
    groups: dict[int, list[Score]] = {}
    for i, s in enumerate(scores):
        groups.setdefault(find(i), []).append(s)
    sign = -1.0 if higher_is_better else 1.0
    # Tie groups' interval unions are disjoint, so ordering them by their best end is unambiguous.
    ordered = sorted(
        groups.values(),
        key=lambda g: min(sign * (s.interval[1] if higher_is_better else s.interval[0]) for s in g),
    )
    out: list[Score] = []
    for group in ordered:
        rank = len(out) + 1
        for s in sorted(group, key=lambda s: sign * s.value):
            s.rank = rank
            s.tied_with = sorted(o.run.name for o in group if o is not s)
            out.append(s)
    return out


def rank_runs(runs: Iterable[StoredRun], split: str = "test", dataset: str | None = None) -> Ranking:
    """Sort runs into ranked groups, the separate synthetic/random-weight section, and the excluded.

    ``dataset`` keeps only runs whose dataset fingerprint starts with it.
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
        _rank_group(key, members, split) for key, members in sorted(groups.items(), key=lambda kv: kv[0][0])
    ]
    return Ranking(split=split, groups=ranked, separate=separate, excluded=excluded)


def _rank_group(key: tuple, members: list[StoredRun], split: str) -> RankedGroup:
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
    return RankedGroup(
        dataset=dataset,
        provenance="/".join(sorted({m.provenance for m in members})),
        split=split,
        split_fingerprint=split_fp,
        key=rank_key,
        higher_is_better=higher,
        scores=assign_ranks(placeable, higher),
        unranked=unranked,
        note=note,
    )
