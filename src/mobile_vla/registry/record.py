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

Nothing here imports MLflow, so it is cheap to test and to reuse.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobile_vla.utils.files import sha256_file as file_sha256  # noqa: F401  (re-exported)
from mobile_vla.utils.version import code_version  # noqa: F401  (re-exported)

TAG_PREFIX = "mobile_vla."
SPLITS = ("train", "val", "test")
# The run directory's status vocabulary (summary.json) and MLflow's.
STATUS_TO_MLFLOW = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
MLFLOW_TO_STATUS = {v: k for k, v in STATUS_TO_MLFLOW.items()}

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
MAX_TAG_VALUE = 8000  # and on a tag value
CI_LOW, CI_HIGH = "ci_low", "ci_high"
CLOSED_LOOP = "closed_loop"

# Files of a run directory that are copied into the store as artifacts (when present).
RUN_ARTIFACTS = ("config.json", "summary.json", "metrics.jsonl", "loss_curve.png")
CHECKPOINT_FILES = ("best.safetensors", "config.json")
CLOSED_LOOP_FILE = "closed_loop.json"
REGISTRY_FILE = "registry.json"


def tag(name: str) -> str:
    return TAG_PREFIX + name


# --- small pure helpers ---------------------------------------------------------------------------------
def flatten(value: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts to one level with joined keys; lists and scalars are leaves.

    >>> flatten({"train": {"lr": 5e-5, "betas": [0.9, 0.999]}})
    {'train.lr': 5e-05, 'train.betas': [0.9, 0.999]}
    """
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(item, Mapping) and item:
            out.update(flatten(item, name, sep))
        else:
            out[name] = item
    return out


def param_value(value: Any) -> str:
    """How a config value is written as an MLflow param: JSON for everything but plain strings.

    JSON keeps types recoverable (``5e-05`` vs ``"5e-05"``, ``true``, ``null``, ``[0.7, 0.15, 0.15]``).
    """
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def parse_param(text: str) -> Any:
    """Inverse of `param_value` (a string that is not JSON stays a string)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def ids_fingerprint(ids: Iterable[str]) -> str:
    """Content hash of a list of episode ids (order-free): equal hashes mean the same episodes."""
    digest = hashlib.sha256()
    for item in sorted(ids):
        digest.update(item.encode() + b"\n")
    return digest.hexdigest()[:16]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_leaves(record: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, float]:
    """Every finite number (and bool, as 0/1) in a nested record, keys joined with ``/``."""
    skip = set(skip)
    out: dict[str, float] = {}
    for key, value in flatten(record, sep="/").items():
        if key in skip:
            continue
        if isinstance(value, bool) or is_number(value):
            out[key] = float(value)
    return out


def parse_code_version(value: Any) -> dict[str, Any]:
    """Normalise what ``config.json`` says: a dict, or the trainer's ``"0.1.0+abc1234"`` string."""
    if isinstance(value, Mapping):
        return {
            "package": value.get("package") or value.get("version"),
            "git_commit": value.get("git_commit") or value.get("commit"),
            "git_dirty": value.get("git_dirty"),
        }
    if isinstance(value, str) and value:
        package, _, commit = value.partition("+")
        return {"package": package, "git_commit": commit or None, "git_dirty": None}
    return {"package": None, "git_commit": None, "git_dirty": None}


def safetensors_signature(path: str | Path) -> dict[str, Any]:
    """Parameter count and architecture hash of a safetensors file, read from its header only.

    The header is 8 bytes of little-endian length then JSON ``{name: {dtype, shape, data_offsets}}``; no
    tensor is loaded. Two heads with the same tensor names and shapes have the same ``architecture_hash``:
    that is how the report shows, from numbers, that Case 3 shares Case 1's architecture.
    """
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {length})")
        header = json.loads(f.read(length))
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    params = sum(math.prod(v["shape"]) for v in tensors.values())
    shapes = sorted((k, tuple(v["shape"])) for k, v in tensors.items())
    arch = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    return {
        "trainable_params": int(params),
        "num_tensors": len(tensors),
        "architecture_hash": arch,
        "metadata": header.get("__metadata__") or {},
    }


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
