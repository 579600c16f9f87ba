"""The MLflow store: every field round-trips, runs end failed/killed when their process dies, concurrent
writers both land, unreachable stores fail at once, models:/NAME@ALIAS resolves, the plain MLflow client reads it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from registry_helpers import episode_records, eval_result, fresh_store, sim_result, write_run_dir

from mobile_vla.registry import (
    NullRegistry,
    Registry,
    RegistryLookupError,
    RegistryUnavailableError,
    default_tracking_uri,
    open_registry,
    registry_run_id,
)
from mobile_vla.registry.record import file_sha256
from mobile_vla.sim.evaluate import summarize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating an MLflow database costs seconds); tests use distinct run dirs."""
    root = tmp_path_factory.mktemp("store")
    return open_registry(fresh_store(root))


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def _config_only(run_dir: Path) -> Path:
    """The run dir as it is when training starts: config.json written, nothing else yet."""
    for name in list(run_dir.iterdir()):
        if name.name != "config.json":
            name.unlink()
    return run_dir


def test_every_field_round_trips_through_the_store(store, runs):
    run_dir = write_run_dir(runs, "r1", closed_loop=sim_result(17, 20))
    config = json.loads((run_dir / "config.json").read_text())
    run_id = store.record_run_dir(run_dir)
    run = store.get_run(run_id)

    assert run.status == "FINISHED" and run.name == "r1"
    assert (run.case, run.model_class, run.backbone_profile, run.pretrained) == (
        "case1",
        "Simplified2DActionModelV2",
        "lite",
        True,
    )
    assert run.tag("backbone.fingerprint") == config["backbone"]["fingerprint_hash"]
    assert (run.dataset_fingerprint, run.provenance) == (config["data"]["fingerprint"], "sim")
    assert run.tag("dataset.path") == config["data"]["path"]
    assert run.tag("split.seed") == "0" and run.tag("action_dims") == "linear_x,linear_y"
    assert run.tag("code.package_version") == "0.1.0" and run.tag("code.git_commit") == "1a2b3c4"
    assert run.run_dir == str(run_dir.resolve())
    # every hyperparameter and training setting, with its JSON type
    for section in ("policy", "train", "backbone", "feature_dims"):
        assert run.config_section(section) == config[section], section
    # episode ids of each split: an artifact
    split = json.loads(store.download_artifact(run_id, "split.json", runs / "dl").read_text())
    assert {k: split[k] for k in ("train", "val", "test")} == {
        k: config["data"]["split"][k] for k in ("train", "val", "test")
    }
    # per-epoch losses and validation metrics
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert store.metric_history(run_id, "train_loss") == [(e["epoch"], e["train_loss"]) for e in epochs]
    assert store.metric_history(run_id, "val_metrics/mae") == [
        (e["epoch"], e["val_metrics"]["mae"]) for e in epochs
    ]
    # val and test metrics with n and intervals, exactly
    for split_name in ("val", "test"):
        expected = json.loads((run_dir / f"eval_{split_name}.json").read_text())
        got = run.evaluation(split_name)
        assert got["n"] == expected["n"]
        assert {k: got["metrics"][k] for k in expected["metrics"] if k != "n"} == {
            k: v for k, v in expected["metrics"].items() if k != "n"
        }
        assert got["intervals"] == expected["intervals"]
    # closed loop
    closed = run.closed_loop()
    assert closed["n"] == 20 and closed["metrics"]["success_rate"] == 17 / 20
    assert closed["intervals"]["success_rate"] == pytest.approx(sim_result(17, 20)["success_rate_ci95"])
    assert set(closed["per_scenario"]) == {"1box_vert_left", "2box_hori_right"}
    # checkpoint (safetensors + config) as artifacts, registered as a version of the case's model
    ckpt = store.download_artifact(run_id, "checkpoint", runs / "dl")
    assert file_sha256(ckpt / "best.safetensors") == file_sha256(run_dir / "best.safetensors")
    assert json.loads((ckpt / "config.json").read_text()) == config
    assert [v["name"] for v in run.versions] == ["case1"]
    # wall time, summary, trainable parameters; start time from config "created"
    assert run.metrics["summary/wall_time_s"] == 6.0
    assert run.metrics["model/trainable_params"] == 256 * 1280 + 256 + 2 * 256
    assert time.strftime("%Y-%m-%d", time.gmtime(run.start_time / 1000)) == "2026-11-20"
    # the mapping to the MLflow run lives in the run directory
    mapping = json.loads((run_dir / "registry.json").read_text())["stores"][store.tracking_uri]
    assert mapping["run_id"] == run_id and mapping["model"]["name"] == "case1"


def test_importing_twice_changes_nothing(store, runs):
    run_dir = write_run_dir(runs, "twice")
    first = store.record_run_dir(run_dir)
    history = store.metric_history(first, "train_loss")
    versions = store.get_run(first).versions
    assert store.record_run_dir(run_dir) == first
    assert store.metric_history(first, "train_loss") == history
    assert store.get_run(first).versions == versions
    (run_dir / "registry.json").unlink()  # e.g. a copy without it: found again by its run_dir tag
    assert store.record_run_dir(run_dir) == first


def test_live_logging_records_the_same_as_importing_afterwards(store, runs):
    finished = write_run_dir(runs / "a", "same", seed=3)
    live = _config_only(write_run_dir(runs / "b", "same", seed=3))
    imported_id = store.record_run_dir(finished)
    store.log_closed_loop(finished, sim_result(9, 10))

    handle = store.start_training_run(live)
    assert store.get_run(handle.run_id).status == "RUNNING"
    for line in (finished / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        handle.log_epoch(row["epoch"], row)
    for name in ("metrics.jsonl", "best.safetensors", "last.safetensors", "loss_curve.png", "summary.json"):
        (live / name).write_bytes((finished / name).read_bytes())
    handle.finish("finished", json.loads((finished / "summary.json").read_text()))
    for split in ("val", "test"):
        store.log_evaluation(live, split, json.loads((finished / f"eval_{split}.json").read_text()))
    store.log_closed_loop(live, sim_result(9, 10))

    a, b = store.get_run(imported_id), store.get_run(handle.run_id)
    assert a.run_id != b.run_id and b.status == "FINISHED"
    assert a.params == b.params
    assert a.metrics == b.metrics
    writer_tags = ("mobile_vla.run_dir", "mobile_vla.host", "mobile_vla.pid", "mobile_vla.pid_start")
    assert {k: v for k, v in a.tags.items() if k.startswith("mobile_vla.") and k not in writer_tags} == {
        k: v for k, v in b.tags.items() if k.startswith("mobile_vla.") and k not in writer_tags
    }
    assert store.metric_history(a.run_id, "val_loss") == store.metric_history(b.run_id, "val_loss")


def test_an_exception_in_training_marks_the_run_failed_with_its_error(store, runs):
    run_dir = _config_only(write_run_dir(runs, "boom"))
    with pytest.raises(RuntimeError), store.start_training_run(run_dir) as handle:
        raise RuntimeError("loss is nan")
    run = store.get_run(handle.run_id)
    assert run.status == "FAILED" and "loss is nan" in run.tag("error")
    assert run.versions == []  # a failed run is never a model version


def test_a_resumed_run_directory_reopens_the_same_run(store, runs):
    run_dir = _config_only(write_run_dir(runs, "resumed"))
    with pytest.raises(KeyboardInterrupt), store.start_training_run(run_dir) as first:
        raise KeyboardInterrupt
    assert store.get_run(first.run_id).status == "KILLED"
    second = store.start_training_run(run_dir)
    assert second.run_id == first.run_id and store.get_run(first.run_id).status == "RUNNING"
    second.finish("finished")
    assert store.get_run(first.run_id).status == "FINISHED"


def test_a_run_directory_deleted_and_trained_again_is_a_new_run(store, runs):
    first = store.record_run_dir(write_run_dir(runs, "again", created="2026-11-20T10:00:00+00:00"))
    shutil.rmtree(runs / "again")
    second = store.record_run_dir(write_run_dir(runs, "again", created="2026-11-23T10:00:00+00:00"))
    assert second != first
    assert store.get_run(first).status == store.get_run(second).status == "FINISHED"


def test_a_training_that_dies_before_writing_config_still_ends_failed(store, runs):
    run_dir = runs / "early"
    run_dir.mkdir(parents=True)
    config = json.loads((write_run_dir(runs / "src", "early") / "config.json").read_text())
    with pytest.raises(OSError), store.start_training_run(run_dir, config) as handle:
        raise OSError("disk full")
    run = store.get_run(handle.run_id)
    assert run.status == "FAILED" and run.config_section("train") == config["train"]


SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    from mobile_vla.cli import process_hooks   # what every CLI command runs under
    from mobile_vla.registry import open_registry
    mode, uri, run_dir = sys.argv[1:4]
    registry = open_registry(uri)
    if mode == "concurrent":
        with registry.start_training_run(run_dir) as run:
            print("ready", flush=True)
            sys.stdin.readline()     # "go": the other writer is ready too
            for epoch in range(30):
                run.log_epoch(epoch, {{"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_loss": 0.5}})
        sys.exit(0)
    with process_hooks():
        handle = registry.start_training_run(run_dir)
        print("ready", flush=True)
        if mode == "exit":
            sys.exit(3)      # leaves without finish(): process_hooks must close the run
        time.sleep(60)       # "sigterm" and "sigkill" wait here to be killed
    """
)


def _spawn(tmp_path, mode, uri, run_dir):
    script = tmp_path / "writer.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, str(script), mode, uri, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_crashed_exited_and_killed_processes_never_leave_a_run_running(store, runs, tmp_path):
    # (an exception inside `with start_training_run(...)` is covered in-process above)
    dirs = {m: _config_only(write_run_dir(runs, m)) for m in ("exit", "sigterm", "sigkill")}
    procs = {m: _spawn(tmp_path, m, store.tracking_uri, d) for m, d in dirs.items()}
    for mode in ("sigterm", "sigkill"):
        assert procs[mode].stdout.readline().strip() == "ready", procs[mode].stderr.read()
    procs["sigterm"].send_signal(signal.SIGTERM)
    procs["sigkill"].send_signal(signal.SIGKILL)
    codes = {m: p.wait(timeout=120) for m, p in procs.items()}
    assert codes["sigterm"] == 128 + signal.SIGTERM and codes["exit"] == 3
    status = {m: store.get_run(d).status for m, d in dirs.items()}
    assert (status["exit"], status["sigterm"]) == ("FAILED", "KILLED")
    assert "without finishing" in store.get_run(dirs["exit"]).tag("error")
    assert "signal" in store.get_run(dirs["sigterm"]).tag("error")
    # kill -9 runs no handler: the run stays RUNNING until the store is next opened on this host, which finds
    # the writer gone and closes it (the other writers open the store too, so that may have happened already)
    assert status["sigkill"] in ("RUNNING", "KILLED")
    store.reconcile_stale_runs()
    assert store.get_run(dirs["sigkill"]).status == "KILLED"
    assert "ended without closing the run" in store.get_run(dirs["sigkill"]).tag("error")
    assert store.reconcile_stale_runs() == []


def test_two_trainings_logging_at_once_both_land_whole(runs, tmp_path):
    """Two processes (this one and a spawned one) create a new SQLite store and write it at the same time."""
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"  # not a template copy: creating the tables is part of the race
    mine, theirs = (_config_only(write_run_dir(runs, f"parallel{i}", seed=i)) for i in range(2))
    proc = _spawn(tmp_path, "concurrent", uri, theirs)
    store = open_registry(uri)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    with store.start_training_run(mine) as run:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        for epoch in range(30):
            run.log_epoch(epoch, {"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_loss": 0.5})
    assert proc.wait(timeout=180) == 0, proc.stderr.read()
    for run_dir in (mine, theirs):
        run = store.get_run(run_dir)
        assert run.status == "FINISHED"
        history = store.metric_history(run.run_id, "train_loss")
        assert [step for step, _ in history] == list(range(30))


def test_a_new_closed_loop_evaluation_replaces_the_previous_one(store, runs):
    run_dir = write_run_dir(runs, "re_sim")
    store.log_closed_loop(run_dir, sim_result(5, 10))
    newer = sim_result(18, 20)
    newer["per_scenario"] = {"2box_vert_right": summarize(episode_records(18, 20))}
    store.log_closed_loop(run_dir, newer)
    closed = store.get_run(run_dir).closed_loop()
    assert closed["n"] == 20 and closed["metrics"]["success_rate"] == 0.9
    assert list(closed["per_scenario"]) == ["2box_vert_right"]
    assert json.loads((run_dir / "closed_loop.json").read_text())["n"] == 20


def test_the_plain_mlflow_client_reads_our_runs_and_aliases(store, runs):
    from mlflow.tracking import MlflowClient

    run_dir = write_run_dir(runs, "readable")
    run_id = store.record_run_dir(run_dir)
    store.promote(run_dir, alias="readable")
    client = MlflowClient(tracking_uri=store.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params["policy.hidden_dim"] == "256"
    assert run.data.tags["mobile_vla.case"] == "case1"
    assert run.data.metrics["test/mae"] > 0 and run.data.metrics["test/n"] == 60
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0, 1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "split.json", "checkpoint", "eval", "metrics.jsonl", "summary.json"} <= artifacts
    version = client.get_model_version_by_alias("case1", "readable")
    assert version.run_id == run_id and "readable" in version.aliases


def test_promote_then_models_uri_resolves_to_the_promoted_checkpoint(store, runs, tmp_path):
    old = write_run_dir(runs, "old", seed=1)
    new = write_run_dir(runs, "new", seed=2)
    store.record_run_dir(old)
    store.record_run_dir(new)
    info = store.promote(new, alias="robot")
    assert store.resolve_model_uri("models:/case1@robot") == new.resolve()
    again = store.promote(old, alias="robot")
    assert again["previous"] == info["version"]
    assert store.resolve_model_uri("models:/case1@robot") == old.resolve()
    assert store.resolve_model_uri(f"models:/case1/{info['version']}") == new.resolve()
    # the run directory is gone (another machine): the checkpoint is downloaded from the store
    old.rename(tmp_path / "moved")
    fetched = store.resolve_model_uri("models:/case1@robot", download_dir=tmp_path / "fetched")
    assert file_sha256(fetched / "best.safetensors") == file_sha256(tmp_path / "moved" / "best.safetensors")
    assert (fetched / "config.json").is_file()
    # and a later evaluation of the downloaded directory lands on the same run
    store.log_evaluation(fetched, "test", eval_result("test", n=7)[0])
    assert store.get_run(again["run_id"]).evaluation("test")["n"] == 7


def test_unknown_alias_and_unfinished_runs_are_refused_clearly(store, runs):
    with pytest.raises(RegistryLookupError, match="promote"):
        store.resolve_model_uri("models:/case1@nobody")
    failed = write_run_dir(runs, "failed", status="failed")
    store.record_run_dir(failed)
    with pytest.raises(RegistryLookupError, match="only finished runs"):
        store.promote(failed)


def test_unreachable_server_fails_at_once_naming_the_uri():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=f"127.0.0.1:{port}.*--no-track"):
        open_registry(uri)
    assert time.monotonic() - started < 10


def test_unwritable_sqlite_location_fails_at_once(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RegistryUnavailableError, match="cannot write the registry database"):
        open_registry(f"sqlite:///{blocker}/sub/mlflow.db")


def test_default_store_is_sqlite_under_the_project_with_explicit_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setenv("MOBILE_VLA_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    fresh_store(tmp_path)  # the database the default points at (skips the slow first creation)
    registry = open_registry()
    assert isinstance(registry, Registry) and registry.tracking_uri == default_tracking_uri()
    assert "MLFLOW_DISABLE_TELEMETRY" not in os.environ  # the library sets no environment variable...
    from mobile_vla.cli import process_hooks

    with process_hooks():  # ...the CLI does, for the command's duration
        assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert "MLFLOW_DISABLE_TELEMETRY" not in os.environ
    experiment = registry.client.get_experiment(registry.experiment_id)
    assert experiment.artifact_location == (tmp_path.resolve() / "mlruns" / "artifacts").as_uri()
    run_id = registry.record_run_dir(write_run_dir(tmp_path / "runs", "r"))
    assert (tmp_path / "mlruns" / "artifacts" / run_id / "artifacts" / "config.json").is_file()


def test_mlflow_tracking_uri_environment_is_honoured(tmp_path, monkeypatch):
    uri = fresh_store(tmp_path / "team")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert open_registry().tracking_uri == uri
    assert open_registry(fresh_store(tmp_path / "flag")).tracking_uri != uri  # --tracking-uri wins


def test_no_track_registry_accepts_every_call_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    registry = open_registry("http://127.0.0.1:9", no_track=True)  # never contacted
    assert isinstance(registry, NullRegistry) and not registry.enabled
    run_dir = write_run_dir(tmp_path, "r")
    with registry.start_training_run(run_dir) as handle:
        handle.log_epoch(0, {"train_loss": 1.0})
    registry.log_evaluation(run_dir, "test", {})
    registry.log_closed_loop(run_dir, {})
    callback = registry.training_callback()
    callback.on_run_start(type("T", (), {"out_dir": run_dir})())
    callback.on_run_end(None, {"status": "finished"})
    assert not (run_dir / "registry.json").exists() and not (tmp_path / "mlruns").exists()
    with pytest.raises(RegistryLookupError, match="--no-track"):
        registry.resolve_model_uri("models:/case1@champion")


def test_trainer_callback_records_a_training(store, runs):
    run_dir = _config_only(write_run_dir(runs, "callback"))
    trainer = type("Trainer", (), {"out_dir": run_dir})()
    callback = store.training_callback()
    callback.on_run_start(trainer)
    for epoch in range(3):
        callback.on_epoch_end(trainer, {"epoch": epoch, "train_loss": 0.1 * (3 - epoch), "val_loss": 0.2})
    callback.on_run_end(trainer, {"status": "killed", "error": "TrainingKilled: SIGTERM", "wall_time_s": 3.0})
    run = store.get_run(callback.handle.run_id)
    assert run.status == "KILLED" and run.tag("error") == "TrainingKilled: SIGTERM"
    assert [s for s, _ in store.metric_history(run.run_id, "train_loss")] == [0, 1, 2]


@pytest.mark.slow
def test_a_team_mlflow_server_works_unchanged(tmp_path):
    """`mlflow server` (REST + proxied artifacts, as a team runs it on PostgreSQL): same API, same results."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = fresh_store(tmp_path / "server")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(tmp_path / "server" / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(1)
        registry = open_registry(uri)
        run_dir = write_run_dir(tmp_path / "runs", "remote", closed_loop=sim_result(9, 10))
        run_id = registry.record_run_dir(run_dir)
        run = registry.get_run(run_id)
        assert run.status == "FINISHED" and run.closed_loop()["n"] == 10
        registry.promote(run_dir)
        run_dir.rename(tmp_path / "elsewhere")
        fetched = registry.resolve_model_uri("models:/case1@champion", download_dir=tmp_path / "fetched")
        assert file_sha256(fetched / "best.safetensors") == file_sha256(
            tmp_path / "elsewhere" / "best.safetensors"
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_store_failing_at_the_end_never_hides_the_trainings_outcome(store, runs, monkeypatch, caplog):
    run_dir = _config_only(write_run_dir(runs, "store_down"))
    trainer = type("Trainer", (), {"out_dir": run_dir})()
    callback = store.training_callback()
    callback.on_run_start(trainer)

    def down(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(store, "_sync", down)
    callback.on_run_end(trainer, {"status": "finished"})  # must not raise into the trainer's `finally`
    assert f"mobile-vla registry record {run_dir}" in caplog.text
    with pytest.raises(ValueError, match="diverged"), store.start_training_run(run_dir):
        raise ValueError("diverged")  # the training's error, not the store's, reaches the caller


def test_registry_run_id_reads_the_mapping_without_mlflow(store, runs):
    run_dir = write_run_dir(runs, "mapped")
    run_id = store.record_run_dir(run_dir)
    assert registry_run_id(run_dir, store.tracking_uri) == run_id
    assert registry_run_id(run_dir) == run_id  # recorded in one store only
    assert registry_run_id(runs) is None


def test_database_is_locked_is_retried_and_other_errors_are_not():
    from mobile_vla.registry.store import _RetryingClient

    class Flaky:
        calls = 0

        def log_batch(self, run_id):
            Flaky.calls += 1
            if Flaky.calls < 3:
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return run_id

        def get_run(self, run_id):
            Flaky.calls += 1
            raise ValueError("RESOURCE_DOES_NOT_EXIST")

    client = _RetryingClient(Flaky())
    assert client.log_batch("r") == "r" and Flaky.calls == 3
    Flaky.calls = 0
    with pytest.raises(ValueError):
        client.get_run("r")
    assert Flaky.calls == 1
