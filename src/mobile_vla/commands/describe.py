"""``mobile-vla describe``: a case's architecture, parameter counts and preset."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "describe",
        help="show a case's architecture, parameter counts and preset",
        description="Build a case's head on a backbone's feature sizes and print its architecture, trainable "
        "and frozen parameter counts, its preset hyperparameters and training settings.",
    )
    parser.add_argument("case", nargs="?", default=None, help="case name or alias (omit with --list)")
    parser.add_argument(
        "--backbone", default="lite", help="backbone profile whose feature sizes to use (default lite)"
    )
    parser.add_argument("--backbone-path", dest="backbone_path", default=None, help="local weights directory")
    parser.add_argument("--list", action="store_true", help="list the registered cases")
    parser.add_argument("--json", action="store_true", help="print as JSON")
    parser.set_defaults(func=run)


def count_backbone_parameters(backbone: Any) -> int:
    """Frozen parameters of a backbone: its ``num_parameters`` if it has one, else its nn.Module attributes."""
    count = getattr(backbone, "num_parameters", None)
    if callable(count):
        count = count()
    if isinstance(count, int):
        return count
    import torch

    seen: set[int] = set()
    total = 0
    for value in vars(backbone).values():
        if isinstance(value, torch.nn.Module):
            for p in value.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


def describe_case(case: str, backbone: Any) -> dict[str, Any]:
    from mobile_vla.policies import build_policy, get_case

    spec = get_case(case)
    # Cases with frozen encoders beyond the backbone (Case 2's CLIP) build them too: their sizes shape the head.
    policy, extra = build_policy(spec.name, backbone, device="cpu")
    return {
        "case": spec.name,
        "aliases": list(spec.aliases),
        "architecture": spec.architecture,
        "description": spec.description,
        "backbone": getattr(backbone, "profile", type(backbone).__name__),
        "feature_dims": policy.dims.to_dict(),
        "required_features": list(policy.required_features),
        "trainable_parameters": policy.num_parameters(trainable_only=True),
        "frozen_parameters": count_backbone_parameters(backbone)
        + sum(f.num_parameters for f in extra.values()),
        "extra_features": {name: f.record for name, f in extra.items()},
        "preset": {"policy": spec.config.to_dict(), "train": dict(spec.train)},
        "module": repr(policy),
    }


def run(args: argparse.Namespace) -> int:
    from mobile_vla.policies import available_cases, get_case

    if args.list or not args.case:
        for name in available_cases():
            spec = get_case(name)
            print(f"{name:<8} {spec.architecture:<34} aliases={','.join(spec.aliases)}  {spec.description}")
        return 0
    from mobile_vla.backbones import create_backbone

    kwargs = {"path": args.backbone_path} if args.backbone_path else {}
    info = describe_case(args.case, create_backbone(args.backbone, device="cpu", **kwargs))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['case']} ({info['architecture']}; aliases {', '.join(info['aliases'])})")
    print(f"  {info['description']}")
    print(f"  backbone {info['backbone']}: features {info['feature_dims']}")
    print(
        f"  trainable parameters {info['trainable_parameters']:,}  frozen (backbone + extra encoders) {info['frozen_parameters']:,}"
    )
    print(f"  preset head config: {info['preset']['policy']}")
    print(f"  preset training settings: {info['preset']['train']}")
    print(info["module"])
    return 0
