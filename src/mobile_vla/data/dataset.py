"""Episode datasets for training: frame selection, by-episode splits, collation and dataset identity."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mobile_vla.data.cache import FrameRef
from mobile_vla.data.episodes import ACTION_AXES, Episode
from mobile_vla.data.mirror import (
    mirror_classes,
    mirror_draw,
    mirror_image,
    mirror_instruction,
    mirror_scenario,
    mirror_sign,
)
from mobile_vla.data.validation import find_episode_files, validate_episode

logger = logging.getLogger(__name__)

FRAME_SELECTIONS = ("first", "random", "all")


def load_episodes(
    source: str | Path | Sequence[str | Path], strict: bool = False, include_sessions: bool = False
) -> tuple[list[Episode], list[tuple[str, str]]]:
    """Open every episode in `source` (a directory, searched recursively, or a list of files), whatever its
    layout (v3, v5, v6: detected from each file's keys). A LeRobot v3 dataset directory (`meta/info.json`)
    is read by `mobile_vla.data.lerobot`.

    A file that fails validation is skipped with a logged error naming it (or raises when `strict`); returns
    the episodes and the `(path, reason)` of each skipped file. Inference-session logs (`session` layout: the
    actions are a model's commands, not a demonstration) are evaluation data: left out with a reason unless
    `include_sessions`.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        from mobile_vla.data import lerobot

        # A LeRobot v3 dataset directory (meta/info.json; a missing info.json is named as such).
        if lerobot.is_lerobot_dir(source) or (
            lerobot.looks_like_lerobot_dir(source) and not find_episode_files(source)
        ):
            return list(lerobot.read_lerobot_episodes(source)), []
    if isinstance(source, (str, Path)):
        paths = find_episode_files(source)
        if not paths:
            raise FileNotFoundError(f"{source}: no *.h5 episode files found")
    else:
        paths = [Path(p) for p in source]
    episodes: list[Episode] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, Path] = {}
    for path in paths:
        report = validate_episode(path)
        reason = "; ".join(report.errors)
        if report.ok and path.stem in seen:
            # Episode identity is the file stem everywhere (splits, caches, evaluation, the registry): a second
            # file with the same stem would be trained on twice and evaluated as one, so it is not loaded.
            report.ok = False
            reason = f"duplicate episode id {path.stem!r}: already loaded from {seen[path.stem]}"
        if report.ok:
            episode = report.episode  # validation opened it as training will; not opened twice
            if episode.is_session and not include_sessions:
                logger.warning("leaving out %s: an inference-session log (evaluation data)", path)
                skipped.append((str(path), "inference-session log (evaluation data), not a demonstration"))
                continue
            episodes.append(episode)
            seen[path.stem] = path
            continue
        if strict:
            raise ValueError(f"{path}: invalid episode: {reason}")
        logger.error("skipping invalid episode %s: %s", path, reason)
        skipped.append((str(path), reason))
    if skipped:
        logger.error("skipped %d of %d episode files (see errors above)", len(skipped), len(paths))
    return episodes, skipped


class EpisodeDataset(Dataset):
    """Frames of episodes as training items.

    Args:
        source: a directory of episodes (recursive `*.h5`), a list of files, or a list of opened `Episode`s.
        frame_selection: `first` (one frame per episode: the first usable one), `random` (one frame per
            episode, drawn afresh each epoch, reproducible from `seed` and the epoch; call `set_epoch`), or
            `all` (every frame).
        action_dims: names of the action axes the model predicts, a subset of `ACTION_AXES`, in order.
        drop_start_frame: leave out frame 0 (`episode_start`, whose action is always zero).
        strict: raise on an invalid episode instead of skipping it.
        seed: seed of the `random` frame draws.
        episode_ids: keep only these episodes (file stems), e.g. one part of `split_episodes`.
        lazy_images: put a `FrameRef` (the frame, not yet read) in `image` instead of a PIL image, for a
            feature provider that may have the frame's features cached (`CachedFeatureProvider`).
        mirror: probability that an item is its left/right mirror image (`mobile_vla.data.mirror`: image
            flipped, "left"/"right" swapped in `text`, `linear_y`/`angular_z` negated, `key_class` and
            `scenario` mirrored), drawn per (seed, epoch, episode, frame) by `is_mirrored`; call `set_epoch`
            for a fresh draw. A lazy mirrored image is a `FrameRef(..., mirrored=True)`, cached under its own
            key. 0 (default): never. Items then also carry `mirrored` (bool).

    Items: `{"image": PIL.Image, "action": FloatTensor(A), "key_class": LongTensor(), "text": str,
    "episode_id": str, "frame_index": int, "scenario": str}`. `key_class` is the file's stored
    `action_classes` entry for the frame (a `KEY_CLASSES` index) or -1 when the file stores none: a key-class
    head trains on the stored class when there is one (`KeySpace.targets`), else on the class of `action`.
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
        lazy_images: bool = False,
        mirror: float = 0.0,
    ):
        if not isinstance(mirror, (int, float)) or isinstance(mirror, bool) or not 0.0 <= mirror <= 1.0:
            raise ValueError(f"mirror must be a probability 0..1, got {mirror!r}")
        if frame_selection not in FRAME_SELECTIONS:
            raise ValueError(f"frame_selection must be one of {FRAME_SELECTIONS}, got {frame_selection!r}")
        unknown = [d for d in action_dims if d not in ACTION_AXES]
        if unknown or not action_dims:
            raise ValueError(
                f"action_dims must be a non-empty subset of {ACTION_AXES}, got {list(action_dims)}"
            )
        if (
            isinstance(source, Sequence)
            and not isinstance(source, str)
            and source
            and isinstance(source[0], Episode)
        ):
            episodes, self.skipped = list(source), []
            ids = [e.episode_id for e in episodes]
            if len(set(ids)) != len(ids):
                dup = sorted({i for i in ids if ids.count(i) > 1})
                raise ValueError(f"episode ids must be unique (the file stem); repeated: {dup[:5]}")
        else:
            episodes, self.skipped = load_episodes(source, strict=strict)  # type: ignore[arg-type]
        if episode_ids is not None:
            wanted = set(episode_ids)
            missing = wanted - {e.episode_id for e in episodes}
            if missing:
                logger.warning(
                    "%d requested episodes are not in the dataset: %s", len(missing), sorted(missing)[:5]
                )
            episodes = [e for e in episodes if e.episode_id in wanted]
        self.episodes: list[Episode] = sorted(episodes, key=lambda e: e.episode_id)
        self.frame_selection = frame_selection
        self.action_dims = tuple(action_dims)
        self._axis_index = [ACTION_AXES.index(d) for d in self.action_dims]
        self.drop_start_frame = drop_start_frame
        self.seed = seed
        self.epoch = 0
        self.lazy_images = lazy_images
        self.mirror = float(mirror)
        self._mirror_sign = mirror_sign(self.action_dims)
        self.frame_refs: list[tuple[int, int]] = self._select_frames()

    def _usable_frames(self, episode: Episode) -> range:
        start = 1 if self.drop_start_frame and episode.num_frames > 1 else 0
        return range(start, episode.num_frames)

    def _select_frames(self) -> list[tuple[int, int]]:
        refs: list[tuple[int, int]] = []
        for i, episode in enumerate(self.episodes):
            frames = self._usable_frames(episode)
            if self.frame_selection == "all":
                refs.extend((i, f) for f in frames)
            elif self.frame_selection == "first":
                refs.append((i, frames[0]))
            else:
                # One generator per (seed, epoch, episode id): the draw for an episode does not depend on which
                # other episodes are in the dataset, and costs no read of the file.
                key = int(hashlib.sha256(episode.episode_id.encode()).hexdigest()[:8], 16)
                rng = np.random.default_rng([self.seed, self.epoch, key])
                refs.append((i, int(frames[rng.integers(len(frames))])))
        return refs

    def set_epoch(self, epoch: int) -> None:
        """Redraw the `random` frames (and, with `mirror`, which items are mirrored) for `epoch`."""
        self.epoch = int(epoch)
        if self.frame_selection == "random":
            self.frame_refs = self._select_frames()

    def __len__(self) -> int:
        return len(self.frame_refs)

    def is_mirrored(self, index: int) -> bool:
        """Whether item `index` is mirrored in the current epoch (`mobile_vla.data.mirror.mirror_draw`)."""
        if self.mirror <= 0:
            return False
        episode_index, frame = self.frame_refs[index]
        return mirror_draw(self.mirror, self.seed, self.epoch, self.episodes[episode_index].episode_id, frame)

    def target(self, index: int) -> np.ndarray:
        """The action of item `index` (mirrored when the item is) without reading its image."""
        episode_index, frame = self.frame_refs[index]
        action = self.episodes[episode_index].actions[frame, self._axis_index]
        return action * self._mirror_sign if self.is_mirrored(index) else action

    def stored_class(self, episode: Episode, frame: int) -> int:
        """The file's own key class of `frame` (a `KEY_CLASSES` index), or -1 when it stores none."""
        stored = getattr(episode, "stored_action_classes", None)
        return int(stored[frame]) if stored is not None else -1

    def frame_image(self, episode: Episode, frame: int, mirrored: bool = False) -> Any:
        """Frame `frame` of `episode` as the dataset hands it over: a `FrameRef` (lazy) or a PIL image,
        flipped left-right when `mirrored`."""
        if self.lazy_images:
            return FrameRef(episode, frame, mirrored=mirrored)
        image = episode.image(frame)
        return Image.fromarray(mirror_image(image) if mirrored else np.asarray(image))

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode_index, frame = self.frame_refs[index]
        episode = self.episodes[episode_index]
        scenario = episode.scenario
        mirrored = self.is_mirrored(index)
        action = episode.actions[frame, self._axis_index].astype(np.float32)
        key_class = self.stored_class(episode, frame)
        text = episode.instruction
        scenario_name = scenario.name if scenario else "unknown"
        if mirrored:
            action = action * self._mirror_sign
            key_class = int(mirror_classes(np.array([key_class]))[0])
            text = mirror_instruction(text)
            scenario_name = mirror_scenario(scenario_name)
        item = {
            "image": self.frame_image(episode, frame, mirrored),
            "action": torch.from_numpy(np.ascontiguousarray(action)),
            "key_class": torch.tensor(key_class, dtype=torch.long),
            "text": text,
            "episode_id": episode.episode_id,
            "frame_index": frame,
            "scenario": scenario_name,
        }
        if self.mirror > 0:
            item["mirrored"] = mirrored
        return item


def collate_batch(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch dataset items: tensors are stacked, images stay a list of PIL images (the backbone's processor
    batches them; torch's `default_collate` cannot), everything else becomes a list."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif key == "frame_index":
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch


def split_episodes(
    episode_ids: Iterable[str], seed: int = 0, ratios: Sequence[float] = (0.7, 0.15, 0.15)
) -> dict[str, list[str]]:
    """Split episodes (never frames) into train/val/test, deterministically for a seed.

    With 3 or more episodes every part gets at least one. The ids are sorted first, so the split does not
    depend on the order the files were listed in.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0) or ratios[0] <= 0:
        raise ValueError(
            f"ratios must be three non-negative numbers summing to 1 with a positive train share, got "
            f"{list(ratios)}"
        )
    ids = sorted(set(episode_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    n = len(ids)
    n_val = int(round(n * ratios[1]))
    n_test = int(round(n * ratios[2]))
    if n >= 3:
        n_val = max(n_val, 1) if ratios[1] > 0 else 0
        n_test = max(n_test, 1) if ratios[2] > 0 else 0
    # Rounding up the small parts must never eat the train part (or overlap it): shrink the larger of
    # val/test until at least one episode is left to train on.
    while n_val + n_test > n - 1 and n_val + n_test > 0:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    n_train = n - n_val - n_test
    if n_train < 1 and n > 0:
        raise ValueError(
            f"ratios {list(ratios)} leave no training episode of {n} (val {n_val}, test {n_test}); "
            "use more episodes or a larger train ratio"
        )
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def dataset_fingerprint(episodes: Iterable[Episode]) -> str:
    """Content hash of a set of episodes: the same recordings give the same fingerprint whatever their paths."""
    digest = hashlib.sha256()
    for content_hash in sorted(e.content_hash for e in episodes):
        digest.update(content_hash.encode())
    return digest.hexdigest()[:16]


def dataset_provenance(episodes: Iterable[Episode]) -> str:
    """`real`, `sim` or `synthetic` when every episode agrees, else `mixed`."""
    kinds = {e.provenance for e in episodes}
    return kinds.pop() if len(kinds) == 1 else "mixed"
