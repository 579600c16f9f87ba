"""Windows of episodes for history-based policies (Case 4): past frames, future action chunks, future frames.

RoboVLMs' idea: a policy sees a short history of frames and predicts a chunk of future actions. For each
selected frame t of an episode, a ``WindowDataset`` item holds

    image            PIL            frame t (what single-frame cases see)
    action           (A,)           action t (so the first-step metrics are the single-frame cases' metrics)
    history_images   W x PIL        frames t-W+1 .. t; before the episode's first frame, that frame repeated
    history_mask     (W,) bool      False where a history frame is padding
    action_chunk     (K, A)         actions t .. t+K-1, zero past the episode's end
    action_chunk_mask (K,) bool     False past the episode's end (those steps carry no loss)
    action_chunk_class (K,) long    the file's stored key class of each chunk step, -1 where none (see
                                    ``EpisodeDataset``'s ``key_class``)
    future_images    H x PIL        frames t+1 .. t+H (the state predictor's targets); the last frame repeated
    future_mask      (H,) bool      False past the episode's end
    task             () long        the scenario's index in ``TASK_NAMES``; ``IGNORE_TASK`` if unknown
    text, episode_id, frame_index, scenario   as in ``EpisodeDataset``

``collate_batch`` batches these as it does single frames: tensors are stacked, the image lists stay lists of
PIL lists (the feature provider turns them into ``(B, W, ...)`` features).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from mobile_vla.data.dataset import EpisodeDataset
from mobile_vla.data.episodes import Episode
from mobile_vla.data.mirror import mirror_classes, mirror_sign

# The lab's eight task scenarios, in a fixed order: a task label is an index into this tuple.
TASK_NAMES: tuple[str, ...] = tuple(
    f"{n}box_{layout}_{side}" for n in (1, 2) for layout in ("vert", "hori") for side in ("left", "right")
)
# Label of an episode whose file name has no scenario: cross-entropy skips it (torch's default ignore_index).
IGNORE_TASK = -100

T = TypeVar("T")


def task_label(scenario: str | None) -> int:
    """Index of ``scenario`` (e.g. ``"2box_vert_left"``) in ``TASK_NAMES``; ``IGNORE_TASK`` if it is not one."""
    try:
        return TASK_NAMES.index(scenario) if scenario else IGNORE_TASK
    except ValueError:
        return IGNORE_TASK


def pad_history(frames: Sequence[T], history: int) -> tuple[list[T], torch.Tensor]:
    """The last ``history`` of ``frames`` (oldest first), front-padded with the oldest frame.

    Returns the window and its mask (``(history,)`` bool, False on padding). Used both by the dataset and at
    inference, where a policy has seen only the frames of the current episode so far, so training and
    deployment pad the same way.
    """
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    if not frames:
        raise ValueError("pad_history needs at least the current frame")
    window = list(frames[-history:])
    missing = history - len(window)
    mask = torch.tensor([False] * missing + [True] * len(window))
    return [window[0]] * missing + window, mask


class WindowDataset(Dataset):
    """History windows, action chunks and future frames around the frames an ``EpisodeDataset`` selects.

    Takes ``EpisodeDataset``'s arguments (so a trainer builds either the same way) plus:

    Args:
        history: W, frames per history window, the current one included (>= 1).
        chunk: K, actions per chunk, the current one included (>= 1).
        horizon: H, future frames per item for the state predictor (>= 0; 0 leaves them out).
        lazy_images: put a ``FrameRef`` (``mobile_vla.data.cache``: the frame, not yet read) wherever a frame
            goes, for a feature provider that may have the frames' features cached.
        mirror: as in ``EpisodeDataset``; a mirrored item is mirrored whole: every history and future frame
            flipped, the chunk's ``linear_y``/``angular_z`` negated and its classes mirrored, the task label
            that of the mirrored scenario.

    The current frame t is chosen by ``frame_selection`` exactly as in ``EpisodeDataset`` (``first``,
    ``random`` with ``set_epoch``, ``all``); windows never cross episodes. With ``drop_start_frame`` the
    start frame is also left out of windows, chunks and futures.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path] | Sequence[Episode],
        frame_selection: str = "all",
        action_dims: Sequence[str] = ("linear_x", "linear_y"),
        drop_start_frame: bool = False,
        strict: bool = False,
        seed: int = 0,
        episode_ids: Iterable[str] | None = None,
        *,
        history: int = 4,
        chunk: int = 5,
        horizon: int = 5,
        lazy_images: bool = False,
        mirror: float = 0.0,
    ):
        for name, value, low in (("history", history, 1), ("chunk", chunk, 1), ("horizon", horizon, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"WindowDataset: {name} must be an int >= {low}, got {value!r}")
        self.frames = EpisodeDataset(
            source,
            frame_selection=frame_selection,
            action_dims=action_dims,
            drop_start_frame=drop_start_frame,
            strict=strict,
            seed=seed,
            episode_ids=episode_ids,
            **({"lazy_images": True} if lazy_images else {}),
            mirror=mirror,
        )
        self.lazy_images = lazy_images
        self.history = history
        self.chunk = chunk
        self.horizon = horizon

    # What trainers and evaluators read off an EpisodeDataset, passed through.
    @property
    def episodes(self) -> list[Episode]:
        return self.frames.episodes

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.frames.skipped

    @property
    def frame_refs(self) -> list[tuple[int, int]]:
        return self.frames.frame_refs

    @property
    def action_dims(self) -> tuple[str, ...]:
        return self.frames.action_dims

    @property
    def frame_selection(self) -> str:
        return self.frames.frame_selection

    def set_epoch(self, epoch: int) -> None:
        self.frames.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def target(self, index: int) -> np.ndarray:
        """The current action of item ``index`` without reading any image."""
        return self.frames.target(index)

    def chunk_target(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(actions (K, A), mask (K,))`` of item ``index`` without reading any image."""
        episode_index, t = self.frames.frame_refs[index]
        actions, mask = self._chunk(self.episodes[episode_index], t, self.frames.is_mirrored(index))
        return actions.numpy(), mask.numpy()

    def _chunk(self, episode: Episode, t: int, mirrored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        steps = np.arange(t, t + self.chunk)
        valid = steps < episode.num_frames
        actions = np.zeros((self.chunk, len(self.action_dims)), np.float32)
        actions[valid] = episode.actions[steps[valid]][:, self.frames._axis_index]
        if mirrored:
            actions = actions * mirror_sign(self.action_dims)
        return torch.from_numpy(actions), torch.from_numpy(valid)

    def _chunk_classes(self, episode: Episode, t: int, mirrored: bool = False) -> torch.Tensor:
        """(K,) the stored key class of each chunk step, -1 past the end or where the file stores none."""
        classes = np.full(self.chunk, -1, np.int64)
        stored = getattr(episode, "stored_action_classes", None)
        if stored is not None:
            steps = np.arange(t, min(t + self.chunk, episode.num_frames))
            classes[: len(steps)] = stored[steps]
        return torch.from_numpy(mirror_classes(classes) if mirrored else classes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.frames[index]
        episode_index, t = self.frames.frame_refs[index]
        episode = self.episodes[episode_index]
        first = self.frames._usable_frames(episode)[0]
        last = episode.num_frames - 1

        mirrored = self.frames.is_mirrored(index)
        # Each distinct frame is read from disk once per item, however many window slots it fills.
        images: dict[int, Any] = {t: item["image"]}

        def frame(i: int) -> Any:
            if i not in images:
                images[i] = self.frames.frame_image(episode, i, mirrored)
            return images[i]

        past = list(range(max(first, t - self.history + 1), t + 1))
        history_ids, history_mask = pad_history(past, self.history)
        future_ids = [min(t + k, last) for k in range(1, self.horizon + 1)]
        future_mask = torch.tensor([t + k <= last for k in range(1, self.horizon + 1)], dtype=torch.bool)
        action_chunk, chunk_mask = self._chunk(episode, t, mirrored)
        return {
            **item,
            "history_images": [frame(i) for i in history_ids],
            "history_mask": history_mask,
            "action_chunk": action_chunk,
            "action_chunk_mask": chunk_mask,
            "action_chunk_class": self._chunk_classes(episode, t, mirrored),
            "future_images": [frame(i) for i in future_ids],
            "future_mask": future_mask,
            "task": torch.tensor(task_label(item["scenario"]), dtype=torch.long),
        }
