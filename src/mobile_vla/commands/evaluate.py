"""``mobile-vla evaluate``: the standard metrics of a trained run on a split, with n and bootstrap intervals."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="offline metrics of a run on its test/val split",
        description="Predict every frame of a split's episodes with a trained run and print the standard metrics "
        "(with n and bootstrap 95%% intervals), and the key-class metrics (per-class accuracy with n, macro-F1, "
        "confusion matrix; a regression head's command is read as its nearest key class, so both action spaces "
        "are scored on the same classes). Writes eval_SPLIT.json and predictions_SPLIT.npz into the run.",
    )
    parser.add_argument("run_dir", help="training run directory")
    parser.add_argument(
        "--data", default=None, help="episode directory (default: the one recorded at training)"
    )
    parser.add_argument(
        "--split", default="test", choices=("test", "val", "train", "all"), help="default test"
    )
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="default best")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="frames per forward pass")
    parser.add_argument(
        "--frame-selection",
        default=None,
        choices=("first", "random", "all"),
        help="frames per episode (default: the run's eval_frame_selection, normally all)",
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from mobile_vla.registry import add_tracking_arguments

    add_tracking_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobile_vla.evaluation.evaluate import evaluate_run, format_result
    from mobile_vla.policies.inference import resolve_run_dir
    from mobile_vla.registry import RegistryUnavailableError, registry_from_args

    try:
        registry = registry_from_args(args)
    except RegistryUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.run_dir = resolve_run_dir(args.run_dir)
    result = evaluate_run(
        args.run_dir,
        args.data,
        args.split,
        device=args.device,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        frame_selection=args.frame_selection,
        n_boot=args.n_boot,
        seed=args.seed,
        progress=not args.no_progress and not args.json,
    )
    registry.log_evaluation(args.run_dir, args.split, result)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0
