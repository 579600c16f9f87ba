"""Episode files in every layout the lab's collectors have written, built with raw h5py (never the project's
writer), the way those collectors write them. Each builder returns the path.

Frames carry the driving direction as a visible cue (a bright bar on the side the robot turns to), so a head
can learn from them in a few epochs.
"""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
from PIL import Image

EVENTS = ["episode_start"] + ["start_action", "stop_action"] * 8 + ["start_action"]

# A guide key sequence per side: (linear_x, linear_y) per press.
GUIDES = {
    "left": [
        (1.15, 0),
        (1.15, 0),
        (0, 1.15),
        (0, 1.15),
        (1.15, 0),
        (1.15, 0),
        (1.15, 0),
        (0, -1.15),
        (1.15, 0),
    ],
    "right": [
        (1.15, 0),
        (1.15, 0),
        (0, -1.15),
        (0, -1.15),
        (1.15, 0),
        (1.15, 0),
        (1.15, 0),
        (0, 1.15),
        (1.15, 0),
    ],
}


def actions_for(side: str, frames: int, dtype=np.float32) -> np.ndarray:
    keys = GUIDES[side]
    actions = np.zeros((frames, 3), dtype)
    for t in range(1, frames):
        actions[t, :2] = keys[(t - 1) % len(keys)]
    return actions


def frames_for(actions: np.ndarray, height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3]: noise plus a bar whose position follows the frame's action."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(actions), height, width, 3), dtype=np.uint8)
    for t, (_, ly, _) in enumerate(actions):
        col = width // 2 if abs(ly) < 0.5 else (2 if ly > 0 else width - 6)
        images[t, :, col : col + 4, t % 3] = 250
    return images


def jpeg_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_v3(root, side="left", *, basket=False, stamp="20250815_122923", frames=18, seed=0, name=None):
    """v3: top-level images (gzip), float32 actions, event types, the source document's attributes."""
    scenario = f"1box_vert_{side}_core_medium"
    stem = f"episode_{stamp}_{scenario}"
    path = root / (name or (f"basket_{stem}.h5" if basket else f"{stem}.h5"))
    actions = actions_for(side, frames)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=frames_for(actions, seed=seed), compression="gzip", chunks=True)
        f.create_dataset("actions", data=actions)
        f.create_dataset("action_event_types", data=np.array(EVENTS[:frames], dtype="S"))
        f.attrs.update(
            {
                "episode_name": path.stem,
                "num_frames": frames,
                "total_duration": 7.2,
                "action_chunk_size": 8,
                "obstacle_layout_type": "vert",
                "time_period": "afternoon",
                "collection_datetime": "2025-08-15T12:29:23",
                "collection_hour": 12,
                "collection_minute": 29,
            }
        )
    return path


def write_v5(root, side="left", *, jpeg=False, jpeg_kind="vlen", stamp="250901_101010", frames=18, seed=0,
             tag=None, scenario=None, instruction=True, stop_frames=3):  # fmt: skip
    """v5: observations/images (RGB or JPEG bytes), float64 actions with trailing STOP frames, the
    instruction as a one-element array of utf-8 bytes, scenario attributes."""
    scenario = scenario or f"target_{side}_straight_path"
    tag_part = f"__{tag}" if tag else ""
    path = root / f"episode_{stamp}_{scenario}{tag_part}__core__medium_{side}.h5"
    actions = actions_for(side, frames, np.float64)
    actions[frames - stop_frames :] = 0.0  # trailing STOP frames
    images = frames_for(actions, seed=seed)
    with h5py.File(path, "w") as f:
        obs = f.create_group("observations")
        if not jpeg:
            obs.create_dataset("images", data=images)
        else:
            encoded = [jpeg_bytes(frame) for frame in images]
            if jpeg_kind == "vlen":
                ds = obs.create_dataset("images", (len(encoded),), dtype=h5py.vlen_dtype(np.uint8))
                for i, data in enumerate(encoded):
                    ds[i] = np.frombuffer(data, np.uint8)
            elif jpeg_kind == "void":
                width = max(len(d) for d in encoded)
                obs.create_dataset(
                    "images", data=np.array([d.ljust(width, b"\0") for d in encoded], dtype=f"V{width}")
                )
            elif jpeg_kind == "bytes":  # fixed-length byte strings (numpy "S"), zero-padded
                obs.create_dataset("images", data=np.array(encoded, dtype=f"S{max(len(d) for d in encoded)}"))
            else:
                raise ValueError(jpeg_kind)
        f.create_dataset("actions", data=actions)
        if instruction:
            text = f"Go to the target on the {side}, following the straight path"
            f.create_dataset("language_instruction", data=np.array([text.encode("utf-8")]))
        f.attrs.update({"scenario": scenario, "pattern": "core", "distance": "medium", "end_pos": side})
    return path


def write_v6(
    root, side="left", *, classes=True, class_names=True, stamp="20251001_090000", frames=18, seed=0
):
    """v6: top-level images, float32 actions (linear +-1.15/0, angular_z continuous), event types,
    scenario/cx attributes, and the collector's own action_classes."""
    from mobile_vla.data.action_space import KEY_CLASSES, action_classes_for

    path = root / f"episode_{stamp}_{side}_straight.h5"
    actions = actions_for(side, frames)
    actions[1:, 2] = np.linspace(0.05, -0.05, frames - 1) * (1 if side == "left" else -1)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=frames_for(actions, seed=seed))
        f.create_dataset("actions", data=actions.astype(np.float32))
        f.create_dataset("action_event_types", data=np.array(EVENTS[:frames], dtype="S"))
        if classes:
            labels = action_classes_for(actions).astype(np.int64)
            ds = f.create_dataset("action_classes", data=labels)
            ds.attrs["control_mode"] = "keyboard"
            ds.attrs["action_space"] = json.dumps(list(KEY_CLASSES)) if class_names else "discrete"
        f.attrs.update(
            {
                "scenario": f"target_{side}_straight_path",
                "cx_position": side,
                "cx_path": "straight",
                "stop_inject_n": 1,
            }  # fmt: skip
        )
    return path


def write_session(root, *, frames=6, seed=0):
    """An inference-session log the robot writes: observations/images, the model's actions, grounding/*,
    runtime_config JSON."""
    path = root / f"session_20251002_120000_{seed}.h5"
    actions = actions_for("left", frames)
    with h5py.File(path, "w") as f:
        f.create_group("observations").create_dataset("images", data=frames_for(actions, seed=seed))
        f.create_dataset("actions", data=actions)
        g = f.create_group("grounding")
        g.create_dataset("boxes", data=np.zeros((frames, 4), np.float32))
        f.attrs["runtime_config"] = json.dumps({"instruction": "Navigate to the bottle on the left", "hz": 3})
    return path
