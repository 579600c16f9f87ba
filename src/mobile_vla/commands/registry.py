"""`mobile-vla registry ...`: list, show, compare, report, promote, record and resolve runs in the MLflow store."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

STORE_HELP = (
    "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlruns/mlflow.db with "
    "project = $MOBILE_VLA_HOME or the current directory)"
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="every recorded run: list, show, compare, report, promote",
        description="The model registry (MLflow tracking + model registry). Runs are recorded by train, "
        "evaluate and sim evaluate; these commands read them, rank them honestly and promote a version.",
        epilog="Browse the store in MLflow's UI: mlflow ui --backend-store-uri sqlite:///$PWD/mlruns/mlflow.db "
        "(the default store; use your --tracking-uri otherwise).",
    )
    sub = parser.add_subparsers(dest="registry_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    def add(name: str, help: str, func, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        p.add_argument("--tracking-uri", default=None, help=STORE_HELP)
        p.set_defaults(func=func)
        return p

    p = add("list", "one line per run, newest first", _list)
    p.add_argument("--case", help="only this case (e.g. case1)")
    p.add_argument("--dataset", metavar="FINGERPRINT", help="only runs on this dataset (a prefix is enough)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("show", "everything recorded for one run", _show)
    p.add_argument("run", help="run directory, run id (or a unique prefix) or run name")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "compare",
        "rank runs within each dataset and split",
        _compare,
        description="Rank runs only against runs evaluated on the same episodes (dataset fingerprint + split). "
        "Synthetic-data and random-weight runs are listed apart, never ranked. The key is closed-loop success "
        "when every run of a group has it (same protocol), else test MAE; overlapping 95% intervals are ties.",
    )
    p.add_argument("--dataset", metavar="FINGERPRINT", help="only this dataset (a prefix is enough)")
    p.add_argument("--split", default="test", help="offline split to compare on (default test)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "report",
        "write the registry document (Markdown + PNG plots)",
        _report,
        description="Regenerate the model registry document from the store: per-case specification, "
        "comparison table, ranking, architecture table, update log, troubleshooting; plots beside it.",
    )
    p.add_argument(
        "--out", default="registry_report.md", help="Markdown file to write (default registry_report.md)"
    )
    p.add_argument("--split", default="test", help="offline split to report (default test)")

    p = add(
        "promote",
        "point models:/CASE@ALIAS at a run's registered version",
        _promote,
        description="Point models:/CASE@ALIAS at the registered version of RUN, or with --best at the top run of "
        "the ranking (`registry compare`) on one dataset.",
    )
    p.add_argument("run", nargs="?", help="run directory, run id, run name, or models:/NAME/VERSION")
    p.add_argument("--alias", default="champion", help="alias to set (default champion)")
    p.add_argument("--best", action="store_true", help="promote the top-ranked run instead of RUN")
    p.add_argument("--dataset", metavar="FINGERPRINT", help="with --best: the dataset to rank on")
    p.add_argument("--split", default="test", help="with --best: the split to rank on (default test)")

    p = add(
        "record",
        "import run directories into the store (idempotent)",
        _record,
        description="Import what run directories hold (config, epochs, summary, evaluations, closed-loop "
        "results, checkpoint) into the store. Running it again changes nothing.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")

    p = add("resolve", "print the run directory a models:/NAME@ALIAS address points at", _resolve)
    p.add_argument("uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--download-dir", help="where to put the checkpoint if the run directory is not here")


def _open(args: argparse.Namespace) -> Any:
    from mobile_vla.registry import open_registry

    return open_registry(args.tracking_uri)


def _guard(func):
    """Registry errors become one clear line and exit code 2, not a traceback."""

    def wrapper(args: argparse.Namespace) -> int:
        from mobile_vla.registry import RegistryLookupError, RegistryUnavailableError

        try:
            return func(args)
        except (RegistryUnavailableError, RegistryLookupError, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def _short_ci(result: dict | None, key: str) -> str:
    from mobile_vla.registry.report import fmt_ci

    return fmt_ci(result, key, with_n=True)


@_guard
def _list(args: argparse.Namespace) -> int:
    registry = _open(args)
    fixed = registry.reconcile_stale_runs()
    for run_id in fixed:
        print(f"marked killed: run {run_id} (its process is gone)", file=sys.stderr)
    runs = registry.runs(dataset=args.dataset, case=args.case)
    if args.json:
        print(json.dumps([_run_json(r) for r in runs], indent=2))
        return 0
    if not runs:
        print(f"no runs in {registry.tracking_uri}")
        return 0
    print(f"store: {registry.tracking_uri} ({len(runs)} runs)")
    header = (
        f"{'run id':<9} {'name':<24} {'case':<6} {'status':<9} {'dataset':<17} {'data':<9} {'weights':<7} "
    )
    print(header + f"{'test MAE [95%], n':<34} {'closed-loop success':<30} versions")
    for r in runs:
        versions = ", ".join(f"v{v['version']}" + "".join(f"@{a}" for a in v["aliases"]) for v in r.versions)
        weights = {True: "pre", False: "random"}.get(r.pretrained, "?")
        closed = r.closed_loop()
        print(
            f"{r.run_id[:8]:<9} {r.name[:24]:<24} {r.case:<6} {r.status_text:<9} {r.dataset_fingerprint[:16]:<17} "
            f"{r.provenance:<9} {weights:<7} {_short_ci(r.evaluation('test'), 'mae'):<34} "
            f"{(_short_ci(closed, 'success_rate') if closed else '—'):<30} {versions}"
        )
    return 0


def _run_json(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "name": run.name,
        "case": run.case,
        "status": run.status_text,
        "model_class": run.model_class,
        "dataset": run.dataset_fingerprint,
        "provenance": run.provenance,
        "pretrained": run.pretrained,
        "run_dir": run.run_dir,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "test": run.evaluation("test"),
        "val": run.evaluation("val"),
        "closed_loop": run.closed_loop(),
        "versions": [{k: v[k] for k in ("name", "version", "aliases")} for v in run.versions],
    }


@_guard
def _show(args: argparse.Namespace) -> int:
    registry = _open(args)
    run = registry.get_run(args.run)
    if args.json:
        out = _run_json(run)
        out.update(tags=run.tags, params=run.params, metrics=run.metrics)
        print(json.dumps(out, indent=2))
        return 0
    from mobile_vla.registry.report import metrics_block

    print(f"run {run.run_id}  {run.name}  ({run.status_text})")
    print(f"  case {run.case}: {run.model_class} (head {run.model_module}.{run.tag('architecture')})")
    print(
        f"  backbone {run.backbone_profile} ({'pretrained' if run.pretrained else 'random weights'}), "
        f"fingerprint {run.tag('backbone.fingerprint')}"
    )
    print(f"  dataset {run.dataset_fingerprint} ({run.provenance}) at {run.tag('dataset.path')}")
    print(
        f"  split seed {run.tag('split.seed')}: "
        + ", ".join(f"{s} {run.tag(f'split.{s}.count', '?')} episodes" for s in ("train", "val", "test"))
        + " (ids: artifact split.json)"
    )
    print(f"  code {run.tag('code.package_version')} commit {run.tag('code.git_commit', 'n/a')}")
    print(f"  run dir {run.run_dir}")
    if run.tags.get("mobile_vla.error"):
        print(f"  error: {run.tags['mobile_vla.error']}")
    for v in run.versions:
        aliases = " ".join(f"@{a}" for a in v["aliases"])
        print(f"  registered: models:/{v['name']}/{v['version']} {aliases}")
    print("  hyperparameters: " + json.dumps(run.config_section("policy"), sort_keys=True))
    print("  training settings: " + json.dumps(run.config_section("train"), sort_keys=True))
    print("  " + metrics_block(run, "test").replace("\n", "\n  "))
    return 0


@_guard
def _compare(args: argparse.Namespace) -> int:
    from mobile_vla.registry.ranking import artifact_outcomes, rank_runs
    from mobile_vla.registry.report import fmt_ci, ranking_rows

    registry = _open(args)
    ranking = rank_runs(
        registry.runs(), split=args.split, dataset=args.dataset, outcomes=artifact_outcomes(registry)
    )
    if args.json:
        print(json.dumps(_ranking_json(ranking), indent=2))
        return 0
    if not ranking.groups:
        print(
            f"no rankable runs on split {args.split}"
            + (f" and dataset {args.dataset}" if args.dataset else "")
        )
    for group in ranking.groups:
        direction = "higher is better" if group.higher_is_better else "lower is better"
        print(
            f"\n{group.label}: ranked by {group.key} ({direction})"
            + (f"; {group.note}" if group.note else "")
        )
        for row in ranking_rows(group):
            rank, case, name, value, n, tied = row
            print(
                f"  {rank:<10} {case:<6} {name.strip('`'):<24} {value:<28} n={n:<6} tied with: {tied.replace('`', '')}"
            )
        for run, reason in group.unranked:
            print(f"  {'-':<10} {run.case:<6} {run.name:<24} not placed: {reason}")
    if ranking.separate:
        print("\nNot ranked (synthetic data or a random-weight frozen encoder):")
        for run, reason in ranking.separate:
            print(
                f"  {run.case:<6} {run.name:<24} {fmt_ci(run.evaluation(args.split), 'mae', with_n=True):<36} {reason}"
            )
    if ranking.excluded:
        print("\nNot ranked (unfinished or not evaluated):")
        for run, reason in ranking.excluded:
            print(f"  {run.case:<6} {run.name:<24} {reason}")
    return 0


def _ranking_json(ranking: Any) -> dict[str, Any]:
    return {
        "split": ranking.split,
        "groups": [
            {
                "dataset": g.dataset,
                "provenance": g.provenance,
                "split": g.split,
                "split_fingerprint": g.split_fingerprint,
                "key": g.key,
                "higher_is_better": g.higher_is_better,
                "note": g.note,
                "ranking": [
                    {
                        "rank": s.rank,
                        "run_id": s.run.run_id,
                        "name": s.run.name,
                        "case": s.run.case,
                        "value": s.value,
                        "interval": list(s.interval) if s.interval else None,
                        "n": s.n,
                        "tied_with": s.tied_with,
                    }
                    for s in g.scores
                ],
                "unranked": [{"run_id": r.run_id, "name": r.name, "reason": why} for r, why in g.unranked],
            }
            for g in ranking.groups
        ],
        "separate": [
            {"run_id": r.run_id, "name": r.name, "case": r.case, "reason": why} for r, why in ranking.separate
        ],
        "excluded": [
            {"run_id": r.run_id, "name": r.name, "case": r.case, "reason": why} for r, why in ranking.excluded
        ],
    }


@_guard
def _report(args: argparse.Namespace) -> int:
    from mobile_vla.registry.report import write_report

    registry = _open(args)
    registry.reconcile_stale_runs()  # a run whose process is gone is reported killed, not running
    path = write_report(registry, args.out, split=args.split)
    print(f"report: {path} (plots in {path.parent / (path.stem + '_plots')})")
    return 0


@_guard
def _promote(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.best):
        print("error: give either RUN or --best", file=sys.stderr)
        return 2
    registry = _open(args)
    if args.best:
        info = registry.promote_best(alias=args.alias, split=args.split, dataset=args.dataset)
    else:
        info = registry.promote(args.run, alias=args.alias)
    previous = info["previous"]
    was = f" (was version {previous})" if previous and previous != info["version"] else ""
    print(f"models:/{info['name']}@{info['alias']} -> version {info['version']} (run {info['run_id']}){was}")
    if args.best:
        low, high = info["interval"]
        print(f"  ranked first by {info['key']}: {info['value']:.4g} [{low:.4g}, {high:.4g}], n={info['n']}")
        if info["tied_with"]:
            print(f"  tied with (overlapping intervals): {', '.join(info['tied_with'])}")
    return 0


@_guard
def _record(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    registry = _open(args)
    for run_dir in tqdm(args.run_dirs, desc="recording", unit="run", disable=len(args.run_dirs) < 2):
        run_id = registry.record_run_dir(run_dir)
        print(f"{run_dir} -> run {run_id}")
    return 0


@_guard
def _resolve(args: argparse.Namespace) -> int:
    registry = _open(args)
    print(registry.resolve_model_uri(args.uri, args.download_dir))
    return 0
