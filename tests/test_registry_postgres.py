"""The team registry the README promises, for real: PostgreSQL (Debian's package) + `mlflow server` on loopback.

Two trainings run concurrently from two processes against the server, then `evaluate`, `registry compare`,
`report` and `promote`. No run may be lost, and the report must equal the one a SQLite store gives for the same
run directories. PostgreSQL is started by the test (as the `postgres` user when run as root, since PostgreSQL
refuses to run as root); when it is not installed and we are root, Debian's `postgresql` package is installed
first. Where it cannot be started the test fails, saying why: it never passes without a server.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "mobile_vla.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _ensure_postgres() -> Path:
    bindir = _postgres_bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        bindir = _postgres_bindir()
        if bindir is None:
            pytest.fail(
                f"PostgreSQL cannot be started: `apt-get install postgresql` failed: {result.stderr[-2000:]}"
            )
    if bindir is None:
        pytest.fail(
            "PostgreSQL cannot be started: no initdb found (install Debian's `postgresql` package, or run the "
            "test as root so that it installs it)"
        )
    return bindir


class Postgres:
    """A throwaway cluster on 127.0.0.1:port, trust authentication for the `mlflow` role, loopback only."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        # pytest's tmp_path is private to root (0700 parents): the postgres user needs its own directory.
        self.root = Path(tempfile.mkdtemp(prefix="mobile-vla-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("PostgreSQL cannot be started: running as root and there is no `postgres` user")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.as_user, *argv], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.is_file() else ""
            pytest.fail(
                f"PostgreSQL cannot be started: {' '.join(argv)} exited {result.returncode}: "
                f"{result.stderr[-2000:]}\n{log}"
            )
        return result

    def start(self) -> str:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "mlflow", "-A", "trust", "--no-sync"
        )
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120",
            "-o", options, "start",
        )  # fmt: skip
        self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", "mlflow"
        )
        return f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            subprocess.run(
                [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"],
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def team_server(tmp_path):
    postgres = Postgres(_ensure_postgres())
    server = None
    try:
        backend = postgres.start()
        port = _free_port()
        log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 - closed in finally
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
             "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # the first start runs MLflow's schema migrations on PostgreSQL
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"mlflow server on {backend} did not start:\n{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}"
                    )
                time.sleep(1)
        yield {"uri": uri, "backend": backend}
    finally:
        try:
            if server is not None and server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
        finally:
            postgres.stop()


def _cli(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, (
            f"mobile-vla {' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return result


def _normalise(report: str, run_ids: dict[str, str]) -> str:
    """What differs between two stores by construction: the store's URI and the report's own clock (the
    "Generated by" line), the run ids each store assigns, and when each store registered and promoted the
    model version (at the end of training on the server, at `registry record` in SQLite; each `promote` at
    its own moment). Times that come from the run directories (started, finished) stay as they are."""
    lines = [
        line
        for line in report.splitlines()
        if not line.startswith("Generated by `mobile-vla registry report`")
    ]
    text = "\n".join(lines)
    for run_id, name in run_ids.items():
        text = text.replace(run_id, f"<{name}>").replace(run_id[:8], f"<{name}>")
    text = re.sub(r"^- \d{2}:\d{2} (registered|promoted) ", r"- <store clock> \1 ", text, flags=re.M)
    # The update log is in the order things reached the store: two concurrent trainings decide which of their
    # registrations comes first. Compared as a set of lines; everything else in order.
    head, sep, log = text.partition("## Update log")
    body, sep2, tail = log.partition("\n## ")
    return head + sep + "\n".join(sorted(body.splitlines())) + sep2 + tail


def _canonical(compare: dict) -> dict:
    """`registry compare --json` with its unordered lists sorted: runs that are not ranked (separate,
    excluded, unranked) come in the order they arrived in the store, which two concurrent trainings decide;
    ranked entries carry their rank."""
    out = dict(compare)
    for key in ("separate", "excluded"):
        out[key] = sorted(compare[key], key=lambda r: (r.get("case", ""), r["name"]))
    out["groups"] = [
        {
            **g,
            "unranked": sorted(g["unranked"], key=lambda r: r["name"]),
            "ranking": sorted(g["ranking"], key=lambda r: (r["rank"], r["name"])),
        }
        for g in compare["groups"]
    ]
    return out


def test_two_concurrent_trainings_on_a_postgresql_mlflow_server_lose_nothing_and_report_as_sqlite(
    team_server, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=team_server["uri"],
        MOBILE_VLA_HOME=str(tmp_path / "home"),
        HF_HUB_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        OMP_NUM_THREADS="1",
    )
    _cli(
        "data",
        "synth",
        "--out",
        str(tmp_path / "episodes"),
        "--episodes",
        "8",
        "--image-size",
        "24x32",
        env=env,
    )
    _cli("backbones", "show", "kosmos2-tiny", env=env)  # build the tiny model once, not in both trainings
    runs = {"a": ("case1", "0"), "b": ("case3", "1")}
    procs = {
        name: subprocess.Popen(
            [
                *CLI,
                "train",
                "--case",
                case,
                "--data",
                str(tmp_path / "episodes"),
                "--backbone",
                "kosmos2-tiny",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--seed",
                seed,
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(tmp_path / "runs" / name),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for name, (case, seed) in runs.items()
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"training {name} failed:\n{out[-4000:]}"
    for name in runs:
        _cli(
            "evaluate",
            str(tmp_path / "runs" / name),
            "--split",
            "test",
            "--n-boot",
            "50",
            "--device",
            "cpu",
            env=env,
        )

    # No run is lost: both are in the PostgreSQL-backed store, finished, with every epoch and the evaluation.
    listed = json.loads(_cli("registry", "list", "--json", env=env).stdout)
    by_dir = {Path(r["run_dir"]).name: r for r in listed}
    assert sorted(by_dir) == ["a", "b"] and len(listed) == 2
    for name, (case, _) in runs.items():
        run = by_dir[name]
        assert run["status"] == "finished" and run["case"] == case
        assert run["test"] and run["test"]["n"] > 0
        shown = json.loads(_cli("registry", "show", run["run_id"], "--json", env=env).stdout)
        assert "train_loss" in shown["metrics"]
    _cli("registry", "promote", str(tmp_path / "runs" / "a"), "--alias", "champion", env=env)
    resolved = _cli("registry", "resolve", "models:/case1@champion", env=env).stdout.strip().splitlines()[-1]
    assert Path(resolved).resolve() == (tmp_path / "runs" / "a").resolve()
    pg_compare = json.loads(_cli("registry", "compare", "--split", "test", "--json", env=env).stdout)
    _cli("registry", "report", "--out", str(tmp_path / "pg" / "report.md"), env=env)

    # The same run directories recorded into a SQLite store give the same comparison and the same report.
    sqlite = f"sqlite:///{tmp_path / 'sqlite' / 'mlflow.db'}"
    local = {**env, "MLFLOW_TRACKING_URI": sqlite}
    _cli("registry", "record", str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b"), env=local)
    _cli("registry", "promote", str(tmp_path / "runs" / "a"), "--alias", "champion", env=local)
    sqlite_compare = json.loads(_cli("registry", "compare", "--split", "test", "--json", env=local).stdout)
    _cli("registry", "report", "--out", str(tmp_path / "sqlite" / "report.md"), env=local)
    sqlite_listed = json.loads(_cli("registry", "list", "--json", env=local).stdout)

    ids = {r["run_id"]: f"run {Path(r['run_dir']).name}" for r in listed + sqlite_listed}
    as_text = {
        "pg": _normalise(json.dumps(_canonical(pg_compare), indent=1, sort_keys=True), ids),
        "sqlite": _normalise(json.dumps(_canonical(sqlite_compare), indent=1, sort_keys=True), ids),
    }
    assert not pg_compare["groups"]  # synthetic data: listed apart, never ranked
    assert len(pg_compare["separate"]) + len(pg_compare["excluded"]) == 2
    assert as_text["pg"] == as_text["sqlite"]
    reports = {
        store: _normalise((tmp_path / store / "report.md").read_text(), ids) for store in ("pg", "sqlite")
    }
    assert "Shown: run `a` (`<run a>`), the champion" in reports["pg"]
    assert (
        "registered `a` as case1 version 1" in reports["pg"]
        and "registered `b` as case3 version 1" in reports["pg"]
    )
    diff = "\n".join(
        difflib.unified_diff(reports["sqlite"].splitlines(), reports["pg"].splitlines(), lineterm="")
    )
    assert reports["pg"] == reports["sqlite"], diff


def test_a_server_uri_that_refuses_is_named(tmp_path):
    port = _free_port()  # nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "MOBILE_VLA_HOME": str(tmp_path)}
    result = _cli("registry", "list", env=env, check=False)
    assert result.returncode != 0
    assert f"http://127.0.0.1:{port}" in result.stderr and "cannot reach" in result.stderr
