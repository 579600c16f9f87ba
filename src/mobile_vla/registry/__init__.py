"""The model registry: every run recorded in MLflow, honest comparisons, and the registry document.

What train / evaluate / sim evaluate / serve call (see `store` for the details)::

    from mobile_vla.registry import open_registry
    registry = open_registry(args.tracking_uri, no_track=args.no_track)   # fails fast if unreachable
    trainer = Trainer(..., callbacks=[registry.training_callback()])     # or start_training_run / finish
    registry.log_evaluation(run_dir, "test", result)                     # after evaluate
    registry.log_closed_loop(run_dir, sim_result)                        # after sim evaluate
    run_dir = registry.resolve_model_uri("models:/case1@champion")       # serve / evaluate / sim

Importing this package does not import MLflow (that happens when a store is opened).
"""

from mobile_vla.registry.callback import RegistryCallback
from mobile_vla.registry.cli_args import add_tracking_arguments, registry_from_args
from mobile_vla.registry.location import (
    RegistryLookupError,
    RegistryUnavailableError,
    default_tracking_uri,
    resolve_tracking_uri,
)
from mobile_vla.registry.null import NullRegistry
from mobile_vla.registry.record import RunRecord, StoredRun, read_run_dir
from mobile_vla.registry.store import Registry, RunHandle, open_registry, registry_run_id, resolve_model_uri

__all__ = [
    "NullRegistry",
    "Registry",
    "RegistryCallback",
    "RegistryLookupError",
    "RegistryUnavailableError",
    "RunHandle",
    "RunRecord",
    "StoredRun",
    "add_tracking_arguments",
    "default_tracking_uri",
    "open_registry",
    "read_run_dir",
    "registry_from_args",
    "registry_run_id",
    "resolve_model_uri",
    "resolve_tracking_uri",
]
