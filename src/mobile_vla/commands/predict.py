"""``mobile-vla predict``: one velocity command for one image and instruction."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict one velocity command from an image and an instruction",
        description="Load a trained run and print the velocity command for one camera image and instruction.",
    )
    parser.add_argument("run_dir", help="training run directory")
    parser.add_argument("--image", required=True, help="image file (PNG/JPEG, RGB)")
    parser.add_argument("--instruction", required=True, help='e.g. "Navigate around obstacles and reach ..."')
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="default best")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--json", action="store_true", help="print the action, axes and timings as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mobile_vla.policies.inference import load_policy

    image_path = Path(args.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"--image {image_path} does not exist")
    policy = load_policy(args.run_dir, device=args.device, checkpoint=args.checkpoint)
    action = policy.act_encoded(image_path.read_bytes(), args.instruction)
    values = {axis: float(v) for axis, v in zip(policy.action_dims, action, strict=True)}
    if args.json:
        print(json.dumps({"action": values, "timings_ms": policy.timings}, indent=2))
    else:
        print(" ".join(f"{axis}={value:+.4f}" for axis, value in values.items()))
    return 0
