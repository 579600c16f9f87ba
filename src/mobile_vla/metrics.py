"""The standard offline metrics every mobile-vla model is compared by (pure numpy).

Given predictions ``P`` and targets ``Y`` of shape ``[N, D]`` (one column per action axis, e.g.
``linear_x, linear_y``), :func:`compute_metrics` returns, in this order:

- ``n``: the number of samples N (an ``int``).
- ``mae``: mean of ``|P - Y|`` over all N*D elements.
- ``accuracy_{t}`` for each threshold t: percent of samples with **every** axis ``|P - Y| < t`` (strictly).
- ``{axis}_{t}``: percent of samples with that axis ``|P - Y| < t``.
- ``{axis}_r2``: scikit-learn's ``r2_score`` definition per axis (see below).
- ``{axis}_correlation``: Pearson correlation per axis; undefined (a constant column) -> 0.0.
- ``tracking_accuracy``: percent of samples with every axis ``|P - Y| < 0.5``.
- ``direction_accuracy_{axis}``: percent of samples with ``sign(P) == sign(Y)``. ``sign(0) == 0``, so a zero
  target (a stop) only counts as right when the prediction is exactly zero too: a model that outputs 0.01 for
  "stop" is wrong about the direction, as in the seed.
- ``direction_accuracy_deadzone_{axis}``: the same with a dead zone: a value with ``|v| < 0.1``
  (``DIRECTION_DEAD_ZONE``) counts as 0 (a stop) on both sides, so a prediction of 0.01 for a stop is right and
  0.05 for a move is a stop. The seed's exact-zero definition above is kept under its own name; on the robot's
  teleop data (+-1.15 or 0) it mostly measures how often the head outputs an exact 0.
- ``magnitude_order_accuracy``: percent of samples with ``(P0 > P1) == (Y0 > Y1)`` on the first two axes
  (signed values, as in the seed). With a single axis there is no order to get right, so the key is **left
  out** rather than reported as a number that would mean nothing (and could be ranked).

``{t}`` is ``str(float(t))`` (``0.3``, ``0.2``, ``0.15``). Percentages are 0..100. All values are plain Python
``float``/``int`` so the dict is JSON-serialisable as is.

R² follows scikit-learn's ``r2_score(..., force_finite=True)``: ``1 - SS_res / SS_tot``, and when the target
column is constant (``SS_tot == 0``) it is 1.0 for perfect predictions and 0.0 otherwise. Two deliberate
departures, both in that constant-target case:

- "Constant" is decided by exact equality of the targets, not by ``SS_tot`` computed in floating point.
  scikit-learn computes ``SS_tot`` around a float mean that is often not exactly representable, so for 18
  targets all equal to 1.15 (the robot's teleop magnitude) it returns about -2e27 instead of its documented
  0.0. We return 0.0 (or 1.0 for a perfect prediction).
- With N == 1 scikit-learn warns and returns NaN; a single target is constant, so we apply the same rule.

On non-constant targets the result agrees with ``sklearn.metrics.r2_score`` to floating-point precision
(tests check 1e-9). Pearson uses the same exact-equality test for "constant" as ``scipy.stats.pearsonr``.

Every metric is computed by one batched function, so :func:`bootstrap_ci` resamples exactly the definitions
above. The percentile bootstrap resamples with replacement either whole samples (rows) or, given ``groups``
(one label per row, e.g. the episode id), whole groups: a **cluster bootstrap**. Frames of one episode are
strongly correlated (18 frames of one drive), so an interval over 180 frames of 10 episodes rests on 10
independent units, not 180; resampling frames would make it far too narrow. Every evaluation of episodes
passes the episode ids. Like any percentile interval it is not forced to contain the point estimate (a biased
statistic such as R² on a small N can fall outside).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_AXES: tuple[str, ...] = ("linear_x", "linear_y")
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.3, 0.2, 0.15)
TRACKING_THRESHOLD = 0.5  # "the robot follows the command": every axis within 0.5 (seed definition)
DIRECTION_DEAD_ZONE = 0.1  # |v| below this is a stop for direction_accuracy_deadzone_{axis}

# Bootstrap resamples are evaluated in chunks of about this many row counts (B_chunk * N), which keeps the
# temporaries near 10 MB whatever N is.
_CHUNK_ELEMENTS = 1_000_000


def metric_keys(
    axis_names: Sequence[str] = DEFAULT_AXES, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[str]:
    """The keys :func:`compute_metrics` returns for these axes and thresholds, in order (``n`` first)."""
    axes, ts = _check_axes_and_thresholds(axis_names, thresholds)
    keys = ["n", "mae"]
    keys += [f"accuracy_{threshold_label(t)}" for t in ts]
    keys += [f"{axis}_{threshold_label(t)}" for axis in axes for t in ts]
    keys += [f"{axis}_r2" for axis in axes]
    keys += [f"{axis}_correlation" for axis in axes]
    keys += ["tracking_accuracy"]
    keys += [f"direction_accuracy_{axis}" for axis in axes]
    keys += [f"direction_accuracy_deadzone_{axis}" for axis in axes]
    if len(axes) >= 2:
        keys += ["magnitude_order_accuracy"]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"axis_names {list(axes)} make metric keys collide: {duplicates}; rename the axes")
    return keys


def compute_metrics(
    predictions: np.ndarray | Sequence,
    targets: np.ndarray | Sequence,
    axis_names: Sequence[str] = DEFAULT_AXES,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, float | int]:
    """All standard metrics of ``predictions`` against ``targets`` (see the module docstring for definitions).

    Args:
        predictions: ``[N, D]`` array-like of predicted actions. A 1-D ``[N]`` array is accepted only when
            ``axis_names`` has one name (it is read as ``[N, 1]``); with several axes a 1-D array is ambiguous
            (one sample? one axis?) and raises.
        targets: ``[N, D]`` array-like of true actions, same shape as ``predictions``.
        axis_names: one name per column, used in the keys.
        thresholds: accuracy thresholds (> 0), each written into its keys as ``str(float(t))``.

    Raises:
        ValueError: shape mismatch, empty input, non-finite values, ``len(axis_names) != D``, bad thresholds
            or colliding key names; the message says which.
    """
    keys = metric_keys(axis_names, thresholds)
    axes, ts = _check_axes_and_thresholds(axis_names, thresholds)
    pred, targ = _check_arrays(predictions, targets, axes)
    batched = _resampled_metrics(pred, targ, axes, ts, None)  # every value (1,)
    out: dict[str, float | int] = {"n": int(pred.shape[0])}
    for key in keys[1:]:
        out[key] = float(batched[key][0])
    return out


def bootstrap_distribution(
    predictions: np.ndarray | Sequence,
    targets: np.ndarray | Sequence,
    axis_names: Sequence[str] = DEFAULT_AXES,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every metric (but ``n``) on ``n_boot`` resamples drawn with replacement: ``{key: (n_boot,)}``.

    Without ``groups`` the rows are resampled. With ``groups`` (one label per row, e.g. its episode id) whole
    groups are: each resample draws G of the G groups with replacement and takes every row of each drawn
    group (cluster bootstrap), so its row count varies. The same seed gives the same resamples for every key,
    so intervals of different metrics are paired.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    keys = metric_keys(axis_names, thresholds)[1:]
    axes, ts = _check_axes_and_thresholds(axis_names, thresholds)
    pred, targ = _check_arrays(predictions, targets, axes)
    n = pred.shape[0]
    codes = None if groups is None else group_codes(groups, n)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if codes is None:
            idx = rng.integers(0, n, size=(b, n))  # (b, N) row indices of each resample
            counts = _row_counts(idx, n)
        else:
            n_groups = int(codes.max()) + 1
            drawn = rng.integers(0, n_groups, size=(b, n_groups))  # (b, G) group indices of each resample
            counts = _row_counts(drawn, n_groups)[:, codes]  # (b, N): a row counts as often as its group
        batched = _resampled_metrics(pred, targ, axes, ts, counts)
        for k in keys:
            parts[k].append(batched[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


def group_codes(groups: Sequence | np.ndarray, n: int) -> np.ndarray:
    """``(N,)`` int codes 0..G-1 of the group labels of N rows (raises when the count differs from N)."""
    labels = np.asarray(groups)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"groups must hold one label per row ({n}), got shape {labels.shape}")
    _, codes = np.unique(labels, return_inverse=True)
    return codes.reshape(-1)


def _row_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each resample: ``idx`` ``(B, k)`` -> ``(B, n)`` float."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_ci(
    predictions: np.ndarray | Sequence,
    targets: np.ndarray | Sequence,
    metric_key: str,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    axis_names: Sequence[str] = DEFAULT_AXES,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    groups: Sequence | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of one metric, resampling rows (or ``groups``, see
    :func:`bootstrap_distribution`) with replacement.

    ``metric_key`` is any key of :func:`compute_metrics` but ``n``. Same seed, same interval, and the same
    interval :func:`metrics_with_intervals` reports for that key.
    """
    valid = metric_keys(axis_names, thresholds)[1:]
    if metric_key not in valid:
        raise ValueError(f"unknown metric_key {metric_key!r}; one of {valid}")
    _check_alpha(alpha)
    dist = bootstrap_distribution(
        predictions, targets, axis_names, thresholds, n_boot=n_boot, seed=seed, groups=groups
    )
    return _percentile_interval(dist[metric_key], alpha)


def metrics_with_intervals(
    predictions: np.ndarray | Sequence,
    targets: np.ndarray | Sequence,
    axis_names: Sequence[str] = DEFAULT_AXES,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence | np.ndarray | None = None,
) -> dict:
    """The metrics with a percentile bootstrap interval for each, as evaluate, the registry and the demo report.

    Returns ``{"n": N, "n_frames": N, "n_episodes": G (with groups), "metrics": compute_metrics(...),
    "intervals": {key: [low, high]} for every key but n, "bootstrap": {"n_boot", "seed", "confidence",
    "method": "percentile", "resample": "episode" | "frame"}}``, all JSON-serialisable. Pass the episode id
    of every row as ``groups`` (cluster bootstrap; see the module docstring).
    """
    _check_alpha(alpha)
    metrics = compute_metrics(predictions, targets, axis_names, thresholds)
    dist = bootstrap_distribution(
        predictions, targets, axis_names, thresholds, n_boot=n_boot, seed=seed, groups=groups
    )
    intervals = {k: list(_percentile_interval(dist[k], alpha)) for k in metrics if k != "n"}
    out: dict = {"n": metrics["n"], "n_frames": metrics["n"]}
    if groups is not None:
        out["n_episodes"] = int(len(np.unique(np.asarray(groups))))
    out.update(
        metrics=metrics,
        intervals=intervals,
        bootstrap={
            "n_boot": int(n_boot),
            "seed": int(seed),
            "confidence": 1 - alpha,
            "method": "percentile",
            "resample": "frame" if groups is None else "episode",
        },
    )
    return out


def _resampled_metrics(
    pred: np.ndarray,
    targ: np.ndarray,
    axes: tuple[str, ...],
    thresholds: tuple[float, ...],
    counts: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Every metric (but ``n``) on B resamples of the rows of ``pred``, ``targ`` ``(N, D)`` -> ``{key: (B,)}``.

    ``counts`` ``(B, N)`` says how often each row is in each resample (a resample's size is its row sum, which
    varies under the cluster bootstrap); ``None`` means the data itself (B = 1). This is the single definition
    behind both the point estimates and the bootstrap.

    Why it is fast: every metric is a sum over rows of some per-row quantity (an indicator for the accuracies,
    shifted first and second moments for R² and Pearson), so all B resamples are one product of their row
    counts ``(B, N)`` with the per-row table ``(N, K)`` instead of B passes over gathered ``(N, D)`` copies.
    """
    n, d = pred.shape
    if counts is None:
        counts = np.ones((1, n))  # (1, N)
    size = counts.sum(axis=1, keepdims=True)  # (B, 1) rows in each resample

    err = np.abs(pred - targ)  # (N, D)
    columns: dict[str, np.ndarray] = {"mae": err.mean(axis=1)}  # per-row values whose resample mean we want
    for t in thresholds:
        within = err < t  # (N, D), strictly less than: an error of exactly t misses
        columns[f"accuracy_{threshold_label(t)}"] = within.all(axis=1)
        for j, axis in enumerate(axes):
            columns[f"{axis}_{threshold_label(t)}"] = within[:, j]
    columns["tracking_accuracy"] = (err < TRACKING_THRESHOLD).all(axis=1)
    # sign(0) == 0: a zero target (a stop) counts as right only for an exactly zero prediction.
    same_sign = np.sign(pred) == np.sign(targ)  # (N, D)
    for j, axis in enumerate(axes):
        columns[f"direction_accuracy_{axis}"] = same_sign[:, j]
    # Dead zone: |v| < DIRECTION_DEAD_ZONE is a stop on both sides.
    same_zone = _dead_zone_sign(pred) == _dead_zone_sign(targ)  # (N, D)
    for j, axis in enumerate(axes):
        columns[f"direction_accuracy_deadzone_{axis}"] = same_zone[:, j]
    if d >= 2:
        columns["magnitude_order_accuracy"] = (pred[:, 0] > pred[:, 1]) == (targ[:, 0] > targ[:, 1])
    mean_keys = list(columns)

    # Moments shifted by the full-data means: the resample's centred sums are then differences of small
    # numbers, which keeps them accurate (a raw sum(y^2) - sum(y)^2 / N would cancel catastrophically).
    targ_c = targ - targ.mean(axis=0)  # (N, D)
    pred_c = pred - pred.mean(axis=0)  # (N, D)
    moments = [targ_c, targ_c**2, pred_c, pred_c**2, pred_c * targ_c, (targ - pred) ** 2]  # 6 x (N, D)

    table = np.column_stack([np.asarray(columns[k], dtype=np.float64) for k in mean_keys] + moments)  # (N, K)
    sums = counts @ table  # (B, K)
    out = {k: sums[:, i] * 100.0 / size[:, 0] for i, k in enumerate(mean_keys) if k != "mae"}
    out["mae"] = sums[:, 0] / size[:, 0]
    m = len(mean_keys)
    s_t, s_tt, s_p, s_pp, s_pt, ss_res = (
        sums[:, m + i * d : m + (i + 1) * d] for i in range(6)
    )  # (B, D) each
    ss_tot = np.maximum(s_tt - s_t**2 / size, 0.0)  # (B, D)
    ss_pred = np.maximum(s_pp - s_p**2 / size, 0.0)
    cov = s_pt - s_p * s_t / size

    # "Constant" is exact equality (see the module docstring), not a float sum of squares that happens to be 0.
    targ_const = _constant_columns(targ, counts)  # (B, D)
    pred_const = _constant_columns(pred, counts)

    # R² (scikit-learn, force_finite): 1 if SS_res == 0; else 0 if the targets are constant; else 1 - res/tot.
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_res == 0, 1.0, np.where(targ_const | (ss_tot == 0), 0.0, 1.0 - ss_res / ss_tot))
        # Pearson: undefined when either side is constant (scipy's exact test) -> 0.0, as the seed did.
        norm = np.sqrt(ss_pred) * np.sqrt(ss_tot)  # two roots rather than one avoid overflow
        corr = np.where(targ_const | pred_const | (norm == 0), 0.0, np.clip(cov / norm, -1.0, 1.0))
    for j, axis in enumerate(axes):
        out[f"{axis}_r2"] = r2[:, j]
        out[f"{axis}_correlation"] = corr[:, j]
    return out


def _constant_columns(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(B, D)`` bool: is column j of resample b constant? ``values`` ``(N, D)``, ``counts`` ``(B, N)``."""
    full = values.max(axis=0) == values.min(axis=0)  # (D,)
    out = np.empty((counts.shape[0], values.shape[1]), dtype=bool)
    drawn = counts > 0  # (B, N)
    for j in range(values.shape[1]):
        if full[j]:
            out[:, j] = True  # a resample of a constant column is constant; skip the gather
            continue
        column = values[:, j][None, :]  # (1, N)
        high = np.where(drawn, column, -np.inf).max(axis=1)
        low = np.where(drawn, column, np.inf).min(axis=1)
        out[:, j] = high == low
    return out


def _dead_zone_sign(values: np.ndarray) -> np.ndarray:
    """sign(v), with |v| < DIRECTION_DEAD_ZONE taken as 0."""
    return np.where(np.abs(values) < DIRECTION_DEAD_ZONE, 0.0, np.sign(values))


def threshold_label(t: float) -> str:
    """How a threshold is written into a metric key: ``str(float(t))`` (``0.3`` -> ``"0.3"``)."""
    return str(float(t))


def _check_axes_and_thresholds(
    axis_names: Sequence[str], thresholds: Sequence[float]
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if isinstance(axis_names, str):
        raise ValueError(f"axis_names must be a sequence of names, got the string {axis_names!r}")
    axes = tuple(axis_names)
    if not axes or not all(isinstance(a, str) and a for a in axes):
        raise ValueError(f"axis_names must be non-empty strings, got {list(axes)!r}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis_names must be unique, got {list(axes)!r}")
    try:
        ts = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"thresholds must be numbers, got {thresholds!r}") from exc
    bad = [t for t in ts if not (np.isfinite(t) and t > 0)]
    if bad:
        raise ValueError(f"thresholds must be finite and > 0, got {bad} in {list(ts)}")
    if len({threshold_label(t) for t in ts}) != len(ts):
        raise ValueError(f"thresholds must be unique, got {list(ts)}")
    return axes, ts


def _check_arrays(predictions, targets, axes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to float64 ``[N, D]`` arrays; every error says which input and what was wrong."""
    arrays = []
    for name, value in (("predictions", predictions), ("targets", targets)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a numeric array of shape [N, D]: {exc}") from exc
        if arr.ndim == 1 and len(axes) == 1:
            arr = arr[:, None]  # [N] -> [N, 1] for a single axis
        if arr.ndim != 2:
            hint = (
                f" (a 1-D array is only accepted for a single axis; {len(axes)} axis_names were given)"
                if arr.ndim == 1
                else ""
            )
            raise ValueError(f"{name} must have shape [N, D], got shape {arr.shape}{hint}")
        arrays.append(arr)
    pred, targ = arrays
    if pred.shape != targ.shape:
        raise ValueError(f"shape mismatch: predictions {pred.shape} vs targets {targ.shape}")
    if pred.shape[0] == 0:
        raise ValueError(f"empty input: predictions and targets have no samples (shape {pred.shape})")
    if pred.shape[1] != len(axes):
        raise ValueError(
            f"predictions and targets have D={pred.shape[1]} columns but {len(axes)} axis_names were given "
            f"({list(axes)}); pass one name per column"
        )
    for name, arr in (("predictions", pred), ("targets", targ)):
        bad = ~np.isfinite(arr)
        if bad.any():
            rows, cols = np.nonzero(bad)
            raise ValueError(
                f"{name} contain {int(bad.sum())} non-finite value(s) (NaN/inf), first at row {rows[0]}, "
                f"axis {axes[cols[0]]!r}: {arr[rows[0], cols[0]]}"
            )
    return pred, targ


def _check_alpha(alpha: float) -> None:
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# --- key-class metrics ------------------------------------------------------------------------------------
def key_class_metrics(predicted: np.ndarray, target: np.ndarray, names: Sequence[str]) -> dict:
    """Classification metrics over key classes: ``predicted`` and ``target`` are ``(N,)`` indices into
    ``names``.

    Returns ``{"classes", "n", "accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"}``:

    - ``accuracy``: percent of frames whose predicted class is the recorded one.
    - ``per_class[name]``: ``n`` (recorded frames of the class), ``accuracy`` (percent of them predicted as
      the class: its recall; None with n == 0), ``precision`` (percent of the frames predicted as the class
      that are it; None when never predicted), ``f1`` (0..1; 0 when precision + recall is 0), ``predicted``
      (frames predicted as the class).
    - ``balanced_accuracy``: mean per-class accuracy over the classes that occur in ``target``.
    - ``macro_f1``: mean F1 over the classes that occur in ``target`` or ``predicted`` (scikit-learn's
      ``f1_score(average="macro")`` with ``zero_division=0``).
    - ``confusion_matrix``: ``C x C`` counts, row = recorded class, column = predicted class, in ``names``
      order.

    Percentages are 0..100 like the other metrics; all values are plain Python numbers (JSON as is).
    """
    names = list(names)
    c = len(names)
    p = np.asarray(predicted).astype(np.int64).reshape(-1)
    y = np.asarray(target).astype(np.int64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predicted {p.shape} and target {y.shape} must have the same length")
    for what, v in (("predicted", p), ("target", y)):
        if v.size and (v.min() < 0 or v.max() >= c):
            raise ValueError(
                f"{what} class indices must be in 0..{c - 1} ({names}), got {int(v.min())}..{int(v.max())}"
            )
    confusion = np.bincount(y * c + p, minlength=c * c).reshape(c, c)  # (C, C) rows recorded, cols predicted
    support = confusion.sum(1)
    predicted_count = confusion.sum(0)
    tp = np.diag(confusion)
    per_class: dict[str, dict] = {}
    f1s = []
    recalls = []
    for i, name in enumerate(names):
        recall = tp[i] / support[i] if support[i] else None
        precision = tp[i] / predicted_count[i] if predicted_count[i] else None
        r, q = recall or 0.0, precision or 0.0
        f1 = 2 * q * r / (q + r) if q + r > 0 else 0.0
        per_class[name] = {
            "n": int(support[i]),
            "accuracy": None if recall is None else float(100.0 * recall),
            "precision": None if precision is None else float(100.0 * precision),
            "f1": float(f1),
            "predicted": int(predicted_count[i]),
        }
        if support[i] or predicted_count[i]:
            f1s.append(f1)
        if support[i]:
            recalls.append(recall)
    n = int(y.size)
    return {
        "classes": names,
        "n": n,
        "accuracy": float(100.0 * tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(100.0 * np.mean(recalls)) if recalls else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }
