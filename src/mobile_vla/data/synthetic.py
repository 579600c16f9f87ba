"""Synthetic episodes in the robot's exact format, for trying the toolkit and for tests.

The frames are drawn, not rendered: a floor, one or two boxes and a bottle whose on-screen positions follow a
key sequence from the lab's guides. Files are marked `provenance="synthetic"`, so the registry never ranks
their results with real ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mobile_vla.data.episodes import Scenario, write_episode

STEP = 1.15
KEYS = {
    "W": (STEP, 0.0),
    "S": (-STEP, 0.0),
    "A": (0.0, STEP),
    "D": (0.0, -STEP),
    "Q": (STEP, STEP),
    "E": (STEP, -STEP),
    "Z": (-STEP, STEP),
    "C": (-STEP, -STEP),
}
# The lab's guide key sequences; the mirror image is used for the other side.
GUIDES = {("1box", "left"): "WWWAAWWDD", ("2box", "right"): "WDDDWWWAAA"}
_MIRROR = str.maketrans("ADQEZC", "DAEQCZ")


def guide_keys(num_boxes: int, side: str, num_presses: int = 17) -> str:
    """The guide key sequence for a scenario, padded with forward presses to `num_presses`."""
    boxes = f"{num_boxes}box"
    keys = GUIDES.get((boxes, side))
    if keys is None:
        other = "right" if side == "left" else "left"
        keys = GUIDES[(boxes, other)].translate(_MIRROR)
    return (keys + "W" * num_presses)[:num_presses]


def _draw_frame(height: int, width: int, position: np.ndarray, scenario: Scenario, rng: np.random.Generator):
    image = Image.new("RGB", (width, height), (205, 200, 190))
    draw = ImageDraw.Draw(image)
    horizon = height // 3
    draw.rectangle([0, 0, width, horizon], fill=(235, 235, 230))
    depth = max(0.6, 4.0 - position[0])  # distance to the obstacles, shrinking as the robot drives forward
    scale = 1.0 / depth
    offsets = (
        [0.0] if scenario.num_boxes == 1 else ([-0.35, 0.35] if scenario.layout == "hori" else [0.0, 0.0])
    )
    for k, offset in enumerate(offsets):
        d = depth + (0.8 * k if scenario.layout == "vert" else 0.0)
        cx = width / 2 + (offset + position[1]) * width * 0.4 / d
        size = width * 0.18 / d
        base = horizon + height * 0.5 / d
        draw.rectangle([cx - size, base - size, cx + size, base], fill=(160, 120, 70), outline=(90, 60, 30))
    side = -1.0 if scenario.side == "left" else 1.0
    bx = width / 2 + (side * 0.6 + position[1]) * width * 0.4 / (depth + 1.5)
    bh = height * 0.25 * scale
    draw.rectangle(
        [bx - bh / 6, horizon + 20 * scale, bx + bh / 6, horizon + 20 * scale + bh], fill=(40, 120, 200)
    )
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.integers(-6, 7, size=pixels.shape, dtype=np.int16)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def write_synthetic_episode(
    out_dir: str | Path,
    scenario: Scenario,
    seed: int = 0,
    num_frames: int = 18,
    image_size: tuple[int, int] = (720, 1280),
    store_instruction: bool = True,
    start_time: datetime | None = None,
) -> Path:
    """Write one synthetic episode named the way the lab's collector names them."""
    rng = np.random.default_rng(seed)
    keys = guide_keys(scenario.num_boxes, scenario.side, num_frames - 1)
    if scenario.pattern == "variant":  # the operator changed the timing: swap two neighbouring presses
        swappable = [i for i in range(len(keys) - 1) if keys[i] != keys[i + 1]]
        i = swappable[int(rng.integers(len(swappable)))]
        keys = keys[:i] + keys[i + 1] + keys[i] + keys[i + 2 :]
    actions = np.zeros((num_frames, 3), np.float32)
    for t, key in enumerate(keys, start=1):
        actions[t, :2] = KEYS[key]
    positions = np.cumsum(actions[:, :2] * 0.4, axis=0)  # each press moves for 0.4 s
    images = np.stack([_draw_frame(*image_size, positions[t], scenario, rng) for t in range(num_frames)])
    events = ["episode_start"] + ["start_action"] * (num_frames - 1)
    if num_frames > 2:
        events[-1] = "stop_action"
    when = (start_time or datetime(2025, 8, 15, 12, 0, 0)) + timedelta(seconds=37 * seed)
    name = f"episode_{when:%Y%m%d_%H%M%S}_{scenario.full_name}.h5"
    attrs = {
        "total_duration": float(num_frames * 0.4),
        "action_chunk_size": 8,
        "obstacle_layout_type": scenario.layout,
        "time_period": "afternoon",
        "collection_datetime": when.isoformat(),
        "provenance": "synthetic",
        "seed": seed,
    }
    instruction = scenario.instruction if store_instruction else None
    return write_episode(Path(out_dir) / name, images, actions, events, instruction, attrs)


def all_scenarios() -> list[Scenario]:
    """The eight task scenarios `{1box,2box}_{vert,hori}_{left,right}`."""
    return [
        Scenario(n, layout, side) for n in (1, 2) for layout in ("vert", "hori") for side in ("left", "right")
    ]


def write_synthetic_dataset(
    out_dir: str | Path,
    episodes: int = 16,
    seed: int = 0,
    image_size: tuple[int, int] = (720, 1280),
    progress: bool = False,
) -> list[Path]:
    """`episodes` synthetic episodes spread over the eight scenarios, core/variant and the three distances."""
    from tqdm import tqdm

    paths = []
    for i in tqdm(range(episodes), desc="synthetic episodes", unit="ep", disable=not progress):
        base = all_scenarios()[i % 8]
        scenario = Scenario(
            base.num_boxes,
            base.layout,
            base.side,
            pattern="core" if (i // 8) % 2 == 0 else "variant",
            distance=("close", "medium", "far")[(i // 16) % 3],
        )
        paths.append(
            write_synthetic_episode(out_dir, scenario, seed=seed * 100_000 + i, image_size=image_size)
        )
    return paths
