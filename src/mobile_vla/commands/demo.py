"""`mobile-vla demo`: the main job, offline, end to end."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="offline, end to end: simulate data, train every registered case, evaluate, rank, report",
        description="Collect simulated episodes over the eight scenarios, validate them, cache the lite "
        "backbone's features, train every registered case (`mobile-vla describe --list`) with the standard recipe, evaluate each offline (test split) "
        "and in closed loop (held-out seeds), record everything in the registry, promote the best case by "
        "closed-loop success and write the registry document OUT/report.md with its plots.",
    )
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="a small version (a few minutes; for CI)")
    parser.add_argument("--episodes", type=int, default=None, help="override the number of training episodes")
    parser.add_argument("--epochs", type=int, default=None, help="override the maximum epochs per case")
    parser.add_argument(
        "--closed-loop-episodes", type=int, default=None, help="override the closed-loop episodes per case"
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        metavar="CASE",
        help="a subset of the registered cases (default: all of them)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobile_vla.demo import DemoPlan, run_demo

    plan = DemoPlan.quick() if args.quick else DemoPlan()
    if args.episodes is not None:
        plan.episodes = args.episodes
    if args.epochs is not None:
        plan.epochs = args.epochs
    if args.closed_loop_episodes is not None:
        plan.closed_loop_episodes = args.closed_loop_episodes
    if args.cases:
        plan.cases = tuple(args.cases)
    run_demo(args.out, plan, progress=not args.no_progress)
    return 0
