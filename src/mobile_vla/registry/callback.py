"""``RegistryCallback``: the registry plugged into the trainer's ``Callback`` hooks (run start, each epoch,
run end), so the trainer never knows MLflow; and the one message for a run the store could not record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mobile_vla.registry.null import NullRegistry, NullRunHandle
    from mobile_vla.registry.store import Registry, RunHandle

logger = logging.getLogger(__name__)


class RegistryCallback:
    """Plugs the registry into the trainer's callback hooks without the trainer knowing MLflow."""

    def __init__(self, registry: Registry | NullRegistry) -> None:
        self.registry = registry
        self.handle: RunHandle | NullRunHandle | None = None

    def on_run_start(self, trainer: Any) -> None:
        self.handle = self.registry.start_training_run(trainer.out_dir)

    def on_epoch_end(self, trainer: Any, record: Mapping[str, Any]) -> None:
        if self.handle is not None:
            self.handle.log_epoch(int(record.get("epoch", 0)), record)

    def on_run_end(self, trainer: Any, summary: Mapping[str, Any]) -> None:
        # Called from the trainer's `finally`: an error here must not replace the training's outcome.
        if self.handle is not None:
            try:
                self.handle.finish(str(summary.get("status", "failed")), summary)
            except Exception as exc:
                _log_unrecorded(getattr(trainer, "out_dir", "RUN_DIR"), exc)


def _log_unrecorded(run_dir: Any, exc: BaseException) -> None:
    logger.error(
        "registry: could not record the end of %s (%s); the run directory is complete, import it with "
        "`mobile-vla registry record %s` once the store is reachable",
        run_dir,
        exc,
        run_dir,
    )
