"""What ``mobile-vla serve`` serves: a run directory or a registry address turned into (policy, metadata).

The policy comes from ``mobile_vla.policies.load_policy`` and ``models:/NAME@ALIAS`` addresses from
``mobile_vla.registry.resolve_model_uri``; both are imported here, lazily, so the server itself depends only on
the ``ControlPolicy`` protocol.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODELS_SCHEME = "models:/"


def resolve_target(target: str) -> tuple[Path, str, str | None]:
    """``RUN_DIR`` or ``models:/NAME@ALIAS`` -> (run directory, model name, registry address or None)."""
    if target.startswith(MODELS_SCHEME):
        name = target[len(MODELS_SCHEME) :]
        if not name:
            raise ValueError(
                f"{target!r} names no model; use models:/NAME@ALIAS, e.g. models:/case1@production"
            )
        try:
            from mobile_vla.registry import resolve_model_uri
        except ImportError as exc:
            raise RuntimeError(
                f"cannot resolve {target!r}: this installation has no mobile_vla.registry.resolve_model_uri "
                f"({exc}); pass the run directory instead"
            ) from None
        return Path(resolve_model_uri(target)), name, target
    run_dir = Path(target)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"{run_dir} is not a directory; pass a run directory written by `mobile-vla train` or a "
            "registry address models:/NAME@ALIAS"
        )
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory: it has no config.json (train one with `mobile-vla train`)"
        )
    return run_dir, run_dir.resolve().name, None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def model_metadata(run_dir: Path, policy, model_name: str, uri: str | None = None) -> dict[str, Any]:
    """``/model/info``'s model part, from the policy's ``info()`` (if it has one) and the run's files."""
    record = _read_json(run_dir / "config.json")
    summary = _read_json(run_dir / "summary.json")
    info: dict[str, Any] = {}
    if callable(getattr(policy, "info", None)):
        try:
            info = dict(policy.info())
        except Exception as exc:
            logger.warning("policy.info() failed (%s); /model/info reports config.json only", exc)
    backbone = dict(record.get("backbone") or {})
    spec = backbone.get("spec") or {}
    backbone_info = {
        "profile": backbone.get("profile") or spec.get("profile"),
        "fingerprint_hash": backbone.get("fingerprint_hash"),
        "fingerprint": backbone.get("fingerprint"),
        "pretrained": backbone.get("pretrained"),
    }
    backbone_info.update(info.get("backbone") or {})
    metadata = {
        "model_name": model_name,
        "case": info.get("case") or record.get("case"),
        "model_class": info.get("model_class") or record.get("model_class"),
        "backbone": backbone_info,
        "trainable_parameters": info.get("trainable_parameters") or record.get("trainable_parameters"),
        "registry_run_id": (
            info.get("registry_run_id") or record.get("registry_run_id") or summary.get("registry_run_id")
        ),
        "registry_uri": uri,
        "run_dir": str(run_dir),
        "device": str(info.get("device") or getattr(policy, "device", "cpu")),
        "data": info.get("data")
        or {k: (record.get("data") or {}).get(k) for k in ("fingerprint", "provenance")},
        "code_version": record.get("code_version"),
    }
    for key, value in info.items():
        metadata.setdefault(key, value)
    return metadata


RUNTIMES = ("auto", "torch", "onnx")


def load_for_serving(target: str, device: str = "auto", runtime: str = "auto") -> tuple[Any, dict[str, Any]]:
    """Load what ``serve`` serves. Raises ``FileNotFoundError``/``RuntimeError`` with a message to act on.

    ``runtime``: ``torch`` (a run), ``onnx`` (an export, ``serving.onnx_runtime``) or ``auto`` (onnx when
    ``target`` is an export directory).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    from mobile_vla.serving.onnx_runtime import is_onnx_export

    if runtime == "onnx" or (runtime == "auto" and is_onnx_export(target)):
        from mobile_vla.serving.onnx_runtime import load_onnx_for_serving

        if runtime == "onnx" and (Path(target) / "config.json").is_file() and not is_onnx_export(target):
            raise ValueError(
                f"{target} is a run directory, not an ONNX export; export it first with "
                f"`mobile-vla export {target} --format onnx --out DIR` and serve DIR"
            )
        return load_onnx_for_serving(target)
    run_dir, model_name, uri = resolve_target(target)
    try:
        from mobile_vla.policies import load_policy
    except ImportError as exc:
        raise RuntimeError(
            f"this installation cannot load trained runs (mobile_vla.policies.load_policy: {exc})"
        ) from None
    policy = load_policy(run_dir, device=device)
    return policy, model_metadata(run_dir, policy, model_name, uri)
