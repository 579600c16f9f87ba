"""Episode files as the robot's collector writes them: reading, writing, validating."""

import json
import subprocess
import sys
import tracemalloc

import h5py
import numpy as np
import pytest

from mobile_vla.data import EpisodeDataset, parse_scenario, read_episode, validate_episode, write_episode
from mobile_vla.data.episodes import GENERIC_INSTRUCTION, instruction_for_side

ROBOT_EVENTS = (
    ["episode_start"] + ["start_action", "stop_action"] * 7 + ["start_action", "stop_inject", "stop_action"]
)


def robot_episode(path, frames=18, height=720, width=1280, instruction=True, extra_attrs=True):
    """An episode exactly as the lab's collector writes it (uncompressed, extra attributes, 4 event types)."""
    rng = np.random.default_rng(0)
    images = np.zeros((frames, height, width, 3), np.uint8)
    images[:, ::7, ::5] = rng.integers(
        0, 255, size=(frames, len(range(0, height, 7)), len(range(0, width, 5)), 3)
    )
    actions = np.zeros((frames, 3), np.float32)
    actions[1:, 0] = 1.15
    actions[5:9, 1] = -1.15
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("actions", data=actions)
        f.create_dataset("action_event_types", data=np.array(ROBOT_EVENTS[:frames], dtype="S"))
        if instruction:
            f.create_dataset("language_instruction", data="Reach the bottle on the right, around the box")
        f.attrs.update(
            {
                "episode_name": path.stem,
                "num_frames": frames,
                "total_duration": 7.2,
                "action_chunk_size": 8,
                "obstacle_layout_type": "vert",
                "time_period": "evening",
                "collection_datetime": "2025-08-15T12:29:23",
            }
        )
        if extra_attrs:
            f.attrs["operator_note"] = "battery low"
    return path


def test_parse_scenario_from_lab_file_names():
    s = parse_scenario("episode_20250815_122923_2box_vert_left_core_medium.h5")
    assert (s.num_boxes, s.layout, s.side, s.pattern, s.distance) == (2, "vert", "left", "core", "medium")
    assert s.name == "2box_vert_left" and s.full_name == "2box_vert_left_core_medium"
    short = parse_scenario("episode_20250815_122923_1box_hori_right.h5")
    assert (short.pattern, short.distance) == (None, None)
    assert parse_scenario("episode_20250815_122923_3box_diag.h5") is None


def test_robot_episode_reads_lazily_with_all_metadata(tmp_path):
    path = robot_episode(tmp_path / "episode_20250815_122923_1box_vert_right_core_far.h5")
    ep = read_episode(path)
    assert ep.num_frames == 18 and ep.image_size == (720, 1280)
    assert ep.actions.shape == (18, 3) and ep.actions.dtype == np.float32
    assert set(ep.event_types) == {"episode_start", "start_action", "stop_action", "stop_inject"}
    assert ep.instruction == "Reach the bottle on the right, around the box"
    assert ep.attrs["operator_note"] == "battery low"  # unknown attributes are kept
    assert ep.attrs["time_period"] == "evening"
    assert ep.provenance == "real"
    assert ep.image(3).shape == (720, 1280, 3)


def test_instruction_is_derived_from_the_scenario_when_not_stored(tmp_path):
    path = robot_episode(
        tmp_path / "episode_20250815_122923_2box_hori_left_variant_close.h5", instruction=False
    )
    assert read_episode(path).instruction == instruction_for_side("left")
    unnamed = robot_episode(
        tmp_path / "episode_20250815_122923.h5", frames=3, height=8, width=8, instruction=False
    )
    assert read_episode(unnamed).instruction == GENERIC_INSTRUCTION


def test_write_then_read_round_trips(tmp_path):
    images = np.random.default_rng(1).integers(0, 255, (5, 24, 32, 3), dtype=np.uint8)
    actions = np.random.default_rng(2).normal(size=(5, 2)).astype(np.float32)
    path = write_episode(
        tmp_path / "episode_20250101_000000_1box_vert_left.h5",
        images,
        actions,
        instruction="go left",
        attrs={"provenance": "sim", "seed": 7},
    )
    ep = read_episode(path)
    np.testing.assert_array_equal(ep.image(4), images[4])
    np.testing.assert_array_equal(ep.actions[:, :2], actions)
    assert np.all(ep.actions[:, 2] == 0)
    assert ep.instruction == "go left" and ep.provenance == "sim" and ep.attrs["seed"] == 7
    assert ep.event_types[0] == "episode_start"
    assert not list(tmp_path.glob(".*.tmp"))


def test_robot_episodes_validate(tmp_path):
    for name, instruction in [("1box_vert_left_core_medium", True), ("2box_hori_right_variant_far", False)]:
        report = validate_episode(
            robot_episode(tmp_path / f"episode_20250815_122923_{name}.h5", instruction=instruction)
        )
        assert report.ok, report.errors
        assert report.num_frames == 18 and report.scenario == name and report.warnings == []


def _broken_files(root):
    """One file per kind of damage, with the reason the report must give."""
    root.mkdir(parents=True, exist_ok=True)
    ok = robot_episode(root / "source_1box_vert_left.h5", frames=4, height=16, width=16)
    cases = {}

    def variant(name, mutate, reason):
        path = root / f"{name}_1box_vert_left.h5"
        path.write_bytes(ok.read_bytes())
        with h5py.File(path, "a") as f:
            mutate(f)
        cases[path.name] = reason

    (root / "empty_1box_vert_left.h5").write_bytes(b"")
    cases["empty_1box_vert_left.h5"] = "empty"
    (root / "garbage_1box_vert_left.h5").write_bytes(b"this is not hdf5" * 100)
    cases["garbage_1box_vert_left.h5"] = "not a readable HDF5 file"
    data = ok.read_bytes()
    (root / "truncated_1box_vert_left.h5").write_bytes(data[: len(data) // 2])
    cases["truncated_1box_vert_left.h5"] = "HDF5"

    def replace(key, value):
        def mutate(f):
            del f[key]
            f.create_dataset(key, data=value)

        return mutate

    variant("noactions", lambda f: f.__delitem__("actions"), "actions: missing dataset")
    variant("noevents", lambda f: f.__delitem__("action_event_types"), "action_event_types: missing dataset")
    variant(
        "floatimages", replace("images", np.zeros((4, 16, 16, 3), np.float32)), "images: dtype must be uint8"
    )
    variant("grayimages", replace("images", np.zeros((4, 16, 16), np.uint8)), "images: shape")
    variant("badactions", replace("actions", np.zeros((4, 5), np.float32)), "actions: shape")
    variant("intactions", replace("actions", np.zeros((4, 3), np.int64)), "actions: dtype")
    variant("mismatch", replace("actions", np.zeros((3, 3), np.float32)), "frame counts differ")
    variant(
        "nan",
        replace("actions", np.array([[0, 0, 0], [np.nan, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32)),
        "NaN",
    )
    variant(
        "inf",
        replace("actions", np.array([[0, 0, 0], [np.inf, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32)),
        "non-finite",
    )
    variant(
        "badevent",
        replace("action_event_types", np.array([b"episode_start", b"jump", b"x", b"y"])),
        "unknown event",
    )
    ok.unlink()
    return cases


def test_every_broken_file_is_reported_by_name_with_its_reason(tmp_path):
    cases = _broken_files(tmp_path)
    for name, reason in cases.items():
        report = validate_episode(tmp_path / name)
        assert not report.ok, name
        assert any(reason in e for e in report.errors), (name, report.errors)


def test_validate_cli_json_lists_every_file_and_exits_1(tmp_path):
    cases = _broken_files(tmp_path / "bad" / "nested")
    robot_episode(tmp_path / "bad" / "episode_20250815_122923_1box_vert_left.h5", frames=3, height=8, width=8)
    result = subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", "data", "validate", str(tmp_path / "bad"), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    reports = {r["file"].rsplit("/", 1)[-1]: r for r in json.loads(result.stdout)}
    assert set(reports) == set(cases) | {"episode_20250815_122923_1box_vert_left.h5"}
    for name in cases:
        assert set(reports[name]) == {
            "file",
            "ok",
            "num_frames",
            "scenario",
            "instruction",
            "layout",
            "instruction_source",
            "errors",
            "warnings",
        }
        assert reports[name]["ok"] is False and reports[name]["errors"]
    assert reports["episode_20250815_122923_1box_vert_left.h5"]["ok"] is True


def test_validate_cli_exit_0_when_all_valid_and_unparseable_name_is_a_warning(tmp_path):
    robot_episode(tmp_path / "recording_without_scenario.h5", frames=3, height=8, width=8)
    result = subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", "data", "validate", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout
    (report,) = json.loads(result.stdout)
    assert report["ok"] and report["scenario"] is None and "scenario" in report["warnings"][0]


def test_frames_are_read_lazily(tmp_path):
    """Opening a dataset of 720x1280 episodes and reading a few items never holds an episode's frames."""
    for i in range(4):
        robot_episode(tmp_path / f"episode_2025081{i}_122923_1box_vert_left.h5")
    one_episode_bytes = 18 * 720 * 1280 * 3
    tracemalloc.start()
    dataset = EpisodeDataset(tmp_path, frame_selection="all")
    for i in (0, 20, 40, 71):
        dataset[i]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(dataset) == 72
    assert peak < one_episode_bytes / 4, f"peak {peak / 1e6:.1f} MB"


def test_dataset_rejects_unknown_frame_selection_and_action_dims(tmp_path):
    robot_episode(tmp_path / "episode_20250815_122923_1box_vert_left.h5", frames=3, height=8, width=8)
    with pytest.raises(ValueError, match="frame_selection"):
        EpisodeDataset(tmp_path, frame_selection="every")
    with pytest.raises(ValueError, match="action_dims"):
        EpisodeDataset(tmp_path, action_dims=("linear_z",))
