"""``mobile-vla train``: train one case's head on episodes with the standard recipe (or resume a run)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from mobile_vla.training.config import TrainConfig

# Fields with their own, hand-written flags below.
_SPECIAL = {"case", "backbone", "backbone_path", "policy", "split_ratios", "drop_start_frame"}
_SPECIAL |= {"sampling", "variant_ratio", "class_balance", "class_weight_cap"}  # add_sampling_arguments
_SPECIAL |= {"class_weights", "mirror"}


def _parse_value(text: str) -> Any:
    """``KEY=VALUE`` values are read as YAML scalars: 512 -> int, 0.2 -> float, true -> bool, else str."""
    import yaml

    return yaml.safe_load(text)


def _policy_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--policy expects KEY=VALUE (e.g. dropout=0.2), got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _parse_value(value)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size`` for ``batch_size``); unset flags stay None."""
    group = parser.add_argument_group("recipe (every TrainConfig field; default: the case's preset)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SPECIAL:
            continue
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        kind = type(default) if default is not None else str
        group.add_argument(
            flag, dest=f.name, type=kind, default=None, help=f"(TrainConfig.{f.name}; default {default})"
        )
    group.add_argument(
        "--split-ratios",
        dest="split_ratios",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        default=None,
        help="by-episode split fractions (default 0.7 0.15 0.15)",
    )
    group.add_argument(
        "--drop-start-frame",
        dest="drop_start_frame",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave out frame 0 (episode_start) of every episode (default: keep it)",
    )
    group.add_argument(
        "--policy",
        dest="policy",
        type=_policy_override,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override a field of the case's head config, e.g. --policy dropout=0.2 (repeatable)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a case's head on episodes (standard recipe)",
        description="Train a registered case on HDF5 episodes with the standard recipe. Settings are layered: "
        "TrainConfig defaults < the case's preset < --config FILE.yaml < command-line flags.",
    )
    parser.add_argument(
        "--case", default=None, help="case name or alias (default case1; see `mobile-vla describe --list`)"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="episode directory (searched recursively for *.h5) or a LeRobot v3 dataset directory",
    )
    parser.add_argument(
        "--backbone", default=None, help="backbone profile: lite (default), kosmos2, kosmos2-tiny"
    )
    parser.add_argument(
        "--backbone-path", dest="backbone_path", default=None, help="local weights directory for the backbone"
    )
    parser.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    parser.add_argument("--config", default=None, help="YAML/JSON file of TrainConfig fields")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out exactly")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    add_recipe_arguments(parser)
    add_sampling_arguments(parser)
    from mobile_vla.registry import add_tracking_arguments

    add_tracking_arguments(parser)
    parser.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.policy:
        out["policy"] = dict(args.policy)
    return out


def run(args: argparse.Namespace) -> int:
    from mobile_vla.registry import RegistryUnavailableError, registry_from_args
    from mobile_vla.training.config import resolve_train_config
    from mobile_vla.training.trainer import Trainer

    overrides = _overrides(args)
    if args.print_config:
        print(resolve_train_config(args.case, args.config, overrides).to_yaml(), end="")
        return 0
    try:  # before any work: an unreachable registry must not fail a training an hour in
        registry = registry_from_args(args)
    except RegistryUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    callbacks = [registry.training_callback()]
    if args.resume:
        ignored = sorted(k for k in overrides if k != "device")
        if ignored or args.config:
            print(
                f"--resume continues with the run's recorded config; ignoring {ignored or ['--config']}",
                file=sys.stderr,
            )
        trainer = Trainer.resume(
            args.out, data=args.data, device=args.device, progress=not args.no_progress, callbacks=callbacks
        )
    else:
        config = resolve_train_config(args.case, args.config, overrides)
        if not args.data:
            print("error: --data DIR is required (the episode directory)", file=sys.stderr)
            return 2
        trainer = Trainer(config, args.data, args.out, progress=not args.no_progress, callbacks=callbacks)
    summary = trainer.fit()
    print(json.dumps(summary, indent=2))
    return 0 if summary["status"] == "finished" else 1


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling strategy's flags (``training.sampling``); unset flags stay None (preset/file decide)."""
    group = parser.add_argument_group(
        "sampling (which training items an epoch draws; recorded in config.json and the registry)",
        "uniform: every training item once per epoch, shuffled (default). balanced: len(train) draws with "
        "replacement, every scenario group (task x side x distance from the file name; unparsable names form "
        "the group 'unknown') drawn equally often, a --variant-ratio share of draws from variant episodes, "
        "and optionally frames weighted by action class. The draw depends only on (--seed, epoch), so "
        "--resume and DDP ranks draw exactly what one uninterrupted process draws. "
        "`mobile-vla data stats DIR` shows what each strategy draws.",
    )
    group.add_argument(
        "--sampling",
        dest="sampling",
        choices=("uniform", "balanced"),
        default=None,
        help="sampling strategy (TrainConfig.sampling; default uniform)",
    )
    group.add_argument(
        "--variant-ratio",
        dest="variant_ratio",
        default=None,
        metavar="FRACTION|none",
        help="with balanced: fraction of draws from variant episodes, e.g. 0.3 (core and unlabelled episodes "
        "get the rest); none = as in the data (TrainConfig.variant_ratio; default none)",
    )
    group.add_argument(
        "--class-balance",
        dest="class_balance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with balanced and --frame-selection all: weight frames within each episode by the capped "
        "inverse frequency of their action key class (W, A, D, Q, ..., STOP) (default: off)",
    )
    group.add_argument(
        "--class-weight-cap",
        dest="class_weight_cap",
        type=float,
        default=None,
        help="largest class weight of --class-balance and --class-weights (TrainConfig.class_weight_cap; "
        "default 5.0)",
    )
    group.add_argument(
        "--class-weights",
        dest="class_weights",
        choices=("none", "inverse_frequency"),
        default=None,
        help="weights of the key-class cross-entropy (needs --policy action_space=keys): inverse_frequency "
        "weights each target class by min(cap, 1 / (K x its share of the training split's frames)), K the "
        "classes present; it changes the loss, not the draw; recorded in config.json as class_weights "
        "(TrainConfig.class_weights; default none)",
    )
    group.add_argument(
        "--mirror",
        dest="mirror",
        type=float,
        default=None,
        metavar="P",
        help="left/right mirror augmentation: with probability P a training frame is flipped left-right, "
        "'left'/'right' swapped in its instruction, linear_y and angular_z negated and its key class "
        "mirrored; drawn per (seed, epoch, frame), never on val/test; mirrored frames have their own "
        "feature-cache entries (TrainConfig.mirror; default 0 = off)",
    )
