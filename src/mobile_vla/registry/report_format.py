"""How the report writes numbers: metric values (percent or not, by key), a value with its 95% interval and n,
dates, axis names and run labels. Pure functions of a run's stored values.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from mobile_vla.metrics import DEFAULT_THRESHOLDS, threshold_label
from mobile_vla.registry.record import StoredRun

THRESHOLDS = tuple(threshold_label(t) for t in DEFAULT_THRESHOLDS)  # the keys' spelling, from the metrics
PERCENT_PREFIXES = ("accuracy_", "tracking_accuracy", "direction_accuracy_", "magnitude_order_accuracy")
RATE_KEYS = ("success_rate", "collision_rate")  # proportions in [0, 1], shown as percent


# --- number formatting -------------------------------------------------------------------------------------
def _is_percent(key: str) -> bool:
    return key.startswith(PERCENT_PREFIXES) or any(key.endswith(f"_{t}") for t in THRESHOLDS)


def fmt(key: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key in RATE_KEYS:
        return f"{100 * value:.1f}%"
    if _is_percent(key):
        return f"{value:.2f}%"
    return f"{value:.3f}"


def fmt_ci(result: dict[str, Any] | None, key: str, with_n: bool = False) -> str:
    """``value [low, high]`` (and ``n=``) of one metric of an ``{"n", "metrics", "intervals"}`` result."""
    if not result or key not in result["metrics"]:
        return "—"
    text = fmt(key, result["metrics"][key])
    interval = result["intervals"].get(key)
    text += f" [{fmt(key, interval[0])}, {fmt(key, interval[1])}]" if interval else " (no interval)"
    if with_n and result.get("n") is not None:
        text += f", n={result['n']}"
    return text


def _date(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M") if ms else "—"


def _axes(run: StoredRun) -> list[str]:
    text = run.tag("action_dims", "")
    return [a for a in text.split(",") if a] or ["linear_x", "linear_y"]


def _run_label(run: StoredRun) -> str:
    return f"{run.case} `{run.name}`"
