"""The inference server: a FastAPI app around one ``ControlPolicy``.

    from mobile_vla.serving import ServerConfig, create_app
    app = create_app(policy, {"model_name": "case1@prod", "case": "case1"}, ServerConfig(api_key="..."))

Endpoints (all but ``/health`` need the ``X-API-Key`` header, else 403):

- ``GET /health`` -> ``{"status": "healthy", "model_loaded", "model_name", "device"}``
- ``GET /model/info`` -> case, model class, backbone and fingerprint, action dims and names, velocity limits,
  trainable parameters, registry run id, strategies, input limits, counters
- ``POST /predict`` ``{"image": base64 JPEG/PNG, "instruction": str, "strategy"?: "receding_horizon" |
  "chunk_reuse"}`` -> ``{"action", "latency_ms", "model_name", "strategy", "source", "clamped",
  "buffer_status", "timings_ms", "predicted_class"}`` (``predicted_class``: the key class's name for a
  key-class policy, ``null`` for a regression policy or a safe stop; see ``serving.protocol``)
- ``POST /reset`` -> clears the policy's history and the stored chunk

A malformed request gets a 4xx with ``{"detail": "<what was wrong>"}`` and changes nothing; a model failure or
a non-finite output gets a 200 with a zero action and ``source="safe_stop:<reason>"`` (the robot must stop,
not guess). The interactive docs (``/docs``, ``/openapi.json``) are off: the server drives a robot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from mobile_vla.serving.auth import APIKeyMiddleware, AuthConfigError
from mobile_vla.serving.protocol import (
    STRATEGIES,
    HealthResponse,
    InputError,
    InputLimits,
    PredictRequest,
    PredictResponse,
    check_instruction,
    decode_image,
)
from mobile_vla.serving.runner import PolicyRunner, ServerBusy
from mobile_vla.serving.safety import VelocityLimits

logger = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """How the server guards the robot.

    Attributes:
        api_key: the key clients must send as ``X-API-Key``. Never printed (``repr=False``).
        insecure_no_auth: serve without a key (tests, local experiments). ``create_app`` refuses to build an
            app with neither a key nor this flag; the ``serve`` command also refuses a non-loopback address.
        velocity_limits: per-axis limits applied to every action.
        input_limits: image size and instruction length bounds.
        default_strategy: used when a request names none; ``chunk_reuse`` needs a chunking model.
        chunk_steps: under ``chunk_reuse``, execute at most this many actions of a chunk (None: all).
        queue_timeout_s: a request that waits longer than this for the model gets 503.
    """

    api_key: str | None = field(default=None, repr=False)
    insecure_no_auth: bool = False
    velocity_limits: VelocityLimits = field(default_factory=VelocityLimits)
    input_limits: InputLimits = field(default_factory=InputLimits)
    default_strategy: str = "receding_horizon"
    chunk_steps: int | None = None
    queue_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.api_key is not None and not str(self.api_key).strip():
            raise ValueError("ServerConfig.api_key is empty; give a key or None with insecure_no_auth=True")
        if self.api_key is None and not self.insecure_no_auth:
            raise AuthConfigError(
                "ServerConfig has no api_key; set one (VLA_API_KEY / --api-key-file) or pass "
                "insecure_no_auth=True explicitly"
            )
        if self.default_strategy not in STRATEGIES:
            raise ValueError(
                f"ServerConfig.default_strategy must be one of {STRATEGIES}, got {self.default_strategy!r}"
            )
        if self.chunk_steps is not None and (not isinstance(self.chunk_steps, int) or self.chunk_steps < 1):
            raise ValueError(
                f"ServerConfig.chunk_steps must be a positive integer or None, got {self.chunk_steps!r}"
            )
        if not self.queue_timeout_s > 0:
            raise ValueError(f"ServerConfig.queue_timeout_s must be > 0, got {self.queue_timeout_s!r}")


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` (413) before they are buffered whole and parsed as JSON."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False  # the server rejects a malformed length itself
                if too_large:
                    response = JSONResponse(
                        {"detail": f"request body is over the limit of {self.max_bytes} bytes"}, 413
                    )
                    await response(scope, receive, send)
                    return
        received = 0

        async def counting_receive():
            # A chunked upload has no content-length: count as it arrives. The HTTPException surfaces through
            # FastAPI's body parsing as a 413.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return (
        'request must be JSON {"image": "<base64 JPEG/PNG>", "instruction": "<text>", '
        '"strategy": "receding_horizon" | "chunk_reuse" (optional)}; ' + "; ".join(parts)
    )


def build_model_info(runner: PolicyRunner, metadata: dict, config: ServerConfig) -> dict:
    """What ``GET /model/info`` answers: the model's metadata plus what the server enforces."""
    dims = runner.action_dims
    info = {
        "model_name": metadata.get("model_name"),
        "case": metadata.get("case"),
        "model_class": metadata.get("model_class") or type(runner.policy).__name__,
        "backbone": metadata.get("backbone"),
        "trainable_parameters": metadata.get("trainable_parameters"),
        "registry_run_id": metadata.get("registry_run_id"),
        "device": metadata.get("device"),
    }
    info.update({k: v for k, v in metadata.items() if k not in info})
    info.update(
        {
            "action_dim": len(dims),
            "action_dims": list(dims),  # the ControlPolicy's name for them
            "action_names": list(dims),
            "velocity_limits": config.velocity_limits.as_dict(dims),
            "supports_chunks": runner.supports_chunks,
            "strategies": [s for s in STRATEGIES if s != "chunk_reuse" or runner.supports_chunks],
            "default_strategy": config.default_strategy,
            "chunk_steps": config.chunk_steps,
            "input_limits": config.input_limits.as_dict(),
            "action_space": "keys" if runner.key_classes else "continuous",
            "key_classes": list(runner.key_classes) if runner.key_classes else None,
        }
    )
    return info


def create_app(policy, metadata: dict | None = None, config: ServerConfig | None = None) -> FastAPI:
    """Build the server for ``policy`` (a ``ControlPolicy``).

    Args:
        policy: ``action_dims``, ``reset()``, ``act(image uint8 [H,W,3], instruction) -> (A,)``, optionally
            ``act_chunk(...) -> (K, A)``.
        metadata: what ``/model/info`` reports (``model_name``, ``case``, ``model_class``, ``backbone``,
            ``trainable_parameters``, ``registry_run_id``, ``device``, any other JSON-able keys).
        config: access, limits and strategy; the default refuses to build (no key): pass
            ``ServerConfig(api_key=...)`` or ``ServerConfig(insecure_no_auth=True)``.
    """
    config = config if config is not None else ServerConfig()
    metadata = dict(metadata or {})
    metadata.setdefault("model_name", type(policy).__name__)
    metadata.setdefault("device", str(getattr(policy, "device", "cpu")))
    runner = PolicyRunner(
        policy,
        config.velocity_limits,
        chunk_steps=config.chunk_steps,
        queue_timeout_s=config.queue_timeout_s,
    )
    if config.default_strategy == "chunk_reuse" and not runner.supports_chunks:
        raise ValueError(
            f"default strategy 'chunk_reuse' needs a chunking model (Case 4); {type(policy).__name__} has no "
            "act_chunk(); use 'receding_horizon'"
        )
    model_name = str(metadata["model_name"])
    device = str(metadata["device"])
    limits = config.input_limits

    app = FastAPI(
        title="mobile-vla inference server",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runner = runner
    app.state.config = config
    app.state.metadata = metadata

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Drop the echoed input: it may be a 13 MB base64 string.
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
        return JSONResponse(
            {"detail": _validation_message(errors), "errors": jsonable_encoder(errors)}, status_code=422
        )

    @app.exception_handler(InputError)
    async def _on_input_error(request: Request, exc: InputError) -> JSONResponse:
        logger.info("rejected %s: %s", request.url.path, exc.message)
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(ServerBusy)
    async def _on_busy(request: Request, exc: ServerBusy) -> JSONResponse:
        logger.warning("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/health", response_model=HealthResponse)
    def health() -> dict:
        return {"status": "healthy", "model_loaded": True, "model_name": model_name, "device": device}

    @app.get("/model/info")
    def model_info() -> dict:
        info = build_model_info(runner, metadata, config)
        info["stats"] = runner.stats.as_dict()
        return jsonable_encoder(info)

    @app.post("/predict", response_model=PredictResponse)
    def predict(request: PredictRequest) -> dict:
        # A plain `def`: FastAPI runs it in its thread pool, so decoding proceeds in parallel and only the
        # model call waits for the lock.
        start = time.perf_counter()
        instruction = check_instruction(request.instruction, limits)
        strategy = request.strategy or config.default_strategy
        if strategy == "chunk_reuse" and not runner.supports_chunks:
            raise InputError(
                422,
                f"strategy 'chunk_reuse' needs a model that predicts action chunks (Case 4); {model_name} "
                "does not: use 'receding_horizon' or leave strategy out",
            )
        image = decode_image(request.image, limits)
        decode_ms = (time.perf_counter() - start) * 1000.0
        result = runner.step(image, instruction, strategy)
        return {
            "action": [float(v) for v in result.action],
            "latency_ms": (time.perf_counter() - start) * 1000.0,
            "model_name": model_name,
            "strategy": result.strategy,
            "source": result.source,
            "clamped": result.clamped,
            "buffer_status": result.buffer_status,
            "predicted_class": result.predicted_class,
            "timings_ms": {
                "decode": decode_ms,
                "queue": result.queue_ms,
                "inference": result.inference_ms,
            },
        }

    @app.post("/reset")
    def reset() -> JSONResponse:
        try:
            status = runner.reset()
        except ServerBusy:
            raise
        except Exception as exc:
            logger.exception("policy.reset() failed")
            return JSONResponse({"detail": f"reset failed: {type(exc).__name__}: {exc}"}, status_code=500)
        return JSONResponse({"status": "reset", "model_name": model_name, "buffer_status": status})

    # The last added runs first: the key check, then the size limit, then the routes. A client without the
    # key learns nothing, not even the size limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    return app
