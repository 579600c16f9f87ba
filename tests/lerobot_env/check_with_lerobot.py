"""Run inside the throwaway LeRobot environment (tests/test_lerobot_real.py): the real LeRobot reads our export
and writes a dataset of its own, and this prints what it saw as JSON.

    python check_with_lerobot.py OUR_EXPORT_DIR LEROBOT_WRITES_HERE OUT_JSON
"""

import json
import sys
from pathlib import Path

import numpy as np

ours, theirs, out = (Path(a) for a in sys.argv[1:4])

import lerobot  # noqa: E402
from lerobot.datasets.lerobot_dataset import CODEBASE_VERSION, LeRobotDataset, LeRobotDatasetMetadata  # noqa: E402

report = {"lerobot_version": getattr(lerobot, "__version__", None), "codebase_version": CODEBASE_VERSION}

# 1. LeRobot reads the dataset that `mobile-vla data export-lerobot` wrote.
meta = LeRobotDatasetMetadata("local/mobile_vla", root=ours)
ds = LeRobotDataset("local/mobile_vla", root=ours)
report["read"] = {
    "num_frames": ds.num_frames,
    "num_episodes": ds.num_episodes,
    "fps": ds.fps,
    "features": sorted(ds.features),
    "camera_keys": list(meta.camera_keys),
    "tasks": sorted(meta.tasks.index.tolist()),
    "stats_keys": sorted(meta.stats),
    "action_names": meta.features["action"]["names"],
    "episode_lengths": [int(meta.episodes[i]["length"]) for i in range(meta.total_episodes)],
    "items": [],
}
for index in (0, 5, ds.num_frames - 1):
    item = ds[index]
    image = item["observation.images.front"]  # (C, H, W) float in [0, 1]
    report["read"]["items"].append(
        {
            "index": int(item["index"]),
            "episode_index": int(item["episode_index"]),
            "frame_index": int(item["frame_index"]),
            "timestamp": float(item["timestamp"]),
            "task": item["task"],
            "action": [float(v) for v in item["action"]],
            "image_hwc_uint8": np.rint(image.permute(1, 2, 0).numpy() * 255).astype(int).tolist(),
        }
    )

# 2. LeRobot writes a dataset of its own (images, the mobile base's action names) for our reader.
features = {
    "observation.images.front": {
        "dtype": "image",
        "shape": (12, 16, 3),
        "names": ["height", "width", "channels"],
    },
    "action": {"dtype": "float32", "shape": (3,), "names": ["x.vel", "y.vel", "theta.vel"]},
}
created = LeRobotDataset.create(
    "local/written_by_lerobot", fps=5, features=features, root=theirs, use_videos=False
)
rng = np.random.default_rng(0)
written = []
for episode in range(2):
    frames = []
    for _ in range(4 + episode):
        image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        action = rng.normal(size=3).astype(np.float32)
        created.add_frame({"observation.images.front": image, "action": action, "task": f"task {episode}"})
        frames.append({"image": image.tolist(), "action": action.tolist()})
    created.save_episode()
    written.append({"task": f"task {episode}", "frames": frames})
if hasattr(created, "finalize"):
    created.finalize()
report["written"] = written
out.write_text(json.dumps(report))
