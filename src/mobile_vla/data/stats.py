"""Data diversity analysis: what a dataset covers, before anyone trains on it."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobile_vla.data.action_space import KEY_CLASSES
from mobile_vla.data.episodes import ACTION_AXES, Episode

DOMINANT_CLASS_SHARE = 0.6
"""`data stats` warns when one key class is more than this share of the frames (overall or in a scenario):
the lab's FORWARD-heavy data (~75%) is what made its regression heads collapse to "forward"."""


def class_balance(episodes: Sequence[Episode], threshold: float = DOMINANT_CLASS_SHARE) -> dict[str, Any]:
    """Key-class counts and shares of the frames, overall and per scenario, and a warning per group where
    one class exceeds `threshold` of the frames. A frame's class is `Episode.action_classes` (the file's
    stored class, else derived from the velocities)."""

    def summary(counts: Counter[str]) -> dict[str, Any]:
        total = sum(counts.values())
        ordered = [c for c in KEY_CLASSES if counts.get(c)]
        return {
            "frames": total,
            "counts": {c: int(counts[c]) for c in ordered},
            "shares": {c: counts[c] / total for c in ordered} if total else {},
        }

    overall: Counter[str] = Counter()
    per_scenario: dict[str, Counter[str]] = defaultdict(Counter)
    for ep in episodes:
        name = ep.scenario.name if ep.scenario else "unknown"
        classes = Counter(KEY_CLASSES[int(c)] for c in ep.action_classes)
        overall.update(classes)
        per_scenario[name].update(classes)
    out = {
        "threshold": threshold,
        "overall": summary(overall),
        "per_scenario": {name: summary(c) for name, c in sorted(per_scenario.items())},
    }
    warnings = []
    for where, row in [("overall", out["overall"])] + [
        (f"in scenario {name}", row) for name, row in out["per_scenario"].items()
    ]:
        for cls, share in row["shares"].items():
            if share > threshold:
                warnings.append(
                    f"warning: {cls} is {share:.1%} of the frames {where} ({row['counts'][cls]} of "
                    f"{row['frames']}), over {threshold:.0%}"
                )
    out["warnings"] = warnings
    return out


def dataset_stats(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Episodes and frames per scenario, pattern (`core`/`variant`) and distance; the action distribution per
    axis; how many distinct action sequences there are; and near-duplicate episodes (same scenario and the
    same key sequence, which add frames but no diversity)."""
    per_scenario: dict[str, dict[str, int]] = defaultdict(lambda: {"episodes": 0, "frames": 0})
    patterns: Counter[str] = Counter()
    distances: Counter[str] = Counter()
    sequences: dict[tuple, list[str]] = defaultdict(list)
    all_actions = []
    for ep in episodes:
        name = ep.scenario.name if ep.scenario else "unknown"
        per_scenario[name]["episodes"] += 1
        per_scenario[name]["frames"] += ep.num_frames
        patterns[(ep.scenario.pattern if ep.scenario else None) or "unspecified"] += 1
        distances[(ep.scenario.distance if ep.scenario else None) or "unspecified"] += 1
        key = tuple(np.round(ep.actions, 2).flatten().tolist())
        sequences[(name, key)].append(ep.episode_id)
        all_actions.append(ep.actions)
    actions = np.concatenate(all_actions) if all_actions else np.zeros((0, 3), np.float32)
    axes = {}
    for i, axis in enumerate(ACTION_AXES):
        col = actions[:, i]
        values, counts = np.unique(np.round(col, 3), return_counts=True)
        axes[axis] = {
            "n": int(col.size),
            "mean": float(col.mean()) if col.size else 0.0,
            "std": float(col.std()) if col.size else 0.0,
            "min": float(col.min()) if col.size else 0.0,
            "max": float(col.max()) if col.size else 0.0,
            "values": {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)}
            if len(values) <= 12
            else None,
        }
    duplicates = [sorted(ids) for ids in sequences.values() if len(ids) > 1]
    return {
        "episodes": len(episodes),
        "frames": int(sum(ep.num_frames for ep in episodes)),
        "per_scenario": dict(sorted(per_scenario.items())),
        "per_pattern": dict(sorted(patterns.items())),
        "per_distance": dict(sorted(distances.items())),
        "actions": axes,
        "distinct_action_sequences": len({key for _, key in sequences}),
        "near_duplicate_groups": duplicates,
        "class_balance": class_balance(episodes),
    }


def format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"{stats['episodes']} episodes, {stats['frames']} frames",
        "",
        "scenario            episodes  frames",
    ]
    for name, row in stats["per_scenario"].items():
        lines.append(f"{name:<20}{row['episodes']:>8}{row['frames']:>8}")
    lines.append("")
    lines.append("pattern:  " + ", ".join(f"{k}={v}" for k, v in stats["per_pattern"].items()))
    lines.append("distance: " + ", ".join(f"{k}={v}" for k, v in stats["per_distance"].items()))
    lines.append("")
    lines.append("axis          n      mean     std      min      max   values")
    for axis, row in stats["actions"].items():
        values = ", ".join(f"{k}:{v}" for k, v in (row["values"] or {}).items()) or "(continuous)"
        lines.append(
            f"{axis:<10}{row['n']:>6}{row['mean']:>9.3f}{row['std']:>8.3f}{row['min']:>9.3f}{row['max']:>9.3f}   {values}"
        )
    lines.append("")
    lines.append(
        f"distinct action sequences: {stats['distinct_action_sequences']} (of {stats['episodes']} episodes)"
    )
    dups = stats["near_duplicate_groups"]
    lines.append(f"near-duplicate groups (same scenario, same actions): {len(dups)}")
    for group in dups[:5]:
        lines.append("  " + ", ".join(group))
    balance = stats.get("class_balance")
    if balance:
        lines += ["", format_class_balance(balance)]
    return "\n".join(lines)


def format_class_balance(balance: dict[str, Any]) -> str:
    """The key-class table (share of frames, with counts) overall and per scenario, then the warnings."""
    rows = [("overall", balance["overall"])] + list(balance["per_scenario"].items())
    classes = [c for c in KEY_CLASSES if any(c in row["counts"] for _, row in rows)]
    lines = ["key-class balance (share of frames, count in brackets):"]
    lines.append(f"  {'':<28}{'frames':>7}" + "".join(f"{c:>20}" for c in classes))
    for name, row in rows:
        cells = "".join(
            f"{row['shares'][c]:>10.1%} ({row['counts'][c]:>5})" if c in row["counts"] else f"{'-':>20}"
            for c in classes
        )
        lines.append(f"  {name:<28}{row['frames']:>7}{cells}")
    lines += balance["warnings"] or [f"no class is over {balance['threshold']:.0%} of the frames"]
    if balance["warnings"]:
        lines.append(
            "  (a head can score well by always answering the dominant class: consider `--sampling balanced "
            "--class-balance` or `--class-weights inverse_frequency` with a key-class head)"
        )
    return "\n".join(lines)


def plot_stats(episodes: Sequence[Episode], stats: dict[str, Any], out: str | Path) -> Path:
    """A PNG: episodes per scenario and a histogram of each action axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actions = np.concatenate([ep.actions for ep in episodes]) if episodes else np.zeros((0, 3))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    names = list(stats["per_scenario"])
    axes[0].barh(names, [stats["per_scenario"][n]["episodes"] for n in names], color="tab:blue")
    axes[0].set_title(f"episodes per scenario (n={stats['episodes']})")
    for i, axis in enumerate(ACTION_AXES):
        axes[i + 1].hist(actions[:, i], bins=23, range=(-1.5, 1.5), color="tab:orange")
        axes[i + 1].set_title(f"{axis} (n={len(actions)} frames)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
