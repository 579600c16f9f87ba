"""Class weights of the key-class cross-entropy against imbalance (``TrainConfig.class_weights``).

FORWARD is ~75% of the lab's frames: an unweighted cross-entropy can score well by always answering
FORWARD. ``inverse_frequency`` weights each target class by the inverse of its share of the training split's
frames, relative to a uniform mix of the classes present, capped at ``TrainConfig.class_weight_cap``:

    w_c = min(cap, 1 / (K * f_c))     f_c = the class's share of training frames, K = classes present

so a split with every class equally frequent gets weight 1 everywhere. A class absent from the training
split gets the cap (it never is a training target; only a validation frame can carry it). Frames are every
usable frame of every training episode (``drop_start_frame`` honoured), their class the one the loss trains
against (``KeySpace.targets``: the file's stored class, else the velocities'), whatever ``frame_selection``
draws: the weights are a property of the split, the same every epoch and on resume. They are counted on the
recorded frames, before any mirror augmentation (``TrainConfig.mirror`` moves LEFT/RIGHT mass between mirror
classes at random; the weights do not follow it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mobile_vla.data.action_space import KeySpace
from mobile_vla.data.episodes import ACTION_AXES

CLASS_WEIGHTS = ("none", "inverse_frequency")


def class_counts(
    episodes: Sequence[Any], key_space: KeySpace, *, drop_start_frame: bool = False
) -> np.ndarray:
    """(C,) frames per class of ``key_space`` over the episodes' usable frames."""
    axes = [ACTION_AXES.index(a) for a in key_space.action_dims]
    counts = np.zeros(key_space.num_classes, np.int64)
    for episode in episodes:
        start = 1 if drop_start_frame and episode.num_frames > 1 else 0
        actions = np.asarray(episode.actions)[start:, axes]
        stored = getattr(episode, "stored_action_classes", None)
        stored = None if stored is None else np.asarray(stored)[start:]
        counts += np.bincount(key_space.targets(actions, stored), minlength=key_space.num_classes)
    return counts


def inverse_frequency_weights(counts: np.ndarray, cap: float) -> np.ndarray:
    """(C,) ``min(cap, 1 / (K f_c))`` for present classes, ``cap`` for absent ones (see the module doc)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("class weights need at least one training frame")
    present = counts > 0
    freq = counts / total
    weights = np.full(len(counts), float(cap))
    weights[present] = np.minimum(cap, 1.0 / (present.sum() * freq[present]))
    return weights


def class_weight_record(
    mode: str, episodes: Sequence[Any], key_space: KeySpace | None, cap: float, drop_start_frame: bool
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """``(weights (C,) or None, what config.json records)`` for ``TrainConfig.class_weights`` ``mode``."""
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"TrainConfig.class_weights must be one of {CLASS_WEIGHTS}, got {mode!r}")
    if mode == "none":
        return None, {"mode": "none"}
    if key_space is None:
        raise ValueError(
            f"TrainConfig.class_weights: {mode!r} weights the key-class cross-entropy and needs "
            "action_space: keys (--policy action_space=keys); this policy regresses velocities"
        )
    counts = class_counts(episodes, key_space, drop_start_frame=drop_start_frame)
    weights = inverse_frequency_weights(counts, cap)
    record = {
        "mode": mode,
        "cap": float(cap),
        "counted_over": "every usable frame of the training split",
        "counts": {n: int(c) for n, c in zip(key_space.names, counts, strict=True)},
        "weights": {n: round(float(w), 6) for n, w in zip(key_space.names, weights, strict=True)},
    }
    return weights, record
