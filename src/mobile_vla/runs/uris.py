"""Run directories by name: a path, or a URI (``models:/case1@champion``) that a resolver turns into one.

``URI_RESOLVERS[scheme] = fn(uri) -> run_dir`` is the table. A scheme not in it is looked up once in the
``mobile_vla.uri_resolvers`` entry-point group, which is how the registry (a layer above) provides
``models:/`` without anything below it importing the registry: the dependency is declared in the package
metadata (``pyproject.toml``), not in an import.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "mobile_vla.uri_resolvers"

# scheme -> function turning "scheme://..." (or "models:/...") into a local run directory.
URI_RESOLVERS: dict[str, Callable[[str], Path]] = {}


def _scheme(text: str) -> str | None:
    if text.startswith("models:/"):
        return "models"
    if "://" in text:
        return text.split("://", 1)[0]
    return None


def _from_entry_points(scheme: str) -> Callable[[str], Path] | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == scheme:
            return ep.load()
    return None


def resolve_run_dir(run_dir_or_uri: str | Path) -> Path:
    """A local run directory for a path or a URI; an unknown scheme is an error naming the known ones."""
    text = str(run_dir_or_uri)
    scheme = _scheme(text)
    if scheme is None:
        return Path(text)
    if scheme not in URI_RESOLVERS:
        resolver = _from_entry_points(scheme)
        if resolver is not None:
            URI_RESOLVERS[scheme] = resolver
    if scheme not in URI_RESOLVERS:
        raise ValueError(
            f"cannot resolve {text!r}: no resolver for scheme {scheme!r} (known: {sorted(URI_RESOLVERS)}; "
            f"plug one in with the {ENTRY_POINT_GROUP!r} entry-point group); pass a run directory instead"
        )
    return Path(URI_RESOLVERS[scheme](text))
