"""The main job end to end, in its quick form: data -> four cases -> evaluation -> ranking -> report."""

import json
import os
import re
from pathlib import Path

import pytest

from mobile_vla.demo import DemoPlan, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    home = os.environ.get("MOBILE_VLA_HOME")
    try:
        summary = run_demo(out, DemoPlan.quick(), progress=False)
    finally:  # run_demo points the registry at its output; later tests keep their own
        if home is not None:
            os.environ["MOBILE_VLA_HOME"] = home
    return out, summary


def test_demo_trains_and_evaluates_every_case_offline_and_in_closed_loop(demo):
    out, summary = demo
    assert set(summary["cases"]) == {"case1", "case2", "case3", "case4"}
    for case, result in summary["cases"].items():
        assert result["status"] == "finished", case
        assert result["test_n"] > 0 and result["closed_loop_n"] == DemoPlan.quick().closed_loop_episodes
        low, high = result["closed_loop_interval"]
        assert 0.0 <= low <= result["closed_loop_success"] <= high <= 1.0
        assert (out / "runs" / case / "best.safetensors").exists()
    assert json.loads((out / "demo_summary.json").read_text())["report"] == summary["report"]


def test_demo_report_ranks_the_cases_with_intervals_and_links_plots(demo):
    out, summary = demo
    report = (out / "report.md").read_text()
    for case in ("case1", "case2", "case3", "case4"):
        assert case in report
    assert re.search(r"\[\s*-?\d+(\.\d+)?,\s*-?\d+(\.\d+)?\]", report), "metrics carry intervals"
    assert "n=" in report or "| n |" in report
    plots = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert plots and all((out / p).exists() for p in plots)


def test_demo_champion_resolves_to_a_run_directory(demo):
    out, summary = demo
    champion = summary["champion"]
    assert champion is not None, "the demo promotes its best case"
    from mobile_vla.registry import open_registry

    registry = open_registry(f"sqlite:///{out}/mlruns/mlflow.db")
    run_dir = registry.resolve_model_uri(f"models:/{champion['name']}@champion")
    assert (run_dir / "best.safetensors").exists()


def test_demo_compares_the_champions_action_spaces_and_sampling_strategies(demo):
    out, summary = demo
    comparisons = summary["comparisons"]
    case = summary["champion"]["name"]
    assert comparisons["case"] == case
    spaces = comparisons["action_space"]["spaces"]
    assert set(spaces) == {"continuous", "keys"}
    for space, run_dir in spaces.items():  # each run really trained in its space, on the same test episodes
        config = json.loads((Path(run_dir) / "config.json").read_text())
        assert config["case"] == case and config["policy"]["action_space"] == space
    offline = comparisons["action_space"]["offline"]
    assert offline["continuous"]["n"] == offline["keys"]["n"] > 0
    closed = comparisons["action_space"]["closed"]
    assert [r["seed"] for r in closed["keys"]["records"]] == [
        r["seed"] for r in closed["continuous"]["records"]
    ]

    sampling = comparisons["sampling"]
    for strategy in ("uniform", "balanced"):
        config = json.loads((Path(sampling["runs"][strategy]) / "config.json").read_text())
        assert config["sampling"]["strategy"] == strategy
        assert config["train"]["epochs"] == DemoPlan.quick().comparison_epochs
        assert sampling["closed"][strategy]["n"] == DemoPlan.quick().comparison_closed_loop_episodes
    sides = [p.name for p in Path(sampling["data_dir"]).glob("*.h5")]
    left = sum("_left_" in name for name in sides)
    assert left == 3 * (len(sides) - left), "the imbalanced dataset holds the mix's 3:1 left:right"

    report = (out / "report.md").read_text()
    assert f"## Action spaces side by side: {case}" in report
    assert f"## Sampling on imbalanced data: {case}" in report
    assert report.index("## Action spaces side by side") < report.index("## Overview")
    assert (out / "report_plots" / f"confusion_{case}_action_spaces.png").exists()
    assert (out / "report_plots" / f"sampling_{case}_imbalanced.png").exists()
    # the comparison runs answer a question each: they are not versions the registry could promote
    from mobile_vla.registry import open_registry

    registry = open_registry(f"sqlite:///{out}/mlruns/mlflow.db")
    assert sorted(Path(r.run_dir).name for r in registry.runs()) == ["case1", "case2", "case3", "case4"]


def test_the_action_space_table_reads_the_evaluations_key_metrics(demo):
    out, summary = demo
    comparisons = summary["comparisons"]
    report = (out / "report.md").read_text()
    section = report[
        report.index("## Action spaces side by side") : report.index("## Sampling on imbalanced")
    ]
    for space, offline in comparisons["action_space"]["offline"].items():
        keys = offline["key_metrics"]
        assert sum(map(sum, keys["confusion_matrix"])) == keys["n"] == offline["n"]
        row = next(line for line in section.splitlines() if line.startswith(f"| `{space}` |"))
        assert f"{keys['accuracy']:.0f}% (n={keys['n']})" in row and f"{keys['macro_f1']:.2f}" in row


def test_a_failing_job_is_named(tmp_path):
    from mobile_vla.demo.jobs import JobPool, train_job

    config = DemoPlan.quick().train_config("case1")
    for workers in (1, 2):
        pool = JobPool(workers, "lite")
        try:
            with pytest.raises(RuntimeError, match="demo job 'case1' failed"):
                pool.run(
                    {"case1": (train_job, (config, tmp_path / "no_such_data", tmp_path / f"run{workers}"))}
                )
        finally:
            pool.close()


def test_follow_up_jobs_run_once_their_job_has_finished(capsys):
    from mobile_vla.demo.jobs import JobPool

    calls = []

    def job(profile, label):
        calls.append(label)
        return {"label": label, "profile": profile}

    def evaluate_when_trained(name, result):
        assert result["label"] == name and result["job_seconds"] >= 0
        return (
            {f"{name} evaluation": (job, (f"{name} evaluation",))} if name in ("train a", "train b") else None
        )

    pool = JobPool(1, "lite")
    results = pool.run(
        {"train a": (job, ("train a",)), "train b": (job, ("train b",)), "expert": (job, ("expert",))},
        order=["train b"],
        then=evaluate_when_trained,
    )
    # Queued after the jobs already waiting, each after its own job.
    assert calls == ["train b", "train a", "expert", "train b evaluation", "train a evaluation"]
    assert set(results) == set(calls) and results["train a evaluation"]["profile"] == "lite"
    with pytest.raises(ValueError, match="reuse job names"):
        pool.run({"train a": (job, ("train a",))}, then=lambda name, _: {name: (job, (name,))})
