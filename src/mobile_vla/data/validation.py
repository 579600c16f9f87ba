"""Check episode files of every layout the lab has written (v3, v5, v6, inference sessions) and report every
problem with its file and key. Never raises on a bad file."""

from __future__ import annotations

import json
from copy import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mobile_vla.data.episodes import (
    EVENT_TYPES,
    GENERIC_INSTRUCTION,
    LAYOUTS,
    PROVENANCES,
    detect_layout,
    image_encoding,
    image_key,
)


@dataclass
class ValidationReport:
    """What `validate_episode` found in one file; `ok` is False when there is any error."""

    file: str
    ok: bool = True
    num_frames: int | None = None
    scenario: str | None = None
    instruction: str | None = None
    layout: str | None = None
    instruction_source: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # The opened `Episode` of a valid file (validation opens it as training will), so a loader need not open
    # it again; not part of the report's JSON.
    episode: Any = field(default=None, repr=False, compare=False)

    def error(self, key: str, message: str) -> None:
        self.ok = False
        self.errors.append(f"{key}: {message}" if key else message)

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{key}: {message}" if key else message)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy(getattr(self, f.name)) for f in fields(self) if f.name != "episode"}


def find_episode_files(root: str | Path) -> list[Path]:
    """Every `*.h5` under `root` (recursively), sorted; `root` may also be a single file."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or directory")
    return sorted(p for p in root.rglob("*.h5") if p.is_file() and not p.name.startswith("."))


def _check_frames(f: h5py.File, key: str, encoding: str, report: ValidationReport, deep: bool) -> None:
    from mobile_vla.data.episodes import decode_jpeg

    images = f[key]
    indices = range(images.shape[0]) if deep else sorted({0, images.shape[0] - 1})
    for i in indices:
        try:
            frame = images[i]
        except Exception as exc:  # truncated chunks raise OSError/RuntimeError deep inside h5py
            report.error(key, f"frame {i} cannot be read ({type(exc).__name__}: {exc}); file truncated?")
            return
        if encoding == "jpeg":
            try:
                frame = decode_jpeg(frame)
            except Exception as exc:
                report.error(key, f"frame {i} is not a decodable JPEG/PNG ({type(exc).__name__}: {exc})")
                return
        if deep and frame.max() == frame.min():
            report.warn(key, f"frame {i} is a single flat colour")


def validate_episode(path: str | Path, deep: bool = False) -> ValidationReport:
    """Validate one episode file of any layout (`LAYOUTS`, detected from its keys). `deep` reads every frame
    (slow on 720x1280); otherwise the first and last."""
    path = Path(path)
    report = ValidationReport(file=str(path))
    if not path.exists():
        report.error("", "file does not exist")
        return report
    if path.stat().st_size == 0:
        report.error("", "file is empty (0 bytes)")
        return report
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        report.error("", f"not a readable HDF5 file, truncated or corrupt ({type(exc).__name__}: {exc})")
        return report

    with f:
        counts: dict[str, int] = {}
        try:
            layout = detect_layout(f)
            report.layout = layout
            if layout is None:
                keys = sorted(f.keys())
                report.error(
                    "images",
                    f"missing dataset (neither 'images' nor 'observations/images'; top-level keys {keys}); "
                    f"not an episode of any known layout {list(LAYOUTS)}",
                )
                if "actions" not in f:
                    report.error("actions", "missing dataset")
                return report
            key = image_key(layout)
            encoding = _validate_datasets(f, layout, key, report, counts)
            if encoding is not None and report.ok:
                _check_frames(f, key, encoding, report, deep)
            _validate_layout_extras(f, layout, report, counts)
        except Exception as exc:
            report.error("", f"cannot be read ({type(exc).__name__}: {exc})")
            return report
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{k}={v}" for k, v in counts.items())
            report.error("frames", f"frame counts differ between datasets ({detail})")
        if counts:
            report.num_frames = counts.get(key, next(iter(counts.values())))
        provenance = f.attrs.get("provenance")
        if provenance is not None:
            value = provenance.decode() if isinstance(provenance, bytes) else str(provenance)
            if value.lower() not in PROVENANCES:
                report.error("attrs/provenance", f"is {value!r}; expected one of {list(PROVENANCES)}")
        declared = f.attrs.get("num_frames")
        if declared is not None and report.num_frames is not None:
            try:
                if int(declared) != report.num_frames:
                    report.warn(
                        "attrs/num_frames",
                        f"says {int(declared)} but the file holds {report.num_frames} frames",
                    )
            except (TypeError, ValueError):
                report.warn("attrs/num_frames", f"is not a number ({declared!r})")
    if report.ok:
        _check_episode(path, report)
    return report


def _check_episode(path: Path, report: ValidationReport) -> None:
    """Open the file as training/evaluation will (`read_episode`): what it resolves (scenario, instruction)
    goes into the report; anything it still refuses is an error."""
    from mobile_vla.data.episodes import read_episode

    try:
        episode = read_episode(path)
    except Exception as exc:
        report.error("", f"{exc}")
        return
    report.episode = episode
    scenario = episode.scenario
    report.instruction = episode.instruction
    report.instruction_source = episode.instruction_source
    if scenario is None:
        report.warn(
            "file name", "no scenario like '1box_vert_left' in the name; instruction cannot be derived"
        )
    else:
        report.scenario = scenario.full_name
        if not getattr(scenario, "known", True):
            source = "attrs/scenario" if "scenario" in episode.attrs else "file name"
            report.warn(
                source,
                f"unknown scenario {scenario.name!r} (not in the scenario table); instruction taken from "
                f"the {episode.instruction_source}",
            )
    if episode.instruction_source == "generic":
        report.warn(
            "language_instruction", f"no instruction stored or derivable; using {GENERIC_INSTRUCTION!r}"
        )
    if episode.is_session:
        report.warn("layout", "inference-session log: evaluation data (its actions are a model's commands)")


def _validate_images(f: h5py.File, key: str, report: ValidationReport, counts: dict[str, int]) -> str | None:
    if key not in f:
        report.error(key, "missing dataset")
        return None
    images = f[key]
    if not isinstance(images, h5py.Dataset):
        report.error(key, "is a group, expected a dataset")
        return None
    encoding = image_encoding(images)
    if encoding is None:
        if images.ndim == 4 and images.dtype != np.uint8:
            report.error(key, f"dtype must be uint8, got {images.dtype}")
        else:
            report.error(
                key,
                f"shape must be [T, H, W, 3] uint8 frames or [T] encoded JPEGs, got {images.dtype} "
                f"{list(images.shape)}",
            )
        return None
    if encoding == "raw" and images.shape[-1] != 3:
        report.error(key, f"shape must be [T, H, W, 3], got {list(images.shape)}")
        return None
    if images.shape[0] == 0:
        report.error(key, "holds no frames")
        return None
    counts[key] = images.shape[0]
    return encoding


def _validate_datasets(
    f: h5py.File, layout: str, key: str, report: ValidationReport, counts: dict[str, int]
) -> str | None:
    encoding = _validate_images(f, key, report, counts)
    if "actions" not in f:
        report.error("actions", "missing dataset")
    elif not isinstance(f["actions"], h5py.Dataset):
        report.error("actions", "is a group, expected a dataset")
    else:
        actions_ds = f["actions"]
        if actions_ds.dtype.kind != "f":
            report.error("actions", f"dtype must be floating point, got {actions_ds.dtype}")
        elif actions_ds.ndim != 2 or actions_ds.shape[1] not in (2, 3):
            report.error("actions", f"shape must be [T, 3], got {list(actions_ds.shape)}")
        else:
            if actions_ds.shape[1] == 2:
                report.warn("actions", "has 2 columns; angular_z is taken as 0")
            actions = actions_ds[()]
            counts["actions"] = len(actions)
            bad = ~np.isfinite(actions)
            if bad.any():
                rows = sorted(set(np.nonzero(bad)[0].tolist()))
                report.error("actions", f"{int(bad.sum())} non-finite values (NaN/inf) in frames {rows[:10]}")

    events_required = layout in ("v3", "v6")
    if "action_event_types" not in f:
        if events_required:
            report.error("action_event_types", f"missing dataset (required in the {layout} layout)")
        return encoding
    if not isinstance(f["action_event_types"], h5py.Dataset):
        report.error("action_event_types", "is a group, expected a dataset")
        return encoding
    raw = f["action_event_types"][()]
    if np.ndim(raw) != 1:
        report.error("action_event_types", f"must be a 1-D list of strings, got shape {np.shape(raw)}")
        return encoding
    events = [e.decode("utf-8", "replace") if isinstance(e, bytes) else str(e) for e in raw]
    counts["action_event_types"] = len(events)
    unknown = sorted({e for e in events if e not in EVENT_TYPES})
    if unknown:
        report.error(
            "action_event_types", f"unknown event types {unknown}; expected one of {list(EVENT_TYPES)}"
        )
    if events and events[0] != "episode_start":
        report.warn("action_event_types", f"frame 0 is '{events[0]}', expected 'episode_start'")
    return encoding


# Attributes each layout's collector writes; a missing one is a warning (the reader does without it).
EXPECTED_ATTRS = {
    "v3": (),
    "v5": ("scenario", "pattern", "distance", "end_pos"),
    "v6": ("scenario", "cx_position", "cx_path"),
    "session": ("runtime_config",),
}


def _validate_layout_extras(
    f: h5py.File, layout: str, report: ValidationReport, counts: dict[str, int]
) -> None:
    from mobile_vla.data.episodes import read_text

    for attr in EXPECTED_ATTRS[layout]:
        if attr not in f.attrs:
            report.warn(f"attrs/{attr}", f"missing (the {layout} collector writes it)")
    if "language_instruction" in f:
        ds = f["language_instruction"]
        if not isinstance(ds, h5py.Dataset):
            report.error("language_instruction", "is a group, expected a dataset")
        else:
            try:
                text = read_text(ds[()])
            except Exception as exc:
                report.error("language_instruction", f"cannot be read as text ({type(exc).__name__}: {exc})")
                text = ""
            if text is None:
                report.warn("language_instruction", "empty; derived from the scenario instead")
    elif layout == "v5":
        report.warn("language_instruction", "missing (the v5 collector stores it)")
    if "action_classes" in f:
        _validate_action_classes(f, report, counts)
    if layout == "session" and "runtime_config" in f.attrs:
        value = f.attrs["runtime_config"]
        value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        try:
            json.loads(value)
        except ValueError as exc:
            report.warn("attrs/runtime_config", f"is not valid JSON ({exc})")


def _validate_action_classes(f: h5py.File, report: ValidationReport, counts: dict[str, int]) -> None:
    from mobile_vla.data.action_space import action_classes_for, map_stored_classes, parse_class_names

    ds = f["action_classes"]
    if not isinstance(ds, h5py.Dataset):
        report.error("action_classes", "is a group, expected a dataset")
        return
    if ds.dtype.kind not in ("i", "u"):
        report.error("action_classes", f"dtype must be integer, got {ds.dtype}")
        return
    if ds.ndim != 1:
        report.error("action_classes", f"shape must be [T], got {list(ds.shape)}")
        return
    counts["action_classes"] = ds.shape[0]
    names = parse_class_names(ds.attrs.get("action_space")) or parse_class_names(ds.attrs.get("class_names"))
    try:
        classes = map_stored_classes(ds[()], names)
    except ValueError as exc:
        report.error("action_classes", str(exc))
        return
    if "actions" in counts and counts["actions"] == len(classes):
        derived = action_classes_for(f["actions"][()])
        disagree = int((derived != classes).sum())
        if disagree:
            report.warn(
                "action_classes",
                f"{disagree} of {len(classes)} frames differ from the class of their velocity; the stored "
                "classes are used",
            )
