"""API-key access: where the key comes from, how it is checked, and where an unauthenticated server may bind.

The key travels in the ``X-API-Key`` header (the lab's robot client sends it there). It is compared in
constant time, it is never logged (a wrong key is not logged either: it is often a near miss of the right
one), and it never appears in a config's ``repr``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import stat
from pathlib import Path

from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)

API_KEY_ENV = "VLA_API_KEY"
API_KEY_HEADER = "x-api-key"
OPEN_PATHS = frozenset({"/health"})
MIN_RECOMMENDED_KEY_CHARS = 16


class AuthConfigError(ValueError):
    """The server cannot start with this access configuration (no key, unsafe bind address, bad key file)."""


def load_api_key(api_key_file: str | os.PathLike | None = None, env: dict | None = None) -> str | None:
    """The API key from ``api_key_file`` if given (first line, whitespace stripped), else ``$VLA_API_KEY``.

    Returns None when neither is set. Raises :class:`AuthConfigError` for a missing or empty key file.
    """
    env = os.environ if env is None else env
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"cannot read --api-key-file {path}: {exc.strerror or exc}") from None
        lines = text.strip().splitlines()
        key = lines[0].strip() if lines else ""
        if not key:
            raise AuthConfigError(f"--api-key-file {path} is empty; put the key on its first line")
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRGRP | stat.S_IROTH):
                logger.warning("API key file %s is readable by other users; consider chmod 600", path)
        except OSError:
            pass
    else:
        key = (env.get(API_KEY_ENV) or "").strip()
        if not key:
            return None
    if len(key) < MIN_RECOMMENDED_KEY_CHARS:
        logger.warning(
            "the API key is only %d characters; use at least %d random ones "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            len(key),
            MIN_RECOMMENDED_KEY_CHARS,
        )
    return key


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_access_config(api_key: str | None, insecure_no_auth: bool, host: str) -> None:
    """Refuse to serve without a key unless explicitly asked to, and then only on loopback."""
    if api_key is not None and insecure_no_auth:
        raise AuthConfigError(
            "an API key is set and --insecure-no-auth was given; pick one (unset VLA_API_KEY / drop "
            "--api-key-file, or drop --insecure-no-auth)"
        )
    if api_key is None and not insecure_no_auth:
        raise AuthConfigError(
            f"no API key: set {API_KEY_ENV} or pass --api-key-file FILE (the robot sends it as X-API-Key); "
            "for local experiments only, --insecure-no-auth serves without one on 127.0.0.1"
        )
    if insecure_no_auth and not is_loopback(host):
        raise AuthConfigError(
            f"--insecure-no-auth binds only to loopback (127.0.0.1, ::1, localhost), not {host!r}: "
            "anyone on the network could drive the robot; set an API key to serve on other addresses"
        )


def key_matches(provided: bytes | None, expected: bytes) -> bool:
    """Constant-time comparison, so response timing reveals nothing about how much of a guess was right."""
    if provided is None:
        return False
    return hmac.compare_digest(provided, expected)


class APIKeyMiddleware:
    """ASGI middleware: every path except ``/health`` needs the key (403 otherwise), including unknown paths,
    so a route added later cannot forget its check. ``api_key=None`` (``--insecure-no-auth``) lets all through.
    """

    def __init__(self, app, api_key: str | None, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self._expected = api_key.encode("utf-8") if api_key is not None else None
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self._expected is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        provided = None
        for name, value in scope.get("headers", []):
            if name == API_KEY_HEADER.encode("latin-1"):
                provided = value
                break
        if not key_matches(provided, self._expected):
            client = scope.get("client")
            logger.warning(
                "refused %s %s from %s: %s API key",
                scope.get("method"),
                scope["path"],
                client[0] if client else "?",
                "missing" if provided is None else "wrong",
            )
            detail = "missing X-API-Key header" if provided is None else "invalid API key"
            response = JSONResponse({"detail": detail}, status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
