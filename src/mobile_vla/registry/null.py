"""``--no-track``: a registry and a run handle that accept every call and record nothing, so commands
never branch on whether tracking is on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mobile_vla.registry.callback import RegistryCallback
from mobile_vla.registry.location import RegistryLookupError

logger = logging.getLogger(__name__)


# --- --no-track -------------------------------------------------------------------------------------------
class NullRunHandle:
    run_id = None
    finished = False

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, status: str = "finished", summary=None, error=None) -> None:
        self.finished = True

    def __enter__(self) -> NullRunHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finished = True


class NullRegistry:
    """What ``--no-track`` gets: the same API, recording nothing (a log line says so once)."""

    enabled = False
    tracking_uri = None

    def __init__(self) -> None:
        logger.info("registry: --no-track, nothing is recorded")

    def start_training_run(self, run_dir, config=None) -> NullRunHandle:
        return NullRunHandle()

    def record_run_dir(self, run_dir) -> None:
        return None

    def log_evaluation(self, run_dir, split, eval_result=None) -> None:
        return None

    def log_closed_loop(self, run_dir, sim_result) -> None:
        return None

    def resolve_model_uri(self, uri: str, download_dir=None) -> Path:
        if uri.startswith("models:/"):
            raise RegistryLookupError(f"{uri}: models:/ addresses need the registry; drop --no-track")
        return Path(uri)

    def training_callback(self) -> RegistryCallback:
        return RegistryCallback(self)
