"""The registry document and the `mobile-vla registry` commands, on a store filled the way a lab fills it:
two cases (and Case 3) on one dataset, one case on another, a synthetic-data run, a random-weight run, a crash.
"""

import json
import re

import pytest
from registry_helpers import fresh_store, sim_result, write_run_dir

from mobile_vla.cli import main
from mobile_vla.registry import open_registry
from mobile_vla.registry.report import write_report

DATASET_A, DATASET_B, SYNTH = "aaaa1111aaaa1111", "bbbb2222bbbb2222", "5555eeee5555eeee"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    uri = fresh_store(root)
    registry = open_registry(uri)
    runs = root / "runs"
    # Dataset A: case1 and case3 indistinguishable (wide, overlapping MAE intervals), case2 clearly worse.
    specs = [
        dict(
            name="c1_a",
            case="case1",
            dataset=DATASET_A,
            noise=0.20,
            mae_half_width=0.05,
            created="2026-11-20T09:00:00+00:00",
        ),
        dict(
            name="c3_a",
            case="case3",
            dataset=DATASET_A,
            noise=0.22,
            mae_half_width=0.05,
            epochs=5,
            created="2026-11-20T11:00:00+00:00",
        ),
        dict(
            name="c2_a",
            case="case2",
            dataset=DATASET_A,
            noise=0.90,
            mae_half_width=0.02,
            hidden_dim=128,
            created="2026-11-21T09:00:00+00:00",
        ),
        dict(
            name="c4_b",
            case="case4",
            dataset=DATASET_B,
            provenance="real",
            noise=0.4,
            hidden_dim=512,
            created="2026-11-22T09:00:00+00:00",
        ),
        dict(
            name="c1_synth",
            case="case1",
            dataset=SYNTH,
            provenance="synthetic",
            noise=0.01,
            created="2026-11-19T09:00:00+00:00",
        ),
        dict(
            name="c2_random",
            case="case2",
            dataset=DATASET_A,
            pretrained=False,
            noise=0.05,
            created="2026-11-21T12:00:00+00:00",
        ),
        dict(
            name="c4_crash",
            case="case4",
            dataset=DATASET_A,
            status="failed",
            created="2026-11-22T12:00:00+00:00",
        ),
    ]
    dirs = {}
    for spec in specs:
        name = spec.pop("name")
        dirs[name] = write_run_dir(runs, name, **spec)
        registry.record_run_dir(dirs[name])
    registry.log_closed_loop(dirs["c4_b"], sim_result(16, 20))
    registry.promote(dirs["c1_a"], alias="champion")
    out = root / "docs" / "registry.md"
    write_report(registry, out)
    return {"uri": uri, "registry": registry, "dirs": dirs, "report": out, "text": out.read_text()}


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_report_has_the_seed_documents_sections_in_order(lab):
    headings = re.findall(r"^## (.+)$", lab["text"], flags=re.M)
    assert headings == [
        "Overview",
        "Case specifications",
        "Comparison table",
        "Ranking",
        "Architecture table",
        "Plots",
        "Update log",
        "Troubleshooting",
    ]


def test_each_case_has_its_class_base_encoders_head_and_json_blocks(lab):
    specs = _section(lab["text"], "Case specifications")
    for case, name in (
        ("case1", "Simplified2DActionModelV2"),
        ("case2", "CLIPNormalized2DActionModelV2"),
        ("case3", "SimpleCase3Model"),
        ("case4", "RoboVLMsCompleteModel"),
    ):
        assert f"### {case}: `{name}`" in specs
    case1 = specs[specs.index("### case1") : specs.index("### case2")]
    assert "champion" in case1 and "`c1_a`" in case1  # the champion is the run shown
    for field in (
        "**Module / class**",
        "**Base**",
        "**Vision encoder**",
        "**Language encoder**",
        "**Action head**",
    ):
        assert field in case1
    blocks = re.findall(r"```json\n(.*?)\n```", case1, flags=re.S)
    config = json.loads((lab["dirs"]["c1_a"] / "config.json").read_text())
    assert [json.loads(b) for b in blocks] == [config["policy"], config["train"]]
    assert "MAE: " in case1 and "n=60 frames" in case1


def test_case3_is_shown_to_share_case1s_architecture(lab):
    specs = _section(lab["text"], "Case specifications")
    case3 = specs[specs.index("### case3") :]
    assert "the same as case1's" in case3
    arch = _section(lab["text"], "Architecture table")
    row = next(line for line in arch.splitlines() if line.startswith("| case3 "))
    assert "same weights layout as case1" in row and "328,448" in row


def test_comparison_table_shows_every_metric_with_n_and_interval_per_dataset(lab):
    table = _section(lab["text"], "Comparison table")
    assert f"### Dataset `{DATASET_A}`" in table and f"### Dataset `{DATASET_B}`" in table
    header = next(line for line in table.splitlines() if line.startswith("| Case | Run | n |"))
    for column in (
        "MAE",
        "Acc (0.3)",
        "Acc (0.2)",
        "Acc (0.15)",
        "R² (x)",
        "R² (y)",
        "Closed-loop success",
        "Status",
    ):
        assert column in header
    row = next(
        line for line in table.splitlines() if "`c1_a`" in line and "| 60 frames / 4 episodes |" in line
    )
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", row)  # MAE with its interval
    assert "| linear_y |" in table  # per-axis table
    assert "80.0% [" in table and "n=20" in table  # closed loop with n
    crash = next(line for line in table.splitlines() if "`c4_crash`" in line)
    assert "failed" in crash


def test_ranking_is_within_a_dataset_with_ties_and_dummies_apart(lab):
    ranking = _section(lab["text"], "Ranking")
    groups = re.split(r"\n### ", ranking)
    group_a = next(g for g in groups if g.startswith("Group") and DATASET_A in g.splitlines()[0])
    group_b = next(g for g in groups if g.startswith("Group") and DATASET_B in g.splitlines()[0])
    rows_a = {
        m[1]: m[0] for m in re.findall(r"^\| (\d+(?: \(tied\))?) \| case\d \| `(\w+)`", group_a, flags=re.M)
    }
    assert rows_a == {"c1_a": "1 (tied)", "c3_a": "1 (tied)", "c2_a": "3"}
    assert "`c4_b`" in group_b and "`c1_a`" not in group_b
    assert "closed_loop/success_rate" in group_b  # the only run there has a closed-loop result
    apart = ranking[ranking.index("Not ranked: synthetic data or random-weight frozen encoders") :]
    assert "`c1_synth`" in apart and "synthetic data" in apart
    assert "`c2_random`" in apart and "random-weight backbone" in apart
    assert "`c4_crash`: run failed" in ranking


def test_plots_are_written_and_linked(lab):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", lab["text"])
    assert any("metrics_group" in link for link in links)
    assert any("loss_curves" in link for link in links)
    assert any("pred_vs_target_case1_c1_a" in link for link in links)
    for link in links:
        png = lab["report"].parent / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link


def test_update_log_is_built_from_run_dates_and_promotions(lab):
    log = _section(lab["text"], "Update log")
    days = re.findall(r"^### (\d{4}-\d{2}-\d{2})$", log, flags=re.M)
    assert days == sorted(days, reverse=True) and {"2026-11-19", "2026-11-20", "2026-11-22"} <= set(days)
    assert "promoted case1 version" in log and "@champion (current)" in log
    crash = next(line for line in log.splitlines() if "`c4_crash`" in line)
    assert crash.startswith("- 12:01 ") and "failed after 4 epochs (started 2026-11-22 12:00)" in crash


def test_troubleshooting_lists_failures_with_their_error(lab):
    section = _section(lab["text"], "Troubleshooting")
    assert "`c4_crash` failed: RuntimeError: boom" in section
    assert "default_collate" in section


def test_cli_compare_ranks_only_within_a_dataset(lab, capsys):
    assert main(["registry", "compare", "--tracking-uri", lab["uri"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    by_dataset = {g["dataset"]: [(r["name"], r["rank"]) for r in g["ranking"]] for g in result["groups"]}
    assert by_dataset == {DATASET_A: [("c1_a", 1), ("c3_a", 1), ("c2_a", 3)], DATASET_B: [("c4_b", 1)]}
    assert {s["name"] for s in result["separate"]} == {"c1_synth", "c2_random"}
    assert main(["registry", "compare", "--tracking-uri", lab["uri"], "--dataset", "bbbb"]) == 0
    out = capsys.readouterr().out
    assert "c4_b" in out and "c1_a" not in out


def test_cli_list_show_promote_resolve_and_report(lab, capsys, tmp_path):
    uri = lab["uri"]
    assert main(["registry", "list", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in lab["dirs"]) and "v1@champion" in out
    assert main(["registry", "show", "c4_b", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "case4" in out and "closed loop (n=20 episodes)" in out and "hyperparameters" in out
    assert (
        main(["registry", "promote", str(lab["dirs"]["c3_a"]), "--alias", "candidate", "--tracking-uri", uri])
        == 0
    )
    assert "models:/case3@candidate -> version 1" in capsys.readouterr().out
    assert main(["registry", "resolve", "models:/case3@candidate", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.strip() == str(lab["dirs"]["c3_a"].resolve())
    out_md = tmp_path / "r.md"
    assert main(["registry", "report", "--out", str(out_md), "--tracking-uri", uri]) == 0
    assert "## Ranking" in out_md.read_text()


def test_promote_best_takes_the_top_of_one_datasets_ranking_and_says_who_it_is_tied_with(lab, capsys):
    uri = lab["uri"]
    assert main(["registry", "promote", "--best", "--alias", "best", "--tracking-uri", uri]) == 2
    assert "choose one with --dataset" in capsys.readouterr().err  # two datasets have ranked runs
    assert (
        main(
            [
                "registry",
                "promote",
                "--best",
                "--dataset",
                DATASET_A,
                "--alias",
                "best",
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "models:/case1@best" in out and "tied with (overlapping intervals): c3_a" in out
    assert lab["registry"].resolve_model_uri("models:/case1@best") == lab["dirs"]["c1_a"].resolve()


def test_cli_errors_are_one_clear_line(lab, capsys):
    assert main(["registry", "show", "no-such-run", "--tracking-uri", lab["uri"]]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
    assert main(["registry", "list", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the MLflow tracking server" in capsys.readouterr().err


def test_record_command_imports_run_directories(tmp_path, capsys):
    uri = fresh_store(tmp_path)
    run_dir = write_run_dir(tmp_path / "runs", "imported")
    assert main(["registry", "record", str(run_dir), "--tracking-uri", uri]) == 0
    assert "-> run" in capsys.readouterr().out
    assert open_registry(uri).get_run(run_dir).status == "FINISHED"
