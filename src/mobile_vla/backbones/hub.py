"""Finding Hugging Face weights without ever hanging on an unreachable hub.

``from_pretrained("org/name")`` with no network retries each file for about 45 s before failing. We instead
(1) load a local directory directly, (2) try the local Hugging Face cache with ``local_files_only=True``,
(3) in offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) stop there, and (4) otherwise probe the hub
with one short TCP connect before letting transformers download. Every failure says how to pass a local copy.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from mobile_vla.backbones.base import BackboneUnavailableError

_TRUTHY = {"1", "on", "yes", "true"}
PROBE_TIMEOUT_S = 3.0
T = TypeVar("T")


def hub_offline() -> bool:
    """True when the user asked transformers / huggingface_hub to stay offline."""
    if any(
        os.environ.get(k, "").strip().lower() in _TRUTHY for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connect to the hub endpoint (``HF_ENDPOINT`` respected); no retries."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_path(name_or_path: str) -> bool:
    """A local directory (existing, or written like a path) rather than a hub id ``org/name``."""
    return (
        os.path.isdir(os.path.expanduser(name_or_path))
        or name_or_path.startswith((".", "/", "~"))
        or name_or_path.count("/") > 1
        or "\\" in name_or_path
    )


def load_pretrained(
    name_or_path: str,
    loader: Callable[[str, bool], T],
    *,
    what: str,
    cli_hint: str,
    python_hint: str,
    required_files: tuple[str, ...] = ("config.json",),
    alternatives: str = "",
) -> tuple[T, bool]:
    """Run ``loader(ref, local_files_only)`` without ever hanging on an unreachable hub.

    Returns the loader's result and whether ``name_or_path`` was a local directory. Raises
    ``BackboneUnavailableError`` with a message that says how to pass a local copy.

    Args:
        what: human name for messages ("Kosmos-2 weights").
        cli_hint / python_hint: how to pass a local directory on the command line / from Python.
        required_files: files a local directory must contain.
        alternatives: a sentence on what to use instead (appended to failures).
    """
    tail = f" {alternatives}" if alternatives else ""
    if looks_like_path(name_or_path):
        directory = Path(name_or_path).expanduser()
        if not directory.is_dir():
            raise BackboneUnavailableError(
                f"{what}: directory {directory} does not exist. Pass a directory that holds the model's "
                f"{', '.join(required_files)} and weights ({cli_hint}).{tail}"
            )
        missing = [f for f in required_files if not (directory / f).is_file()]
        if missing:
            raise BackboneUnavailableError(
                f"{what}: {directory} has no {', '.join(missing)}; it should be a directory written by "
                f"save_pretrained or downloaded with `hf download <repo> --local-dir DIR`.{tail}"
            )
        try:
            return loader(str(directory), True), True
        except (OSError, ValueError) as err:
            raise BackboneUnavailableError(f"{what}: could not load from {directory}: {err}") from err

    try:
        return loader(name_or_path, True), False
    except (OSError, ValueError) as err:
        cached_error = err  # not (completely) in the local cache; decide whether the hub may be asked

    how = (
        f"Download it once where the hub is reachable (`hf download {name_or_path} --local-dir DIR`), copy DIR "
        f"here and pass it: {cli_hint} (Python: {python_hint})."
    )
    if hub_offline():
        raise BackboneUnavailableError(
            f"{what} '{name_or_path}' are not in the local Hugging Face cache and offline mode is on "
            f"(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE). {how}{tail}"
        ) from cached_error
    if not hub_reachable():
        raise BackboneUnavailableError(
            f"{what} '{name_or_path}' are not in the local Hugging Face cache and the hub is unreachable from "
            f"here (no connection within {PROBE_TIMEOUT_S:.0f} s). {how}{tail}"
        ) from cached_error
    try:
        return loader(name_or_path, False), False
    except (OSError, ValueError) as err:
        raise BackboneUnavailableError(
            f"{what} '{name_or_path}': download failed: {err}. {how}{tail}"
        ) from err


def snapshot_commit(resolved_dir: str | Path) -> str | None:
    """The commit hash of a Hugging Face cache snapshot directory (``.../snapshots/<commit>``), if it is one."""
    path = Path(resolved_dir)
    if path.parent.name == "snapshots" and len(path.name) == 40:
        return path.name
    return None
