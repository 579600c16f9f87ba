"""Check episode files and report every problem with its file and key. Never raises on a bad file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mobile_vla.data.episodes import EVENT_TYPES, GENERIC_INSTRUCTION, PROVENANCES, parse_scenario


@dataclass
class ValidationReport:
    """What `validate_episode` found in one file; `ok` is False when there is any error."""

    file: str
    ok: bool = True
    num_frames: int | None = None
    scenario: str | None = None
    instruction: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, key: str, message: str) -> None:
        self.ok = False
        self.errors.append(f"{key}: {message}" if key else message)

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{key}: {message}" if key else message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_episode_files(root: str | Path) -> list[Path]:
    """Every `*.h5` under `root` (recursively), sorted; `root` may also be a single file."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or directory")
    return sorted(p for p in root.rglob("*.h5") if p.is_file() and not p.name.startswith("."))


def _check_frames(f: h5py.File, report: ValidationReport, deep: bool) -> None:
    images = f["images"]
    indices = range(images.shape[0]) if deep else sorted({0, images.shape[0] - 1})
    for i in indices:
        try:
            frame = images[i]
        except Exception as exc:  # truncated chunks raise OSError/RuntimeError deep inside h5py
            report.error("images", f"frame {i} cannot be read ({type(exc).__name__}: {exc}); file truncated?")
            return
        if deep and frame.max() == frame.min():
            report.warn("images", f"frame {i} is a single flat colour")


def validate_episode(path: str | Path, deep: bool = False) -> ValidationReport:
    """Validate one episode file. `deep` reads every frame (slow on 720x1280); otherwise the first and last."""
    path = Path(path)
    report = ValidationReport(file=str(path))
    scenario = parse_scenario(path.name)
    if scenario is None:
        report.warn(
            "file name", "no scenario like '1box_vert_left' in the name; instruction cannot be derived"
        )
    else:
        report.scenario = scenario.full_name

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
            _validate_datasets(f, report, counts)
            if "images" in counts and report.ok:
                _check_frames(f, report, deep)
            if "language_instruction" in f:
                value = f["language_instruction"][()]
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                if not text.strip():
                    report.warn("language_instruction", "empty; derived from the scenario instead")
                report.instruction = text.strip() or None
        except Exception as exc:
            report.error("", f"cannot be read ({type(exc).__name__}: {exc})")
            return report
        if report.instruction is None:
            report.instruction = scenario.instruction if scenario else GENERIC_INSTRUCTION
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{k}={v}" for k, v in counts.items())
            report.error("frames", f"frame counts differ between datasets ({detail})")
        if counts:
            report.num_frames = counts.get("images", next(iter(counts.values())))
        provenance = f.attrs.get("provenance")
        if provenance is not None:
            value = provenance.decode() if isinstance(provenance, bytes) else str(provenance)
            if value.lower() not in PROVENANCES:
                report.error("attrs/provenance", f"is {value!r}; expected one of {list(PROVENANCES)}")
        declared = f.attrs.get("num_frames")
        if declared is not None and report.num_frames is not None and int(declared) != report.num_frames:
            report.warn(
                "attrs/num_frames", f"says {int(declared)} but the file holds {report.num_frames} frames"
            )
    return report


def _validate_datasets(f: h5py.File, report: ValidationReport, counts: dict[str, int]) -> None:
    for key in ("images", "actions", "action_event_types"):
        if key not in f:
            report.error(key, "missing dataset")
        elif not isinstance(f[key], h5py.Dataset):
            report.error(key, "is a group, expected a dataset")

    if "images" in f and isinstance(f["images"], h5py.Dataset):
        images = f["images"]
        if images.dtype != np.uint8:
            report.error("images", f"dtype must be uint8, got {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            report.error("images", f"shape must be [T, H, W, 3], got {list(images.shape)}")
        elif images.shape[0] == 0:
            report.error("images", "holds no frames")
        else:
            counts["images"] = images.shape[0]

    if "actions" in f and isinstance(f["actions"], h5py.Dataset):
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

    if "action_event_types" in f and isinstance(f["action_event_types"], h5py.Dataset):
        raw = f["action_event_types"][()]
        if np.ndim(raw) != 1:
            report.error("action_event_types", f"must be a 1-D list of strings, got shape {np.shape(raw)}")
            return
        events = [e.decode("utf-8", "replace") if isinstance(e, bytes) else str(e) for e in raw]
        counts["action_event_types"] = len(events)
        unknown = sorted({e for e in events if e not in EVENT_TYPES})
        if unknown:
            report.error(
                "action_event_types", f"unknown event types {unknown}; expected one of {list(EVENT_TYPES)}"
            )
        if events and events[0] != "episode_start":
            report.warn("action_event_types", f"frame 0 is '{events[0]}', expected 'episode_start'")
