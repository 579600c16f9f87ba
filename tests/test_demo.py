"""The main job end to end, in its quick form: data -> four cases -> evaluation -> ranking -> report."""

import json
import os
import re

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
