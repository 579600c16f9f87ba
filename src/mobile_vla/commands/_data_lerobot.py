"""`mobile-vla data export-lerobot DATA_DIR --out DIR`: the lab's HDF5 episodes as a LeRobot v3.0 dataset."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  mobile-vla data export-lerobot episodes/ --out lerobot/mobile_vla
  mobile-vla train --case case1 --data lerobot/mobile_vla --out runs/from-lerobot   # --data takes it back
  # with LeRobot installed:  LeRobotDataset("local/mobile_vla", root="lerobot/mobile_vla")
"""


def register_export_lerobot(sub) -> None:
    from mobile_vla.data.lerobot import DEFAULT_FPS, IMAGE_KEY, ROBOT_TYPE

    p = sub.add_parser(
        "export-lerobot",
        help="write the episodes of DATA_DIR as a LeRobot v3.0 dataset",
        description="Write every valid *.h5 episode under DATA_DIR as a LeRobotDataset (codebase v3.0): "
        "meta/info.json, meta/stats.json, meta/tasks.parquet (tasks = instructions), meta/episodes/, "
        "data/chunk-*/file-*.parquet with PNG frames. Actions are named x.vel, y.vel, theta.vel (LeRobot's "
        "mobile base). `--data DIR` of train/evaluate reads the result back.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="directory of HDF5 episodes")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write (empty or absent)")
    p.add_argument(
        "--fps",
        type=int,
        default=DEFAULT_FPS,
        help=f"frames per second recorded in info.json; timestamp = frame_index / fps (default {DEFAULT_FPS})",
    )
    p.add_argument("--robot-type", default=ROBOT_TYPE, help=f"info.json robot_type (default {ROBOT_TYPE})")
    p.add_argument("--image-key", default=IMAGE_KEY, help=f"camera feature name (default {IMAGE_KEY})")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true", help="print meta/info.json")
    p.add_argument("--no-progress", action="store_true", help="no per-episode progress on stderr")
    p.set_defaults(func=_export_lerobot)


def _export_lerobot(args: argparse.Namespace) -> int:
    from mobile_vla.data.lerobot import export_lerobot

    info = export_lerobot(
        args.data_dir,
        args.out,
        fps=args.fps,
        robot_type=args.robot_type,
        image_key=args.image_key,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        extra = info["mobile_vla"]
        skipped = f", {len(extra['skipped'])} invalid files skipped" if extra["skipped"] else ""
        print(
            f"{args.out}: LeRobot {info['codebase_version']}, {info['total_episodes']} episodes, "
            f"{info['total_frames']} frames, {info['total_tasks']} tasks{skipped}; content fingerprint "
            f"{extra['content_fingerprint']}"
        )
    return 0
