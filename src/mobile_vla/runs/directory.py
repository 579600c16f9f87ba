"""The run directory's JSON files: ``config.json`` (the run record), ``metrics.jsonl`` (one row per epoch)
and ``summary.json`` (status, best epoch, wall time). The trainer writes them; evaluation, inference, the
registry and the server read them through here, so the file names and the "is this a run directory?" error
live in one place. Checkpoints and the resume state are in ``runs.checkpoints``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobile_vla.utils.files import atomic_write_text

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STATUSES = ("running", "finished", "failed", "killed")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``config.json`` of a run directory; a clear error when there is none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory: {path.name} is missing (train one with `mobile-vla train`)"
        )
    return json.loads(path.read_text())


def write_run_config(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    """``config.json``, written whole or not at all (a run killed while writing it is no run yet)."""
    atomic_write_text(Path(run_dir) / CONFIG, json.dumps(record, indent=2))


def read_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """The ``metrics.jsonl`` rows of epochs ``<= upto_epoch`` (none when the file is missing).

    A last line that is not JSON is a row whose append was cut by a crash (its epoch is after the resume
    state's) and is dropped; any other unreadable line is an error naming it.
    """
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return [r for r in rows if r["epoch"] <= upto_epoch]


def write_metrics(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` atomically (a resume rewrites it: a crash then must not cut rows off)."""
    atomic_write_text(path, "".join(json.dumps(jsonable(r)) + "\n" for r in rows))


def append_metrics(path: Path, row: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(jsonable(row)) + "\n")


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """``summary.json``, replaced atomically (a reader never sees half of it)."""
    atomic_write_text(Path(run_dir) / SUMMARY, json.dumps(jsonable(summary), indent=2))


def jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars/arrays to Python, non-finite floats to None)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
