"""The demo's two comparisons on the champion's case, and the report sections that show them.

1. **Action spaces side by side**: the champion's case trained in its other action space (`continuous` <->
   `keys`) exactly as the champion was, on the same data; both on the same test frames (offline) and the same
   closed-loop seeds.
2. **Sampling on imbalanced data**: the champion's case trained with `uniform` and with `balanced` sampling on
   a deliberately imbalanced simulated dataset (`DemoPlan.imbalanced_mix`), the same epoch budget each, both
   evaluated in closed loop on balanced held-out seeds, per scenario.

These runs are not registered (each answers one question and is not a candidate for the robot); their run
directories are under OUT/comparisons/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobile_vla.demo.jobs import JobPool, closed_loop_job, evaluate_job, fmt_rate, train_job


def run_comparisons(
    pool: JobPool,
    plan: Any,
    out: Path,
    case: str,
    config: Any,
    data_dir: Path,
    results: dict[str, Any],
    evaluated: dict[str, Any],
) -> dict[str, Any]:
    """Train and evaluate the champion's case (1) in its other action space on the same data and (2) with
    `uniform` and `balanced` sampling on the imbalanced dataset; returns what the report's sections show."""
    space = (config.policy or {}).get("action_space") or _default_action_space(case)
    other = "continuous" if space == "keys" else "keys"
    imbalanced = results["imbalanced data"]
    imbalanced_dir = Path(imbalanced["data_dir"])
    root = out / "comparisons"
    runs = {
        "action_space": root / f"{case}_{other}",
        "uniform": root / f"{case}_imbalanced_uniform",
        "balanced": root / f"{case}_imbalanced_balanced",
    }
    sampling_budget = {"epochs": plan.comparison_epochs or config.epochs}
    configs = {
        "action_space": plan.train_config(case, {"policy": {"action_space": other}}),
        "uniform": plan.train_config(case, {**sampling_budget, "sampling": "uniform"}),
        "balanced": plan.train_config(
            case, {**sampling_budget, "sampling": "balanced", "variant_ratio": 0.5}
        ),
    }
    print(
        f"   {case} with action_space={other} on the same data; uniform vs balanced sampling on "
        f"{imbalanced['episodes']} imbalanced episodes ({plan.imbalanced_mix}), up to {sampling_budget['epochs']} epochs each"
    )
    data = {"action_space": data_dir, "uniform": imbalanced_dir, "balanced": imbalanced_dir}
    evaluations = {
        "action_space": (
            evaluate_job,
            (runs["action_space"], data_dir, plan.closed_loop_episodes, plan, f"{case} ({other})"),
        ),
        **{
            k: (closed_loop_job, (runs[k], plan.comparison_closed_loop_episodes, plan, f"{case} ({k})"))
            for k in ("uniform", "balanced")
        },
    }
    print("   training, each run evaluated as soon as it is trained:", flush=True)
    finished = pool.run(
        {k: (train_job, (configs[k], data[k], runs[k])) for k in runs},
        then=lambda name, _: {f"{name} evaluation": evaluations[name]} if name in evaluations else None,
    )
    trained = {k: finished[k] for k in runs}
    done = {k: finished[f"{k} evaluation"] for k in runs}
    for key in runs:
        closed = done[key]["closed"]
        print(f"   {key}: {runs[key].name}: closed-loop success {fmt_rate(closed)}", flush=True)
    return {
        "case": case,
        "action_space": {
            "spaces": {space: str(results[case]["run_dir"]), other: str(runs["action_space"])},
            "offline": {space: evaluated[case]["offline"], other: done["action_space"]["offline"]},
            "closed": {space: evaluated[case]["closed"], other: done["action_space"]["closed"]},
            "epochs": {
                space: results[case].get("epochs_completed"),
                other: trained["action_space"].get("epochs_completed"),
            },
        },
        "sampling": {
            "data_dir": str(imbalanced_dir),
            "mix": plan.imbalanced_mix,
            "episodes": imbalanced["episodes"],
            "epochs_cap": sampling_budget["epochs"],
            "runs": {k: str(runs[k]) for k in ("uniform", "balanced")},
            "closed": {k: done[k]["closed"] for k in ("uniform", "balanced")},
            "epochs": {k: trained[k].get("epochs_completed") for k in ("uniform", "balanced")},
            "sampling": {k: trained[k].get("sampling") for k in ("uniform", "balanced")},
        },
    }


def _default_action_space(case: str) -> str:
    from mobile_vla.policies.registry import get_case

    return str(get_case(case).config.to_dict().get("action_space", "continuous"))


# ---- the report sections ----------------------------------------------------------------------------------


def _pct(closed: dict[str, Any]) -> str:
    ci = closed.get("success_rate_ci95") or [float("nan")] * 2
    k = sum(bool(r["success"]) for r in closed.get("records", []))
    return f"{100 * closed['success_rate']:.0f}% [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}] ({k}/{closed['n']})"


def _paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    from mobile_vla.evaluation.paired import mcnemar_exact

    ra, rb = a.get("records") or [], b.get("records") or []
    if not ra or [r["seed"] for r in ra] != [r["seed"] for r in rb]:
        return None
    return mcnemar_exact([r["success"] for r in ra], [r["success"] for r in rb])


def _verdict(name_a: str, name_b: str, test: dict[str, Any] | None) -> str:
    if test is None:
        return "not paired (different seeds): compare the intervals"
    diff = 100 * test["difference"]
    if not test["distinguishable"]:
        return (
            f"{name_a} - {name_b} = {diff:+.0f} points; exact McNemar p = {test['p_value']:.2f} on "
            f"{test['n']} paired episodes ({test['a_only']} vs {test['b_only']} discordant): not told apart at 5%"
        )
    winner = name_a if diff > 0 else name_b
    return (
        f"**{winner} wins**: {name_a} - {name_b} = {diff:+.0f} points; exact McNemar p = {test['p_value']:.3f} on "
        f"{test['n']} paired episodes ({test['a_only']} vs {test['b_only']} discordant)"
    )


def _plot_confusions(confusions: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(confusions), figsize=(5.2 * len(confusions), 4.6), squeeze=False)
    for ax, (label, conf) in zip(axes[0], confusions.items(), strict=True):
        m = np.asarray(conf["confusion_matrix"])
        rows = m.sum(1, keepdims=True)
        share = np.divide(m, rows, out=np.zeros(m.shape, float), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        names = [n.replace("FORWARD", "FWD").replace("_", " ") for n in conf["classes"]]
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        str(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
        ax.set_xlabel("predicted key")
        ax.set_ylabel("target key")
        f1 = conf["macro_f1"]
        ax.set_title(f"{label}: acc {conf['accuracy']:.0f}%, macro-F1 {f1:.2f} (n={conf['n']})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_sampling(closed: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scenarios = sorted({s for c in closed.values() for s in c["per_scenario"]})
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(closed)
    for i, (label, c) in enumerate(closed.items()):
        rates = np.array([c["per_scenario"][s]["success_rate"] for s in scenarios])
        ci = np.array([c["per_scenario"][s]["success_rate_ci95"] for s in scenarios])
        x = np.arange(len(scenarios)) + (i - (len(closed) - 1) / 2) * width
        ax.bar(x, 100 * rates, width, label=label)
        ax.errorbar(
            x, 100 * rates, yerr=100 * np.abs(ci.T - rates), fmt="none", ecolor="black", capsize=2, lw=0.8
        )
    ax.set_xticks(range(len(scenarios)), scenarios, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("closed-loop success (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("per scenario, Wilson 95% intervals", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _composition(data_dir: Path) -> dict[str, dict[str, int]]:
    """Episodes per scenario, side and pattern of a dataset directory (from each file's parsed scenario)."""
    from mobile_vla.data.episodes import read_episode
    from mobile_vla.data.validation import find_episode_files

    out: dict[str, dict[str, int]] = {"scenario": {}, "side": {}, "pattern": {}}
    for path in find_episode_files(data_dir):
        scenario = read_episode(path).scenario
        for key, value in (
            ("scenario", getattr(scenario, "name", "unknown")),
            ("side", getattr(scenario, "side", None) or "unknown"),
            ("pattern", getattr(scenario, "pattern", None) or "unknown"),
        ):
            out[key][value] = out[key].get(value, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def _pattern_rates(closed: dict[str, Any]) -> dict[str, str]:
    from mobile_vla.evaluation.intervals import wilson_interval

    out = {}
    for pattern in ("core", "variant"):
        rows = [r for r in closed["records"] if r.get("pattern") == pattern]
        if rows:
            k = sum(bool(r["success"]) for r in rows)
            lo, hi = wilson_interval(k, len(rows))
            out[pattern] = f"{100 * k / len(rows):.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] ({k}/{len(rows)})"
    return out


def action_space_section(result: dict[str, Any], plots: Path) -> list[str]:
    case = result["case"]
    spaces = list(result["spaces"])
    # evaluate_run's key-class metrics (`metrics.key_class_metrics`): a keys head's arg-max class, a regression
    # head's command read as the nearest key velocity, against the recorded class
    confusions = {space: result["offline"][space]["key_metrics"] for space in spaces}
    plot = _plot_confusions(confusions, plots / f"confusion_{case}_action_spaces.png")
    lines = [
        f"## Action spaces side by side: {case}",
        "",
        f"The champion's case trained in both action spaces with the same recipe on the same data "
        f"(`{spaces[1]}` is the demo's extra run, `{Path(result['spaces'][spaces[1]]).name}` under "
        "OUT/comparisons/, not registered); offline on the same test frames, closed loop on the same seeds. "
        "Key-class metrics (`mobile-vla evaluate`'s): the recorded key against the keys head's class, or the key "
        "command nearest to the regression head's velocity.",
        "",
        "| action space | epochs | test MAE [95%] | key accuracy | macro-F1 | closed-loop success [95%] (k/n) | "
        "collisions |",
        "|---|---|---|---|---|---|---|",
    ]
    for space in spaces:
        offline, closed, conf = result["offline"][space], result["closed"][space], confusions[space]
        m, ci = offline["metrics"]["mae"], offline["intervals"]["mae"]
        lines.append(
            f"| `{space}` | {result['epochs'][space]} | {m:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (n={offline['n']}) | "
            f"{conf['accuracy']:.0f}% (n={conf['n']}) | {conf['macro_f1']:.2f} | {_pct(closed)} | "
            f"{100 * closed['collision_rate']:.0f}% |"
        )
    lines += [
        "",
        "Closed loop: "
        + _verdict(spaces[0], spaces[1], _paired(result["closed"][spaces[0]], result["closed"][spaces[1]]))
        + ".",
        "",
        "Per-class recall on the test frames (n = target frames of the class):",
        "",
        "| key | " + " | ".join(f"`{s}`" for s in spaces) + " |",
        "|---|" + "---|" * len(spaces),
    ]
    for name in confusions[spaces[0]]["classes"]:
        if not confusions[spaces[0]]["per_class"][name]["n"]:
            continue
        cells = []
        for space in spaces:
            entry = confusions[space]["per_class"][name]
            cells.append(f"{entry['accuracy']:.0f}% (n={entry['n']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![confusion matrices]({plot.parent.name}/{plot.name})", ""]
    return lines


def sampling_section(result: dict[str, Any], case: str, plots: Path) -> list[str]:
    closed = result["closed"]
    composition = _composition(Path(result["data_dir"]))
    plot = _plot_sampling(closed, plots / f"sampling_{case}_imbalanced.png")
    patterns = {k: _pattern_rates(c) for k, c in closed.items()}
    draws = []
    for name, record in (result.get("sampling") or {}).items():
        share = (record or {}).get("variant_share")
        if share:
            draws.append(
                f"`{name}` drew {100 * share['drawn']:.0f}% variant frames (the data holds {100 * share['data']:.0f}%)"
            )
    side = ", ".join(f"{k} {v}" for k, v in composition["side"].items())
    pattern = ", ".join(f"{k} {v}" for k, v in composition["pattern"].items())
    lines = [
        f"## Sampling on imbalanced data: {case}, `uniform` vs `balanced`",
        "",
        f"A deliberately imbalanced simulated dataset: {result['episodes']} episodes drawn with weights "
        f"`{result['mix']}` (episodes per side: {side}; per pattern: {pattern}). The champion's case is trained on "
        f"it twice with the same budget (up to {result['epochs_cap']} epochs, early stopping): `uniform` (every frame once "
        "per epoch) and `balanced` (equal draws per scenario group = task x side x distance, `variant_ratio` 0.5). "
        + ("; ".join(draws) + ". " if draws else "")
        + "Both are evaluated in closed loop on the same balanced held-out seeds (every scenario, pattern and "
        "distance equally). `mobile-vla data stats DIR` shows what each strategy draws per scenario, pattern and class.",
        "",
        "| scenario | " + " | ".join(f"`{k}`" for k in closed) + " |",
        "|---|" + "---|" * len(closed),
    ]
    for scenario in sorted(next(iter(closed.values()))["per_scenario"]):
        cells = []
        for c in closed.values():
            entry = c["per_scenario"][scenario]
            lo, hi = entry["success_rate_ci95"]
            cells.append(
                f"{100 * entry['success_rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] (n={entry['n']})"
            )
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    for pattern_name in ("core", "variant"):
        lines.append(
            f"| *{pattern_name} pattern* | "
            + " | ".join(patterns[k].get(pattern_name, "-") for k in closed)
            + " |"
        )
    lines.append("| **all** | " + " | ".join(f"**{_pct(c)}**" for c in closed.values()) + " |")
    names = list(closed)
    lines += [
        "",
        "Overall: " + _verdict(names[1], names[0], _paired(closed[names[1]], closed[names[0]])) + ".",
        "",
        f"![per-scenario success]({plot.parent.name}/{plot.name})",
        "",
    ]
    return lines


def append_comparisons(report: Path, comparisons: dict[str, Any]) -> None:
    """Put the two comparison sections after the report's plan section (plots next to it, in report_plots/)."""
    plots = report.parent / "report_plots"
    lines = action_space_section(comparisons["action_space"] | {"case": comparisons["case"]}, plots)
    lines += sampling_section(comparisons["sampling"], comparisons["case"], plots)
    text = report.read_text()
    head, sep, rest = text.partition("\n## Overview")  # right after "This demo's plan"
    if not sep:
        head, rest = text.rstrip() + "\n", ""
    report.write_text(head.rstrip() + "\n\n" + "\n".join(lines) + sep + rest)
