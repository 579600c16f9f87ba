"""Checkpoints and resume state: tensors in safetensors, everything else in JSON. Nothing is unpickled.

A head checkpoint (``best.safetensors``, ``last.safetensors``) carries, in its safetensors metadata, the
backbone fingerprint hash and the action dims it was trained with, so it can refuse to be loaded with
anything else. The resume state (``resume/``) holds what is needed to continue a run exactly: optimizer and
scheduler state, the torch / numpy / Python RNG states, the epoch and the early-stopping counters.

The resume state is written as one unit: each save goes into a fresh sub-directory of ``resume/``
(``epoch-00003-<unique>/`` with ``state.safetensors`` + ``state.json``, fsynced), and only then does the
one-line manifest ``resume/CURRENT`` (replaced atomically) point at it; older sub-directories are removed
after that. A crash at any instant therefore leaves ``CURRENT`` naming a complete state: the new one or the
previous one, never half of each. (Before this, the two files were replaced one after the other, and a crash
between the two writes left a state that could not be resumed, with the previous one already overwritten.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mobile_vla.utils.files import atomic_write_text as _atomic_write_text
from mobile_vla.utils.files import fsync_path as _fsync

FORMAT_VERSION = "1"


class CheckpointMismatchError(ValueError):
    """A checkpoint was loaded with a backbone or action dims other than the ones it was trained with."""


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_head(
    path: str | Path,
    policy: nn.Module,
    *,
    fingerprint_hash: str,
    action_dims: Sequence[str],
    case: str,
    epoch: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the head's weights (contiguous CPU copies) with identifying metadata."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in policy.state_dict().items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "fingerprint_hash": str(fingerprint_hash),
        "action_dims": json.dumps(list(action_dims)),
        "case": case,
        "epoch": str(epoch),
        "extra": json.dumps(dict(extra or {})),
    }
    _atomic_save_file(tensors, path, metadata)
    return path


def read_head_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    out: dict[str, Any] = dict(meta)
    if "action_dims" in meta:
        out["action_dims"] = tuple(json.loads(meta["action_dims"]))
    if "epoch" in meta:
        out["epoch"] = int(meta["epoch"])
    if "extra" in meta:
        out["extra"] = json.loads(meta["extra"])
    return out


def check_compatible(
    path: str | Path, meta: Mapping[str, Any], *, fingerprint_hash: str, action_dims: Sequence[str]
) -> None:
    """Refuse a checkpoint whose backbone fingerprint or action dims differ from what it is loaded with."""
    saved_hash = meta.get("fingerprint_hash")
    if saved_hash != fingerprint_hash:
        raise CheckpointMismatchError(
            f"{path}: checkpoint was trained on backbone features with fingerprint {saved_hash}, but it is being "
            f"loaded with a backbone whose fingerprint is {fingerprint_hash}. A head only works with the exact "
            "backbone it was trained on: load the run with the backbone recorded in its config.json "
            "(profile, weights path and dtype), or retrain."
        )
    saved_dims = tuple(meta.get("action_dims", ()))
    if saved_dims != tuple(action_dims):
        raise CheckpointMismatchError(
            f"{path}: checkpoint predicts action dims {list(saved_dims)}, but it is being loaded for action dims "
            f"{list(action_dims)}. Use the action dims the run was trained with, or retrain."
        )


def load_head(
    path: str | Path, policy: nn.Module, *, fingerprint_hash: str, action_dims: Sequence[str]
) -> dict[str, Any]:
    """Load weights into ``policy`` after checking compatibility; returns the checkpoint's metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    meta = read_head_metadata(path)
    check_compatible(path, meta, fingerprint_hash=fingerprint_hash, action_dims=action_dims)
    state = load_file(str(path), device="cpu")
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit the {type(policy).__name__} head built from config.json "
            f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})"
        )
    return meta


# --- resume state ----------------------------------------------------------------------------------------


def _flatten_optimizer(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON scalars."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer."):
            continue
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_resume_state(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    counters: Mapping[str, Any],
    averaged: Sequence[torch.Tensor] | None = None,
) -> Path:
    """Everything to continue after ``epoch`` (0-based, completed), written atomically (JSON last).

    The head's weights are stored here too, so resuming never depends on which checkpoint was written last;
    ``averaged``: the weight average's tensors (``training.averaging``), stored as ``average.{i}``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    for name, value in model.state_dict().items():
        tensors[f"model.{name}"] = value.detach().to("cpu").contiguous()
    for i, value in enumerate(averaged or ()):
        tensors[f"average.{i}"] = value.detach().to("cpu").contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_state = random.getstate()
    state = {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "counters": dict(counters),
        "optimizer": optim_meta,
        "scheduler": scheduler.state_dict(),
        "rng": {
            "numpy": {
                "kind": np_state[0],
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "python": [py_state[0], list(py_state[1]), py_state[2]],
        },
    }
    # One unit: write a complete new state beside the current one, then switch the manifest to it.
    name = f"epoch-{int(epoch):05d}-{os.getpid()}-{time.time_ns()}"
    staging = directory / f".writing-{name}"
    staging.mkdir()
    save_file(tensors, str(staging / "state.safetensors"), metadata={"epoch": str(epoch)})
    (staging / "state.json").write_text(json.dumps(state, indent=1))
    for f in ("state.safetensors", "state.json"):
        _fsync(staging / f)
    os.replace(staging, directory / name)
    _atomic_write_text(directory / MANIFEST, name + "\n")
    for stale in directory.iterdir():
        if stale.name != name and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    for legacy in ("state.safetensors", "state.json"):
        (directory / legacy).unlink(missing_ok=True)
    return directory


MANIFEST = "CURRENT"
"""The file in ``resume/`` naming the sub-directory that holds the last complete resume state."""


def has_resume_state(directory: str | Path) -> bool:
    """True when ``directory`` (``resume/``) holds a complete resume state (a run killed before the end of its
    first epoch has none: it starts again from the beginning)."""
    state = resume_state_dir(directory)
    return (state / "state.json").is_file() and (state / "state.safetensors").is_file()


def resume_state_dir(directory: str | Path) -> Path:
    """The directory holding the last complete resume state under ``directory`` (``resume/``).

    Follows ``CURRENT``; a ``resume/`` written before the manifest existed (the two files directly inside it)
    is read as it is.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST
    if manifest.is_file():
        name = manifest.read_text().strip()
        target = directory / name
        if not name or "/" in name or not target.is_dir():
            raise FileNotFoundError(f"{manifest}: names {name!r}, which is not a resume state in {directory}")
        return target
    return directory


def load_resume_state(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    averaged: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states; returns ``{"epoch": ..., "counters": {...}}``.

    ``averaged``: the weight average's tensors, filled in place from ``average.{i}`` (an error if the state
    holds another number of them)."""
    directory = resume_state_dir(directory)
    json_path, tensor_path = directory / "state.json", directory / "state.safetensors"
    if not json_path.is_file() or not tensor_path.is_file():
        raise FileNotFoundError(
            f"{directory}: no resume state (state.json + state.safetensors); the run stopped before finishing "
            "its first epoch, so start it again without --resume"
        )
    state = json.loads(json_path.read_text())
    tensors = load_file(str(tensor_path), device="cpu")
    if read_epoch(tensor_path) != state["epoch"]:
        raise ValueError(
            f"{directory}: state.json and state.safetensors disagree on the epoch; the save was cut"
        )
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    if averaged is not None:
        stored = [tensors[f"average.{i}"] for i in range(sum(k.startswith("average.") for k in tensors))]
        if len(stored) != len(averaged):
            raise ValueError(
                f"{directory}: the run averages {len(averaged)} weight tensors (ema_decay), the state holds "
                f"{len(stored)}"
            )
        with torch.no_grad():
            for mine, theirs in zip(averaged, stored, strict=True):
                mine.copy_(theirs)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    # By device index as a number: sorted as strings, "rng.cuda.10" would come before "rng.cuda.2".
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.split(".")[-1]))
    cuda_states = [tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    np_meta = state["rng"]["numpy"]
    np.random.set_state(
        (
            np_meta["kind"],
            tensors["rng.numpy.keys"].numpy().astype(np.uint32),
            np_meta["pos"],
            np_meta["has_gauss"],
            np_meta["cached_gaussian"],
        )
    )
    version, internal, gauss = state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    return {"epoch": state["epoch"], "counters": state["counters"]}


def read_epoch(tensor_path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(tensor_path), framework="pt") as f:
        return int((f.metadata() or {}).get("epoch", -1))
