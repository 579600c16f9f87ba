"""Rollout videos: the robot's view beside an overview of the room, with the instruction and actions written on.

GIFs need nothing beyond Pillow (imageio's GIF writer); MP4 would need ffmpeg, which many machines lack.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_HEIGHT = 256
TEXT_HEIGHT = 70
_BACKGROUND = (24, 24, 28)
_TEXT = (235, 235, 235)
_OK = (90, 220, 110)
_BAD = (240, 90, 80)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _fit(frame: np.ndarray, height: int) -> Image.Image:
    image = Image.fromarray(frame)
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.BILINEAR)


def annotate_frame(
    ego: np.ndarray,
    instruction: str,
    step: int,
    max_steps: int,
    action: Sequence[float] | None,
    key: str | None = None,
    status: str | None = None,
    overview: np.ndarray | None = None,
) -> np.ndarray:
    """One video frame: the robot's view (and the overview) above a band with the instruction, the step and
    the action taken from this view; `status` (e.g. `success`, `collision`) is shown in colour."""
    panels = [_fit(ego, PANEL_HEIGHT)]
    if overview is not None:
        panels.append(_fit(overview, PANEL_HEIGHT))
    width = sum(p.width for p in panels) + 4 * (len(panels) - 1)
    canvas = Image.new("RGB", (max(width, 360), PANEL_HEIGHT + TEXT_HEIGHT), _BACKGROUND)
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 4
    draw = ImageDraw.Draw(canvas)
    small = _font(12)
    wrap = max(20, canvas.width // 7)
    lines = textwrap.wrap(instruction, wrap)[:2]
    for i, line in enumerate(lines):
        draw.text((6, PANEL_HEIGHT + 4 + 14 * i), line, fill=_TEXT, font=small)
    if action is None:
        act_text = f"step {step}/{max_steps}"
    else:
        values = " ".join(f"{v:+.2f}" for v in np.asarray(action, dtype=float).reshape(-1))
        act_text = f"step {step}/{max_steps}  action [{values}]" + (f"  {key}" if key else "")
    draw.text((6, PANEL_HEIGHT + 6 + 14 * len(lines)), act_text, fill=_TEXT, font=small)
    if status:
        colour = _OK if status == "success" else _BAD if status in ("collision", "failure") else _TEXT
        draw.text((6, PANEL_HEIGHT + 8 + 14 * (len(lines) + 1)), status, fill=colour, font=_font(13))
    return np.asarray(canvas)


def write_gif(path: str | Path, frames: Sequence[np.ndarray], seconds_per_frame: float = 0.4) -> Path:
    """Write frames (uint8 [H, W, 3], all one size) as a looping GIF, one frame per control step."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    imageio.mimsave(path, [np.asarray(f, dtype=np.uint8) for f in frames], duration=seconds_per_frame, loop=0)
    return path
