"""Confidence intervals for rates (pure Python), and the overlap test used when ranking runs.

Closed-loop success rates come from few episodes (tens, not thousands), where the textbook normal
interval ``p +- z * sqrt(p(1-p)/n)`` misbehaves: at 0/20 or 20/20 successes it has zero width, and it can leave
[0, 1]. The Wilson score interval stays inside [0, 1] and keeps near-nominal coverage at small n, so it is the
interval reported with every rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the rate ``successes / n``, as proportions in [0, 1] (not percent).

    Agrees with ``scipy.stats.binomtest(successes, n).proportion_ci(method="wilson")``; e.g. 81/263 ->
    (0.2553, 0.3662) (Newcombe 1998, Table I).

    Raises:
        ValueError: ``n < 1``, ``successes`` outside ``0..n``, a non-integer count, or ``confidence`` outside
            (0, 1).
    """
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not _is_integral(value):
            raise ValueError(f"{name} must be an integer count, got {value!r}")
    successes, n = int(successes), int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1 (a rate over no trials has no interval), got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..n={n}, got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the exact bound is 0 or 1; the formula gets there only up to rounding.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def intervals_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Do the closed intervals ``a = (low, high)`` and ``b`` share at least one point? (Touching counts.)

    Used to say "not distinguishable at this n" when two runs' intervals overlap. Accepts tuples or the
    ``[low, high]`` lists that JSON gives back.
    """
    a_low, a_high = _interval(a, "a")
    b_low, b_high = _interval(b, "b")
    return a_low <= b_high and b_low <= a_high


def _interval(value: Sequence[float], name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"interval {name} must be a pair (low, high) of numbers, got {value!r}") from exc
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"interval {name} must have low <= high (and no NaN), got {value!r}")
    return low, high


def _is_integral(value: object) -> bool:
    try:
        return int(value) == value  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return False
