"""LeRobot v3.0 datasets: the layout export-lerobot writes, reading one as --data, and the HDF5 round trip.

The layout is checked here against LeRobot's published v3.0 schema; tests/test_lerobot_real.py (slow) checks it
with the real `lerobot` package, which also writes a dataset for this reader.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fake_backbone import FakeBackbone

from mobile_vla.cli import main
from mobile_vla.data.dataset import EpisodeDataset, load_episodes
from mobile_vla.data.lerobot import LeRobotFormatError, content_fingerprint, read_lerobot_episodes
from mobile_vla.data.synthetic import write_synthetic_dataset
from mobile_vla.evaluation.evaluate import evaluate_run
from mobile_vla.training.config import resolve_train_config
from mobile_vla.training.trainer import Trainer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    write_synthetic_dataset(root / "h5", episodes=8, seed=0, image_size=(24, 32))
    assert main(["data", "export-lerobot", str(root / "h5"), "--out", str(root / "lr"), "--no-progress"]) == 0
    return root


def test_export_writes_the_v3_layout_with_the_mobile_base_action_names(exported):
    lr = exported / "lr"
    hdf5, _ = load_episodes(exported / "h5")
    info = json.loads((lr / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and isinstance(info["fps"], int)
    assert (
        info["total_episodes"] == 8 and info["total_frames"] == 8 * 18 and info["splits"] == {"train": "0:8"}
    )
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    features = info["features"]
    assert features["action"] == {"dtype": "float32", "shape": [3], "names": ["x.vel", "y.vel", "theta.vel"]}
    assert features["observation.images.front"]["dtype"] == "image"
    assert features["observation.images.front"]["shape"] == [24, 32, 3]
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert features[name]["shape"] == [1], name
    # tasks = the instructions, indexed by task string as LeRobot's meta/tasks.parquet
    tasks = pd.read_parquet(lr / "meta" / "tasks.parquet")
    assert tasks.index.name == "task"
    assert set(tasks.index) == {e.instruction for e in hdf5} and info["total_tasks"] == len(tasks)
    data = pq.read_table(lr / "data" / "chunk-000" / "file-000.parquet")
    assert data.num_rows == 8 * 18 and data.column("index").to_pylist() == list(range(8 * 18))
    assert set(data.column_names) == set(features)
    episodes = pq.read_table(lr / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == list(range(8))
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [
        (18 * i, 18 * (i + 1)) for i in range(8)
    ]
    assert all(e["tasks"][0] in set(tasks.index) and e["data/file_index"] == 0 for e in episodes)
    assert {"stats/action/mean", "stats/observation.images.front/std"} <= set(episodes[0])
    # meta/stats.json: the dataset's statistics, equal to numpy's over every frame
    stats = json.loads((lr / "meta" / "stats.json").read_text())
    actions = np.concatenate([e.actions for e in hdf5])
    for key, expected in {
        "min": actions.min(0),
        "max": actions.max(0),
        "mean": actions.mean(0),
        "std": actions.std(0),
    }.items():
        np.testing.assert_allclose(stats["action"][key], expected, atol=1e-6, err_msg=key)
    assert stats["action"]["count"] == [8 * 18]
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)


def test_round_trip_gives_the_same_episodes_fingerprint_and_training(exported, tmp_path):
    hdf5, _ = load_episodes(exported / "h5")
    back = read_lerobot_episodes(exported / "lr")
    assert [e.episode_id for e in sorted(back, key=lambda e: e.episode_id)] == sorted(
        e.episode_id for e in hdf5
    )
    by_id = {e.episode_id: e for e in back}
    for episode in hdf5:
        copy = by_id[episode.episode_id]
        assert copy.instruction == episode.instruction and copy.event_types == episode.event_types
        assert copy.provenance == episode.provenance == "synthetic"
        assert copy.scenario == episode.scenario
        np.testing.assert_array_equal(copy.actions, episode.actions)
        for i in (0, 9, 17):
            np.testing.assert_array_equal(copy.image(i), episode.image(i))
    fingerprint = content_fingerprint(hdf5)
    info = json.loads((exported / "lr" / "meta" / "info.json").read_text())
    assert content_fingerprint(back) == fingerprint == info["mobile_vla"]["content_fingerprint"]

    config = resolve_train_config(
        "case1",
        overrides={"epochs": 2, "batch_size": 4, "lr": 1e-3, "frame_selection": "random", "device": "cpu"},
    )
    runs = {}
    for name, data in (("h5", exported / "h5"), ("lr", exported / "lr")):
        Trainer(config, data, tmp_path / name, backbone=FakeBackbone(), progress=False).fit()
        runs[name] = json.loads((tmp_path / name / "config.json").read_text())
    assert runs["lr"]["data"]["fingerprint"] == fingerprint  # the LeRobot copy is fingerprinted by content
    assert runs["lr"]["data"]["split"] == runs["h5"]["data"]["split"]
    assert runs["lr"]["data"]["provenance"] == "synthetic"
    curves = {
        name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in runs
    }
    for a, b in zip(curves["h5"], curves["lr"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    # evaluation takes the LeRobot directory as --data too: the same frames, the same metrics
    on_h5 = evaluate_run(
        tmp_path / "h5", split="test", device="cpu", backbone=FakeBackbone(), n_boot=20, save=False
    )
    on_lr = evaluate_run(
        tmp_path / "h5",
        data=exported / "lr",
        split="test",
        device="cpu",
        backbone=FakeBackbone(),
        n_boot=20,
        save=False,
    )
    assert on_lr["n"] == on_h5["n"] > 0
    assert on_lr["metrics"]["mae"] == pytest.approx(on_h5["metrics"]["mae"], rel=1e-6)


def test_a_lerobot_directory_without_info_json_is_named(exported, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(exported / "lr", broken)
    (broken / "meta" / "info.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta/info.json"):
        EpisodeDataset(broken)
    argv = ["train", "--case", "case1", "--data", str(broken), "--out", str(tmp_path / "run"), "--no-track"]
    assert main([*argv, "--epochs", "1", "--device", "cpu", "--no-progress"]) == 2
    assert "meta/info.json is missing" in capsys.readouterr().err


def _edit_info(src, dst, edit):
    shutil.copytree(src, dst)
    path = dst / "meta" / "info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))
    return dst


def test_unsupported_lerobot_datasets_are_refused_with_the_reason(exported, tmp_path):
    def video(info):
        info["features"]["observation.images.front"]["dtype"] = "video"

    def arm(info):
        info["features"]["action"]["names"] = ["shoulder_pan.pos", "gripper.pos", "x.vel"]

    def v21(info):
        info["codebase_version"] = "v2.1"

    for name, edit, message in (
        ("video", video, "video"),
        ("arm", arm, "shoulder_pan.pos"),
        ("v21", v21, "v2.1"),
    ):
        directory = _edit_info(exported / "lr", tmp_path / name, edit)
        with pytest.raises(LeRobotFormatError, match=message):
            read_lerobot_episodes(directory)


def test_export_lerobot_refuses_a_non_empty_out_and_has_help(exported, capsys):
    assert main(["data", "export-lerobot", str(exported / "h5"), "--out", str(exported / "lr")]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["data", "export-lerobot", "--help"])
    assert exc.value.code == 0 and "--fps" in capsys.readouterr().out
