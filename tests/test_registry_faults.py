"""The run store under faults: a writer killed with SIGKILL mid-run leaves its run KILLED the next time the
store is opened (and no other run touched); concurrent writers lose no run."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from registry_helpers import fresh_store, write_run_dir

from mobile_vla.registry import open_registry

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from mobile_vla.registry import open_registry
    mode, uri, *run_dirs = sys.argv[1:]
    registry = open_registry(uri)
    if mode == "forever":                    # logs epochs until it is killed
        run = registry.start_training_run(run_dirs[0])
        epoch = 0
        while True:
            run.log_epoch(epoch, {{"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_loss": 0.5}})
            print("logged", epoch, flush=True)
            epoch += 1
    elif mode == "alive":                    # holds its run open until stdin closes
        with registry.start_training_run(run_dirs[0]):
            print("ready", flush=True)
            sys.stdin.read()
    elif mode == "many":                     # one whole training run per directory, one after the other
        print("ready", flush=True)
        sys.stdin.readline()
        for run_dir in run_dirs:
            with registry.start_training_run(run_dir) as run:
                for epoch in range(3):
                    run.log_epoch(epoch, {{"epoch": epoch, "train_loss": 1.0 / (epoch + 1)}})
    """
)


def _spawn(tmp_path: Path, mode: str, uri: str, *run_dirs: Path) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(ROOT / "tests")))
    return subprocess.Popen(
        [sys.executable, str(script), mode, uri, *map(str, run_dirs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def _config_only(run_dir: Path) -> Path:
    """The run dir as it is when training starts: config.json written, nothing else yet."""
    for path in list(run_dir.iterdir()):
        if path.name != "config.json":
            path.unlink()
    return run_dir


def _snapshot(store, run_dir: Path) -> tuple:
    run = store.get_run(run_dir)
    return run.status, run.end_time, dict(run.tags), dict(run.metrics)


def test_a_writer_killed_mid_run_leaves_it_killed_at_the_next_open_and_no_other_run_touched(tmp_path):
    uri = fresh_store(tmp_path)
    store = open_registry(uri)
    runs = tmp_path / "runs"
    done = write_run_dir(runs, "done")
    store.record_run_dir(done)
    failed = write_run_dir(runs, "failed_before", status="failed", seed=1)
    store.record_run_dir(failed)
    before = {d: _snapshot(store, d) for d in (done, failed)}

    alive_dir, victim_dir = (
        _config_only(write_run_dir(runs, name, seed=i)) for i, name in ((2, "alive"), (3, "victim"))
    )
    alive = _spawn(tmp_path, "alive", uri, alive_dir)
    victim = _spawn(tmp_path, "forever", uri, victim_dir)
    try:
        assert alive.stdout.readline().strip() == "ready", alive.stderr.read()
        for expected in range(4):  # it is logging when it dies
            assert victim.stdout.readline().split() == ["logged", str(expected)], victim.stderr.read()
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
        assert store.get_run(victim_dir).status == "RUNNING"  # nobody could close it

        reopened = open_registry(uri)  # the next open, e.g. the next `mobile-vla train` or `registry list`
        run = reopened.get_run(victim_dir)
        assert run.status == "KILLED" and run.tag("status") == "killed"
        assert f"process {victim.pid}" in run.tag("error")
        # what it logged before it died is still there
        assert [step for step, _ in reopened.metric_history(run.run_id, "train_loss")][:4] == [0, 1, 2, 3]
        assert reopened.get_run(alive_dir).status == "RUNNING"  # its writer lives: left alone
        assert {d: _snapshot(reopened, d) for d in (done, failed)} == before  # finished runs: untouched
    finally:
        alive.stdin.close()
        victim.kill()
    assert alive.wait(timeout=120) == 0, alive.stderr.read()
    assert store.get_run(alive_dir).status == "FINISHED"
    assert open_registry(uri).reconcile_stale_runs() == []


@pytest.mark.slow
def test_two_processes_writing_twenty_runs_each_lose_none(tmp_path):
    """Two writers, each 20 whole training runs (start, 3 epochs, finish) into one new SQLite store at once."""
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"  # creating the tables is part of the race
    runs = tmp_path / "runs"
    dirs = {w: [_config_only(write_run_dir(runs, f"{w}{i:02d}", seed=i)) for i in range(20)] for w in "ab"}
    writers = {w: _spawn(tmp_path, "many", uri, *dirs[w]) for w in "ab"}
    for proc in writers.values():
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    for proc in writers.values():
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in writers.values():
        assert proc.wait(timeout=900) == 0, proc.stderr.read()
    store = open_registry(uri)
    stored = {r.run_dir: r for r in store.runs()}
    assert len(stored) == 40
    for run_dir in dirs["a"] + dirs["b"]:
        run = stored[str(run_dir.resolve())]
        assert run.status == "FINISHED", run_dir
        assert [step for step, _ in store.metric_history(run.run_id, "train_loss")] == [0, 1, 2], run_dir
