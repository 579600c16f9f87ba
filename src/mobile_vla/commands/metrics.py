"""``mobile-vla metrics``: the standard metrics of saved predictions against targets, with 95% intervals."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Column names when --axes is not given: the robot's action axes in the order episodes store them.
_DEFAULT_AXES = ("linear_x", "linear_y", "angular_z")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="standard metrics of predictions vs targets (.npy), with bootstrap 95%% intervals",
        description=(
            "Compute the standard metrics (MAE, accuracy at 0.3/0.2/0.15, per-axis R2 and Pearson, tracking, "
            "direction and magnitude-order accuracy) of PREDICTIONS against TARGETS, both [N, D] arrays, each "
            "with a percentile bootstrap 95% interval over the N samples."
        ),
    )
    parser.add_argument(
        "--predictions",
        required=True,
        type=Path,
        help="predictions, [N, D] .npy (or .npz with a 'predictions' array or a single array)",
    )
    parser.add_argument(
        "--targets",
        required=True,
        type=Path,
        help="targets, [N, D] .npy (or .npz with a 'targets' array or a single array)",
    )
    parser.add_argument(
        "--axes",
        default=None,
        help="comma-separated axis names, one per column (default: linear_x,linear_y[,angular_z] by D)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mobile_vla.metrics import metrics_with_intervals

    try:
        pred = _load_array(args.predictions, "predictions")
        targ = _load_array(args.targets, "targets")
        if pred.shape != targ.shape:
            raise _UsageError(
                f"shape mismatch: predictions {args.predictions} has shape {pred.shape}, "
                f"targets {args.targets} has shape {targ.shape}; both must be [N, D]"
            )
        width = pred.shape[1] if pred.ndim == 2 else 1
        if args.axes is not None:
            axes = tuple(a.strip() for a in args.axes.split(",") if a.strip())
        elif width <= len(_DEFAULT_AXES):
            axes = _DEFAULT_AXES[:width]
        else:
            raise _UsageError(f"{args.predictions} has D={width} columns; name them with --axes a,b,c,...")
        if args.n_boot < 1:
            raise _UsageError(f"--n-boot must be >= 1, got {args.n_boot}")
        try:
            result = metrics_with_intervals(pred, targ, axis_names=axes, n_boot=args.n_boot, seed=args.seed)
        except ValueError as exc:
            raise _UsageError(f"{exc} (predictions: {args.predictions}, targets: {args.targets})") from exc
    except _UsageError as exc:
        print(f"mobile-vla metrics: error: {exc}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_format_table(result, axes, np.asarray(pred).dtype))
    return 0


class _UsageError(Exception):
    """A problem with the inputs the user can fix; reported on stderr with exit code 2."""


def _load_array(path: Path, role: str):
    import numpy as np

    if not path.is_file():
        raise _UsageError(f"{role} file not found: {path}")
    try:
        # allow_pickle=False: a .npy of Python objects could run code on load; we only read numbers.
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _UsageError(f"cannot read {role} file {path} as .npy/.npz: {exc}") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if role in names:
                array = loaded[role]
            elif len(names) == 1:
                array = loaded[names[0]]
            else:
                raise _UsageError(f"{role} file {path} holds arrays {names}; expected one named {role!r}")
    else:
        array = loaded
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise _UsageError(f"{role} file {path} holds dtype {array.dtype}; expected real numbers")
    if array.ndim not in (1, 2) or array.size == 0:
        raise _UsageError(f"{role} file {path} has shape {array.shape}; expected a non-empty [N, D] array")
    return array


def _format_table(result: dict, axes: tuple[str, ...], dtype) -> str:
    metrics, intervals, boot = result["metrics"], result["intervals"], result["bootstrap"]
    confidence = round(boot["confidence"] * 100)
    lines = [
        f"n = {result['n']} samples, {len(axes)} axes ({', '.join(axes)}), dtype {dtype}",
        f"intervals: {confidence}% percentile bootstrap, {boot['n_boot']} resamples, seed {boot['seed']}",
        "",
        f"{'metric':<34}{'value':>10}   {confidence}% interval",
    ]
    for key, value in metrics.items():
        if key == "n":
            continue
        low, high = intervals[key]
        # mae, R2 and correlation are on the action scale; everything else is a percentage.
        is_ratio = key == "mae" or key.endswith(("_r2", "_correlation"))
        if is_ratio:
            lines.append(f"{key:<34}{value:>10.4f}   [{low:.4f}, {high:.4f}]")
        else:
            lines.append(f"{key:<34}{value:>9.2f}%   [{low:.2f}, {high:.2f}]")
    return "\n".join(lines)
