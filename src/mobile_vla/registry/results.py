"""Evaluation and closed-loop results to MLflow metrics and tags and back (``evaluation_metrics``,
``closed_loop_metrics``, ``unflatten_results``), the closed-loop protocol hash, and which frozen encoders a run
used. Pure functions of the result dicts that ``evaluate_run`` and ``sim evaluate`` write.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from mobile_vla.registry.naming import (
    CI_HIGH,
    CI_LOW,
    CLOSED_LOOP,
    MAX_TAG_VALUE,
    flatten,
    is_number,
    parse_param,
    tag,
)


# --- results -> metric dicts ---------------------------------------------------------------------------
def evaluation_payload(
    result: Mapping[str, Any],
) -> tuple[dict[str, float], dict[str, list[float]], int | None]:
    """``(metrics, intervals, n)`` of an evaluation result in either of the shapes evaluate may write.

    ``{"n", "metrics": {...}, "intervals": {key: [low, high]}}`` (``metrics_with_intervals``) or a flat dict of
    numbers with an optional ``intervals`` entry.
    """
    metrics_src = result.get("metrics") if isinstance(result.get("metrics"), Mapping) else result
    metrics = {k: float(v) for k, v in metrics_src.items() if is_number(v) and k != "n"}
    intervals = {
        k: [float(v[0]), float(v[1])]
        for k, v in (result.get("intervals") or {}).items()
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(x) for x in v)
    }
    n = result.get("n", metrics_src.get("n"))
    return metrics, intervals, int(n) if is_number(n) else None


def evaluation_metrics(split: str, result: Mapping[str, Any]) -> dict[str, float]:
    """``evaluate``'s result as metrics: ``{split}/{key}``, ``{split}/{key}/ci_low|ci_high``, ``{split}/n``."""
    metrics, intervals, n = evaluation_payload(result)
    out = {f"{split}/{k}": v for k, v in metrics.items()}
    for k, (low, high) in intervals.items():
        out[f"{split}/{k}/{CI_LOW}"] = low
        out[f"{split}/{k}/{CI_HIGH}"] = high
    if n is not None:
        out[f"{split}/n"] = float(n)
    for extra in ("loss", "action_loss", "n_frames", "n_episodes"):
        if is_number(result.get(extra)):
            out[f"{split}/{extra}"] = float(result[extra])
    out.update(key_metrics_as_metrics(split, result.get("key_metrics")))
    return out


def key_metrics_as_metrics(split: str, keys: Mapping[str, Any] | None) -> dict[str, float]:
    """``evaluate``'s ``key_metrics`` as ``{split}/keys/{accuracy,balanced_accuracy,macro_f1}`` and
    ``{split}/keys/class/{NAME}/{n,accuracy,f1}`` (a class never recorded has no accuracy). The confusion
    matrix stays in the ``eval_{split}.json`` artifact and the predictions file."""
    if not isinstance(keys, Mapping):
        return {}
    out = {
        f"{split}/keys/{k}": float(keys[k])
        for k in ("accuracy", "balanced_accuracy", "macro_f1")
        if is_number(keys.get(k)) and math.isfinite(float(keys[k]))
    }
    for name, row in (keys.get("per_class") or {}).items():
        if not isinstance(row, Mapping) or not row.get("n"):
            continue
        for k in ("n", "accuracy", "f1"):
            if is_number(row.get(k)):
                out[f"{split}/keys/class/{name}/{k}"] = float(row[k])
    return out


# Numbers in ``sim evaluate``'s JSON that describe the protocol, not the result.
CLOSED_LOOP_PROTOCOL_KEYS = ("seed", "episodes", "max_steps", "control_period_s", "hold_s")
# How `sim evaluate` writes a rate's 95% interval: beside it, ``{key}_ci95: [low, high]``.
CI95_SUFFIX = "_ci95"


def closed_loop_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``sim evaluate``'s JSON as metrics under ``closed_loop/`` (per scenario under ``per_scenario/NAME/``)."""
    out = _closed_loop_block(
        {k: v for k, v in result.items() if k not in CLOSED_LOOP_PROTOCOL_KEYS}, CLOSED_LOOP
    )
    for name, block in (result.get("per_scenario") or {}).items():
        if isinstance(block, Mapping):
            out.update(_closed_loop_block(block, f"{CLOSED_LOOP}/per_scenario/{name}"))
    return out


def closed_loop_protocol(result: Mapping[str, Any]) -> str:
    """A hash of how a closed-loop evaluation was run (seed, episode count, scenarios, step budget...).

    Success rates are ranked against each other only when their protocols are equal.
    """
    protocol = {k: result.get(k) for k in CLOSED_LOOP_PROTOCOL_KEYS if k in result}
    protocol["n"] = result.get("n")
    if isinstance(result.get("config"), Mapping):  # the simulator's settings (camera size, tolerances...)
        protocol["config"] = result["config"]
    protocol["scenarios"] = sorted(result.get("per_scenario") or result.get("scenarios") or [])
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluation_tags(split: str, result: Mapping[str, Any], prefixed: bool = True) -> dict[str, str]:
    """The content hash of the episodes an evaluation ran on (runs are ranked only on equal ones)."""
    data = result.get("data") if isinstance(result.get("data"), Mapping) else {}
    out = {f"eval.{split}.data_fingerprint": str(data["fingerprint"])} if data.get("fingerprint") else {}
    return {tag(k): v for k, v in out.items()} if prefixed else out


def closed_loop_tags(result: Mapping[str, Any], prefixed: bool = True) -> dict[str, str]:
    """The protocol hash, and the scenarios of the latest evaluation (older per-scenario metrics stay in the
    store; this says which ones are current)."""
    out = {
        "closed_loop.protocol": closed_loop_protocol(result),
        "closed_loop.scenarios": ",".join(sorted(result.get("per_scenario") or {}))[:MAX_TAG_VALUE],
    }
    return {tag(k): v for k, v in out.items()} if prefixed else out


def _closed_loop_block(block: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """One block of ``sim evaluate``'s result as metrics, with each interval under ``{key}/ci_low|ci_high``.

    The simulator (`mobile_vla.sim.evaluate.summarize`) writes an interval beside its value as
    ``{key}_ci95: [low, high]``; an ``intervals: {key: [low, high]}`` dict is read too.
    """
    out = {f"{prefix}/{k}": float(v) for k, v in block.items() if is_number(v)}
    pairs = {k[: -len(CI95_SUFFIX)]: v for k, v in block.items() if k.endswith(CI95_SUFFIX) and len(k) > 5}
    pairs.update(block.get("intervals") or {})
    for k, v in pairs.items():
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(x) for x in v):
            out[f"{prefix}/{k}/{CI_LOW}"] = float(v[0])
            out[f"{prefix}/{k}/{CI_HIGH}"] = float(v[1])
    return out


def frozen_encoders(config: Mapping[str, Any]) -> dict[str, bool | None]:
    """Every frozen encoder a run's ``config.json`` records, and whether its weights are pretrained.

    Read generically, so a case that adds an encoder needs no change here: every key of the config (outside
    ``train``) named ``pretrained`` or ``*_pretrained`` is one encoder's flag. ``backbone.pretrained`` is the
    backbone; ``extra_features.clip_image.pretrained`` (and its ``fingerprint.pretrained``) the feature
    ``clip_image``; ``policy.clip_pretrained`` the head's ``clip``. Several flags of one encoder must all be
    true. The backbone's flag missing is ``None`` (unknown); another encoder's ``null`` flag means the case did
    not use it and is left out.
    """
    flags: dict[str, list[Any]] = {"backbone": []}
    for key, value in flatten(config).items():
        parts = key.split(".")
        if parts[0] == "train":
            continue
        last = parts[-1]
        if last == "pretrained":
            owner = parts[:-1]
            while owner and owner[-1] in ("fingerprint", "spec", "record"):
                owner = owner[:-1]
        elif last.endswith("_pretrained"):
            owner = [*parts[:-1], last[: -len("_pretrained")]]
        else:
            continue
        name = ".".join(owner).removeprefix("extra_features.") or "backbone"
        flags.setdefault(name, []).append(parse_param(value) if isinstance(value, str) else value)
    out: dict[str, bool | None] = {}
    for name, values in flags.items():
        known = [v for v in values if v is not None]
        if name != "backbone" and not known:
            continue
        out[name] = all(bool(v) for v in known) if known else None
    return out


def unflatten_results(metrics: Mapping[str, float], prefix: str) -> dict[str, Any] | None:
    """Inverse of `evaluation_metrics` / `closed_loop_metrics` for one prefix: ``{"n", "metrics", "intervals"}``.

    Keys with further ``/`` (``closed_loop/per_scenario/...``) are left out; read them with their own prefix.
    """
    head = prefix + "/"
    values: dict[str, float] = {}
    intervals: dict[str, list[float]] = {}
    for key, value in metrics.items():
        if not key.startswith(head):
            continue
        rest = key[len(head) :]
        name, _, bound = rest.rpartition("/")
        if bound in (CI_LOW, CI_HIGH) and "/" not in name:
            intervals.setdefault(name, [math.nan, math.nan])[0 if bound == CI_LOW else 1] = value
        elif "/" not in rest:
            values[rest] = value
    if not values:
        return None
    n = values.pop("n", None)
    out: dict[str, Any] = {
        "n": int(n) if n is not None else None,
        "metrics": values,
        "intervals": {k: v for k, v in intervals.items() if not any(math.isnan(x) for x in v)},
    }
    for count in ("n_episodes", "n_frames"):
        if count in values:
            out[count] = int(values.pop(count))
    return out


def scenario_names(metrics: Mapping[str, float]) -> list[str]:
    head = f"{CLOSED_LOOP}/per_scenario/"
    return sorted({k[len(head) :].split("/", 1)[0] for k in metrics if k.startswith(head)})
