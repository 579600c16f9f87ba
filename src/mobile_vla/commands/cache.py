"""`mobile-vla cache ...`: precompute, inspect and clear the frozen-backbone feature cache."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="precompute, inspect and clear the frozen-backbone feature cache",
        description="Features of a frozen backbone, stored once per frame and instruction and reused by "
        "every epoch, run and case. Default location: $MOBILE_VLA_CACHE/features, else "
        "~/.cache/mobile_vla/features.",
    )
    sub = parser.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    def add_root(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cache-dir", metavar="DIR", help="cache directory (default: see `mobile-vla cache -h`)"
        )

    build = sub.add_parser(
        "build",
        help="compute the features of every frame of a dataset",
        description="Compute the backbone's features of every frame (and every distinct instruction) under "
        "DATA, in batches, skipping what is cached already. Training fills the cache lazily anyway; "
        "building first moves the cost out of the first epoch.",
    )
    build.add_argument("data", help="directory of episodes (recursive *.h5) or one episode file")
    build.add_argument("--backbone", required=True, metavar="P", help="backbone profile (kosmos2, lite, ...)")
    build.add_argument(
        "--tokens", action="store_true", help="also cache image tokens (cases with a resampler)"
    )
    build.add_argument("--batch-size", type=int, default=16, help="images per backbone pass (default 16)")
    build.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    build.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16 (default fp32)")
    add_root(build)
    build.set_defaults(func=_build)

    info = sub.add_parser("info", help="entries and sizes per backbone and feature kind")
    info.add_argument("--json", action="store_true", help="print as JSON")
    add_root(info)
    info.set_defaults(func=_info)

    clear = sub.add_parser("clear", help="delete cached features (all, or one backbone's)")
    clear.add_argument("--backbone", metavar="P", help="only this profile name or fingerprint-hash prefix")
    add_root(clear)
    clear.set_defaults(func=_clear)


def _cache(args: argparse.Namespace):
    from mobile_vla.data.cache import FeatureCache

    return FeatureCache(args.cache_dir)


def _build(args: argparse.Namespace) -> int:
    from mobile_vla.backbones import create_backbone
    from mobile_vla.data.cache import build_cache
    from mobile_vla.data.dataset import load_episodes

    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        episodes, skipped = load_episodes(args.data)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not episodes:
        print(f"error: no valid episodes under {args.data} (run `mobile-vla data validate`)", file=sys.stderr)
        return 1
    backbone = create_backbone(args.backbone, device=args.device, dtype=args.dtype)
    cache = _cache(args)
    kinds = ("vision", "image_tokens") if args.tokens else ("vision",)
    stats = build_cache(backbone, episodes, cache=cache, kinds=kinds, batch_size=args.batch_size)
    frames = sum(e.num_frames for e in episodes)
    print(
        f"{backbone.profile} ({backbone.fingerprint_hash}): {len(episodes)} episodes, {frames} frames, "
        f"kinds {list(kinds)} + text; computed {stats.misses} features in {stats.backbone_calls} backbone "
        f"calls, {stats.requests - stats.misses} were cached already -> {cache.root}"
    )
    if skipped:
        print(f"{len(skipped)} invalid episode files skipped (run `mobile-vla data validate`)")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = _cache(args).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"feature cache: {info['root']}")
    if not info["backbones"]:
        print("  (empty)")
    for record in info["backbones"]:
        print(f"  {record['profile'] or '?'}  {record['fingerprint_hash']}")
        for kind, k in record["kinds"].items():
            what = f"{k['texts']} instructions" if kind == "text" else f"{k['episodes']} episodes"
            print(f"    {kind:<14} {k['entries']:>8} entries  {what:<18} {_size(k['bytes']):>10}")
    print(f"total: {info['entries']} entries, {_size(info['bytes'])}")
    if info["tmp_files"]:
        print(
            f"{info['tmp_files']} unfinished temporary files (from interrupted writes; `cache clear` removes)"
        )
    return 0


def _clear(args: argparse.Namespace) -> int:
    cache = _cache(args)
    removed = cache.clear(args.backbone)
    if args.backbone and not removed:
        known = [f"{r['profile']} ({r['fingerprint_hash']})" for r in cache.backbones()]
        print(f"no cached backbone matches {args.backbone!r}; cached: {known or 'none'}", file=sys.stderr)
        return 1
    print(f"removed {len(removed)} backbone namespaces from {cache.root}: {removed}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
