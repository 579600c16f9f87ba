"""``mobile-vla backbones``: list the backbone profiles, or load one and show what it produces.

mobile-vla backbones                                   # the profiles
mobile-vla backbones show lite                         # dims, pretrained, fingerprint
mobile-vla backbones show kosmos2 --backbone-path DIR  # check a local Kosmos-2 directory loads
mobile-vla backbones show lite --benchmark 8           # + encode time per image at batch 1 and 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backbones",
        help="list backbone profiles, or load one and show its dims and fingerprint",
        description="List the frozen-encoder profiles, or load one and show its feature sizes and fingerprint.",
    )
    parser.set_defaults(func=_list)
    sub = parser.add_subparsers(dest="backbones_command", metavar="ACTION")
    show = sub.add_parser("show", help="load a profile and print its dims, weights and fingerprint")
    show.add_argument("profile", help="backbone profile (see `mobile-vla backbones`)")
    show.add_argument(
        "--backbone-path", dest="backbone_path", default=None, help="local weights directory or hub id"
    )
    show.add_argument("--revision", default=None, help="hub revision (kosmos2 only)")
    show.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    show.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    show.add_argument(
        "--benchmark",
        type=int,
        default=0,
        metavar="B",
        help="also time image encoding at batch 1 and batch B",
    )
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)


def _list(args: argparse.Namespace) -> int:
    from mobile_vla.backbones import DEFAULT_BACKBONE, available_backbones

    for name in available_backbones():
        print(f"{name}{'  (default)' if name == DEFAULT_BACKBONE else ''}")
    return 0


def _time_per_image(fn, images, reps: int) -> dict[str, float]:
    fn(images)  # warm-up (allocations, lazy inits)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(images)
        times.append((time.perf_counter() - start) / len(images) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "n": reps}


def _show(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from mobile_vla.backbones import BackboneUnavailableError, create_backbone

    kwargs = {}
    if args.backbone_path:
        kwargs["path"] = args.backbone_path
    if args.revision:
        kwargs["revision"] = args.revision
    start = time.perf_counter()
    try:
        backbone = create_backbone(args.profile, device=args.device, dtype=args.dtype, **kwargs)
    except (BackboneUnavailableError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = {
        "profile": backbone.profile,
        "pretrained": backbone.pretrained,
        "vision_dim": backbone.vision_dim,
        "text_dim": backbone.text_dim,
        "token_dim": backbone.token_dim,
        "num_image_tokens": backbone.num_image_tokens,
        "device": str(backbone.device),
        "dtype": backbone.dtype,
        "parameters": backbone.num_parameters,
        "load_s": round(time.perf_counter() - start, 2),
        "spec": backbone.spec(),
        "fingerprint_hash": backbone.fingerprint_hash,
        "fingerprint": backbone.fingerprint,
    }
    if args.benchmark > 0:
        rng = np.random.default_rng(0)
        frames = [
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
            for _ in range(args.benchmark)
        ]
        encode = backbone.encode_images_with_tokens
        info["encode_ms_per_image"] = {
            "batch_1": _time_per_image(encode, frames[:1], reps=10),
            f"batch_{args.benchmark}": _time_per_image(encode, frames, reps=5),
            "frame": "640x480 RGB",
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['profile']}: {'pretrained' if info['pretrained'] else 'RANDOM weights (tests only)'}")
    print(
        f"  vision {info['vision_dim']}-d, text {info['text_dim']}-d, {info['num_image_tokens']} image tokens of {info['token_dim']}-d"
    )
    print(
        f"  {info['parameters']:,} frozen parameters on {info['device']} ({info['dtype']}), loaded in {info['load_s']} s"
    )
    print(f"  fingerprint {info['fingerprint_hash']}; spec {json.dumps(info['spec'])}")
    for batch, t in info.get("encode_ms_per_image", {}).items():
        if isinstance(t, dict):
            print(
                f"  encode {batch}: {t['median_ms']:.1f} ms/image median "
                f"(min {t['min_ms']:.1f}, max {t['max_ms']:.1f}, n={t['n']} runs)"
            )
    return 0
