"""Paired comparisons of two runs measured on the same units (pure numpy): is one better, or can't we tell?

Two runs evaluated on the same test episodes (or closed-loop seeds) are compared unit by unit, which is far
more sensitive than asking whether their separate (marginal) 95% intervals overlap, and honest about the
dependence between frames of one episode:

- offline (per-frame errors on the same frames of the same episodes): a **paired cluster bootstrap** of the
  difference of the mean error: whole episodes are resampled, the same ones for both runs;
- closed loop (success/failure on the same seeds): the **exact McNemar test**, which looks only at the
  seeds where the two runs disagree (a binomial test of those discordant pairs against 1/2).

Each returns whether the difference is distinguishable from zero at ``alpha`` (0.05).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobile_vla.metrics import group_codes


def paired_bootstrap_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)`` over paired rows (row i of a and b: one unit).

    With ``groups`` (one label per row, e.g. the episode id) whole groups are resampled (cluster bootstrap).
    Returns ``{"difference", "interval": [low, high], "distinguishable" (0 outside the interval), "n",
    "n_groups", "method"}``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must be non-empty and paired (same length), got {a.shape} and {b.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    diff = a - b  # (N,)
    codes = np.arange(diff.size) if groups is None else group_codes(groups, diff.size)
    n_groups = int(codes.max()) + 1
    sums = np.bincount(codes, weights=diff, minlength=n_groups)  # (G,) summed difference per group
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)  # (G,) rows per group
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))  # (B, G)
    boot = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)  # (B,)
    low, high = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    return {
        "difference": float(diff.mean()),
        "interval": [low, high],
        "distinguishable": bool(low > 0 or high < 0),
        "n": int(diff.size),
        "n_groups": n_groups,
        "method": "paired bootstrap" + (" by episode" if groups is not None else ""),
    }


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool], alpha: float = 0.05) -> dict[str, Any]:
    """Exact McNemar test of two runs' paired outcomes (``a[i]``, ``b[i]``: success on unit i).

    Returns ``{"n", "a_only", "b_only", "difference" (rate a - rate b), "p_value" (two-sided),
    "distinguishable" (p < alpha), "method"}``. With no discordant pair p is 1.
    """
    a = np.asarray(a, dtype=bool).reshape(-1)
    b = np.asarray(b, dtype=bool).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must be non-empty and paired (same length), got {a.shape} and {b.shape}")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(b & ~a))
    discordant = a_only + b_only
    k = min(a_only, b_only)
    tail = sum(math.comb(discordant, i) for i in range(k + 1)) / 2.0**discordant if discordant else 1.0
    p = min(1.0, 2.0 * tail)
    return {
        "n": int(a.size),
        "a_only": a_only,
        "b_only": b_only,
        "difference": float(a.mean() - b.mean()),
        "p_value": float(p),
        "distinguishable": bool(p < alpha),
        "method": "exact McNemar",
    }
