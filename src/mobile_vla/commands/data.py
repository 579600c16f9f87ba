"""`mobile-vla data ...`: validate, describe and generate episode datasets."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="validate, describe and generate episode datasets")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    validate = sub.add_parser(
        "validate",
        help="check every *.h5 episode under DIR",
        description="Check every *.h5 under DIR (recursively). Exit 0 when all are valid, 1 when any is not.",
    )
    validate.add_argument("dir", help="directory of episodes (or one episode file)")
    validate.add_argument("--json", action="store_true", help="print one JSON object per file, as a list")
    validate.add_argument("--deep", action="store_true", help="read every frame (slow on 720x1280 episodes)")
    validate.set_defaults(func=_validate)

    stats = sub.add_parser("stats", help="episodes, frames and actions per scenario; diversity analysis")
    stats.add_argument("dir", help="directory of episodes")
    stats.add_argument("--plot", metavar="PNG", help="also save a plot of the distributions to this PNG")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=_stats)

    synth = sub.add_parser(
        "synth",
        help="write synthetic episodes in the robot's format",
        description="Write synthetic episodes (drawn frames, the lab's guide key sequences) in the robot's "
        "HDF5 format, marked provenance=synthetic. For trying the toolkit without a robot.",
    )
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--episodes", type=int, default=16, help="number of episodes (default 16)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--image-size", default="720x1280", help="HxW of the frames (default 720x1280, the robot's)"
    )
    synth.set_defaults(func=_synth)


def _validate(args: argparse.Namespace) -> int:
    from mobile_vla.data.validation import find_episode_files, validate_episode

    try:
        files = find_episode_files(args.dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reports = [validate_episode(path, deep=args.deep) for path in files]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for r in reports:
            status = "ok     " if r.ok else "INVALID"
            print(f"{status} {r.file}  layout={r.layout} frames={r.num_frames} scenario={r.scenario}")
            for e in r.errors:
                print(f"    error: {e}")
            for w in r.warnings:
                print(f"    warning: {w}")
        bad = sum(not r.ok for r in reports)
        layouts = Counter(r.layout or "unknown" for r in reports)
        print(f"\n{len(reports) - bad} of {len(reports)} episodes valid, {bad} invalid")
        print("layouts: " + ", ".join(f"{k}={v}" for k, v in sorted(layouts.items())))
    if not reports:
        print(f"error: no *.h5 files under {args.dir}", file=sys.stderr)
        return 1
    return 0 if all(r.ok for r in reports) else 1


def _stats(args: argparse.Namespace) -> int:
    from mobile_vla.data.dataset import load_episodes
    from mobile_vla.data.stats import dataset_stats, format_stats, plot_stats

    try:
        episodes, skipped = load_episodes(args.dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = dataset_stats(episodes)
    stats["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats))
        if skipped:
            print(f"\n{len(skipped)} invalid files skipped (run `mobile-vla data validate`)")
    if args.plot:
        path = plot_stats(episodes, stats, args.plot)
        print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from mobile_vla.data.synthetic import write_synthetic_dataset

    try:
        height, width = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        print(f"error: --image-size must look like 720x1280, got {args.image_size!r}", file=sys.stderr)
        return 2
    paths = write_synthetic_dataset(
        args.out, episodes=args.episodes, seed=args.seed, image_size=(height, width), progress=True
    )
    print(f"wrote {len(paths)} episodes to {args.out}")
    return 0
