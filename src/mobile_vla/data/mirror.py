"""Left/right mirror augmentation (``TrainConfig.mirror``): a frame seen in a mirror is another valid frame.

The lab found its heads biased to one side. The world of its tasks is left/right symmetric, so every recorded
frame has a mirror twin that the robot could equally have recorded:

- the image flipped left-right (columns reversed);
- "left" and "right" swapped in the instruction (whole words, any case: "Left" -> "Right");
- ``linear_y`` and ``angular_z`` negated (the robot's y axis points left, z turns counter-clockwise);
  ``linear_x`` stays;
- the key class mirrored (``mirror_classes``: LEFT <-> RIGHT, FORWARD_LEFT <-> FORWARD_RIGHT, ...);
- the scenario name's side swapped (``1box_vert_left`` -> ``1box_vert_right``), so Case 4's task label
  follows.

Which training items are mirrored is drawn per (seed, epoch, episode id, frame) with probability ``p``
(``mirror_draw``): a resumed run and every DDP rank mirror exactly the same items, and no state is saved.
An item drawn twice in one ``balanced`` epoch (draws with replacement) is mirrored both times or neither. The
balanced sampler's ``class_balance`` and the loss's ``class_weights`` are computed on the recorded
(unmirrored) frames.

With the feature cache, a mirrored frame is a ``FrameRef(..., mirrored=True)``: its cache key is the frame's
key with a ``-mirror`` suffix (``mobile_vla.data.cache.frame_key``) and ``load_image`` returns the flipped
image, so the flipped view's features are computed from the flipped pixels and cached as their own entry,
never mixed with the original frame's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from mobile_vla.data.action_space import mirror_classes  # noqa: F401  (re-exported)

MIRRORED_AXES = ("linear_y", "angular_z")
"""The axes a left/right mirror negates."""

_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_SIDE_TOKEN = re.compile(r"(?<![a-z])(left|right)(?![a-z])", re.IGNORECASE)


def _swap(match: re.Match[str]) -> str:
    word = match.group(0)
    other = "right" if word.lower() == "left" else "left"
    if word.isupper():
        return other.upper()
    if word[0].isupper():
        return other.capitalize()
    return other


def mirror_instruction(text: str) -> str:
    """``text`` with the whole words "left" and "right" swapped, keeping their case."""
    return _SIDE.sub(_swap, text)


def mirror_scenario(name: str) -> str:
    """A scenario name with its side swapped (``2box_hori_left`` -> ``2box_hori_right``; ``_`` separated)."""
    return _SIDE_TOKEN.sub(_swap, name)


def mirror_image(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> the same image flipped left-right (contiguous copy)."""
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"expected an [H, W, C] image, got shape {array.shape}")
    return np.ascontiguousarray(array[:, ::-1])


def mirror_sign(action_dims: Sequence[str]) -> np.ndarray:
    """``(A,)`` float32: -1 on ``linear_y``/``angular_z``, +1 elsewhere (multiply an action by it)."""
    return np.array([-1.0 if a in MIRRORED_AXES else 1.0 for a in action_dims], np.float32)


def mirror_draw(probability: float, seed: int, epoch: int, episode_id: str, frame: int) -> bool:
    """Whether the item (episode, frame) is mirrored in ``epoch``: True with ``probability``, a function of
    its arguments only."""
    if probability <= 0:
        return False
    if probability >= 1:
        return True
    digest = hashlib.sha256(f"mirror/{seed}/{epoch}/{episode_id}/{frame}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < probability
