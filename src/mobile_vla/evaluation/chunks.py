"""Metrics of predicted action chunks (Case 4): how well the K future steps match what the operator did.

The first-step metrics are the standard ones (``metrics.compute_metrics`` on ``chunk[:, 0]``); these add the
later steps. Steps past an episode's end have no recorded action and are left out through ``mask``.

    chunk_metrics(pred (N, K, A), target (N, K, A), mask (N, K)) ->
        {"n_windows", "n_steps", "chunk_mae", "step_mae": [K], "step_n": [K],
         "step_accuracy_0.3": ..., "step_accuracy_0.3_ci": [low, high], "window_accuracy_0.3": ..., ...}

Accuracies are percentages with a Wilson 95% interval: per valid step (every axis within the threshold), and
per window (every valid step of the chunk within it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mobile_vla.evaluation.intervals import wilson_interval


def chunk_metrics(
    predictions: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray | None = None,
    thresholds: Sequence[float] = (0.3, 0.2, 0.15),
) -> dict[str, Any]:
    """Chunk metrics over N windows of K steps and A axes; ``mask`` (N, K) is True where a step is real."""
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if predictions.ndim != 3 or predictions.shape != targets.shape:
        raise ValueError(
            f"chunk_metrics needs predictions and targets of one shape (N, K, A), got {predictions.shape} "
            f"and {targets.shape}"
        )
    n, k, _ = predictions.shape
    mask = np.ones((n, k), bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (n, k):
        raise ValueError(f"mask must be (N, K) = {(n, k)}, got {mask.shape}")
    errors = np.abs(predictions - targets)  # (N, K, A)
    step_errors = errors.mean(axis=-1)  # (N, K)
    n_steps = int(mask.sum())
    step_n = mask.sum(axis=0)  # (K,)
    result: dict[str, Any] = {
        "n_windows": n,
        "n_steps": n_steps,
        "chunk_length": k,
        "chunk_mae": float(step_errors[mask].mean()) if n_steps else float("nan"),
        "step_mae": [
            float(step_errors[mask[:, j], j].mean()) if step_n[j] else float("nan") for j in range(k)
        ],
        "step_n": [int(c) for c in step_n],
    }
    for t in thresholds:
        within = (errors < t).all(axis=-1)  # (N, K): every axis within t
        hits = int((within & mask).sum())
        result[f"step_accuracy_{t}"] = 100.0 * hits / n_steps if n_steps else float("nan")
        result[f"step_accuracy_{t}_ci"] = _percent_interval(hits, n_steps)
        whole = (within | ~mask).all(axis=1) & mask.any(axis=1)  # (N,): every real step within t
        windows = int(mask.any(axis=1).sum())
        result[f"window_accuracy_{t}"] = 100.0 * int(whole.sum()) / windows if windows else float("nan")
        result[f"window_accuracy_{t}_ci"] = _percent_interval(int(whole.sum()), windows)
    return result


def _percent_interval(successes: int, n: int) -> list[float]:
    if n == 0:
        return [float("nan"), float("nan")]
    low, high = wilson_interval(successes, n)
    return [100.0 * low, 100.0 * high]
