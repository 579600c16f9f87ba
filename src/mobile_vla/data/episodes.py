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

import json
import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mobile_vla.data.scenarios import (  # noqa: F401  (re-exported: the episode API)
    GENERIC_INSTRUCTION,
    AnyScenario,
    NamedScenario,
    Scenario,
    instruction_for_side,
    match_scenario,
    parse_scenario,
)
from mobile_vla.utils.files import sha256_file

logger = logging.getLogger(__name__)

EVENT_TYPES = ("episode_start", "start_action", "stop_action", "stop_inject")
ACTION_AXES = ("linear_x", "linear_y", "angular_z")
PROVENANCES = ("real", "sim", "synthetic")

LAYOUTS = ("v3", "v5", "v6", "session")
"""The HDF5 layouts the lab's collectors have written (see `detect_layout`)."""

LAYOUT_DESCRIPTIONS = {
    "v3": "top-level images [T,H,W,3] + actions [T,3] + action_event_types (the source document's collector)",
    "v5": "observations/images (RGB frames or JPEG bytes) + actions + language_instruction; scenario attrs",
    "v6": "top-level images + actions + action_event_types; attrs scenario/cx_position/cx_path; "
    "optional action_classes",
    "session": "an inference-session log (observations/images, actions = the model's commands, "
    "runtime_config): evaluation data, not a training episode",
}

_V6_ATTRS = ("cx_position", "cx_path", "stop_inject_n")


def detect_layout(f: h5py.File) -> str | None:
    """The layout of an open file, from the keys and attributes present (never from its folder or name):

    - `session`: `observations/images` and a `runtime_config` attribute or a `grounding` group;
    - `v5`: `observations/images` otherwise;
    - `v6`: top-level `images` with `action_classes` or any of the attributes `cx_position`, `cx_path`,
      `stop_inject_n`, `scenario`;
    - `v3`: top-level `images` otherwise.

    None when the file has neither `images` nor `observations/images`.
    """
    obs = f.get("observations")
    if isinstance(obs, h5py.Group) and "images" in obs:
        if "runtime_config" in f.attrs or isinstance(f.get("grounding"), h5py.Group):
            return "session"
        return "v5"
    if "images" in f:
        if "action_classes" in f or any(k in f.attrs for k in (*_V6_ATTRS, "scenario")):
            return "v6"
        return "v3"
    return None


def image_key(layout: str) -> str:
    return "observations/images" if layout in ("v5", "session") else "images"


def image_encoding(ds: h5py.Dataset) -> str | None:
    """`raw` for uint8 [T, H, W, 3] frames, `jpeg` for one encoded image per row (variable-length uint8,
    opaque `np.void`, byte strings, or uint8 [T, L] padded buffers); None for anything else."""
    dtype = ds.dtype
    if ds.ndim == 4 and dtype == np.uint8:
        return "raw"
    if ds.ndim == 1:
        vlen = h5py.check_vlen_dtype(dtype)
        if vlen is not None and np.dtype(vlen) == np.uint8:
            return "jpeg"
        if dtype.kind in ("V", "S") or vlen is bytes or (dtype.kind == "O" and vlen is None):
            return "jpeg"
        if h5py.check_string_dtype(dtype) is not None:
            return "jpeg"
    if ds.ndim == 2 and dtype == np.uint8:
        return "jpeg"
    return None


def _frame_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, np.void):
        return value.tobytes()
    return np.asarray(value).tobytes()


def decode_jpeg(value: Any) -> np.ndarray:
    """One stored encoded frame -> uint8 [H, W, 3] RGB."""
    import io

    from PIL import Image

    data = _frame_bytes(value)
    if not data:
        raise ValueError("empty frame (0 bytes)")
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


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


def read_text(value: Any) -> str | None:
    """A stored instruction as text: a str, utf-8 bytes, a scalar, or a one-element array of either (v5);
    None when empty."""
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return None
        # A 1-D uint8 array is the utf-8 bytes themselves; otherwise the first element.
        value = value.tobytes() if value.dtype == np.uint8 and value.ndim == 1 else value.reshape(-1)[0]
    if isinstance(value, np.void):
        value = value.tobytes()
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _attr_text(attrs: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = attrs.get(key)
        if value not in (None, ""):
            text = read_text(np.asarray(value) if isinstance(value, list) else value)
            if text:
                return text
    return None


class Episode:
    """One episode file, opened lazily, in any of the lab's layouts (`LAYOUTS`, detected from its keys).

    Metadata (actions, events, attributes) is read once on construction; frames are read one at a time from
    disk by `image(i)` (JPEG-encoded frames are decoded then), so a dataset of hundreds of 720x1280 episodes
    never sits in memory.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            layout = detect_layout(f)
            if layout is None:
                raise KeyError(
                    f"{self.path}: missing dataset 'images' (or 'observations/images'); not an episode of any "
                    f"known layout ({', '.join(LAYOUTS)})"
                )
            self.layout: str = layout
            self._image_key = image_key(layout)
            if "actions" not in f:
                raise KeyError(f"{self.path}: missing dataset 'actions' ({layout} layout)")
            images = f[self._image_key]
            if not isinstance(images, h5py.Dataset):
                raise ValueError(f"{self.path}: '{self._image_key}' is a group, expected a dataset")
            encoding = image_encoding(images)
            if encoding is None:
                raise ValueError(
                    f"{self.path}: '{self._image_key}' must be uint8 [T, H, W, 3] frames or one JPEG per row, "
                    f"got {images.dtype} {list(images.shape)}"
                )
            self.image_encoding: str = encoding
            self._num_frames = int(images.shape[0])
            self._raw_shape = tuple(images.shape[1:3]) if encoding == "raw" else None
            actions = np.asarray(f["actions"][()])
            if actions.dtype.kind not in ("f", "i", "u"):
                raise ValueError(f"{self.path}: 'actions' must be numbers, got dtype {actions.dtype}")
            actions = actions.astype(np.float32)
            if actions.ndim != 2 or actions.shape[1] not in (2, 3):
                raise ValueError(f"{self.path}: 'actions' must be [T, 3], got shape {list(actions.shape)}")
            if actions.shape[1] == 2:
                actions = np.concatenate([actions, np.zeros((len(actions), 1), np.float32)], axis=1)
            self.actions: np.ndarray = actions
            if "action_event_types" in f:
                self.event_types: list[str] = [str(_decode(e)) for e in f["action_event_types"][()]]
            else:
                self.event_types = ["episode_start"] + ["start_action"] * (len(actions) - 1)
            stored = f["language_instruction"][()] if "language_instruction" in f else None
            self._stored_instruction = None if stored is None else read_text(stored)
            self.attrs: dict[str, Any] = {k: _decode(v) for k, v in f.attrs.items()}
            self.stored_action_classes: np.ndarray | None = None
            if "action_classes" in f:
                from mobile_vla.data.action_space import map_stored_classes, parse_class_names

                ds = f["action_classes"]
                names = parse_class_names(ds.attrs.get("action_space")) or parse_class_names(
                    ds.attrs.get("class_names")
                )
                try:
                    self.stored_action_classes = map_stored_classes(np.asarray(ds[()]).reshape(-1), names)
                except ValueError as exc:
                    raise ValueError(f"{self.path}: 'action_classes': {exc}") from None
                if len(self.stored_action_classes) != len(actions):
                    raise ValueError(
                        f"{self.path}: 'action_classes' has {len(self.stored_action_classes)} entries but "
                        f"'actions' has {len(actions)}"
                    )
                self.class_attrs = {k: _decode(v) for k, v in ds.attrs.items()}
        if len(self.actions) != self._num_frames:
            raise ValueError(
                f"{self.path}: '{self._image_key}' has {self._num_frames} frames but 'actions' has "
                f"{len(self.actions)}"
            )
        if len(self.event_types) != self._num_frames:
            raise ValueError(
                f"{self.path}: 'action_event_types' has {len(self.event_types)} entries for "
                f"{self._num_frames} frames"
            )

    @property
    def episode_id(self) -> str:
        return self.path.stem

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def is_session(self) -> bool:
        """An inference-session log: its actions are a model's commands, so it is evaluation data."""
        return self.layout == "session"

    @cached_property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the stored frames (JPEG frames: of the first one, decoded)."""
        if self._raw_shape is not None:
            return self._raw_shape  # type: ignore[return-value]
        return tuple(self.image(0).shape[:2])  # type: ignore[return-value]

    @cached_property
    def scenario(self) -> AnyScenario | None:
        """The scenario: the file's `scenario` attribute (v5/v6) through the scenario table, else the file
        name. Unknown names give a `NamedScenario` with `known=False`."""
        from mobile_vla.data.scenarios import named_scenario, parse_v5_name, parse_v6_name

        attrs = self.attrs
        stem = self.path.stem
        if self.layout in ("v5", "v6", "session"):
            from_name = (parse_v5_name(stem) if self.layout != "v6" else None) or {}
            v6_name = (parse_v6_name(stem) if self.layout == "v6" else None) or {}
            name = _attr_text(attrs, "scenario") or from_name.get("scenario")
            position = _attr_text(attrs, "end_pos", "cx_position") or from_name.get("end_pos")
            position = position or v6_name.get("cx_position")
            if name is None and self.layout == "v6" and v6_name:
                name = f"{v6_name['cx_position']}_{v6_name['cx_path']}"
            if name is None:
                return match_scenario(self.path.name)
            return named_scenario(
                name,
                pattern=_attr_text(attrs, "pattern") or from_name.get("pattern"),
                distance=_attr_text(attrs, "distance") or from_name.get("distance"),
                position=position,
                side=position,
            )
        return match_scenario(self.path.name)

    @cached_property
    def _instruction_and_source(self) -> tuple[str, str]:
        if self._stored_instruction:
            return self._stored_instruction, "file"
        from_attrs = _attr_text(self.attrs, "language_instruction", "instruction")
        if from_attrs is None and "runtime_config" in self.attrs:
            try:
                config = json.loads(str(self.attrs["runtime_config"]))
            except ValueError:
                config = {}
            if isinstance(config, dict):
                from_attrs = _attr_text(config, "instruction", "language_instruction")
        if from_attrs:
            return from_attrs, "attrs"
        if self.scenario is not None and self.scenario.instruction:
            return self.scenario.instruction, "scenario"
        return GENERIC_INSTRUCTION, "generic"

    @property
    def instruction(self) -> str:
        """The stored instruction, else the attributes' (`language_instruction`/`instruction`, a session's
        `runtime_config`), else the scenario's, else the generic task sentence."""
        return self._instruction_and_source[0]

    @property
    def instruction_source(self) -> str:
        """Where `instruction` came from: `file`, `attrs`, `scenario` or `generic`."""
        return self._instruction_and_source[1]

    @property
    def has_stored_instruction(self) -> bool:
        return self._stored_instruction is not None

    @cached_property
    def action_classes(self) -> np.ndarray:
        """The key class of each frame (`mobile_vla.data.action_space.KEY_CLASSES`): the file's own
        `action_classes` when it has them, else derived from the velocities."""
        if self.stored_action_classes is not None:
            return self.stored_action_classes
        from mobile_vla.data.action_space import action_classes_for

        return action_classes_for(self.actions)

    @property
    def provenance(self) -> str:
        """`real` (the robot's collector writes no provenance), `sim` or `synthetic`.

        Any other value is an error, never a silent `real`: the registry ranks only real and simulated data,
        so a typo must not promote synthetic episodes. `validate_episode` reports it as `attrs/provenance`.
        """
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
        return sha256_file(self.path)

    def image(self, index: int) -> np.ndarray:
        """Frame `index` as uint8 [H, W, 3], read from disk (and decoded, for JPEG frames)."""
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"{self.path}: frame {index} out of range (episode has {self.num_frames})")
        with h5py.File(self.path, "r") as f:
            value = f[self._image_key][index]
        if self.image_encoding == "raw":
            return np.asarray(value, dtype=np.uint8)
        try:
            return decode_jpeg(value)
        except Exception as exc:
            raise ValueError(
                f"{self.path}: '{self._image_key}' frame {index} is not a decodable image "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def __repr__(self) -> str:
        scenario = self.scenario.full_name if self.scenario else "?"
        return f"Episode({self.episode_id!r}, layout={self.layout}, frames={self.num_frames}, scenario={scenario})"


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
