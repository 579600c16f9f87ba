"""What the simulator and the server drive: a policy that acts one camera frame at a time."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ControlPolicy(Protocol):
    """Step-by-step control. ``act`` takes one RGB frame (uint8 ``[H, W, 3]``) and the instruction and
    returns one velocity command ``(A,)`` over ``action_dims``; ``reset`` starts a new episode (clears any
    history). Chunking policies may also offer ``act_chunk(image, instruction) -> (K, A)``.
    """

    action_dims: tuple[str, ...]

    def reset(self) -> None: ...

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray: ...
