"""Action spaces as data: the robot's continuous velocities, or the lab's discrete key commands.

The lab drives the robot by keyboard, so every recorded command is one of a few keys. Regressing velocities
averages the turns out (FORWARD is ~75% of frames, so a regression head collapses towards "forward");
classifying the key keeps them apart. Two action spaces:

- ``continuous``: the head predicts ``[linear_x, linear_y, (angular_z)]`` directly (the seed).
- ``keys``: the head predicts one of ``KEY_CLASSES``; the command sent to the robot is that class's velocity.

A dataset's own ``action_classes`` (v6 collectors) are used when present; otherwise classes are derived from
the velocities by ``action_classes_for``: each linear axis is quantised to -1/0/+1 with ``threshold``; a frame
with no linear motion is ROTATE_LEFT/RIGHT by the sign of ``angular_z`` (if it exceeds ``threshold``), else
STOP. Angular motion is ignored when there is linear motion (v6's continuous ``angular_z`` rides along with
the key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ACTION_SPACES = ("continuous", "keys")

KEY_SPEED = 1.15
"""The magnitude of each velocity component of a key press (a direction command, not calibrated m/s)."""

KEY_CLASSES: tuple[str, ...] = (
    "STOP",
    "FORWARD",
    "BACK",
    "LEFT",
    "RIGHT",
    "FORWARD_LEFT",
    "FORWARD_RIGHT",
    "BACK_LEFT",
    "BACK_RIGHT",
    "ROTATE_LEFT",
    "ROTATE_RIGHT",
)
NUM_KEY_CLASSES = len(KEY_CLASSES)

# (linear_x, linear_y, angular_z) direction of each class; times KEY_SPEED is the nominal command.
_DIRECTIONS: dict[str, tuple[int, int, int]] = {
    "STOP": (0, 0, 0),
    "FORWARD": (1, 0, 0),
    "BACK": (-1, 0, 0),
    "LEFT": (0, 1, 0),
    "RIGHT": (0, -1, 0),
    "FORWARD_LEFT": (1, 1, 0),
    "FORWARD_RIGHT": (1, -1, 0),
    "BACK_LEFT": (-1, 1, 0),
    "BACK_RIGHT": (-1, -1, 0),
    "ROTATE_LEFT": (0, 0, 1),
    "ROTATE_RIGHT": (0, 0, -1),
}
KEY_VELOCITIES: np.ndarray = np.array([_DIRECTIONS[c] for c in KEY_CLASSES], np.float32) * KEY_SPEED
"""(NUM_KEY_CLASSES, 3) nominal [linear_x, linear_y, angular_z] of each class."""

# The lab's keyboard letters (W/S/A/D/Q/E/Z/C, R/T for rotation) for reports.
KEY_LETTERS: dict[str, str] = {
    "STOP": " ",
    "FORWARD": "W",
    "BACK": "S",
    "LEFT": "A",
    "RIGHT": "D",
    "FORWARD_LEFT": "Q",
    "FORWARD_RIGHT": "E",
    "BACK_LEFT": "Z",
    "BACK_RIGHT": "C",
    "ROTATE_LEFT": "R",
    "ROTATE_RIGHT": "T",
}

# Mirroring the scene left<->right maps each class to this one (linear_y and angular_z change sign).
MIRROR_CLASS: dict[str, str] = {
    "STOP": "STOP",
    "FORWARD": "FORWARD",
    "BACK": "BACK",
    "LEFT": "RIGHT",
    "RIGHT": "LEFT",
    "FORWARD_LEFT": "FORWARD_RIGHT",
    "FORWARD_RIGHT": "FORWARD_LEFT",
    "BACK_LEFT": "BACK_RIGHT",
    "BACK_RIGHT": "BACK_LEFT",
    "ROTATE_LEFT": "ROTATE_RIGHT",
    "ROTATE_RIGHT": "ROTATE_LEFT",
}
MIRROR_INDEX: np.ndarray = np.array([KEY_CLASSES.index(MIRROR_CLASS[c]) for c in KEY_CLASSES], np.int64)

DEFAULT_THRESHOLD = 0.3
"""A velocity component counts as pressed when its magnitude exceeds this (teleop values are 0 or 1.15)."""


def check_action_space(value: Any, owner: str = "action_space") -> str:
    if value not in ACTION_SPACES:
        raise ValueError(f"{owner} must be one of {ACTION_SPACES}, got {value!r}")
    return str(value)


def action_classes_for(actions: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The key class (index into ``KEY_CLASSES``) of each action row.

    ``actions``: ``(..., 3)`` ``[linear_x, linear_y, angular_z]`` or ``(..., 2)`` (no rotation). Returns
    int64 of shape ``actions.shape[:-1]``.
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] not in (2, 3):
        raise ValueError(f"actions must be (..., 2) or (..., 3), got shape {a.shape}")
    sx = np.where(a[..., 0] > threshold, 1, np.where(a[..., 0] < -threshold, -1, 0))
    sy = np.where(a[..., 1] > threshold, 1, np.where(a[..., 1] < -threshold, -1, 0))
    if a.shape[-1] == 3:
        sz = np.where(a[..., 2] > threshold, 1, np.where(a[..., 2] < -threshold, -1, 0))
    else:
        sz = np.zeros_like(sx)
    sz = np.where((sx == 0) & (sy == 0), sz, 0)
    # Lookup table over (sx, sy, sz) + 1 in {0, 1, 2}^3.
    table = np.zeros((3, 3, 3), np.int64)
    for index, name in enumerate(KEY_CLASSES):
        dx, dy, dz = _DIRECTIONS[name]
        table[dx + 1, dy + 1, dz + 1] = index
    return table[sx + 1, sy + 1, sz + 1]


def class_velocities(
    classes: np.ndarray, actions: np.ndarray, num_classes: int = NUM_KEY_CLASSES
) -> np.ndarray:
    """Per-class mean command ``(num_classes, 3)`` measured on recorded data; the nominal ``KEY_VELOCITIES``
    for a class that does not occur. What a keys policy sends for a class, so its commands have the data's
    magnitudes (v6's continuous ``angular_z`` included)."""
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    actions = np.asarray(actions, dtype=np.float64).reshape(len(classes), -1)
    if actions.shape[1] == 2:
        actions = np.concatenate([actions, np.zeros((len(actions), 1))], axis=1)
    out = KEY_VELOCITIES[:num_classes].astype(np.float64).copy()
    for c in range(num_classes):
        rows = actions[classes == c]
        if len(rows):
            out[c] = rows.mean(axis=0)
    out[KEY_CLASSES.index("STOP")] = 0.0
    return out.astype(np.float32)


def class_counts(classes: np.ndarray, num_classes: int = NUM_KEY_CLASSES) -> np.ndarray:
    return np.bincount(np.asarray(classes, dtype=np.int64).reshape(-1), minlength=num_classes)[:num_classes]


def balanced_class_weights(classes: np.ndarray, num_classes: int = NUM_KEY_CLASSES) -> np.ndarray:
    """Inverse-frequency weights ``n / (k * count_c)`` over the k classes present (sklearn's "balanced");
    0 for absent classes (they carry no loss anyway)."""
    counts = class_counts(classes, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    if present.any():
        weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def resolve_class_weights(
    spec: str | Sequence[float] | Mapping[str, float] | None, classes: np.ndarray | None = None
) -> np.ndarray | None:
    """``none``/None -> None; ``balanced`` -> ``balanced_class_weights(classes)``; a list of
    ``NUM_KEY_CLASSES`` numbers or a ``{class name: weight}`` dict (missing names weigh 1)."""
    if spec is None or spec == "none":
        return None
    if spec == "balanced":
        if classes is None:
            raise ValueError("class_weights='balanced' needs the training frames' classes")
        return balanced_class_weights(classes)
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(KEY_CLASSES))
        if unknown:
            raise ValueError(f"class_weights names unknown classes {unknown}; known: {list(KEY_CLASSES)}")
        return np.array([float(spec.get(c, 1.0)) for c in KEY_CLASSES], np.float32)
    if isinstance(spec, str):
        raise ValueError(f"class_weights must be 'none', 'balanced', a list or a dict, got {spec!r}")
    values = np.asarray(list(spec), dtype=np.float32)
    if values.shape != (NUM_KEY_CLASSES,) or not np.all(np.isfinite(values)) or (values < 0).any():
        raise ValueError(
            f"class_weights must be {NUM_KEY_CLASSES} non-negative numbers (one per {list(KEY_CLASSES)}), "
            f"got {list(spec)}"
        )
    return values


def check_class_weights(spec: Any, owner: str = "class_weights") -> Any:
    """Validate a class_weights setting without data (``balanced`` is resolved later)."""
    if spec is None or spec in ("none", "balanced"):
        return spec
    resolve_class_weights(spec)
    return spec


def map_stored_classes(stored: np.ndarray, names: Sequence[str] | None) -> np.ndarray:
    """A file's own ``action_classes`` in our ``KEY_CLASSES`` order. ``names`` is the file's class list (from
    its ``action_space`` attribute) when it has one; without it the indices are taken as ours. Raises naming
    the bad value."""
    stored = np.asarray(stored).astype(np.int64)
    if names is None:
        bad = stored[(stored < 0) | (stored >= NUM_KEY_CLASSES)]
        if bad.size:
            raise ValueError(
                f"class index {int(bad[0])} outside 0..{NUM_KEY_CLASSES - 1} ({list(KEY_CLASSES)})"
            )
        return stored
    canon = [str(n).strip().upper() for n in names]
    unknown = [n for n in canon if n not in KEY_CLASSES]
    if unknown:
        raise ValueError(f"class names {unknown} are not key classes {list(KEY_CLASSES)}")
    lookup = np.array([KEY_CLASSES.index(n) for n in canon], np.int64)
    bad = stored[(stored < 0) | (stored >= len(lookup))]
    if bad.size:
        raise ValueError(f"class index {int(bad[0])} outside the file's {len(lookup)} classes {canon}")
    return lookup[stored]


def parse_class_names(value: Any) -> list[str] | None:
    """A class-name list from an ``action_space`` attribute: a JSON list, a comma/space-separated string of
    names, or a list. None when the value is not a list of names (e.g. ``"discrete"``, ``"keys11"``)."""
    import json

    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        names = [str(v.decode() if isinstance(v, bytes) else v) for v in list(value)]
    else:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        text = text.strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            names = [str(v) for v in parsed]
        elif isinstance(parsed, dict):  # {"0": "STOP", ...} or {"STOP": 0, ...}
            items = list(parsed.items())
            if all(str(k).lstrip("-").isdigit() for k, _ in items):
                names = [str(v) for _, v in sorted(items, key=lambda kv: int(kv[0]))]
            elif all(isinstance(v, int) for _, v in items):
                names = [str(k) for k, _ in sorted(items, key=lambda kv: kv[1])]
            else:
                return None
        else:
            names = [t for t in text.replace(",", " ").split() if t]
    names = [n.strip().upper() for n in names]
    if len(names) < 2 or any(n not in KEY_CLASSES for n in names):
        return None
    return names
