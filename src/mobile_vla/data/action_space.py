"""Action spaces as data: the robot's continuous velocities, or the lab's discrete key commands.

The lab drives the robot by keyboard, so every recorded command is one of a few keys. Regressing velocities
averages the turns out (FORWARD is ~75% of frames, so a regression head collapses towards "forward");
classifying the key keeps them apart. This module holds the key classes and the one mapping from velocities
to them, used by the episode reader (`Episode.action_classes`), the balanced sampler, the classification head
(`PolicyConfig.action_space: keys`), the key-space metrics and the mirror augmentation.

A dataset's own ``action_classes`` (v6 collectors) are used when present; otherwise classes are derived from
the velocities by ``action_classes_for``: each linear axis is quantised to -1/0/+1 with ``threshold``; a frame
with no linear motion is ROTATE_LEFT/RIGHT by the sign of ``angular_z`` (if it exceeds ``threshold``), else
STOP. Angular motion is ignored when there is linear motion (v6's continuous ``angular_z`` rides along with
the key).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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

# (linear_x, linear_y, angular_z) direction of each class.
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
# The class index of each (sign x, sign y, sign z) + 1 in {0, 1, 2}^3.
_CLASS_OF_SIGNS = np.zeros((3, 3, 3), np.int64)
for _index, _name in enumerate(KEY_CLASSES):
    _dx, _dy, _dz = _DIRECTIONS[_name]
    _CLASS_OF_SIGNS[_dx + 1, _dy + 1, _dz + 1] = _index

# Mirroring negates linear_y and angular_z: the class with (x, -y, -z) is each class's mirror image.
_MIRRORED = np.array(
    [_CLASS_OF_SIGNS[dx + 1, -dy + 1, -dz + 1] for dx, dy, dz in (_DIRECTIONS[n] for n in KEY_CLASSES)],
    np.int64,
)

DEFAULT_THRESHOLD = 0.3
"""A velocity component counts as pressed when its magnitude exceeds this (teleop values are 0 or 1.15)."""


def action_classes_for(actions: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The key class (index into ``KEY_CLASSES``) of each action row.

    ``actions``: ``(..., 3)`` ``[linear_x, linear_y, angular_z]`` or ``(..., 2)`` (no rotation). Returns
    int64 of shape ``actions.shape[:-1]``.
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] not in (2, 3):
        raise ValueError(f"actions must be (..., 2) or (..., 3), got shape {a.shape}")
    signs = (np.sign(a) * (np.abs(a) > threshold)).astype(np.int64)  # (..., 2|3) in {-1, 0, 1}
    sx, sy = signs[..., 0], signs[..., 1]
    sz = signs[..., 2] if a.shape[-1] == 3 else np.zeros_like(sx)
    sz = np.where((sx == 0) & (sy == 0), sz, 0)  # rotation counts only without linear motion
    return _CLASS_OF_SIGNS[sx + 1, sy + 1, sz + 1]


def mirror_classes(classes: np.ndarray) -> np.ndarray:
    """The left/right mirror image of key classes (``KEY_CLASSES`` indices): LEFT<->RIGHT,
    FORWARD_LEFT<->FORWARD_RIGHT, BACK_LEFT<->BACK_RIGHT, ROTATE_LEFT<->ROTATE_RIGHT; the others stay.
    Negative values (no class) stay as they are."""
    classes = np.asarray(classes).astype(np.int64)
    return np.where(classes >= 0, _MIRRORED[np.clip(classes, 0, None)], classes)


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


_AXES = ("linear_x", "linear_y", "angular_z")
DEFAULT_KEY_SPEED = 1.15
"""The lab's teleop speed: a pressed key commands +-1.15 on its axis."""


class KeySpace:
    """The key classes a head over ``action_dims`` can tell apart, and their commands.

    A class belongs when it moves only along ``action_dims`` (for ``("linear_x", "linear_y")``: STOP and the
    eight translations; the rotations need ``angular_z``). ``velocities[c]`` is class c's command over
    ``action_dims`` (each pressed axis at ``speed``); ``classify`` maps recorded commands to class indices,
    with axes outside ``action_dims`` taken as 0, so the result always is one of ``names``; ``project`` maps
    classes of the whole ``KEY_CLASSES`` (a file's stored ``action_classes``) onto ``names``; ``nearest`` maps
    any command (a regression head's output) to the class whose velocity is closest.
    """

    def __init__(self, action_dims: Sequence[str], speed: float = DEFAULT_KEY_SPEED) -> None:
        bad = [a for a in action_dims if a not in _AXES]
        if bad or not action_dims:
            raise ValueError(f"action_dims {list(action_dims)!r} must be a non-empty subset of {_AXES}")
        if not (isinstance(speed, (int, float)) and speed > 0):
            raise ValueError(f"key speed must be a positive number, got {speed!r}")
        self.action_dims = tuple(action_dims)
        self.speed = float(speed)
        axes = [_AXES.index(a) for a in self.action_dims]
        self.key_indices = [
            i
            for i, name in enumerate(KEY_CLASSES)
            if not any(_DIRECTIONS[name][j] for j in range(3) if j not in axes)
        ]
        self.names = tuple(KEY_CLASSES[i] for i in self.key_indices)
        self.velocities = np.array(
            [[_DIRECTIONS[name][j] * self.speed for j in axes] for name in self.names], np.float32
        )  # (C, A)
        self._axes = axes
        self._local = np.full(NUM_KEY_CLASSES, -1, np.int64)
        self._local[self.key_indices] = np.arange(len(self.key_indices))
        self._projected = np.zeros(NUM_KEY_CLASSES, np.int64)  # KEY_CLASSES index -> index into names
        for i, name in enumerate(KEY_CLASSES):
            d = [_DIRECTIONS[name][j] if j in axes else 0 for j in range(3)]
            self._projected[i] = self._local[_CLASS_OF_SIGNS[d[0] + 1, d[1] + 1, d[2] + 1]]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def classify(self, actions: np.ndarray) -> np.ndarray:
        """``(..., len(action_dims))`` commands -> ``(...)`` int64 indices into ``names``."""
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1] != len(self.action_dims):
            raise ValueError(
                f"actions must be (..., {len(self.action_dims)}) over {self.action_dims}, got {a.shape}"
            )
        full = np.zeros(a.shape[:-1] + (3,))
        full[..., self._axes] = a
        return self._local[action_classes_for(full)]

    def project(self, classes: np.ndarray) -> np.ndarray:
        """``KEY_CLASSES`` indices -> indices into ``names``: the class's direction on ``action_dims``, its
        direction on the other axes dropped. A stored class that moves along an axis the head does not
        predict becomes the class of what remains: ROTATE_LEFT is STOP for a ``(linear_x, linear_y)`` head,
        FORWARD_LEFT is FORWARD for a ``(linear_x, angular_z)`` one (the same rule ``classify`` applies to
        velocities, whose other axes it takes as 0)."""
        classes = np.asarray(classes).astype(np.int64)
        bad = classes[(classes < 0) | (classes >= NUM_KEY_CLASSES)]
        if bad.size:
            raise ValueError(
                f"class index {int(bad[0])} outside 0..{NUM_KEY_CLASSES - 1} ({list(KEY_CLASSES)})"
            )
        return self._projected[classes]

    def nearest(self, actions: np.ndarray) -> np.ndarray:
        """``(..., len(action_dims))`` commands -> ``(...)`` indices of the class whose velocity is nearest
        (Euclidean): how a regression head's output is read as a key class, so both action spaces can be
        scored with the same key-class metrics."""
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1] != len(self.action_dims):
            raise ValueError(
                f"actions must be (..., {len(self.action_dims)}) over {self.action_dims}, got {a.shape}"
            )
        d = ((a[..., None, :] - self.velocities.astype(np.float64)) ** 2).sum(-1)  # (..., C)
        return d.argmin(-1).astype(np.int64)

    def targets(self, actions: np.ndarray, stored: np.ndarray | None = None) -> np.ndarray:
        """The key class a recorded frame is scored and trained against: the file's stored class
        (``KEY_CLASSES`` index, projected onto ``names``) where ``stored >= 0``, else ``classify(actions)``."""
        derived = self.classify(actions)
        if stored is None:
            return derived
        stored = np.asarray(stored).astype(np.int64)
        if stored.shape != derived.shape:
            raise ValueError(f"stored classes have shape {stored.shape}, the actions {derived.shape}")
        has = stored >= 0
        out = derived.copy()
        out[has] = self.project(stored[has])
        return out
