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


@runtime_checkable
class BatchControlPolicy(Protocol):
    """Step-by-step control of several episodes at once (the simulator's lockstep evaluation).

    ``act_slots(images, instructions, slots)`` returns ``(B, A)`` commands, row i for the episode in slot
    ``slots[i]``, from that episode's frames alone (a history-window policy keeps one history per slot);
    ``reset_slots(slots)`` starts new episodes in those slots.
    """

    action_dims: tuple[str, ...]

    def reset_slots(self, slots: list[int]) -> None: ...

    def act_slots(
        self, images: list[np.ndarray], instructions: list[str], slots: list[int]
    ) -> np.ndarray: ...
