"""The run directory, owned in one place: ``config.json``, ``metrics.jsonl``, ``summary.json``
(``runs.directory``), the head checkpoints and the resume state (``runs.checkpoints``).

Training writes a run directory; evaluation, inference (``policies.inference``), the registry and the server
read it, all through this package. It knows nothing of cases or trainers: it stores tensors and JSON.
"""

from mobile_vla.runs.checkpoints import (
    CheckpointMismatchError,
    check_compatible,
    load_head,
    load_resume_state,
    read_head_metadata,
    save_head,
    save_resume_state,
)
from mobile_vla.runs.directory import STATUSES, read_run_config, write_run_config, write_summary

__all__ = [
    "STATUSES",
    "CheckpointMismatchError",
    "check_compatible",
    "load_head",
    "load_resume_state",
    "read_head_metadata",
    "read_run_config",
    "save_head",
    "save_resume_state",
    "write_run_config",
    "write_summary",
]
