"""Datasets: frame selection, by-episode splits, collation, corrupt episodes, dataset identity."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_vla.data import (
    EpisodeDataset,
    Scenario,
    collate_batch,
    dataset_fingerprint,
    dataset_provenance,
    split_episodes,
    write_episode,
)
from mobile_vla.data.synthetic import write_synthetic_dataset, write_synthetic_episode


@pytest.fixture(scope="module")
def episodes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_synthetic_dataset(root, episodes=12, seed=3, image_size=(24, 32))
    return root


def test_items_have_the_documented_keys_and_types(episodes_dir):
    dataset = EpisodeDataset(
        episodes_dir, frame_selection="all", action_dims=("linear_x", "linear_y", "angular_z")
    )
    item = dataset[5]
    assert set(item) == {"image", "action", "key_class", "text", "episode_id", "frame_index", "scenario"}
    assert item["key_class"].dtype == torch.long and int(item["key_class"]) == -1  # synthetic: none stored
    assert isinstance(item["image"], Image.Image) and item["image"].size == (32, 24)
    assert item["action"].dtype == torch.float32 and item["action"].shape == (3,)
    assert item["text"].startswith("Navigate around obstacles") and item["scenario"].count("_") == 2
    assert len(dataset) == 12 * 18


def test_action_dims_are_a_config_choice(episodes_dir):
    dataset = EpisodeDataset(episodes_dir, action_dims=("linear_y",))
    assert dataset[3]["action"].shape == (1,)
    np.testing.assert_allclose(dataset[3]["action"].numpy(), dataset.target(3))


def test_first_selection_and_dropping_the_start_frame(episodes_dir):
    first = EpisodeDataset(episodes_dir, frame_selection="first")
    assert len(first) == 12 and {first[i]["frame_index"] for i in range(12)} == {0}
    dropped = EpisodeDataset(episodes_dir, frame_selection="first", drop_start_frame=True)
    assert {dropped[i]["frame_index"] for i in range(12)} == {1}
    assert len(EpisodeDataset(episodes_dir, drop_start_frame=True)) == 12 * 17


def test_random_frame_selection_changes_per_epoch_yet_is_reproducible(episodes_dir):
    a = EpisodeDataset(episodes_dir, frame_selection="random", seed=11)
    b = EpisodeDataset(episodes_dir, frame_selection="random", seed=11)
    frames = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert a.frame_refs == b.frame_refs
        frames.append(a.frame_refs)
    assert frames[0] != frames[1] != frames[2]
    a.set_epoch(0)
    assert a.frame_refs == frames[0]
    other_seed = EpisodeDataset(episodes_dir, frame_selection="random", seed=12)
    assert other_seed.frame_refs != frames[0]


def test_split_is_by_episode_deterministic_and_70_15_15():
    ids = [f"ep{i:03d}" for i in range(40)]
    split = split_episodes(ids, seed=5)
    assert split == split_episodes(list(reversed(ids)), seed=5)
    assert [len(split[k]) for k in ("train", "val", "test")] == [28, 6, 6]
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert set().union(*parts) == set(ids)
    assert split_episodes(ids, seed=6) != split
    small = split_episodes(["a", "b", "c"], seed=0)
    assert all(len(v) == 1 for v in small.values())
    with pytest.raises(ValueError, match="ratios"):
        split_episodes(ids, ratios=(0.5, 0.5, 0.5))


def test_split_datasets_share_no_episode(episodes_dir):
    full = EpisodeDataset(episodes_dir)
    split = split_episodes([e.episode_id for e in full.episodes], seed=0)
    seen = {
        part: {EpisodeDataset(episodes_dir, episode_ids=ids)[i]["episode_id"] for i in range(3)}
        for part, ids in split.items()
    }
    for part, ids in seen.items():
        assert ids <= set(split[part])


def test_collate_keeps_images_as_pil_and_stacks_actions(episodes_dir):
    dataset = EpisodeDataset(episodes_dir)
    batch = collate_batch([dataset[i] for i in range(3)])
    assert isinstance(batch["image"], list) and all(isinstance(im, Image.Image) for im in batch["image"])
    assert batch["action"].shape == (3, 2)
    assert batch["frame_index"].tolist() == [0, 1, 2]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_batch)
    assert next(iter(loader))["action"].shape == (4, 2)


def test_a_corrupt_episode_is_skipped_counted_and_named(tmp_path, caplog):
    write_synthetic_episode(tmp_path, Scenario(1, "vert", "left"), seed=1, image_size=(16, 16))
    bad = tmp_path / "episode_20250101_000000_1box_hori_right.h5"
    bad.write_bytes(b"\x89HDF\r\n broken")
    dataset = EpisodeDataset(tmp_path)
    assert len(dataset.episodes) == 1 and len(dataset.skipped) == 1
    assert dataset.skipped[0][0] == str(bad)
    assert str(bad) in caplog.text
    with pytest.raises(ValueError, match="episode_20250101_000000_1box_hori_right"):
        EpisodeDataset(tmp_path, strict=True)


def test_fingerprint_follows_content_not_paths_and_provenance_is_read(tmp_path, episodes_dir):
    a = EpisodeDataset(episodes_dir).episodes
    assert dataset_fingerprint(a) == dataset_fingerprint(list(reversed(a)))
    assert dataset_provenance(a) == "synthetic"
    assert dataset_fingerprint(a[:-1]) != dataset_fingerprint(a)
    write_episode(
        tmp_path / "x_1box_vert_left.h5",
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((2, 3)),
        attrs={"provenance": "sim"},
    )
    sim = EpisodeDataset(tmp_path).episodes
    assert dataset_provenance(sim) == "sim" and dataset_provenance(sim + a) == "mixed"


def test_stats_cli_reports_scenarios_actions_and_saves_a_plot(episodes_dir, tmp_path):
    png = tmp_path / "stats.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobile_vla.cli",
            "data",
            "stats",
            str(episodes_dir),
            "--json",
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["episodes"] == 12 and stats["frames"] == 216
    assert len(stats["per_scenario"]) == 8
    assert stats["actions"]["linear_x"]["n"] == 216
    assert set(stats["actions"]["linear_y"]["values"]) <= {"-1.15", "0", "1.15"}
    assert stats["per_pattern"] == {"core": 8, "variant": 4}
    assert png.stat().st_size > 1000
    # What each sampling strategy would draw, beside the data (issue 18): balanced draws 30% variant frames.
    sampling = stats["sampling"]
    assert set(sampling) == {"data", "balanced", "balanced+classes"}
    assert sampling["data"]["pattern"]["variant"] == pytest.approx(4 / 12)
    assert sampling["balanced"]["pattern"]["variant"] == pytest.approx(0.3)
    for shares in sampling.values():
        assert sum(shares["action_class"].values()) == pytest.approx(1.0)
    assert (tmp_path / "stats_sampling.png").stat().st_size > 1000


@pytest.mark.parametrize("ratios", [(0, 0.5, 0.5), (0.1, 0.45, 0.45), (0.34, 0.33, 0.33)])
def test_no_split_ever_shares_an_episode_or_loses_one(ratios):
    for ids in (["a", "b", "c"], ["a", "b", "c", "d"], [f"e{i}" for i in range(7)]):
        try:
            split = split_episodes(ids, ratios=ratios)
        except ValueError as exc:
            assert "train" in str(exc) or "cannot split" in str(exc)
            continue
        parts = [split[k] for k in ("train", "val", "test")]
        assert sum(len(p) for p in parts) == len(ids) and set().union(*map(set, parts)) == set(ids)
        assert len(parts[0]) >= 1


def test_a_split_without_train_episodes_is_refused():
    with pytest.raises(ValueError, match="train"):
        split_episodes(["a", "b", "c"], ratios=(0, 0.5, 0.5))
    with pytest.raises(ValueError, match="ratios"):
        split_episodes(["a", "b", "c"], ratios=(float("nan"), 0.5, 0.5))


def test_one_episode_id_in_two_folders_is_loaded_once_and_the_other_named(tmp_path, caplog):
    for folder in ("day1", "day2"):
        write_synthetic_episode(tmp_path / folder, Scenario(1, "vert", "left"), seed=1, image_size=(16, 16))
    dataset = EpisodeDataset(tmp_path)
    assert len(dataset.episodes) == 1 and len(dataset.skipped) == 1
    assert "duplicate episode id" in dataset.skipped[0][1]
    assert "day1" in dataset.skipped[0][1] + dataset.skipped[0][0]
    # Episode identity is one definition: the split and the evaluation see the same single id.
    assert len({e.episode_id for e in dataset.episodes}) == len(dataset.episodes)
    with pytest.raises(ValueError, match="unique"):
        EpisodeDataset(dataset.episodes * 2)


def test_an_unknown_provenance_is_an_error_not_real(tmp_path):
    path = tmp_path / "x_1box_vert_left.h5"
    write_episode(path, np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 3)), attrs={"provenance": "simulated"})
    from mobile_vla.data import validate_episode

    report = validate_episode(path)
    assert not report.ok and any("attrs/provenance" in e and "simulated" in e for e in report.errors)
    dataset = EpisodeDataset(tmp_path)
    assert dataset.episodes == [] and "provenance" in dataset.skipped[0][1]
