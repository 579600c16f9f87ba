"""Working on a shared SQLite file: MLflow calls retried when SQLite says "database is locked"
(``_RetryingClient``), and an exclusive cross-process file lock for creating the database.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


# --- retries around a shared SQLite file ---------------------------------------------------------------
def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


class _RetryingClient:
    """MlflowClient whose calls retry (with jittered backoff) when SQLite says the database is locked.

    MLflow sets a 20 s busy timeout, but SQLite answers "locked" at once when two connections both try to
    upgrade a read transaction to a write one; a failed statement was rolled back, so a retry is safe.
    """

    def __init__(self, client: Any, attempts: int = 10) -> None:
        self._client = client
        self._attempts = attempts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            delay = 0.05
            for attempt in range(self._attempts):
                try:
                    return attr(*args, **kwargs)
                except Exception as exc:
                    if attempt == self._attempts - 1 or not _is_lock_error(exc):
                        raise
                    logger.debug("%s: database locked, retry %d", name, attempt + 1)
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 2.0)
            raise AssertionError("unreachable")

        return call


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (POSIX); elsewhere a no-op."""
    try:
        import fcntl
    except ImportError:  # Windows: creating the database concurrently is then the user's business
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
