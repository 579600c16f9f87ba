"""What a run records, and how it is written into (and read back from) MLflow's tags, params and metrics.

The run directory (docs/CONTRACTS.md, "Run directory") is the source; this module turns it into the three
kinds of MLflow fields and back, so the naming scheme lives in one place:

- **tags** (`mobile_vla.*`, strings): identity and grouping — case, model class/module, backbone profile +
  fingerprint + pretrained flag, dataset path + fingerprint + provenance, split seed and per-split
  fingerprints, action dims, code version, host/pid of the writer, the run directory.
- **params** (immutable, <= 6000 chars each): every hyperparameter and training setting, the nested
  ``config.json`` flattened to dotted keys (``policy.hidden_dim``, ``train.lr``, ``backbone.spec.profile``).
  The split's episode id lists are not params (they outgrow the limit): they are the ``split.json`` artifact,
  with a count and a content hash as tags.
- **metrics** (floats): per-epoch values from ``metrics.jsonl`` at ``step=epoch`` under their own names
  (nested dicts joined with ``/``: ``val_metrics/mae``); evaluation results as ``{split}/{key}``, with
  ``{split}/{key}/ci_low`` and ``/ci_high`` for the 95% interval and ``{split}/n`` for the number of samples;
  closed-loop results as ``closed_loop/{key}`` likewise (``closed_loop/per_scenario/{scenario}/{key}`` per
  scenario); the run's summary as ``summary/{key}``; ``model/trainable_params`` from the checkpoint.

Nothing here imports MLflow, so it is cheap to test and to reuse. This module owns the records (``RunRecord``
read from a run directory, ``StoredRun`` read back from MLflow); the naming and encoding helpers are in
``naming``, the result <-> metric conversions in ``results`` (both re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobile_vla.registry.naming import (  # noqa: F401  (re-exported)
    CHECKPOINT_FILES,
    CI_HIGH,
    CI_LOW,
    CLOSED_LOOP,
    CLOSED_LOOP_FILE,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    MLFLOW_TO_STATUS,
    REGISTRY_FILE,
    RUN_ARTIFACTS,
    SPLITS,
    STATUS_TO_MLFLOW,
    TAG_PREFIX,
    flatten,
    ids_fingerprint,
    is_number,
    numeric_leaves,
    param_value,
    parse_code_version,
    parse_param,
    safetensors_signature,
    tag,
)
from mobile_vla.registry.results import (  # noqa: F401  (re-exported)
    CI95_SUFFIX,
    CLOSED_LOOP_PROTOCOL_KEYS,
    _closed_loop_block,
    closed_loop_metrics,
    closed_loop_protocol,
    closed_loop_tags,
    evaluation_metrics,
    evaluation_payload,
    evaluation_tags,
    frozen_encoders,
    scenario_names,
    unflatten_results,
)
from mobile_vla.utils.files import sha256_file as file_sha256  # noqa: F401  (re-exported)
from mobile_vla.utils.version import code_version  # noqa: F401  (re-exported)


# --- the run directory -----------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """Everything a run directory holds that the registry records, read once from disk.

    Attributes:
        run_dir: the directory (absolute).
        config: ``config.json`` (``{}`` when missing: a run dir is only recordable with one).
        summary: ``summary.json`` or None while the trainer has not written one.
        epochs: the rows of ``metrics.jsonl``.
        evaluations: ``{split: eval_{split}.json}``.
        closed_loop: ``closed_loop.json`` (``sim evaluate``'s result) or None.
        checkpoint: ``{"trainable_params", "architecture_hash", "sha256", ...}`` of ``best.safetensors`` or None.
    """

    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    closed_loop: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None

    # -- identity ------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def case(self) -> str:
        return str(self.config.get("case") or "unknown")

    @property
    def status(self) -> str:
        status = (self.summary or {}).get("status", "running")
        return status if status in STATUS_TO_MLFLOW else "running"

    @property
    def split(self) -> dict[str, Any]:
        return dict((self.config.get("data") or {}).get("split") or {})

    def model_identity(self) -> tuple[str, str]:
        """(model class name, module of the head class), from ``config.json`` or, failing that, the case registry.

        The class is the case's name for it (the seed's, e.g. ``SimpleCase3Model``); the module is where the
        head class that implements it lives (``architecture``; Case 3's is Case 1's).
        """
        model = self.config.get("model") if isinstance(self.config.get("model"), Mapping) else {}
        cls = model.get("class") or self.config.get("model_class") or self.config.get("architecture")
        module = model.get("module") or self.config.get("model_module")
        if not module:
            module = _module_from_case_registry(self.case)
        return str(cls or "unknown"), str(module or "unknown")

    # -- MLflow fields -------------------------------------------------------------------------------------
    def tags(self) -> dict[str, str]:
        cfg = self.config
        backbone = cfg.get("backbone") or {}
        data = cfg.get("data") or {}
        spec = backbone.get("spec") or {}
        cls, module = self.model_identity()
        code = parse_code_version(cfg.get("code_version"))
        out = {
            "case": self.case,
            "model_class": cls,
            "model_module": module,
            "architecture": str(cfg.get("architecture") or cls),
            "backbone.profile": str(backbone.get("profile") or spec.get("profile") or "unknown"),
            "backbone.fingerprint": str(backbone.get("fingerprint_hash") or "unknown"),
            "backbone.pretrained": _bool_text(backbone.get("pretrained")),
            "encoders.pretrained": json.dumps(frozen_encoders(cfg), sort_keys=True),
            "dataset.path": _text(data.get("path")),
            "dataset.fingerprint": str(data.get("fingerprint") or "unknown"),
            "dataset.provenance": str(data.get("provenance") or "unknown"),
            "action_dims": ",".join(cfg.get("action_dims") or []),
            "run_dir": str(self.run_dir),
            "status": self.status,
            "code.package_version": str(code["package"] or "unknown"),
        }
        if code["git_commit"]:
            out["code.git_commit"] = str(code["git_commit"])
            out["mlflow.source.git.commit"] = str(code["git_commit"])
        if code["git_dirty"] is not None:
            out["code.git_dirty"] = _bool_text(code["git_dirty"])
        split = self.split
        if "seed" in split:
            out["split.seed"] = str(split["seed"])
        for part in SPLITS:
            if isinstance(split.get(part), list):
                out[f"split.{part}.count"] = str(len(split[part]))
                out[f"split.{part}.fingerprint"] = ids_fingerprint(split[part])
        if self.summary and self.summary.get("error"):
            out["error"] = str(self.summary["error"])[:MAX_TAG_VALUE]
        if self.closed_loop:
            out.update(closed_loop_tags(self.closed_loop, prefixed=False))
        for split, result in self.evaluations.items():
            out.update(evaluation_tags(split, result, prefixed=False))
        if self.checkpoint:
            out["checkpoint.sha256"] = self.checkpoint["sha256"]
            out["checkpoint.architecture_hash"] = self.checkpoint["architecture_hash"]
        return {(k if k.startswith("mlflow.") else tag(k)): v[:MAX_TAG_VALUE] for k, v in out.items()}

    def params(self) -> dict[str, str]:
        """Every config value as a param, except the episode id lists (artifact ``split.json``)."""
        cfg = dict(self.config)
        data = dict(cfg.get("data") or {})
        split = {k: v for k, v in (data.get("split") or {}).items() if k not in SPLITS}
        data["split"] = split
        data.pop("skipped", None)
        cfg["data"] = data
        out = {}
        for key, value in flatten(cfg).items():
            text = param_value(value)
            if len(text) > MAX_PARAM_VALUE:
                text = f"<{len(text)} characters: see the config.json artifact>"
            out[key[:250]] = text
        return out

    def epoch_metrics(self) -> list[tuple[int, dict[str, float]]]:
        """(epoch, metrics) per ``metrics.jsonl`` row, ``epoch`` itself being the step."""
        rows = []
        for i, row in enumerate(self.epochs):
            epoch = int(row.get("epoch", i))
            rows.append((epoch, numeric_leaves(row, skip=("epoch",))))
        return rows

    def final_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.summary:
            out.update({f"summary/{k}": v for k, v in numeric_leaves(self.summary).items()})
        for split, result in self.evaluations.items():
            out.update(evaluation_metrics(split, result))
        if self.closed_loop:
            out.update(closed_loop_metrics(self.closed_loop))
        # The trainer's own count (config.json) when it has one; else the checkpoint's tensor sizes.
        params = self.config.get("trainable_parameters")
        if is_number(params):
            out["model/trainable_params"] = float(params)
        elif self.checkpoint:
            out["model/trainable_params"] = float(self.checkpoint["trainable_params"])
        return out

    def split_artifact(self) -> dict[str, Any]:
        split = self.split
        return {
            "seed": split.get("seed"),
            "ratios": split.get("ratios"),
            **{part: list(split.get(part) or []) for part in SPLITS},
        }

    def artifact_files(self) -> list[tuple[Path, str | None]]:
        """(file, artifact folder) of every file the store keeps a copy of."""
        files: list[tuple[Path, str | None]] = []
        for name in RUN_ARTIFACTS:
            if (self.run_dir / name).is_file():
                files.append((self.run_dir / name, None))
        for split in self.evaluations:
            for name in (f"eval_{split}.json", f"predictions_{split}.npz"):
                if (self.run_dir / name).is_file():
                    files.append((self.run_dir / name, "eval"))
        if (self.run_dir / CLOSED_LOOP_FILE).is_file():
            files.append((self.run_dir / CLOSED_LOOP_FILE, None))
        return files


def read_run_dir(run_dir: str | Path) -> RunRecord:
    """Read a run directory; raises FileNotFoundError naming the directory when it has no ``config.json``."""
    run_dir = Path(run_dir).resolve()
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory: config.json is missing (train one with `mobile-vla train`)"
        )
    record = RunRecord(run_dir=run_dir, config=_read_json(config_path))
    if (run_dir / "summary.json").is_file():
        record.summary = _read_json(run_dir / "summary.json")
    if (run_dir / "metrics.jsonl").is_file():
        record.epochs = read_jsonl(run_dir / "metrics.jsonl")
    for path in sorted(run_dir.glob("eval_*.json")):
        record.evaluations[path.stem[len("eval_") :]] = _read_json(path)
    if (run_dir / CLOSED_LOOP_FILE).is_file():
        record.closed_loop = _read_json(run_dir / CLOSED_LOOP_FILE)
    best = run_dir / "best.safetensors"
    if best.is_file():
        record.checkpoint = {**safetensors_signature(best), "sha256": file_sha256(best)}
    return record


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines; a torn last line (a process killed mid-write) is dropped, any other bad line is an error."""
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not JSON ({exc}); fix or delete the line") from exc
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _text(value: Any) -> str:
    if value is None:
        return "unknown"
    return value if isinstance(value, str) else json.dumps(value)


def _bool_text(value: Any) -> str:
    return "unknown" if value is None else ("true" if bool(value) else "false")


def _module_from_case_registry(case: str) -> str | None:
    """The head class's module via the case registry, when it can be imported (it pulls in torch)."""
    try:
        from mobile_vla.policies.registry import get_case

        return get_case(case).policy_class.__module__
    except Exception:  # the registry is optional here: an unknown module is recorded as "unknown"
        return None


# --- reading back --------------------------------------------------------------------------------------------
@dataclass
class StoredRun:
    """One run as the store holds it: what `list`, `show`, `compare`, the ranking and the report read.

    Attributes:
        run_id, name: MLflow's run id and run name (the run directory's name).
        status: MLflow's status (``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``).
        start_time, end_time: epoch milliseconds (end None while running).
        tags, params, metrics: as stored (metrics: the latest value of each key).
        versions: ``[{"name", "version", "aliases", "created", "tags"}]`` registered from this run.
    """

    run_id: str
    name: str
    status: str
    start_time: int
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    versions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_mlflow(cls, run: Any, versions: list[dict[str, Any]] | None = None) -> StoredRun:
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id[:8],
            status=run.info.status,
            start_time=int(run.info.start_time or 0),
            end_time=int(run.info.end_time) if run.info.end_time else None,
            tags=dict(run.data.tags),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            versions=list(versions or []),
        )

    def tag(self, name: str, default: str = "unknown") -> str:
        return self.tags.get(tag(name), default)

    @property
    def case(self) -> str:
        return self.tag("case")

    @property
    def model_class(self) -> str:
        return self.tag("model_class")

    @property
    def model_module(self) -> str:
        return self.tag("model_module")

    @property
    def dataset_fingerprint(self) -> str:
        return self.tag("dataset.fingerprint")

    @property
    def provenance(self) -> str:
        return self.tag("dataset.provenance")

    @property
    def backbone_profile(self) -> str:
        return self.tag("backbone.profile")

    @property
    def pretrained(self) -> bool | None:
        value = self.tag("backbone.pretrained")
        return {"true": True, "false": False}.get(value)

    @property
    def encoders(self) -> dict[str, bool | None]:
        """``{encoder: pretrained}`` of every frozen encoder the run used (`frozen_encoders`), from the tag
        the record writes, else from the params (a store written before the tag existed)."""
        text = self.tags.get(tag("encoders.pretrained"))
        if text:
            try:
                value = json.loads(text)
                if isinstance(value, dict):
                    return value
            except json.JSONDecodeError:
                pass
        return frozen_encoders({k: parse_param(v) for k, v in self.params.items()})

    @property
    def run_dir(self) -> str:
        return self.tag("run_dir", "")

    @property
    def status_text(self) -> str:
        return MLFLOW_TO_STATUS.get(self.status, self.status.lower())

    @property
    def aliases(self) -> list[str]:
        return sorted(a for v in self.versions for a in v["aliases"])

    def split_fingerprint(self, split: str) -> str | None:
        return self.tags.get(tag(f"split.{split}.fingerprint"))

    def evaluation(self, split: str) -> dict[str, Any] | None:
        """``{"n", "metrics", "intervals"}`` of the offline evaluation on ``split`` (None if not evaluated)."""
        return unflatten_results(self.metrics, split)

    def closed_loop(self) -> dict[str, Any] | None:
        """``{"n", "metrics", "intervals", "per_scenario": {name: {...}}}`` or None."""
        result = unflatten_results(self.metrics, CLOSED_LOOP)
        if result is None:
            return None
        current = self.tags.get(tag("closed_loop.scenarios"))
        names = scenario_names(self.metrics)
        if current is not None:
            names = [n for n in names if n in set(current.split(","))]
        result["per_scenario"] = {
            name: unflatten_results(self.metrics, f"{CLOSED_LOOP}/per_scenario/{name}") for name in names
        }
        return result

    def config_section(self, prefix: str) -> dict[str, Any]:
        """The params under ``prefix.`` as a nested dict with their JSON types restored (``policy``, ``train``)."""
        out: dict[str, Any] = {}
        head = prefix + "."
        for key in sorted(self.params):
            if not key.startswith(head):
                continue
            node = out
            parts = key[len(head) :].split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):  # a leaf and a branch share a name: keep the leaf
                    break
            else:
                node[parts[-1]] = parse_param(self.params[key])
        return out
