"""The robot's HDF5 episode format: read (lazily), write, and parse the scenario from the file name.

One file per episode, as the lab's collector writes it::

    images              uint8   [T, H, W, 3]   RGB, 720x1280 on the robot
    actions             float32 [T, 3]         [linear_x, linear_y, angular_z]
    action_event_types  utf-8   [T]            episode_start | start_action | stop_action | stop_inject
    language_instruction utf-8  scalar         optional
    attrs: episode_name, num_frames, total_duration, action_chunk_size, obstacle_layout_type, time_period,
           collection_datetime, ... (unknown ones are kept)

Frames are never loaded all at once: `Episode.image(i)` reads one frame from disk.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

logger = logging.getLogger(__name__)

EVENT_TYPES = ("episode_start", "start_action", "stop_action", "stop_inject")
ACTION_AXES = ("linear_x", "linear_y", "angular_z")
PROVENANCES = ("real", "sim", "synthetic")
GENERIC_INSTRUCTION = "Navigate around obstacles and reach the front of the beverage bottle"

_SCENARIO_RE = re.compile(
    r"(?P<boxes>[12])box_(?P<layout>vert|hori)_(?P<side>left|right)"
    r"(?:_(?P<pattern>core|variant))?(?:_(?P<distance>close|medium|far))?(?![a-z0-9])"
)


@dataclass(frozen=True)
class Scenario:
    """The lab's scenario, encoded in the episode file name: `{1box,2box}_{vert,hori}_{left,right}` then
    optional `_{core,variant}` and `_{close,medium,far}`."""

    num_boxes: int
    layout: str
    side: str
    pattern: str | None = None
    distance: str | None = None

    @property
    def name(self) -> str:
        """The task-level name (what the model is asked to do): e.g. `2box_vert_left`."""
        return f"{self.num_boxes}box_{self.layout}_{self.side}"

    @property
    def full_name(self) -> str:
        parts = [self.name, self.pattern, self.distance]
        return "_".join(p for p in parts if p)

    @property
    def instruction(self) -> str:
        return instruction_for_side(self.side)


def parse_scenario(file_name: str | Path) -> Scenario | None:
    """The scenario in a file name such as `episode_20250815_122923_2box_vert_left_core_medium.h5`, or None."""
    match = _SCENARIO_RE.search(Path(file_name).name)
    if match is None:
        return None
    return Scenario(
        num_boxes=int(match["boxes"]),
        layout=match["layout"],
        side=match["side"],
        pattern=match["pattern"],
        distance=match["distance"],
    )


def instruction_for_side(side: str) -> str:
    """The lab's instruction for a goal side (`left`/`right`)."""
    if side not in ("left", "right"):
        raise ValueError(f"goal side must be 'left' or 'right', got {side!r}")
    return f"{GENERIC_INSTRUCTION} on the {side}"


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in ("S", "O"):
            return [_decode(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Episode:
    """One episode file, opened lazily.

    Metadata (actions, events, attributes) is read once on construction; frames are read one at a time from
    disk by `image(i)`, so a dataset of hundreds of 720x1280 episodes never sits in memory.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            for key in ("images", "actions"):
                if key not in f:
                    raise KeyError(f"{self.path}: missing dataset '{key}'")
            images = f["images"]
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"{self.path}: 'images' must be [T, H, W, 3], got shape {images.shape}")
            self._image_shape = tuple(images.shape)
            actions = np.asarray(f["actions"][()], dtype=np.float32)
            if actions.ndim != 2 or actions.shape[1] not in (2, 3):
                raise ValueError(f"{self.path}: 'actions' must be [T, 3], got shape {actions.shape}")
            if actions.shape[1] == 2:
                actions = np.concatenate([actions, np.zeros((len(actions), 1), np.float32)], axis=1)
            self.actions: np.ndarray = actions
            if "action_event_types" in f:
                self.event_types: list[str] = [str(_decode(e)) for e in f["action_event_types"][()]]
            else:
                self.event_types = ["episode_start"] + ["start_action"] * (len(actions) - 1)
            stored = f["language_instruction"][()] if "language_instruction" in f else None
            self._stored_instruction = None if stored is None else str(_decode(stored)).strip() or None
            self.attrs: dict[str, Any] = {k: _decode(v) for k, v in f.attrs.items()}
        if len(self.actions) != self._image_shape[0]:
            raise ValueError(
                f"{self.path}: 'images' has {self._image_shape[0]} frames but 'actions' has {len(self.actions)}"
            )

    @property
    def episode_id(self) -> str:
        return self.path.stem

    @property
    def num_frames(self) -> int:
        return self._image_shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the stored frames."""
        return self._image_shape[1], self._image_shape[2]

    @cached_property
    def scenario(self) -> Scenario | None:
        return parse_scenario(self.path.name)

    @property
    def instruction(self) -> str:
        """The stored instruction, else the scenario's, else the generic task sentence."""
        if self._stored_instruction:
            return self._stored_instruction
        if self.scenario is not None:
            return self.scenario.instruction
        return GENERIC_INSTRUCTION

    @property
    def has_stored_instruction(self) -> bool:
        return self._stored_instruction is not None

    @property
    def provenance(self) -> str:
        """`real` (the robot's collector writes no provenance), `sim` or `synthetic`."""
        value = str(self.attrs.get("provenance", "real")).lower()
        if value not in PROVENANCES:
            raise ValueError(
                f"{self.path}: attribute 'provenance' is {value!r}; expected one of {list(PROVENANCES)} "
                "(or no attribute, for the robot's own recordings)"
            )
        return value

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the file's bytes: identifies this exact recording (datasets, caches, the registry)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def image(self, index: int) -> np.ndarray:
        """Frame `index` as uint8 [H, W, 3], read from disk."""
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"{self.path}: frame {index} out of range (episode has {self.num_frames})")
        with h5py.File(self.path, "r") as f:
            return np.asarray(f["images"][index], dtype=np.uint8)

    def __repr__(self) -> str:
        scenario = self.scenario.full_name if self.scenario else "?"
        return f"Episode({self.episode_id!r}, frames={self.num_frames}, scenario={scenario})"


def read_episode(path: str | Path) -> Episode:
    """Open an episode file (metadata now, frames on demand). Raises with the file and key on bad input."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such episode file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty")
    try:
        return Episode(path)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from exc


def write_episode(
    path: str | Path,
    images: np.ndarray | Sequence[np.ndarray],
    actions: np.ndarray,
    event_types: Sequence[str] | None = None,
    instruction: str | None = None,
    attrs: dict[str, Any] | None = None,
    compression: str | None = "lzf",
) -> Path:
    """Write an episode the way the robot's collector does; returns the path.

    `actions` may be [T, 2] (angular_z is then written as zero). `event_types` defaults to `episode_start`
    followed by `start_action`. The file is written to a temporary name and renamed, so a reader never sees
    a half-written episode.
    """
    path = Path(path)
    images = np.asarray(images)
    actions = np.asarray(actions, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{path}: images must be uint8 [T, H, W, 3], got {images.dtype} {images.shape}")
    if actions.ndim != 2 or actions.shape[1] not in (2, 3) or len(actions) != len(images):
        raise ValueError(f"{path}: actions must be [T, 3] with T={len(images)}, got {actions.shape}")
    if actions.shape[1] == 2:
        actions = np.concatenate([actions, np.zeros((len(actions), 1), np.float32)], axis=1)
    if event_types is None:
        event_types = ["episode_start"] + ["start_action"] * (len(images) - 1)
    if len(event_types) != len(images):
        raise ValueError(f"{path}: {len(event_types)} event types for {len(images)} frames")
    bad = sorted({e for e in event_types if e not in EVENT_TYPES})
    if bad:
        raise ValueError(f"{path}: unknown event types {bad}; expected one of {EVENT_TYPES}")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    string = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        f.create_dataset(
            "images",
            data=images,
            compression=compression,
            chunks=(1, *images.shape[1:]) if len(images) else None,
        )
        f.create_dataset("actions", data=actions)
        f.create_dataset("action_event_types", data=np.array(list(event_types), dtype=object), dtype=string)
        if instruction is not None:
            f.create_dataset("language_instruction", data=instruction, dtype=string)
        all_attrs = {"episode_name": path.stem, "num_frames": len(images), **(attrs or {})}
        for key, value in all_attrs.items():
            f.attrs[key] = value
    tmp.replace(path)
    return path
