"""Image bytes as the server receives them (PNG/JPEG) -> an RGB PIL image, timed. No torch here: the ONNX
runtime uses it too."""

from __future__ import annotations

import io
import time

from PIL import Image


def decode_image(image_bytes: bytes) -> tuple[Image.Image, float]:
    """``(RGB image, milliseconds the decode took)``."""
    start = time.perf_counter()
    with Image.open(io.BytesIO(image_bytes)) as im:
        image = im.convert("RGB")
    return image, (time.perf_counter() - start) * 1e3
