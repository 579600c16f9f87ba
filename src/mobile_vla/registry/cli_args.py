"""The registry's command-line flags (``--tracking-uri``, ``--no-track``) and the registry they open,
shared by every command that records into or reads the registry.
"""

from __future__ import annotations

import logging
from typing import Any

from mobile_vla.registry.null import NullRegistry
from mobile_vla.registry.store import Registry, open_registry

logger = logging.getLogger(__name__)


def add_tracking_arguments(parser: Any, no_track: bool = True) -> None:
    """``--tracking-uri`` (and ``--no-track``) for any command that records into or reads the registry."""
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlruns/mlflow.db with "
        "project = $MOBILE_VLA_HOME or the current directory)",
    )
    if no_track:
        parser.add_argument("--no-track", action="store_true", help="do not record into the registry")


def registry_from_args(args: Any) -> Registry | NullRegistry:
    return open_registry(getattr(args, "tracking_uri", None), no_track=bool(getattr(args, "no_track", False)))
