"""How the registry names and encodes things in MLflow: the ``mobile_vla.`` tag prefix, status words, the
files of a run directory it imports, flattened keys and JSON param values, and the small hashes (episode ids,
safetensors header signature) it compares runs by. Pure functions; no MLflow import.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TAG_PREFIX = "mobile_vla."
SPLITS = ("train", "val", "test")
# The run directory's status vocabulary (summary.json) and MLflow's.
STATUS_TO_MLFLOW = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
MLFLOW_TO_STATUS = {v: k for k, v in STATUS_TO_MLFLOW.items()}

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
MAX_TAG_VALUE = 8000  # and on a tag value
CI_LOW, CI_HIGH = "ci_low", "ci_high"
CLOSED_LOOP = "closed_loop"

# Files of a run directory that are copied into the store as artifacts (when present).
RUN_ARTIFACTS = ("config.json", "summary.json", "metrics.jsonl", "loss_curve.png")
CHECKPOINT_FILES = ("best.safetensors", "config.json")
CLOSED_LOOP_FILE = "closed_loop.json"
REGISTRY_FILE = "registry.json"


def tag(name: str) -> str:
    return TAG_PREFIX + name


# --- small pure helpers ---------------------------------------------------------------------------------
def flatten(value: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts to one level with joined keys; lists and scalars are leaves.

    >>> flatten({"train": {"lr": 5e-5, "betas": [0.9, 0.999]}})
    {'train.lr': 5e-05, 'train.betas': [0.9, 0.999]}
    """
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(item, Mapping) and item:
            out.update(flatten(item, name, sep))
        else:
            out[name] = item
    return out


def param_value(value: Any) -> str:
    """How a config value is written as an MLflow param: JSON for everything but plain strings.

    JSON keeps types recoverable (``5e-05`` vs ``"5e-05"``, ``true``, ``null``, ``[0.7, 0.15, 0.15]``).
    """
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def parse_param(text: str) -> Any:
    """Inverse of `param_value` (a string that is not JSON stays a string)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def ids_fingerprint(ids: Iterable[str]) -> str:
    """Content hash of a list of episode ids (order-free): equal hashes mean the same episodes."""
    digest = hashlib.sha256()
    for item in sorted(ids):
        digest.update(item.encode() + b"\n")
    return digest.hexdigest()[:16]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_leaves(record: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, float]:
    """Every finite number (and bool, as 0/1) in a nested record, keys joined with ``/``."""
    skip = set(skip)
    out: dict[str, float] = {}
    for key, value in flatten(record, sep="/").items():
        if key in skip:
            continue
        if isinstance(value, bool) or is_number(value):
            out[key] = float(value)
    return out


def parse_code_version(value: Any) -> dict[str, Any]:
    """Normalise what ``config.json`` says: a dict, or the trainer's ``"0.1.0+abc1234"`` string."""
    if isinstance(value, Mapping):
        return {
            "package": value.get("package") or value.get("version"),
            "git_commit": value.get("git_commit") or value.get("commit"),
            "git_dirty": value.get("git_dirty"),
        }
    if isinstance(value, str) and value:
        package, _, commit = value.partition("+")
        return {"package": package, "git_commit": commit or None, "git_dirty": None}
    return {"package": None, "git_commit": None, "git_dirty": None}


def safetensors_signature(path: str | Path) -> dict[str, Any]:
    """Parameter count and architecture hash of a safetensors file, read from its header only.

    The header is 8 bytes of little-endian length then JSON ``{name: {dtype, shape, data_offsets}}``; no
    tensor is loaded. Two heads with the same tensor names and shapes have the same ``architecture_hash``:
    that is how the report shows, from numbers, that Case 3 shares Case 1's architecture.
    """
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {length})")
        header = json.loads(f.read(length))
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    params = sum(math.prod(v["shape"]) for v in tensors.values())
    shapes = sorted((k, tuple(v["shape"])) for k, v in tensors.items())
    arch = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    return {
        "trainable_params": int(params),
        "num_tensors": len(tensors),
        "architecture_hash": arch,
        "metadata": header.get("__metadata__") or {},
    }
