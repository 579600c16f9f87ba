"""The wire protocol the lab's robot client speaks, and the input checks that guard it.

Request (``POST /predict``, header ``X-API-Key``)::

    {"image": "<base64 JPEG or PNG>", "instruction": "Navigate around ...", "strategy": "chunk_reuse"}

``strategy`` is optional (the server's default applies). Unknown extra keys are ignored so that a client
sending more (a timestamp, a frame id) keeps working. Response::

    {"action": [linear_x, linear_y, ...], "latency_ms": 12.3, "model_name": "case1@prod",
     "strategy": "receding_horizon", "source": "inferred" | "reused" | "safe_stop:<reason>",
     "clamped": false, "buffer_status": {...}, "predicted_class": "FORWARD_LEFT" | null}

``predicted_class`` is the key class the model chose, for a key-class policy (``action_space: keys``; one of
``/model/info``'s ``key_classes``): the class of the model's command before the velocity limits clamp it, so
it names the key even when ``action`` was clamped. It is ``null`` for a regression policy (``action_space:
continuous``: its command is not a key) and for a safe stop (the model chose nothing).

Input errors are raised as :class:`InputError` carrying the HTTP status, so the server can answer every
malformed request with a 4xx and a message that says what was wrong, and keep serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, StrictStr

STRATEGIES = ("receding_horizon", "chunk_reuse")
Strategy = Literal["receding_horizon", "chunk_reuse"]
ACCEPTED_IMAGE_FORMATS = ("JPEG", "PNG")

DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGE_SIDE = 4096
DEFAULT_MAX_INSTRUCTION_CHARS = 512


class PredictRequest(BaseModel):
    """Body of ``POST /predict``. Extra keys are ignored (older and newer clients both work)."""

    model_config = ConfigDict(extra="ignore")

    image: StrictStr
    instruction: StrictStr
    strategy: Strategy | None = None


class PredictResponse(BaseModel):
    action: list[float]
    latency_ms: float
    model_name: str
    strategy: Strategy
    source: str
    clamped: bool
    buffer_status: dict
    timings_ms: dict[str, float] = {}
    predicted_class: str | None = None


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool
    model_name: str
    device: str


class InputError(ValueError):
    """A request the server will not act on; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InputLimits:
    """Bounds on what one request may carry.

    Attributes:
        max_image_bytes: largest decoded image file (JPEG/PNG bytes), default 10 MB.
        max_image_side: largest width or height in pixels, default 4096 (the robot sends 1280x720).
        max_instruction_chars: longest instruction, default 512 characters (the lab's are about 90).
    """

    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE
    max_instruction_chars: int = DEFAULT_MAX_INSTRUCTION_CHARS

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_image_side", "max_instruction_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"InputLimits.{name} must be a positive integer, got {value!r}")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body worth reading: the base64 of the largest image plus room for the rest."""
        return (self.max_image_bytes + 2) // 3 * 4 + 4 * self.max_instruction_chars + 64 * 1024

    def as_dict(self) -> dict[str, int]:
        return {
            "max_image_bytes": self.max_image_bytes,
            "max_image_side": self.max_image_side,
            "max_instruction_chars": self.max_instruction_chars,
        }


def decode_image(encoded: str, limits: InputLimits) -> np.ndarray:
    """Base64 JPEG/PNG -> uint8 RGB ``[H, W, 3]``, or :class:`InputError` saying what is wrong.

    The size checks happen before any pixel is decoded: PIL reads only the header on ``open``, so an image
    that claims 100k x 100k pixels is refused without allocating them.
    """
    if encoded.startswith("data:"):  # tolerate a data URL ("data:image/jpeg;base64,....")
        _, _, encoded = encoded.partition(",")
    if not encoded:
        raise InputError(400, "image is empty: send a base64-encoded JPEG or PNG")
    # A base64 string longer than this decodes to more than max_image_bytes: refuse before decoding it.
    if len(encoded) > (limits.max_image_bytes + 2) // 3 * 4 + 4:
        raise InputError(
            413, f"image is larger than the limit of {limits.max_image_bytes} bytes (before base64)"
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(
            400, f"image is not valid base64 ({exc}); send base64 of the JPEG/PNG bytes"
        ) from None
    if len(data) > limits.max_image_bytes:
        raise InputError(413, f"image is {len(data)} bytes, over the limit of {limits.max_image_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(413, "image has too many pixels") from None
    except Exception:
        raise InputError(400, "image bytes are not a readable JPEG or PNG image") from None
    if img.format not in ACCEPTED_IMAGE_FORMATS:
        raise InputError(415, f"image format {img.format} is not accepted; send JPEG or PNG")
    width, height = img.size
    if max(width, height) > limits.max_image_side:
        raise InputError(
            413, f"image is {width}x{height} px, over the limit of {limits.max_image_side} px a side"
        )
    if width < 1 or height < 1:
        raise InputError(400, f"image is {width}x{height} px; it needs at least one pixel")
    try:
        rgb = img.convert("RGB")  # decodes the pixels; grey, palette and RGBA images become RGB
    except Exception:
        raise InputError(400, "image is truncated or corrupt: its pixels could not be decoded") from None
    return np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)


def check_instruction(instruction: str, limits: InputLimits) -> str:
    """Strip surrounding whitespace; refuse an empty or over-long instruction."""
    text = instruction.strip()
    if not text:
        raise InputError(422, "instruction is empty: send the task, e.g. 'Navigate around obstacles ...'")
    if len(text) > limits.max_instruction_chars:
        raise InputError(
            422,
            f"instruction is {len(text)} characters, over the limit of {limits.max_instruction_chars}",
        )
    return text


def encode_image(image: np.ndarray, image_format: str = "png", jpeg_quality: int = 90) -> str:
    """uint8 RGB ``[H, W, 3]`` -> base64 string of a PNG (lossless, the default) or JPEG (what the robot sends)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {array.dtype} {list(array.shape)}")
    fmt = image_format.lower()
    buffer = io.BytesIO()
    if fmt == "png":
        # compress_level 1: the robot path cares about latency far more than bytes on a LAN
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    elif fmt in ("jpeg", "jpg"):
        Image.fromarray(array).save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
