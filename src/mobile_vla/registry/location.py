"""Where the registry's store is: the tracking URI in force (argument, ``MLFLOW_TRACKING_URI`` or the
embedded SQLite file under ``$MOBILE_VLA_HOME``/the current directory), where new experiments keep their
artifacts, and the reachability check ``open_registry`` runs before any work starts. Also the two errors every
registry caller may catch.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)


DEFAULT_EXPERIMENT = "mobile-vla"
HEALTH_TIMEOUT_S = 5.0


class RegistryUnavailableError(RuntimeError):
    """The tracking store cannot be reached or written; raised by `open_registry`, before any work starts."""


class RegistryLookupError(LookupError):
    """A run, model version or alias that the store does not hold."""


# --- where the store is ----------------------------------------------------------------------------------
def project_dir() -> Path:
    """``$MOBILE_VLA_HOME`` or the current directory: the embedded store lives in its ``mlruns/``."""
    return Path(os.environ.get("MOBILE_VLA_HOME") or Path.cwd()).expanduser().resolve()


def default_tracking_uri(project: str | Path | None = None) -> str:
    db = (Path(project).resolve() if project else project_dir()) / "mlruns" / "mlflow.db"
    return f"sqlite:///{db}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The URI in force: the argument, else ``MLFLOW_TRACKING_URI``, else the embedded default.

    A relative SQLite path is made absolute, so the same store is the same URI from any directory (the run
    directory's ``registry.json`` is keyed by it).
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    path = _sqlite_path(uri)
    if path is not None:
        return f"sqlite:///{path}"
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        raise RegistryUnavailableError(
            f"tracking URI {uri!r} is not a URI; use e.g. sqlite:///path/mlflow.db, http://host:5000 or "
            "postgresql://user@host/db (a bare directory is not supported: pick a SQLite file in it)"
        )
    return uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///") :]
    if raw in ("", ":memory:"):
        raise RegistryUnavailableError(f"tracking URI {uri!r}: an in-memory SQLite store cannot be shared")
    return Path(raw).expanduser().resolve()


def default_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: explicit, never the current directory by accident.

    ``$MOBILE_VLA_ARTIFACT_LOCATION`` when set; for SQLite, an ``artifacts/`` folder beside the database; for a
    server, None (the server's own ``--artifacts-destination`` decides, as a team setup expects).
    """
    if os.environ.get("MOBILE_VLA_ARTIFACT_LOCATION"):
        return os.environ["MOBILE_VLA_ARTIFACT_LOCATION"]
    path = _sqlite_path(tracking_uri)
    if path is not None:
        return (path.parent / "artifacts").as_uri()
    return None


def _check_reachable(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S):
                return
        except urllib.error.HTTPError:
            return  # it answered (auth or an old server without /health): reachable; MLflow handles the rest
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryUnavailableError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}). Start it (e.g. `mlflow server "
                "--backend-store-uri postgresql://... --artifacts-destination ...`), point --tracking-uri or "
                "MLFLOW_TRACKING_URI at a running one, or pass --no-track to work without the registry."
            ) from exc
    path = _sqlite_path(uri)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe = path.parent / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise RegistryUnavailableError(
                f"cannot write the registry database {path} ({exc}). Set MOBILE_VLA_HOME or --tracking-uri to a "
                "writable place, or pass --no-track to work without the registry."
            ) from exc
