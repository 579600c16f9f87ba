"""`mobile-vla data ...`: validate, describe and generate episode datasets."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


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

    stats = sub.add_parser(
        "stats",
        help="episodes, frames and actions per scenario; key-class balance per scenario (a warning when one "
        "class is over 60%% of the frames); diversity analysis",
    )
    stats.add_argument("dir", help="directory of episodes")
    stats.add_argument("--plot", metavar="PNG", help="also save a plot of the distributions to this PNG")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.add_argument(
        "--variant-ratio",
        type=float,
        default=0.3,
        metavar="FRACTION",
        help="variant share the `balanced` strategies in the sampling comparison draw (default 0.3)",
    )
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

    from mobile_vla.commands._data_lerobot import register_export_lerobot

    register_export_lerobot(sub)


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
    stats["sampling"] = _sampling_comparison(episodes, args.variant_ratio) if episodes else {}
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats))
        if stats["sampling"]:
            print("\n" + _format_sampling(stats["sampling"]))
        if skipped:
            print(f"\n{len(skipped)} invalid files skipped (run `mobile-vla data validate`)")
    if args.plot:
        path = plot_stats(episodes, stats, args.plot)
        print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
        if stats["sampling"]:
            sampling_png = _plot_sampling(stats["sampling"], Path(args.plot))
            print(f"plot: {sampling_png}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _sampling_comparison(episodes: list, variant_ratio: float) -> dict:
    """What each sampling strategy draws (per scenario group, pattern and key class) beside what the data
    holds, over every frame (`frame_selection: all`)."""
    from mobile_vla.data.dataset import EpisodeDataset
    from mobile_vla.training.sampling import SamplingSettings, strategy_comparison

    dataset = EpisodeDataset(episodes, frame_selection="all")
    return strategy_comparison(
        dataset,
        {
            "balanced": SamplingSettings("balanced", variant_ratio=variant_ratio),
            "balanced+classes": SamplingSettings("balanced", variant_ratio=variant_ratio, class_balance=True),
        },
    )


def _format_sampling(comparison: dict) -> str:
    names = list(comparison)
    lines = [
        "What each sampling strategy draws (share of draws; `data` = the frames as they are, what `uniform` draws):"
    ]
    for facet in ("scenario", "pattern", "action_class"):
        keys = sorted({k for shares in comparison.values() for k in shares[facet]})
        lines.append(f"\n  {facet:<28}" + "".join(f"{n:>18}" for n in names))
        for key in keys:
            lines.append(
                f"  {key:<28}" + "".join(f"{comparison[n][facet].get(key, 0.0):>17.1%} " for n in names)
            )
    return "\n".join(lines)


def _plot_sampling(comparison: dict, plot: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    facets = ("scenario", "pattern", "action_class")
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw={"width_ratios": [3, 1, 2]})
    names = list(comparison)
    for ax, facet in zip(axes, facets, strict=True):
        keys = sorted({k for shares in comparison.values() for k in shares[facet]})
        x = np.arange(len(keys))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar(x + i * width, [comparison[name][facet].get(k, 0.0) for k in keys], width, label=name)
        ax.set_xticks(x + 0.4 - width / 2, keys, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"share of draws per {facet}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = plot.with_name(plot.stem + "_sampling" + plot.suffix)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


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
