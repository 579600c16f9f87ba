"""What keeps the robot safe whatever the model does: velocity limits, output checks and the safe stop.

Every action that leaves the server passes through :func:`check_action` (or :func:`check_chunk`): an output
that is not a finite vector of the right length becomes a zero-velocity command with a reason, and a finite one
is clamped to the configured limits. A robot that stops is recoverable; one that lurches at a NaN-derived speed
into the boxes is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Reasons that appear after "safe_stop:" in a response's `source`. Kept short and stable: robot-side code
# and dashboards match on them.
MODEL_ERROR = "model_error"
NON_FINITE = "non_finite_output"
BAD_SHAPE = "bad_output_shape"

# The lab's tele-operation magnitude (every key press moves each axis by +-1.15): a model trained on that data
# has no business commanding more.
DEFAULT_MAX_LINEAR = 1.15
DEFAULT_MAX_ANGULAR = 1.15


@dataclass
class VelocityLimits:
    """Per-axis absolute velocity limits applied to every action the server returns.

    Attributes:
        max_linear: limit for every axis whose name starts with ``linear`` (``linear_x``, ``linear_y``), in the
            robot's command units (the lab's tele-operation uses +-1.15).
        max_angular: limit for every axis whose name starts with ``angular`` (``angular_z``).
        per_axis: explicit limits by axis name; they win over the two above. An axis that is neither linear
            nor angular must be listed here (there is no safe default for an axis we do not understand).
    """

    max_linear: float = DEFAULT_MAX_LINEAR
    max_angular: float = DEFAULT_MAX_ANGULAR
    per_axis: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in [("max_linear", self.max_linear), ("max_angular", self.max_angular)] + [
            (f"per_axis[{k!r}]", v) for k, v in self.per_axis.items()
        ]:
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"VelocityLimits.{name} must be a finite number >= 0, got {value!r}")
        self.max_linear = float(self.max_linear)
        self.max_angular = float(self.max_angular)
        self.per_axis = {str(k): float(v) for k, v in self.per_axis.items()}

    def limit_for(self, axis: str) -> float:
        if axis in self.per_axis:
            return self.per_axis[axis]
        if axis.startswith("linear"):
            return self.max_linear
        if axis.startswith("angular"):
            return self.max_angular
        raise ValueError(
            f"no velocity limit for action axis {axis!r}: it is neither linear_* nor angular_*; "
            f"give one explicitly (VelocityLimits(per_axis={{{axis!r}: ...}}) or --limit {axis}=VALUE)"
        )

    def vector(self, action_dims: tuple[str, ...] | list[str]) -> np.ndarray:
        """The limits as a float32 vector aligned with ``action_dims``."""
        return np.array([self.limit_for(a) for a in action_dims], dtype=np.float32)

    def as_dict(self, action_dims: tuple[str, ...] | list[str]) -> dict[str, float]:
        return {a: self.limit_for(a) for a in action_dims}


@dataclass(frozen=True)
class CheckedAction:
    """An action that is safe to send: finite, clamped, the right length.

    ``stop_reason`` is set (and ``action`` is all zeros) when the model's output could not be used.
    """

    action: np.ndarray  # (A,) float32
    clamped: bool = False
    stop_reason: str | None = None

    @property
    def source_suffix(self) -> str | None:
        return f"safe_stop:{self.stop_reason}" if self.stop_reason else None


def safe_stop(action_dim: int, reason: str) -> CheckedAction:
    """Zero velocity on every axis: what the robot does when anything went wrong."""
    return CheckedAction(np.zeros(action_dim, dtype=np.float32), clamped=False, stop_reason=reason)


def clamp(values: np.ndarray, limits: np.ndarray) -> tuple[np.ndarray, bool]:
    """Clip ``values`` (..., A) to ``[-limits, limits]`` per axis; return it and whether anything moved."""
    clipped = np.clip(values, -limits, limits)  # compared before the float32 cast: 0.1 != float32(0.1)
    return clipped.astype(np.float32), bool(np.any(clipped != values))


def check_action(raw: object, limits: np.ndarray) -> CheckedAction:
    """Turn a model's raw output into a safe action (A,) or a safe stop with the reason.

    ``limits`` is :meth:`VelocityLimits.vector` for the model's action axes; its length is the expected A.
    A ``(1, A)`` output (a batch of one) is accepted, anything else of the wrong shape is not.
    """
    action_dim = len(limits)
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        return safe_stop(action_dim, BAD_SHAPE)
    if values.shape == (1, action_dim):
        values = values[0]
    if values.shape != (action_dim,):
        return safe_stop(action_dim, BAD_SHAPE)
    if not np.all(np.isfinite(values)):
        return safe_stop(action_dim, NON_FINITE)
    clipped, was_clamped = clamp(values, limits)
    return CheckedAction(clipped, clamped=was_clamped)


def check_chunk(raw: object, limits: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """Validate an action chunk (K, A): ``(chunk, clamped_rows, None)`` or ``(None, None, reason)``.

    ``clamped_rows`` (K,) bool says which steps the limits changed.

    One bad step condemns the whole chunk: the later steps came out of the same broken forward pass.
    """
    action_dim = len(limits)
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        return None, None, BAD_SHAPE
    if values.ndim == 3 and values.shape[0] == 1:  # a batch of one
        values = values[0]
    if values.ndim != 2 or values.shape[1] != action_dim or values.shape[0] < 1:
        return None, None, BAD_SHAPE
    if not np.all(np.isfinite(values)):
        return None, None, NON_FINITE
    clipped = np.clip(values, -limits, limits)  # (K, A)
    return clipped.astype(np.float32), np.any(clipped != values, axis=1), None
