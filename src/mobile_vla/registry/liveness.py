"""Runs whose process could not end them: the handles this process opened and has not finished
(``close_unfinished_runs``, called by ``mobile_vla.cli.process_hooks`` on the way out; the library installs
no exit hook), and whether the process that wrote a run is still alive (``reconcile_stale_runs`` uses it for
the runs of a process killed with ``kill -9``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mobile_vla.registry.store import RunHandle

logger = logging.getLogger(__name__)


# --- ending runs that their process could not end --------------------------------------------------------
# Strong references: a handle whose caller dropped it must still be closed when the process ends.
_open_handles: set[RunHandle] = set()


def close_unfinished_runs(status: str, reason: str) -> list[str]:
    """Finish every run this process started and did not finish, with ``status`` and ``reason``.

    The library installs no exit hook: ``mobile_vla.cli.process_hooks`` (the CLI, or a script that uses it)
    calls this on the way out; a process that dies without it is caught by ``reconcile_stale_runs``.
    Returns the run ids closed."""
    closed = []
    for handle in list(_open_handles):
        if handle.finished:
            continue
        try:
            handle.finish(status, error=reason)
            closed.append(handle.run_id)
        except Exception as exc:  # on the way out there is no one left to raise to
            logger.error("could not mark run %s %s: %s", handle.run_id, status, exc)
    return closed


def _pid_start_time(pid: int) -> str | None:
    """The process's start time (Linux ``/proc``), so a reused pid is not mistaken for the writer."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start_time is None or _pid_start_time(pid) in (None, start_time)
