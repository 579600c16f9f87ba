"""Episodes (HDF5 read/write, validation), datasets, splits and dataset identity."""

from mobile_vla.data.dataset import (
    FRAME_SELECTIONS,
    EpisodeDataset,
    collate_batch,
    dataset_fingerprint,
    dataset_provenance,
    load_episodes,
    split_episodes,
)
from mobile_vla.data.episodes import (
    ACTION_AXES,
    EVENT_TYPES,
    Episode,
    Scenario,
    instruction_for_side,
    parse_scenario,
    read_episode,
    write_episode,
)
from mobile_vla.data.validation import ValidationReport, find_episode_files, validate_episode

__all__ = [
    "ACTION_AXES",
    "EVENT_TYPES",
    "FRAME_SELECTIONS",
    "Episode",
    "EpisodeDataset",
    "Scenario",
    "ValidationReport",
    "collate_batch",
    "dataset_fingerprint",
    "dataset_provenance",
    "find_episode_files",
    "instruction_for_side",
    "load_episodes",
    "parse_scenario",
    "read_episode",
    "split_episodes",
    "validate_episode",
    "write_episode",
]
