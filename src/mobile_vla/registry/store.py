"""The run store: MLflow tracking + model registry behind a small API that train/evaluate/sim/serve call.

    registry = open_registry()                       # ./mlruns/mlflow.db, or --tracking-uri / MLFLOW_TRACKING_URI
    with registry.start_training_run(run_dir) as run:   # at the start: a crash marks it failed/killed
        for epoch in ...:
            run.log_epoch(epoch, record)
        run.finish("finished", summary)            # imports the run dir, registers the checkpoint as case1 vN
    registry.log_evaluation(run_dir, "test", result)
    registry.log_closed_loop(run_dir, sim_result)
    registry.promote(run_dir, alias="champion")
    registry.resolve_model_uri("models:/case1@champion")  # -> a run directory

The simplest integration is `Registry.record_run_dir(run_dir)` after the fact: it imports whatever a run
directory holds (idempotently: importing twice changes nothing). The run directory keeps the mapping to its
MLflow run in ``registry.json``, so later `evaluate` and `sim evaluate` calls log onto the same run.

Default store: an embedded SQLite database ``<project>/mlruns/mlflow.db`` with artifacts in
``<project>/mlruns/artifacts`` (project = ``$MOBILE_VLA_HOME`` or the current directory); nothing to start, and
``mlflow ui --backend-store-uri sqlite:///<project>/mlruns/mlflow.db`` shows it. ``MLFLOW_TRACKING_URI`` or
``--tracking-uri`` point at a team server instead (``http(s)://`` or a database URL such as ``postgresql://``).

This module owns ``Registry`` (syncing run directories into MLflow, evaluations, promotion and model
resolution) and ``RunHandle``; the rest of the registry is beside it: ``location`` (which store, reachable?),
``sqlite`` (lock retries), ``liveness`` (runs their process left open), ``callback`` (the trainer hook),
``null`` (``--no-track``) and ``cli_args`` (the flags).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mobile_vla.registry.callback import RegistryCallback, _log_unrecorded  # noqa: F401  (re-exported)
from mobile_vla.registry.liveness import (  # noqa: F401  (re-exported)
    _open_handles,
    _pid_start_time,
    _process_alive,
    close_unfinished_runs,
)
from mobile_vla.registry.location import (  # noqa: F401  (re-exported)
    DEFAULT_EXPERIMENT,
    HEALTH_TIMEOUT_S,
    RegistryLookupError,
    RegistryUnavailableError,
    _check_reachable,
    _sqlite_path,
    default_artifact_location,
    default_tracking_uri,
    project_dir,
    resolve_tracking_uri,
)
from mobile_vla.registry.null import NullRegistry, NullRunHandle  # noqa: F401  (re-exported)
from mobile_vla.registry.record import (
    CHECKPOINT_FILES,
    CLOSED_LOOP_FILE,
    REGISTRY_FILE,
    STATUS_TO_MLFLOW,
    RunRecord,
    StoredRun,
    closed_loop_metrics,
    closed_loop_tags,
    evaluation_metrics,
    evaluation_tags,
    file_sha256,
    numeric_leaves,
    param_value,
    read_run_dir,
    tag,
)
from mobile_vla.registry.sqlite import _file_lock, _is_lock_error, _RetryingClient  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


def open_registry(
    tracking_uri: str | None = None,
    *,
    no_track: bool = False,
    experiment: str | None = None,
    artifact_location: str | None = None,
) -> Registry | NullRegistry:
    """Open (and check) the store every command records into; with ``no_track``, a registry that does nothing.

    Fails at once with `RegistryUnavailableError` naming the URI when the store cannot be reached or written,
    so a training run never finds out after an hour. (The CLI turns MLflow's telemetry and URL printing off:
    ``mobile_vla.cli.MLFLOW_ENVIRONMENT``.)
    """
    if no_track:
        return NullRegistry()
    uri = resolve_tracking_uri(tracking_uri)
    _check_reachable(uri)
    return Registry(
        uri,
        experiment=experiment or os.environ.get("MOBILE_VLA_EXPERIMENT") or DEFAULT_EXPERIMENT,
        artifact_location=artifact_location,
    )


# --- the registry ----------------------------------------------------------------------------------------
class Registry:
    """An open MLflow store (tracking + model registry). Build it with `open_registry`."""

    enabled = True

    def __init__(self, tracking_uri: str, *, experiment: str = DEFAULT_EXPERIMENT, artifact_location=None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
        db = _sqlite_path(tracking_uri)
        self.cache_dir = (db.parent if db else project_dir() / "mlruns") / "downloads"
        location = artifact_location or default_artifact_location(tracking_uri)
        lock = _file_lock(db.with_name(db.name + ".lock")) if db else contextlib.nullcontext()
        try:
            # The first open of a new SQLite file creates its tables (seconds, in the client's constructor and
            # the registry store's first use); two processes doing it at once corrupt the migration.
            with lock:
                self.client = _RetryingClient(
                    MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
                )
                self.experiment_id = self._experiment(experiment, location)
                self.client.search_registered_models(max_results=1)  # builds the registry store now
        except RegistryUnavailableError:
            raise
        except Exception as exc:
            raise RegistryUnavailableError(
                f"cannot open the MLflow store at {tracking_uri}: {exc}. Check --tracking-uri / "
                "MLFLOW_TRACKING_URI, or pass --no-track to work without the registry."
            ) from exc
        # A writer killed with SIGKILL (or by the OOM killer, or a power cut) could not close its run: every
        # open closes the runs of this host whose writer is gone, so none stays RUNNING forever.
        try:
            self.reconcile_stale_runs()
        except Exception as exc:  # never a reason to refuse the store
            logger.warning("registry: could not check for runs left RUNNING by dead processes: %s", exc)

    def __repr__(self) -> str:
        return f"Registry({self.tracking_uri!r}, experiment={self.experiment_name!r})"

    def _experiment(self, name: str, location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException:  # another process created it between our two calls
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise RegistryUnavailableError(
                f"experiment {name!r} in {self.tracking_uri} is deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or set MOBILE_VLA_EXPERIMENT"
            )
        return exp.experiment_id

    # -- writing --------------------------------------------------------------------------------------------
    def start_training_run(self, run_dir: str | Path, config: Mapping[str, Any] | None = None) -> RunHandle:
        """Open (or, for a resumed run directory, reopen) the MLflow run of a training about to start.

        ``config`` defaults to the run directory's ``config.json``. Use the handle as a context manager, or
        call ``finish``; under ``mobile_vla.cli.process_hooks`` (every CLI command) a process that ends without
        either still gets its run marked failed/killed, and `reconcile_stale_runs` catches the rest (``kill -9``).
        """
        run_dir = Path(run_dir).resolve()
        if config is None:
            record = read_run_dir(run_dir)
        else:
            record = read_run_dir(run_dir) if (run_dir / "config.json").is_file() else RunRecord(run_dir, {})
            record.config = dict(config)
        from mlflow.entities import RunTag

        run_id = self._find_run(run_dir, record.config.get("created"))
        pid = os.getpid()
        writer = {"host": socket.gethostname(), "pid": str(pid), "pid_start": _pid_start_time(pid) or ""}
        if run_id is None:
            run_id = self._create_run(record)
        else:
            # This writer's tags before the status: a store opened in between must not take the reopened run
            # (whose tags still name its dead previous writer) for an orphan and close it.
            self.client.log_batch(run_id, tags=[RunTag(tag(k), v) for k, v in writer.items()])
            self.client.update_run(run_id, status="RUNNING")
        record.summary = {**(record.summary or {}), "status": "running"}
        self._log_fields(run_id, record, extra_tags={tag(k): v for k, v in writer.items()}, epochs=True)
        self._log_artifacts(run_id, record, checkpoint=False)
        handle = RunHandle(self, run_id, run_dir, record.config)
        _open_handles.add(handle)
        return handle

    def record_run_dir(self, run_dir: str | Path) -> str:
        """Import everything a run directory holds into its MLflow run (created if needed); returns the run id.

        Idempotent: epochs already logged are not logged again, unchanged values are skipped. A finished run
        with ``best.safetensors`` becomes a version of the registered model named after its case.
        """
        record = read_run_dir(run_dir)
        run_id = self._find_run(record.run_dir)
        if run_id is None:
            run_id = self._create_run(record)
        self._sync(run_id, record)
        return run_id

    def _sync(self, run_id: str, record: RunRecord) -> None:
        self._log_fields(run_id, record, extra_tags={}, epochs=True)
        self._log_artifacts(run_id, record, checkpoint=True)
        if record.status == "finished" and record.checkpoint:
            self._register_version(run_id, record)
        if record.status != "running":
            self.client.set_terminated(
                run_id,
                STATUS_TO_MLFLOW[record.status],
                end_time=_timestamp_ms((record.summary or {}).get("updated")),
            )

    def log_evaluation(
        self, run_dir: str | Path, split: str, eval_result: Mapping[str, Any] | None = None
    ) -> str:
        """Record ``evaluate``'s result (default: ``eval_{split}.json`` in the run dir) on the run's MLflow run."""
        run_dir = Path(run_dir).resolve()
        if eval_result is None:
            path = run_dir / f"eval_{split}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: run `mobile-vla evaluate {run_dir} --split {split}`"
                )
            eval_result = json.loads(path.read_text())
        run_id = self._run_for(run_dir)
        self._log_metrics(run_id, evaluation_metrics(split, eval_result), step=0, skip_unchanged=False)
        for key, value in evaluation_tags(split, eval_result).items():
            self.client.set_tag(run_id, key, value)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"eval_{split}.json"
            path.write_text(json.dumps(eval_result, indent=2, default=str))
            self.client.log_artifact(run_id, str(path), "eval")
        predictions = run_dir / f"predictions_{split}.npz"
        if predictions.is_file():
            self.client.log_artifact(run_id, str(predictions), "eval")
        return run_id

    def log_closed_loop(self, run_dir: str | Path, sim_result: Mapping[str, Any]) -> str:
        """Record ``sim evaluate``'s result on the run's MLflow run (and keep it as ``closed_loop.json``)."""
        run_dir = Path(run_dir).resolve()
        path = run_dir / CLOSED_LOOP_FILE
        path.write_text(json.dumps(sim_result, indent=2, default=str))
        run_id = self._run_for(run_dir)
        self._log_metrics(run_id, closed_loop_metrics(sim_result), step=0, skip_unchanged=False)
        for key, value in closed_loop_tags(sim_result).items():
            self.client.set_tag(run_id, key, value)
        self.client.log_artifact(run_id, str(path))
        return run_id

    def _run_for(self, run_dir: Path) -> str:
        run_id = self._find_run(run_dir)
        return run_id if run_id is not None else self.record_run_dir(run_dir)

    # -- the run dir <-> MLflow run mapping ------------------------------------------------------------------
    def _find_run(self, run_dir: Path, created: Any = None) -> str | None:
        """The MLflow run of a run directory: from its ``registry.json``, else by the ``run_dir`` tag.

        A candidate counts only if it recorded the same ``created`` time as the directory's ``config.json``:
        a directory deleted and trained again under the same path is a new run, not the old one reopened.
        """
        from mlflow.exceptions import MlflowException

        if created is None and (run_dir / "config.json").is_file():
            with contextlib.suppress(ValueError, OSError):
                created = json.loads((run_dir / "config.json").read_text()).get("created")
        entry = _read_mapping(run_dir).get(self.tracking_uri) or {}
        candidates = [entry.get("run_id")] if entry.get("run_id") else []
        if "'" not in str(run_dir):
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{tag('run_dir')}` = '{run_dir}'",
                order_by=["attributes.start_time DESC"],
                max_results=20,
            )
            candidates += [r.info.run_id for r in found]
        for run_id in candidates:
            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                continue  # the mapping points at a run this store no longer has
            if run.info.lifecycle_stage != "active":
                continue
            recorded = run.data.params.get("created")
            if created is not None and recorded is not None and recorded != param_value(created):
                continue
            return run_id
        return None

    def _create_run(self, record: RunRecord) -> str:
        run = self.client.create_run(
            self.experiment_id,
            start_time=_timestamp_ms(record.config.get("created")),
            tags=record.tags(),
            run_name=record.name,
        )
        _update_mapping(
            record.run_dir,
            self.tracking_uri,
            {
                "run_id": run.info.run_id,
                "experiment_id": self.experiment_id,
                "experiment": self.experiment_name,
            },
        )
        return run.info.run_id

    # -- field logging ------------------------------------------------------------------------------------
    def _log_fields(
        self, run_id: str, record: RunRecord, extra_tags: Mapping[str, str], epochs: bool
    ) -> None:
        from mlflow.entities import Param, RunTag

        run = self.client.get_run(run_id)
        existing = run.data.params
        params = record.params()
        conflicts = {k: [existing[k], v] for k, v in params.items() if k in existing and existing[k] != v}
        if conflicts:
            logger.warning(
                "run %s: %d config values differ from what was first recorded (MLflow params are immutable); "
                "the new values are kept in the config.json artifact and the tag %s: %s",
                run_id,
                len(conflicts),
                tag("param_conflicts"),
                sorted(conflicts),
            )
        new_params = [Param(k, v) for k, v in params.items() if k not in existing]
        tags = {**record.tags(), **extra_tags}
        if conflicts:
            tags[tag("param_conflicts")] = json.dumps(conflicts)[:8000]
        tags = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        for i in range(0, max(len(new_params), len(tags)), 100):
            self.client.log_batch(run_id, params=new_params[i : i + 100], tags=tags[i : i + 100])
        if epochs:
            self._log_epochs(run_id, record)
        self._log_metrics(
            run_id, record.final_metrics(), step=0, skip_unchanged=True, logged=run.data.metrics
        )

    def _log_epochs(self, run_id: str, record: RunRecord) -> None:
        """Log the ``metrics.jsonl`` rows whose epoch is not in the store yet (one history query per key)."""
        rows = record.epoch_metrics()
        if not rows:
            return
        logged: dict[str, set[int]] = {}
        pending: list[tuple[int, dict[str, float]]] = []
        for epoch, values in rows:
            if not values:
                continue
            key = "train_loss" if "train_loss" in values else sorted(values)[0]
            if key not in logged:
                logged[key] = {m.step for m in self.client.get_metric_history(run_id, key)}
            if epoch not in logged[key]:
                pending.append((epoch, values))
        self._log_batches(run_id, [(k, v, epoch) for epoch, values in pending for k, v in values.items()])

    def _log_metrics(
        self,
        run_id: str,
        values: Mapping[str, float],
        step: int,
        skip_unchanged: bool,
        logged: Mapping[str, float] | None = None,
    ) -> None:
        if skip_unchanged:
            logged = logged if logged is not None else self.client.get_run(run_id).data.metrics
            values = {k: v for k, v in values.items() if logged.get(k) != v}
        self._log_batches(run_id, [(k, v, step) for k, v in values.items()])

    def _log_batches(self, run_id: str, values: list[tuple[str, float, int]]) -> None:
        """(key, value, step) triples in as few transactions as MLflow allows (1000 metrics per batch)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v, step in values]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])

    def _log_artifacts(self, run_id: str, record: RunRecord, checkpoint: bool) -> None:
        for path, folder in record.artifact_files():
            self.client.log_artifact(run_id, str(path), folder)
        with tempfile.TemporaryDirectory() as tmp:
            split = Path(tmp) / "split.json"
            split.write_text(json.dumps(record.split_artifact(), indent=1))
            self.client.log_artifact(run_id, str(split))
        if checkpoint and record.checkpoint:
            run = self.client.get_run(run_id)
            if run.data.tags.get(tag("checkpoint.uploaded")) == record.checkpoint["sha256"]:
                return
            for name in CHECKPOINT_FILES:
                self.client.log_artifact(run_id, str(record.run_dir / name), "checkpoint")
            self.client.set_tag(run_id, tag("checkpoint.uploaded"), record.checkpoint["sha256"])

    # -- registered models ----------------------------------------------------------------------------------
    def _register_version(self, run_id: str, record: RunRecord) -> tuple[str, str]:
        from mlflow.exceptions import MlflowException

        name, sha = record.case, record.checkpoint["sha256"]
        for mv in self.client.search_model_versions(f"run_id='{run_id}'"):
            if mv.name == name and mv.tags.get(tag("checkpoint_sha256")) == sha:
                return name, str(mv.version)
        try:
            self.client.create_registered_model(
                name,
                tags={tag("case"): name},
                description=f"mobile-vla {name}: one version per finished training run (mobile-vla registry).",
            )
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        tags = record.tags()
        mv = self.client.create_model_version(
            name,
            source=f"runs:/{run_id}/checkpoint",
            run_id=run_id,
            tags={
                tag("run_dir"): str(record.run_dir),
                tag("checkpoint_sha256"): sha,
                tag("dataset.fingerprint"): tags[tag("dataset.fingerprint")],
                tag("dataset.provenance"): tags[tag("dataset.provenance")],
                tag("backbone.pretrained"): tags[tag("backbone.pretrained")],
            },
            description=f"run {record.name} ({run_id})",
        )
        _update_mapping(
            record.run_dir, self.tracking_uri, {"model": {"name": name, "version": str(mv.version)}}
        )
        return name, str(mv.version)

    def promote(self, ref: str | Path, alias: str = "champion") -> dict[str, Any]:
        """Point ``models:/CASE@alias`` at the model version of a run (a run dir, run id or name, or models:/ URI).

        Only finished runs have versions. Returns ``{"name", "version", "alias", "run_id", "previous"}``.
        """
        if str(ref).startswith("models:/"):
            mv = self._model_version(str(ref))
            name, version, run_id = mv.name, str(mv.version), mv.run_id
        else:
            run = self.get_run(ref)
            if run.status != "FINISHED":
                raise RegistryLookupError(
                    f"run {run.name} ({run.run_id}) is {run.status.lower()}: only finished runs can be promoted"
                )
            if not run.versions and Path(run.run_dir).is_dir():
                self.record_run_dir(run.run_dir)
                run = self.get_run(run.run_id)
            if not run.versions:
                raise RegistryLookupError(
                    f"run {run.name} ({run.run_id}) has no registered checkpoint (no best.safetensors was "
                    f"recorded); run `mobile-vla registry record {run.run_dir}` if the run directory has one"
                )
            latest = max(run.versions, key=lambda v: int(v["version"]))
            name, version, run_id = latest["name"], latest["version"], run.run_id
        previous = None
        with contextlib.suppress(Exception):
            previous = str(self.client.get_model_version_by_alias(name, alias).version)
        self.client.set_registered_model_alias(name, alias, version)
        self.client.set_model_version_tag(name, version, tag(f"promoted.{alias}"), _now_iso())
        return {"name": name, "version": version, "alias": alias, "run_id": run_id, "previous": previous}

    def promote_best(
        self, alias: str = "champion", split: str = "test", dataset: str | None = None
    ) -> dict[str, Any]:
        """Promote the top run of the ranking (`mobile_vla.registry.ranking`); one dataset group is required.

        Among runs tied at rank 1 the best point estimate is taken (between equal estimates, the run with fewer
        trainable parameters): the result's ``tied_with`` says which runs
        the data cannot tell apart from it (by a paired test on the same episodes/seeds where the artifacts
        allow; ``tie_tests`` says how each was decided), so the caller can say so.
        """
        from mobile_vla.registry.ranking import artifact_outcomes, rank_runs

        ranking = rank_runs(self.runs(), split=split, dataset=dataset, outcomes=artifact_outcomes(self))
        groups = [g for g in ranking.groups if g.scores]
        if not groups:
            raise RegistryLookupError(
                f"no rankable run on split {split!r}"
                + (f" and dataset {dataset}" if dataset else "")
                + " (see `mobile-vla registry compare`)"
            )
        if len(groups) > 1:
            names = ", ".join(g.dataset for g in groups)
            raise RegistryLookupError(
                f"ranked runs on {len(groups)} datasets ({names}): choose one with --dataset"
            )
        top = groups[0].scores[0]
        info = self.promote(top.run.run_id, alias=alias)
        info.update(
            key=groups[0].key, value=top.value, interval=top.interval, n=top.n, tied_with=top.tied_with
        )
        info["tie_tests"] = {
            other: c.detail
            for other in top.tied_with
            if (c := groups[0].comparison(top.run.name, other)) is not None
        }
        return info

    def _model_version(self, uri: str) -> Any:
        from mlflow.exceptions import MlflowException

        body = uri[len("models:/") :].strip("/")
        try:
            if "@" in body:
                name, alias = body.split("@", 1)
                return self.client.get_model_version_by_alias(name, alias)
            name, _, version = body.partition("/")
            if not version:
                raise RegistryLookupError(f"{uri}: use models:/NAME@ALIAS or models:/NAME/VERSION")
            if version == "latest":
                versions = self.client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise RegistryLookupError(f"{uri}: registered model {name!r} has no versions")
                return max(versions, key=lambda v: int(v.version))
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise RegistryLookupError(
                f"{uri} is not in the registry at {self.tracking_uri} ({exc.message.splitlines()[0]}). "
                "List models with `mobile-vla registry list`; point an alias with "
                "`mobile-vla registry promote RUN --alias ALIAS`."
            ) from exc

    def resolve_model_uri(self, uri: str, download_dir: str | Path | None = None) -> Path:
        """``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) -> a run directory holding that checkpoint.

        The training run's own directory when it is still there with the same ``best.safetensors`` (checked by
        sha256); otherwise the version's checkpoint artifacts (``config.json`` + ``best.safetensors``) are
        downloaded into ``download_dir`` (default: ``downloads/NAME-vVERSION`` beside the store). A plain
        path is returned unchanged.
        """
        if not uri.startswith("models:/"):
            return Path(uri)
        mv = self._model_version(uri)
        sha = mv.tags.get(tag("checkpoint_sha256"))
        local = Path(mv.tags.get(tag("run_dir"), ""))
        if local.name and _holds_checkpoint(local, sha):
            return local
        target = Path(download_dir) if download_dir else self.cache_dir / f"{mv.name}-v{mv.version}"
        if _holds_checkpoint(target, sha):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            self.client.download_artifacts(mv.run_id, "checkpoint", tmp)
            fetched = Path(tmp) / "checkpoint"
            if sha and file_sha256(fetched / "best.safetensors") != sha:
                raise RegistryLookupError(
                    f"{uri}: the downloaded checkpoint does not match the version's sha256"
                )
            if target.exists():
                shutil.rmtree(target)
            fetched.rename(target)
        _update_mapping(target, self.tracking_uri, {"run_id": mv.run_id, "experiment_id": self.experiment_id})
        return target

    # -- reading --------------------------------------------------------------------------------------------
    def runs(self, *, dataset: str | None = None, case: str | None = None) -> list[StoredRun]:
        """Every run of the experiment (newest first) with its model versions and their aliases."""
        filters = []
        if dataset:
            filters.append(f"tags.`{tag('dataset.fingerprint')}` LIKE '{dataset}%'")
        if case:
            filters.append(f"tags.`{tag('case')}` = '{case}'")
        found, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=" and ".join(filters),
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            found.extend(page)
            token = page.token
            if not token:
                break
        versions = self._versions_by_run()
        return [StoredRun.from_mlflow(r, versions.get(r.info.run_id, [])) for r in found]

    def _versions_by_run(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for model in self.client.search_registered_models(max_results=1000):
            aliases: dict[str, list[str]] = {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            for mv in self.client.search_model_versions(f"name='{model.name}'", max_results=10000):
                out.setdefault(mv.run_id, []).append(
                    {
                        "name": mv.name,
                        "version": str(mv.version),
                        "aliases": sorted(aliases.get(str(mv.version), [])),
                        "created": mv.creation_timestamp,
                        "tags": dict(mv.tags),
                    }
                )
        return out

    def get_run(self, ref: str | Path) -> StoredRun:
        """A run by run directory, run id (or a unique prefix of it), or run name (the newest of that name)."""
        from mlflow.exceptions import MlflowException

        text = str(ref)
        if Path(text).is_dir():
            run_id = self._find_run(Path(text).resolve())
            if run_id is None:
                raise RegistryLookupError(
                    f"{text} is not recorded in {self.tracking_uri}; run `mobile-vla registry record {text}`"
                )
            text = run_id
        with contextlib.suppress(MlflowException):
            run = self.client.get_run(text)
            versions = self._versions_by_run().get(run.info.run_id, [])
            return StoredRun.from_mlflow(run, versions)
        matches = [r for r in self.runs() if r.run_id.startswith(text) or r.name == text]
        by_id = [r for r in matches if r.run_id.startswith(text)]
        matches = by_id or matches
        if not matches:
            raise RegistryLookupError(
                f"no run {text!r} in {self.tracking_uri} (see `mobile-vla registry list`)"
            )
        if len({r.run_id for r in by_id}) > 1:
            raise RegistryLookupError(f"{text!r} matches {len(by_id)} run ids; give more characters")
        return matches[0]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [
            (m.step, m.value) for m in sorted(self.client.get_metric_history(run_id, key), key=_step_time)
        ]

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path | None:
        """One artifact into ``dst`` (None when the run has no such artifact)."""
        from mlflow.exceptions import MlflowException

        Path(dst).mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError):
            return None

    def reconcile_stale_runs(self) -> list[str]:
        """Mark KILLED the RUNNING runs whose writer (same host, pid + start time) no longer exists."""
        host = socket.gethostname()
        fixed = []
        for run in self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'"
        ):
            tags = run.data.tags
            if tags.get(tag("host")) != host or not tags.get(tag("pid"), "").isdigit():
                continue
            pid = int(tags[tag("pid")])
            if _process_alive(pid, tags.get(tag("pid_start")) or None):
                continue
            self.client.set_tag(
                run.info.run_id,
                tag("error"),
                f"process {pid} on {host} ended without closing the run (kill -9, out of memory or power loss)",
            )
            self.client.set_tag(run.info.run_id, tag("status"), "killed")
            self.client.set_terminated(run.info.run_id, "KILLED")
            fixed.append(run.info.run_id)
        return fixed

    def training_callback(self) -> RegistryCallback:
        """A trainer callback (``on_run_start`` / ``on_epoch_end`` / ``on_run_end``) that logs into this store."""
        return RegistryCallback(self)


class RunHandle:
    """The MLflow run of one training in progress. Finish it (or use ``with``): see `Registry.start_training_run`."""

    def __init__(self, registry: Registry, run_id: str, run_dir: Path, config: Mapping[str, Any]) -> None:
        self.registry = registry
        self.run_id = run_id
        self.run_dir = run_dir
        self._config = dict(config)
        self.finished = False
        self._warned = False

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` row (numbers and nested dicts of numbers), at ``step=epoch``.

        A store that fails mid-training only logs a warning: the run directory stays the source of truth and
        `finish` (or ``mobile-vla registry record RUN_DIR``) imports whatever was missed.
        """
        values = numeric_leaves(metrics, skip=("epoch",))
        try:
            self.registry._log_metrics(self.run_id, values, step=int(epoch), skip_unchanged=False)
        except Exception as exc:
            if not self._warned:
                logger.warning(
                    "registry: could not log epoch %s of run %s (%s); will retry at the end",
                    epoch,
                    self.run_id,
                    exc,
                )
                self._warned = True

    def finish(
        self, status: str = "finished", summary: Mapping[str, Any] | None = None, error: str | None = None
    ) -> None:
        """End the run: import the run directory (summary, checkpoint, evaluations) and set the final status.

        ``status`` uses the run directory's words (``finished``/``failed``/``killed``); a ``finished`` run with a
        ``best.safetensors`` becomes a version of the registered model named after its case.
        """
        if self.finished:
            return
        if status not in STATUS_TO_MLFLOW or status == "running":
            raise ValueError(f"status must be one of finished, failed, killed; got {status!r}")
        self.finished = True
        _open_handles.discard(self)
        # A training that died before writing config.json still ends with the config it started with.
        has_config = (self.run_dir / "config.json").is_file()
        record = read_run_dir(self.run_dir) if has_config else RunRecord(self.run_dir, self._config)
        record.summary = {**(record.summary or {}), **dict(summary or {}), "status": status}
        if error and not record.summary.get("error"):
            record.summary["error"] = error
        record.summary.setdefault("updated", _now_iso())
        self.registry._sync(self.run_id, record)

    def __enter__(self) -> RunHandle:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        if exc_type is None:
            self.finish("finished")
            return
        killed = issubclass(exc_type, KeyboardInterrupt)  # Ctrl-C, or SIGTERM under cli.process_hooks
        try:
            self.finish("killed" if killed else "failed", error=f"{exc_type.__name__}: {exc}")
        except Exception as store_error:  # never hide the training's own exception behind the store's
            _log_unrecorded(self.run_dir, store_error)


# --- helpers ------------------------------------------------------------------------------------------------
def registry_run_id(run_dir: str | Path, tracking_uri: str | None = None) -> str | None:
    """The MLflow run id a run directory is recorded under (from its ``registry.json``; no MLflow import).

    For ``/model/info`` and logs. ``tracking_uri`` defaults to the URI `open_registry` would use; when the
    directory was recorded in exactly one store, that one is returned whatever the URI.
    """
    stores = _read_mapping(Path(run_dir))
    try:
        entry = stores.get(resolve_tracking_uri(tracking_uri))
    except RegistryUnavailableError:
        entry = None
    if entry is None and len(stores) == 1:
        entry = next(iter(stores.values()))
    return (entry or {}).get("run_id")


def _read_mapping(run_dir: Path) -> dict[str, dict[str, Any]]:
    path = run_dir / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("stores") or {})
    except (json.JSONDecodeError, AttributeError):
        logger.warning("%s is not valid JSON; the run will be looked up by its directory", path)
        return {}


def _update_mapping(run_dir: Path, tracking_uri: str, entry: Mapping[str, Any]) -> None:
    """Merge ``entry`` into ``registry.json``'s record for this store (atomic replace)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stores = _read_mapping(run_dir)
    stores[tracking_uri] = {**stores.get(tracking_uri, {}), **entry}
    path = run_dir / REGISTRY_FILE
    tmp = path.with_name(f"{REGISTRY_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"stores": stores}, indent=2))
    tmp.replace(path)


def _holds_checkpoint(directory: Path, sha: str | None) -> bool:
    best = directory / "best.safetensors"
    if not (best.is_file() and (directory / "config.json").is_file()):
        return False
    return sha is None or file_sha256(best) == sha


def _timestamp_ms(text: Any) -> int:
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(text).timestamp() * 1000)
    return int(time.time() * 1000)


def _now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _step_time(metric: Any) -> tuple[int, int]:
    return metric.step, metric.timestamp


def resolve_model_uri(
    uri: str, tracking_uri: str | None = None, download_dir: str | Path | None = None
) -> Path:
    """``models:/NAME@ALIAS`` -> run directory, against ``tracking_uri`` (default as `open_registry`)."""
    if not str(uri).startswith("models:/"):
        return Path(uri)
    registry = open_registry(tracking_uri)
    assert isinstance(registry, Registry)
    return registry.resolve_model_uri(str(uri), download_dir)
