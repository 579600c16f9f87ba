"""The seed's document, regenerated from the store: ``mobile-vla registry report --out FILE.md``.

Same sections as the hand-kept *Mobile VLA Model Registry* — per-case specification (module and class, base,
encoders, head, hyperparameters and training settings as JSON blocks, metrics), the comparison table, the
ranking, the architecture table, the update log, troubleshooting — but every number comes from the store
with its ``n`` and 95% interval, the ranking follows `mobile_vla.registry.ranking`'s rules, and the plots
(predicted vs target per axis, metric bars with interval whiskers, loss curves) are PNGs beside the file.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mobile_vla.metrics import DEFAULT_THRESHOLDS, DIRECTION_DEAD_ZONE, threshold_label
from mobile_vla.registry.ranking import (
    CLOSED_LOOP_KEY,
    RankedGroup,
    Ranking,
    artifact_outcomes,
    rank_runs,
    separation_reason,
)
from mobile_vla.registry.record import StoredRun

THRESHOLDS = tuple(threshold_label(t) for t in DEFAULT_THRESHOLDS)  # the keys' spelling, from the metrics
PERCENT_PREFIXES = ("accuracy_", "tracking_accuracy", "direction_accuracy_", "magnitude_order_accuracy")
RATE_KEYS = ("success_rate", "collision_rate")  # proportions in [0, 1], shown as percent


# --- number formatting -------------------------------------------------------------------------------------
def _is_percent(key: str) -> bool:
    return key.startswith(PERCENT_PREFIXES) or any(key.endswith(f"_{t}") for t in THRESHOLDS)


def fmt(key: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key in RATE_KEYS:
        return f"{100 * value:.1f}%"
    if _is_percent(key):
        return f"{value:.2f}%"
    return f"{value:.3f}"


def fmt_ci(result: dict[str, Any] | None, key: str, with_n: bool = False) -> str:
    """``value [low, high]`` (and ``n=``) of one metric of an ``{"n", "metrics", "intervals"}`` result."""
    if not result or key not in result["metrics"]:
        return "—"
    text = fmt(key, result["metrics"][key])
    interval = result["intervals"].get(key)
    text += f" [{fmt(key, interval[0])}, {fmt(key, interval[1])}]" if interval else " (no interval)"
    if with_n and result.get("n") is not None:
        text += f", n={result['n']}"
    return text


def _date(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M") if ms else "—"


def _axes(run: StoredRun) -> list[str]:
    text = run.tag("action_dims", "")
    return [a for a in text.split(",") if a] or ["linear_x", "linear_y"]


def _run_label(run: StoredRun) -> str:
    return f"{run.case} `{run.name}`"


# --- choosing what to show per case ------------------------------------------------------------------------
def representative_runs(runs: Sequence[StoredRun]) -> dict[str, tuple[StoredRun, str]]:
    """Per case: the champion's run, else the newest finished run that may be ranked (real/sim data, pretrained
    backbone), else the newest finished run, else the newest run; with why it was chosen."""
    out: dict[str, tuple[StoredRun, str]] = {}
    for case in sorted({r.case for r in runs}):
        mine = [r for r in runs if r.case == case]
        champion = [r for r in mine if "champion" in r.aliases]
        finished = [r for r in mine if r.status == "FINISHED"]
        rankable = [r for r in finished if separation_reason(r) is None]
        if champion:
            out[case] = (champion[0], f"the champion (`models:/{case}@champion`)")
        elif rankable:
            out[case] = (
                max(rankable, key=lambda r: r.start_time),
                "the newest finished run on real or sim data",
            )
        elif finished:
            out[case] = (max(finished, key=lambda r: r.start_time), "the newest finished run")
        else:
            out[case] = (max(mine, key=lambda r: r.start_time), "the newest run (none finished)")
    return out


# --- the document ------------------------------------------------------------------------------------------
def write_report(
    registry: Any, out: str | Path, split: str = "test", title: str = "Mobile VLA Model Registry"
) -> Path:
    """Write the Markdown report and its PNG plots (in ``<out stem>_plots/``); returns the report's path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = out.parent / f"{out.stem}_plots"
    plots.mkdir(exist_ok=True)
    runs = registry.runs()
    ranking = rank_runs(runs, split=split, outcomes=artifact_outcomes(registry))
    reps = representative_runs(runs)
    histories = {r.run_id: _histories(registry, r) for r, _ in reps.values()}
    images = _plots(registry, runs, ranking, reps, histories, plots, split)

    doc = _Doc()
    finished = sum(r.status == "FINISHED" for r in runs)
    doc.h(1, title)
    doc.p(
        f"Generated by `mobile-vla registry report` from `{registry.tracking_uri}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {len(runs)} runs ({finished} finished, "
        f"{len(runs) - finished} failed, killed or running), {len(reps)} cases, "
        f"{len({r.dataset_fingerprint for r in runs})} datasets. Nothing below is typed by hand: every number "
        "is read from the store, with its `n` and 95% interval `[low, high]` (for offline metrics a bootstrap "
        "that resamples whole episodes, since frames of one episode are correlated; Wilson for closed-loop "
        "rates)."
    )
    _overview(doc, split)
    _specs(doc, runs, reps, split)
    _comparison(doc, runs, split)
    _ranking_section(doc, ranking)
    _architecture(doc, runs, reps, ranking, split)
    _plots_section(doc, images, out.parent)
    _update_log(doc, runs)
    _troubleshooting(doc, runs, ranking, split)
    out.write_text(doc.text())
    return out


class _Doc:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def h(self, level: int, text: str) -> None:
        self.lines += [f"{'#' * level} {text}", ""]

    def p(self, text: str) -> None:
        self.lines += [text, ""]

    def code(self, text: str, lang: str = "") -> None:
        self.lines += [f"```{lang}", text, "```", ""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self.lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
        self.lines.append("")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def _overview(doc: _Doc, split: str) -> None:
    doc.h(2, "Overview")
    doc.p(
        "Each case is a registered model (`mobile-vla describe --list` names them); each finished training run is a version of it, "
        "and `models:/CASE@champion` is the one the robot runs (`mobile-vla registry promote RUN --alias "
        "champion`). How runs are ranked:"
    )
    doc.lines += [
        f"- only against runs evaluated on the same episodes (same dataset fingerprint, same `{split}` split "
        "episode ids);",
        "- runs on synthetic data, or with any frozen encoder (the backbone or another, e.g. Case 2's CLIP) "
        "whose weights are not pretrained, are listed in their own section with the reason and never ranked;",
        "- the key is closed-loop success rate (higher is better) when every run of the group has one measured "
        f"under the same protocol, else offline `{split}` MAE (lower is better);",
        "- two runs share a rank (tie groups) unless a paired comparison on the same units tells them apart at "
        "the 5% level: the exact McNemar test on the same closed-loop seeds, or a paired bootstrap (by "
        "episode) of the MAE difference on the same test frames; where the per-unit results are missing, "
        "overlapping 95% intervals decide, and the ranking says so.",
        "",
    ]


def _specs(doc: _Doc, runs: Sequence[StoredRun], reps: dict[str, tuple[StoredRun, str]], split: str) -> None:
    doc.h(2, "Case specifications")
    if not reps:
        doc.p(
            "No runs recorded yet: `mobile-vla train` records them (or `mobile-vla registry record RUN_DIR`)."
        )
    arch_of: dict[str, str] = {}
    for case, (run, _) in reps.items():
        arch_of.setdefault(run.tag("checkpoint.architecture_hash", ""), case)
    for case, (run, why) in reps.items():
        mine = [r for r in runs if r.case == case]
        counts = ", ".join(
            f"{sum(r.status_text == s for r in mine)} {s}"
            for s in ("finished", "failed", "killed", "running")
            if any(r.status_text == s for r in mine)
        )
        doc.h(3, f"{case}: `{run.model_class}`")
        doc.p(
            f"Shown: run `{run.name}` (`{run.run_id[:8]}`), {why}; started {_date(run.start_time)}. "
            f"Runs of this case: {len(mine)} ({counts})."
        )
        doc.h(4, "Architecture")
        arch_hash = run.tag("checkpoint.architecture_hash", "")
        shared = arch_of.get(arch_hash)
        params = run.metrics.get("model/trainable_params")
        head = _head_description(run)
        if params is not None:
            head += f"; {int(params):,} trainable parameters"
        if arch_hash:
            head += f" (weights layout `{arch_hash[:8]}`"
            head += f", the same as {shared}'s)" if shared and shared != case else ")"
        doc.lines += [
            f"- **Module / class**: `{run.model_class}`, head `{run.model_module}.{run.tag('architecture')}`",
            f"- **Base**: backbone profile `{run.backbone_profile}`, "
            f"{_pretrained_text(run)}, fingerprint `{run.tag('backbone.fingerprint')}`",
            f"- **Vision encoder**: {_encoder(run, 'vision')}",
            f"- **Language encoder**: {_encoder(run, 'text')}",
            f"- **Action head**: {head}",
            f"- **Action dims**: {', '.join(_axes(run))}",
            f"- **Dataset**: `{run.dataset_fingerprint}` ({run.provenance}), `{run.tag('dataset.path')}`; split seed "
            f"{run.tag('split.seed')}: {run.tag('split.train.count', '?')}/{run.tag('split.val.count', '?')}/"
            f"{run.tag('split.test.count', '?')} episodes (train/val/test)",
            f"- **Code**: mobile-vla {run.tag('code.package_version')}, commit `{run.tag('code.git_commit', 'n/a')}`",
            "",
        ]
        doc.h(4, "Hyperparameters")
        doc.code(json.dumps(run.config_section("policy"), indent=2), "json")
        doc.h(4, "Training settings")
        doc.code(json.dumps(run.config_section("train"), indent=2), "json")
        doc.h(4, "Metrics")
        doc.code(metrics_block(run, split))


def _head_description(run: StoredRun) -> str:
    policy = run.config_section("policy")
    parts = [f"`{run.tag('architecture', run.model_class)}`"]
    for key in ("hidden_dim", "dropout", "num_latents", "window", "max_sequence_length", "state_dim"):
        if key in policy:
            parts.append(f"{key} {policy[key]}")
    flags = [k for k, v in policy.items() if k.startswith("use_") and v is True]
    if flags:
        parts.append("with " + ", ".join(f.removeprefix("use_") for f in flags))
    return ", ".join(parts)


def _encoder(run: StoredRun, part: str) -> str:
    names = [
        run.params.get(f"backbone.fingerprint.model.{part}.name"),
        run.params.get("backbone.fingerprint.model.name"),
    ]
    name = next((json.loads(n) if n.startswith('"') else n for n in names if n), None)
    dim = run.params.get(f"feature_dims.{part}") or run.params.get(f"backbone.fingerprint.dims.{part}")
    where = f"`{name}`" if name else f"the `{run.backbone_profile}` profile's {part} tower"
    return f"{where} ({dim}-d features, frozen)" if dim else f"{where} (frozen)"


def _pretrained_text(run: StoredRun) -> str:
    return {True: "pretrained weights", False: "**random weights**"}.get(run.pretrained, "weights unknown")


def metrics_block(run: StoredRun, split: str) -> str:
    lines = []
    for name in (split, "val"):
        result = run.evaluation(name)
        if result is None:
            lines.append(f"{name}: not evaluated (mobile-vla evaluate RUN_DIR --split {name})")
            continue
        episodes = result.get("n_episodes")
        lines.append(
            f"{name} (n={result['n']} frames" + (f" from {int(episodes)} episodes" if episodes else "") + ")"
        )
        lines.append(f"  MAE: {fmt_ci(result, 'mae')}")
        for t in THRESHOLDS:
            per_axis = ", ".join(f"{a} {fmt_ci(result, f'{a}_{t}')}" for a in _axes(run))
            lines.append(f"  Accuracy ({t}): {fmt_ci(result, f'accuracy_{t}')} all axes; {per_axis}")
        lines.append("  R²: " + ", ".join(f"{a}={fmt_ci(result, f'{a}_r2')}" for a in _axes(run)))
        lines.append(
            "  Correlation: " + ", ".join(f"{a}={fmt_ci(result, f'{a}_correlation')}" for a in _axes(run))
        )
        for key in ("tracking_accuracy", "magnitude_order_accuracy"):
            lines.append(f"  {key.replace('_', ' ').capitalize()}: {fmt_ci(result, key)}")
        lines.append(
            "  Direction accuracy (sign, a stop only for an exact 0): "
            + ", ".join(f"{a} {fmt_ci(result, f'direction_accuracy_{a}')}" for a in _axes(run))
        )
        if any(f"direction_accuracy_deadzone_{a}" in result["metrics"] for a in _axes(run)):
            lines.append(
                f"  Direction accuracy, dead zone (|v| < {DIRECTION_DEAD_ZONE} is a stop): "
                + ", ".join(f"{a} {fmt_ci(result, f'direction_accuracy_deadzone_{a}')}" for a in _axes(run))
            )
        if f"{name}/action_loss" in run.metrics:
            lines.append(f"  Action loss (Huber): {run.metrics[f'{name}/action_loss']:.4f}")
        if f"{name}/loss" in run.metrics:
            lines.append(f"  Training loss (all of the case's terms): {run.metrics[f'{name}/loss']:.4f}")
    closed = run.closed_loop()
    if closed is None:
        lines.append("closed loop: not evaluated (mobile-vla sim evaluate --policy RUN_DIR)")
    else:
        lines.append(f"closed loop (n={closed['n']} episodes)")
        for key in ("success_rate", "collision_rate", "spl", "mean_steps"):
            if key in closed["metrics"]:
                lines.append(f"  {key}: {fmt_ci(closed, key)}")
        for scenario, block in closed["per_scenario"].items():
            if block:
                lines.append(f"  {scenario}: success {fmt_ci(block, 'success_rate', with_n=True)}")
    if run.metrics.get("summary/wall_time_s") is not None:
        best = run.metrics.get("summary/best_val_action_loss", run.metrics.get("summary/best_val_loss"))
        lines.append(
            f"training: {int(run.metrics.get('summary/epochs_completed', 0))} epochs in "
            f"{run.metrics['summary/wall_time_s']:.1f} s, best epoch {int(run.metrics.get('summary/best_epoch', -1))}"
            f", best {_monitored(run)} {best if best is not None else float('nan'):.4f}"
        )
    return "\n".join(lines)


def _monitored(run: StoredRun) -> str:
    """The name of the loss a run's best checkpoint follows (older runs: the whole validation loss)."""
    return "val action loss (Huber)" if "summary/best_val_action_loss" in run.metrics else "val loss"


def _counts(result: dict[str, Any] | None) -> str:
    """``"N frames / E episodes"`` of an offline result."""
    if not result or result.get("n") is None:
        return "—"
    episodes = result.get("n_episodes")
    return f"{result['n']} frames" + (f" / {int(episodes)} episodes" if episodes else "")


def _comparison(doc: _Doc, runs: Sequence[StoredRun], split: str) -> None:
    doc.h(2, "Comparison table")
    doc.p(
        f"Offline metrics on the `{split}` split (value [95% interval]); closed-loop success with its episode "
        "count. One table per dataset: numbers from different datasets are not comparable."
    )
    by_dataset: dict[str, list[StoredRun]] = {}
    for run in runs:
        by_dataset.setdefault(run.dataset_fingerprint, []).append(run)
    for dataset, members in sorted(by_dataset.items()):
        provenance = "/".join(sorted({r.provenance for r in members}))
        doc.h(3, f"Dataset `{dataset}` ({provenance})")
        rows, axis_rows = [], []
        for run in sorted(members, key=lambda r: (r.case, r.start_time)):
            result = run.evaluation(split)
            closed = run.closed_loop()
            axes = _axes(run)
            note = separation_reason(run)
            status = run.status_text + (f" (not ranked: {note})" if note else "")
            rows.append(
                [
                    run.case,
                    f"`{run.name}`",
                    _counts(result),
                    fmt_ci(result, "mae"),
                    *(fmt_ci(result, f"accuracy_{t}") for t in THRESHOLDS),
                    *(fmt_ci(result, f"{a}_r2") for a in axes[:2]),
                    fmt_ci(closed, "success_rate", with_n=True) if closed else "—",
                    status,
                ]
            )
            for axis in axes if result else ():
                axis_rows.append(
                    [
                        run.case,
                        f"`{run.name}`",
                        axis,
                        *(fmt_ci(result, f"{axis}_{t}") for t in THRESHOLDS),
                        fmt_ci(result, f"{axis}_r2"),
                        fmt_ci(result, f"{axis}_correlation"),
                    ]
                )
        doc.table(
            [
                "Case",
                "Run",
                "n",
                "MAE",
                "Acc (0.3)",
                "Acc (0.2)",
                "Acc (0.15)",
                "R² (x)",
                "R² (y)",
                "Closed-loop success",
                "Status",
            ],
            rows,
        )
        doc.p("Per axis:")
        doc.table(
            ["Case", "Run", "Axis", "Acc (0.3)", "Acc (0.2)", "Acc (0.15)", "R²", "Correlation"], axis_rows
        )


def _ranking_section(doc: _Doc, ranking: Ranking) -> None:
    doc.h(2, "Ranking")
    if not ranking.groups:
        doc.p("No run can be ranked yet: see the sections below for why.")
    for i, group in enumerate(ranking.groups, 1):
        doc.h(3, f"Group {i}: {group.label}")
        direction = "higher is better" if group.higher_is_better else "lower is better"
        doc.p(
            f"Ranked by `{group.key}` ({direction}); split episode ids hash `{group.split_fingerprint}`."
            + (f" Note: {group.note}." if group.note else "")
        )
        doc.table(["Rank", "Case", "Run", "Value [95% interval]", "n", "Tied with"], ranking_rows(group))
        if group.comparisons:
            doc.p("How each pair was compared (tied unless the comparison tells them apart):")
            for c in group.comparisons:
                verdict = "different" if c.distinguishable else "not told apart"
                doc.lines.append(f"- `{c.a}` vs `{c.b}`: {verdict}; {c.detail}")
            doc.lines.append("")
        for run, reason in group.unranked:
            doc.lines.append(f"- not placed: {_run_label(run)}: {reason}")
        if group.unranked:
            doc.lines.append("")
    doc.h(3, "Not ranked: synthetic data or random-weight frozen encoders")
    if ranking.separate:
        doc.p(
            "These numbers say nothing about the robot: the data is synthetic (or of mixed/unknown origin) or "
            "a frozen encoder the run used (the backbone, or another such as Case 2's CLIP) has random weights. "
            "They are shown so the pipeline can be checked, never ranked."
        )
        rows = []
        for run, reason in ranking.separate:
            result, closed = run.evaluation(ranking.split), run.closed_loop()
            rows.append(
                [
                    run.case,
                    f"`{run.name}`",
                    f"`{run.dataset_fingerprint}`",
                    reason,
                    fmt_ci(result, "mae", with_n=True),
                    fmt_ci(closed, "success_rate", with_n=True) if closed else "—",
                ]
            )
        doc.table(
            ["Case", "Run", "Dataset", "Why not ranked", f"{ranking.split} MAE", "Closed-loop success"], rows
        )
    else:
        doc.p("None.")
    if ranking.excluded:
        doc.h(3, "Not ranked: unfinished or not evaluated")
        for run, reason in ranking.excluded:
            doc.lines.append(f"- {_run_label(run)}: {reason}")
        doc.lines.append("")


def _score_counts(s: Any) -> str:
    if s.n is None:
        return "?"
    if s.key == CLOSED_LOOP_KEY:
        return f"{s.n} episodes"
    return f"{s.n} frames" + (f" / {s.n_episodes} episodes" if s.n_episodes else "")


def ranking_rows(group: RankedGroup) -> list[list[str]]:
    rows = []
    key = "success_rate" if group.key == CLOSED_LOOP_KEY else group.key.split("/", 1)[1]
    for s in group.scores:
        tied = bool(s.tied_with)
        value = fmt(key, s.value)
        low, high = (fmt(key, v) for v in s.interval)
        rows.append(
            [
                f"{s.rank}{' (tied)' if tied else ''}",
                s.run.case,
                f"`{s.run.name}`",
                f"{value} [{low}, {high}]",
                _score_counts(s),
                ", ".join(f"`{n}`" for n in s.tied_with) or "—",
            ]
        )
    return rows


def _architecture(
    doc: _Doc, runs: Sequence[StoredRun], reps: dict[str, tuple[StoredRun, str]], ranking: Ranking, split: str
) -> None:
    doc.h(2, "Architecture table")
    doc.p(
        "Complexity is the head's trainable parameter count (read from the checkpoint); strengths and "
        "weaknesses are statements about the recorded numbers of the run shown for each case, not adjectives."
    )
    rank_of = {s.run.run_id: (s, g) for g in ranking.groups for s in g.scores}
    params = {c: r.metrics.get("model/trainable_params") for c, (r, _) in reps.items()}
    known = [p for p in params.values() if p is not None]
    walls = [w for r, _ in reps.values() if (w := r.metrics.get("summary/wall_time_s")) is not None]
    arch_first: dict[str, str] = {}
    rows = []
    for case, (run, _) in reps.items():
        arch_hash = run.tag("checkpoint.architecture_hash", "")
        first = arch_first.setdefault(arch_hash, case) if arch_hash else case
        features = _head_description(run)
        if first != case:
            features += f"; same weights layout as {first}"
        strengths, weaknesses = [], []
        scored = rank_of.get(run.run_id)
        if scored:
            s, g = scored
            size = len(g.scores)
            text = f"rank {s.rank}{' (tied)' if s.tied_with else ''} of {size} by {g.key} on `{g.dataset}`"
            (strengths if s.rank == 1 else weaknesses).append(text)
        else:
            reason = next(
                (r for rr, r in ranking.separate + ranking.excluded if rr.run_id == run.run_id), None
            )
            if reason:
                weaknesses.append(f"not ranked: {reason}")
        p = params[case]
        if p is not None and len(known) > 1 and min(known) < max(known):
            if p == min(known):
                strengths.append(f"fewest trainable parameters ({int(p):,})")
            if p == max(known):
                weaknesses.append(f"most trainable parameters ({int(p):,})")
        result = run.evaluation(split)
        if result and "mae" in result["intervals"]:
            low, high = result["intervals"]["mae"]
            if result["n"] is not None and result["n"] < 30:
                weaknesses.append(f"{split} n={result['n']}: MAE interval ±{(high - low) / 2:.3f}")
        training = _training_facts(run)
        if training:
            features += f"; {training}"
        wall = run.metrics.get("summary/wall_time_s")
        if wall is not None and len(walls) > 1 and min(walls) < max(walls):
            if wall == min(walls):
                strengths.append(f"fastest training ({wall:.0f} s)")
            if wall == max(walls):
                weaknesses.append(f"slowest training ({wall:.0f} s)")
        rows.append(
            [
                case,
                f"`{run.model_class}`",
                f"{int(p):,}" if p is not None else "—",
                features,
                "; ".join(strengths) or "—",
                "; ".join(weaknesses) or "—",
            ]
        )
    doc.table(["Case", "Class", "Trainable params", "Features", "Strengths", "Weaknesses"], rows)


def _training_facts(run: StoredRun) -> str:
    """What training measured, without adjectives: epochs run of the maximum, whether early stopping ended
    it, the best epoch, and the best validation loss over the last training loss of the same kind."""
    epochs = run.metrics.get("summary/epochs_completed")
    if epochs is None:
        return ""
    max_epochs = run.params.get("train.epochs", "?")
    stopped = run.metrics.get("summary/early_stopped") == 1.0
    text = (
        f"trained {int(epochs)} of {max_epochs} epochs ({'early stopping' if stopped else 'no early stop'})"
    )
    best_epoch = run.metrics.get("summary/best_epoch")
    if best_epoch is not None and best_epoch >= 0:
        text += f", best epoch {int(best_epoch)}"
    if "summary/best_val_action_loss" in run.metrics:
        best, train, name = (
            run.metrics["summary/best_val_action_loss"],
            run.metrics.get("train_action_loss"),
            "action loss (Huber)",
        )
    else:
        best, train, name = run.metrics.get("summary/best_val_loss"), run.metrics.get("train_loss"), "loss"
    if best is not None and train:
        text += f", best val {name} / last train {name} = {best / train:.2f}"
    return text


def _plots_section(doc: _Doc, images: dict[str, list[Path]], root: Path) -> None:
    doc.h(2, "Plots")
    titles = {
        "metrics": "Metric bars with 95% interval whiskers, per ranked group",
        "loss": "Loss curves (train and validation, per epoch)",
        "pred": "Predicted vs target, per axis",
    }
    for kind, paths in images.items():
        if not paths:
            continue
        doc.h(3, titles[kind])
        for path in paths:
            rel = path.relative_to(root).as_posix()
            doc.lines += [f"![{path.stem}]({rel})", ""]


def _update_log(doc: _Doc, runs: Sequence[StoredRun]) -> None:
    doc.h(2, "Update log")
    doc.p(
        "Built from the runs' start and end times and the model versions' registration and promotion times (UTC)."
    )
    events: list[tuple[int, str]] = []
    for run in runs:
        text = f"{run.case} run `{run.name}` on dataset `{run.dataset_fingerprint}` ({run.provenance})"
        if run.status == "RUNNING":
            events.append((run.start_time, f"started {text}; still running"))
            continue
        epochs = run.metrics.get("summary/epochs_completed")
        text += f" {run.status_text}" + (f" after {int(epochs)} epochs" if epochs is not None else "")
        text += f" (started {_date(run.start_time)})"
        result = run.evaluation("test")
        if result:
            text += f"; test MAE {fmt_ci(result, 'mae', with_n=True)}"
        closed = run.closed_loop()
        if closed:
            text += f"; closed-loop success {fmt_ci(closed, 'success_rate', with_n=True)}"
        end = run.end_time or run.start_time
        events.append((end, text))
        for v in run.versions:
            events.append(
                (v["created"] or end, f"registered `{run.name}` as {v['name']} version {v['version']}")
            )
            for key, value in v["tags"].items():
                if key.startswith("mobile_vla.promoted."):
                    alias = key.removeprefix("mobile_vla.promoted.")
                    current = " (current)" if alias in v["aliases"] else " (since moved)"
                    when = _timestamp(value)
                    events.append((when, f"promoted {v['name']} version {v['version']} to @{alias}{current}"))
    by_day: dict[str, list[tuple[int, str]]] = {}
    for when, text in sorted(events, key=lambda e: e[0]):
        by_day.setdefault(_date(when)[:10], []).append((when, text))
    for day in sorted(by_day, reverse=True):
        doc.h(3, day)
        doc.lines += [f"- {_date(when)[11:]} {text}" for when, text in by_day[day]]
        doc.lines.append("")


def _timestamp(text: str) -> int:
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        return 0


def _troubleshooting(doc: _Doc, runs: Sequence[StoredRun], ranking: Ranking, split: str) -> None:
    doc.h(2, "Troubleshooting")
    items = []
    for run in runs:
        if run.status in ("FAILED", "KILLED"):
            items.append(f"{_run_label(run)} {run.status_text}: {run.tag('error', 'no error recorded')}")
        elif run.status == "RUNNING" and "mobile_vla.pid" in run.tags:
            items.append(
                f"{_run_label(run)} is still marked running (writer {run.tag('host')}:{run.tag('pid')}). If that "
                "process is gone, `mobile-vla registry list` on that host marks it killed."
            )
        elif run.status == "RUNNING":
            items.append(
                f"{_run_label(run)} was imported while its summary.json said running. Resume the training "
                f"(`mobile-vla train --resume --out {run.run_dir} --data DIR`) or, once it has ended, import it again "
                f"(`mobile-vla registry record {run.run_dir}`)."
            )
        if "mobile_vla.param_conflicts" in run.tags:
            items.append(
                f"{_run_label(run)}: config values changed after they were first recorded: "
                f"{run.tags['mobile_vla.param_conflicts'][:300]}"
            )
    for run, reason in ranking.excluded:
        if "not evaluated" in reason:
            items.append(f"{_run_label(run)}: {reason}")
    doc.h(3, "In this store")
    doc.lines += [f"- {item}" for item in items] or ["- Nothing: every run finished and was evaluated."]
    doc.lines.append("")
    doc.h(3, "Known errors of the original code, and why they cannot happen here")
    doc.lines += [
        "- `TypeError: default_collate: batch must contain tensors ... found PIL.Image`: the dataset's "
        "`collate_batch` keeps images as a list of PIL images until the backbone's processor.",
        "- `RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x2048 and 1024x256)`: the head's input "
        "sizes are read from the backbone (`feature_dims` above), never typed in.",
        "- `AttributeError: ... has no attribute 'pooler_output'` on the text model: language features are the "
        "mean of `last_hidden_state` over real tokens (padding masked).",
        "- A run that ranks suspiciously well on few samples: read its `n` and interval; overlapping intervals "
        "are ties.",
        "",
    ]


# --- plots -------------------------------------------------------------------------------------------------
def _histories(registry: Any, run: StoredRun) -> dict[str, list[tuple[int, float]]]:
    return {
        key: registry.metric_history(run.run_id, key)
        for key in ("train_loss", "val_loss")
        if key in run.metrics
    }


def _plots(
    registry: Any,
    runs: Sequence[StoredRun],
    ranking: Ranking,
    reps: dict[str, tuple[StoredRun, str]],
    histories: dict[str, dict[str, list[tuple[int, float]]]],
    folder: Path,
    split: str,
) -> dict[str, list[Path]]:
    import matplotlib

    matplotlib.use("Agg")
    images: dict[str, list[Path]] = {"metrics": [], "loss": [], "pred": []}
    for i, group in enumerate(ranking.groups, 1):
        images["metrics"].append(_metric_bars(group, folder / f"metrics_group{i}.png", split))
    rep_runs = [r for r, _ in reps.values()]
    if any(histories.values()):
        images["loss"].append(_loss_curves(rep_runs, histories, folder / "loss_curves.png"))
    with tempfile.TemporaryDirectory() as tmp:
        for run in rep_runs:
            npz = registry.download_artifact(run.run_id, f"eval/predictions_{split}.npz", tmp)
            if npz is not None and npz.is_file():
                images["pred"].append(
                    _pred_vs_target(run, npz, folder / f"pred_vs_target_{run.case}_{run.name}.png")
                )
    return images


def _metric_bars(group: RankedGroup, path: Path, split: str) -> Path:
    import matplotlib.pyplot as plt

    panels = [(f"{split} MAE", "mae", False), (f"{split} accuracy (0.3), %", "accuracy_0.3", False)]
    if any(s.run.closed_loop() for s in group.scores):
        panels.append(("closed-loop success, %", "success_rate", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    labels = [f"{s.run.case}\n{s.run.name}" for s in group.scores]
    for ax, (title, key, closed) in zip(axes[0], panels, strict=True):
        values, lows, highs = [], [], []
        for s in group.scores:
            result = s.run.closed_loop() if closed else s.run.evaluation(split)
            scale = 100.0 if closed else 1.0
            value = (result or {}).get("metrics", {}).get(key, np.nan) * scale
            low, high = (result or {}).get("intervals", {}).get(key, [np.nan, np.nan])
            values.append(value)
            lows.append(value - low * scale)
            highs.append(high * scale - value)
        x = np.arange(len(values))
        ax.bar(x, values, color="#4c72b0")
        ax.errorbar(
            x,
            values,
            yerr=[np.clip(lows, 0, None), np.clip(highs, 0, None)],
            fmt="none",
            ecolor="black",
            capsize=4,
        )
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{group.label} (whiskers: 95% intervals)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _loss_curves(runs: Sequence[StoredRun], histories: dict[str, dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for run in runs:
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            points = histories.get(run.run_id, {}).get(key)
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, style, marker=".", label=f"{run.case} {run.name} {key}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _pred_vs_target(run: StoredRun, npz: Path, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with np.load(npz) as data:
        pred, target = data["predictions"], data["targets"]
    axes_names = _axes(run)
    fig, axes = plt.subplots(1, pred.shape[1], figsize=(3.6 * pred.shape[1], 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.scatter(target[:, i], pred[:, i], s=8, alpha=0.5)
        lim = float(max(np.abs(target[:, i]).max(), np.abs(pred[:, i]).max(), 1e-3)) * 1.1
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set_xlabel(f"target {axes_names[i] if i < len(axes_names) else i}")
        ax.set_ylabel("predicted")
    fig.suptitle(f"{run.case} {run.name}: predicted vs target (n={len(pred)})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
