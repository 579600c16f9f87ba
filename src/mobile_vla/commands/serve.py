"""`mobile-vla serve RUN_DIR|models:/NAME@ALIAS`: the inference server the robot calls."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mobile_vla.serving.protocol import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_SIDE,
    DEFAULT_MAX_INSTRUCTION_CHARS,
)
from mobile_vla.serving.safety import DEFAULT_MAX_ANGULAR, DEFAULT_MAX_LINEAR

logger = logging.getLogger("mobile_vla.serve")

EPILOG = """\
examples:
  export VLA_API_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
  mobile-vla serve runs/case1 --host 0.0.0.0 --port 8000
  mobile-vla serve models:/case1@production --api-key-file ~/.vla_key --max-linear 0.8
  mobile-vla serve runs/case1 --insecure-no-auth          # local experiments only: 127.0.0.1, no key
  mobile-vla serve exports/case1-onnx --runtime onnx      # an ONNX export on onnxruntime (no torch)

  curl -s http://HOST:8000/health
  curl -s -H "X-API-Key: $VLA_API_KEY" http://HOST:8000/model/info
  curl -s -H "X-API-Key: $VLA_API_KEY" -H 'Content-Type: application/json' \\
       -d "{\\"image\\": \\"$(base64 -w0 frame.jpg)\\", \\"instruction\\": \\"Navigate ... on the left\\"}" \\
       http://HOST:8000/predict
"""


def _axis_limit(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AXIS=VALUE (e.g. angular_z=0.5), got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a trained policy over HTTP (FastAPI + uvicorn) for the robot",
        description="Serve a trained policy: GET /health, GET /model/info, POST /predict (base64 JPEG/PNG + "
        "instruction -> velocity command), POST /reset. Every endpoint but /health needs the X-API-Key "
        "header (key from $VLA_API_KEY or --api-key-file). A model failure or a non-finite output answers "
        "with zero velocity (source 'safe_stop:<reason>'); every action is clamped to the velocity limits.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        metavar="RUN_DIR|models:/NAME@ALIAS|EXPORT_DIR",
        help="run directory, registry address, or an ONNX export (`mobile-vla export`)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key-file", help="file whose first line is the API key (default: $VLA_API_KEY)")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without an API key; only allowed on a loopback address",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument(
        "--runtime",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="torch (a run) or onnx (an export, on onnxruntime); auto picks onnx for an export directory",
    )
    g = p.add_argument_group("safety")
    g.add_argument(
        "--max-linear",
        type=float,
        default=DEFAULT_MAX_LINEAR,
        help=f"|linear_*| limit (default {DEFAULT_MAX_LINEAR})",
    )
    g.add_argument(
        "--max-angular",
        type=float,
        default=DEFAULT_MAX_ANGULAR,
        help=f"|angular_*| limit (default {DEFAULT_MAX_ANGULAR})",
    )
    g.add_argument(
        "--limit",
        type=_axis_limit,
        action="append",
        default=[],
        metavar="AXIS=VALUE",
        help="limit for one axis, overriding the above (repeatable)",
    )
    g.add_argument(
        "--max-image-mb",
        type=float,
        default=DEFAULT_MAX_IMAGE_BYTES / 2**20,
        help=f"largest image file in MiB (default {DEFAULT_MAX_IMAGE_BYTES / 2**20:g})",
    )
    g.add_argument(
        "--max-image-side",
        type=int,
        default=DEFAULT_MAX_IMAGE_SIDE,
        help=f"largest width/height in px (default {DEFAULT_MAX_IMAGE_SIDE})",
    )
    g.add_argument(
        "--max-instruction-chars",
        type=int,
        default=DEFAULT_MAX_INSTRUCTION_CHARS,
        help=f"longest instruction (default {DEFAULT_MAX_INSTRUCTION_CHARS})",
    )
    s = p.add_argument_group("strategy")
    s.add_argument(
        "--default-strategy",
        choices=("receding_horizon", "chunk_reuse"),
        default="receding_horizon",
        help="when a request names none (default receding_horizon; chunk_reuse needs a Case 4 model)",
    )
    s.add_argument("--chunk-steps", type=int, default=None, help="execute at most N actions of a chunk")
    s.add_argument(
        "--queue-timeout", type=float, default=10.0, help="503 after waiting this long for the model (s)"
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=_serve)


def build_server_config(args: argparse.Namespace, env: dict | None = None):
    """Access and limits from the arguments; raises ``AuthConfigError``/``ValueError`` before any model loads."""
    from mobile_vla.serving.app import ServerConfig
    from mobile_vla.serving.auth import check_access_config, load_api_key
    from mobile_vla.serving.protocol import InputLimits
    from mobile_vla.serving.safety import VelocityLimits

    api_key = load_api_key(args.api_key_file, os.environ if env is None else env)
    if args.insecure_no_auth and api_key is not None and args.api_key_file is None:
        # VLA_API_KEY lingering in the environment: --insecure-no-auth is the explicit choice.
        api_key = None
    check_access_config(api_key, args.insecure_no_auth, args.host)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    return ServerConfig(
        api_key=api_key,
        insecure_no_auth=args.insecure_no_auth,
        velocity_limits=VelocityLimits(
            max_linear=args.max_linear, max_angular=args.max_angular, per_axis=dict(args.limit)
        ),
        input_limits=InputLimits(
            max_image_bytes=int(args.max_image_mb * 2**20),
            max_image_side=args.max_image_side,
            max_instruction_chars=args.max_instruction_chars,
        ),
        default_strategy=args.default_strategy,
        chunk_steps=args.chunk_steps,
        queue_timeout_s=args.queue_timeout,
    )


def _serve(args: argparse.Namespace) -> int:
    from mobile_vla.serving.auth import AuthConfigError

    try:
        config = build_server_config(args)
    except (AuthConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from mobile_vla.serving.app import create_app
    from mobile_vla.serving.loading import load_for_serving
    from mobile_vla.serving.server import run_server

    try:
        policy, metadata = load_for_serving(args.target, device=args.device, runtime=args.runtime)
        app = create_app(policy, metadata, config)
    except (FileNotFoundError, RuntimeError, ValueError, TypeError) as exc:
        print(f"error: cannot serve {args.target}: {exc}", file=sys.stderr)
        return 1
    auth = "X-API-Key required" if config.api_key else "NO AUTH (loopback only)"
    logger.info(
        "serving %s (%s, %s) on http://%s:%d [%s]; limits %s",
        metadata.get("model_name"),
        metadata.get("case"),
        metadata.get("device"),
        args.host,
        args.port,
        auth,
        config.velocity_limits.as_dict(app.state.runner.action_dims),
    )
    run_server(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
