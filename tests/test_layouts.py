"""Every episode layout the lab has written (v3, v3 basket, v5 raw, v5 JPEG bytes, v6, inference sessions):
detected from the keys, read natively, validated, and every broken variant named."""

import io
import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from layout_files import jpeg_bytes, write_session, write_v3, write_v5, write_v6
from PIL import Image

from mobile_vla.data import EpisodeDataset, load_episodes, read_episode, validate_episode
from mobile_vla.data.action_space import KEY_CLASSES, action_classes_for
from mobile_vla.data.scenarios import NamedScenario, ScenarioRule, register_scenario_rule


def test_v3_file_is_detected_and_read(tmp_path):
    ep = read_episode(write_v3(tmp_path, "right"))
    assert ep.layout == "v3" and ep.image_encoding == "raw"
    assert ep.scenario.name == "1box_vert_right" and ep.instruction.endswith("bottle on the right")
    assert ep.image(3).shape == (24, 32, 3) and ep.actions.dtype == np.float32
    report = validate_episode(ep.path)
    assert report.ok and report.layout == "v3" and report.warnings == [], report


def test_basket_prefix_changes_the_task_and_the_instruction(tmp_path):
    ep = read_episode(write_v3(tmp_path, "left", basket=True))
    assert ep.scenario.name == "basket_1box_vert_left"
    assert ep.instruction == "Navigate to the brown pot on the left"
    other = read_episode(
        write_v3(tmp_path, "right", name="episode_20250815_122923_basket_2box_hori_right.h5")
    )
    assert other.instruction == "Navigate to the brown pot on the right"


def test_v5_raw_frames_with_float64_actions_and_one_element_bytes_instruction(tmp_path):
    path = write_v5(tmp_path, "right")
    with h5py.File(path) as f:
        assert f["actions"].dtype == np.float64 and f["language_instruction"].shape == (1,)
    ep = read_episode(path)
    assert ep.layout == "v5" and ep.image_encoding == "raw"
    assert ep.actions.dtype == np.float32 and ep.actions.shape == (18, 3)
    assert ep.instruction == "Go to the target on the right, following the straight path"
    assert ep.instruction_source == "file"
    assert isinstance(ep.scenario, NamedScenario) and ep.scenario.known
    assert (ep.scenario.name, ep.scenario.side, ep.scenario.distance) == (
        "target_right_straight_path",
        "right",
        "medium",
    )
    assert ep.action_classes[-3:].tolist() == [0, 0, 0]  # trailing STOP frames
    report = validate_episode(path)
    assert report.ok and report.layout == "v5", report.errors


@pytest.mark.parametrize("kind", ["vlen", "void", "bytes"])
def test_v5_jpeg_bytes_are_decoded_lazily_per_frame(tmp_path, kind):
    path = write_v5(tmp_path, "left", jpeg=True, jpeg_kind=kind)
    ep = read_episode(path)
    assert ep.layout == "v5" and ep.image_encoding == "jpeg"
    (tmp_path / "raw").mkdir()
    raw = read_episode(write_v5(tmp_path / "raw", "left"))
    frame = ep.image(5)
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8
    # Exactly what decoding the collector's JPEG of the raw frame gives.
    expected = np.asarray(Image.open(io.BytesIO(jpeg_bytes(raw.image(5)))).convert("RGB"))
    assert np.array_equal(frame, expected)
    assert ep.image_size == (24, 32)
    assert validate_episode(path, deep=True).ok


def test_v6_reads_its_own_action_classes_by_name(tmp_path):
    path = write_v6(tmp_path, "left")
    ep = read_episode(path)
    assert ep.layout == "v6" and ep.stored_action_classes is not None
    assert ep.action_classes.tolist() == action_classes_for(ep.actions).tolist()
    assert ep.scenario.name == "target_left_straight_path" and ep.scenario.side == "left"
    assert ep.class_attrs["control_mode"] == "keyboard"
    report = validate_episode(path)
    assert report.ok and report.layout == "v6" and report.warnings == [], report


def test_v6_class_indices_follow_the_files_class_list(tmp_path):
    path = write_v6(tmp_path, "left")
    order = ["FORWARD", "STOP"] + [c for c in KEY_CLASSES if c not in ("FORWARD", "STOP")]
    with h5py.File(path, "a") as f:
        ours = f["action_classes"][()]
        theirs = np.array([order.index(KEY_CLASSES[c]) for c in ours], np.int64)
        del f["action_classes"]
        ds = f.create_dataset("action_classes", data=theirs)
        ds.attrs["action_space"] = ",".join(order)
    assert read_episode(path).action_classes.tolist() == ours.tolist()


def test_session_logs_are_evaluation_data_not_training_episodes(tmp_path):
    path = write_session(tmp_path)
    ep = read_episode(path)
    assert ep.layout == "session" and ep.is_session
    assert ep.instruction == "Navigate to the bottle on the left" and ep.instruction_source == "attrs"
    report = validate_episode(path)
    assert report.ok and report.layout == "session"
    write_v3(tmp_path)
    episodes, skipped = load_episodes(tmp_path)
    assert [e.layout for e in episodes] == ["v3"]
    assert skipped == [(str(path), "inference-session log (evaluation data), not a demonstration")]
    assert [e.layout for e in load_episodes(tmp_path, include_sessions=True)[0]] == ["v3", "session"]


def test_unknown_scenario_is_a_warning_and_the_instruction_comes_from_the_file(tmp_path):
    path = write_v5(tmp_path, "left", scenario="zigzag_hall")
    ep = read_episode(path)
    assert ep.scenario.name == "zigzag_hall" and not ep.scenario.known
    assert ep.instruction.startswith("Go to the target on the left")
    report = validate_episode(path)
    assert report.ok and any("unknown scenario 'zigzag_hall'" in w for w in report.warnings)
    # Without a stored instruction, the attributes are read; without those, the generic sentence (warned).
    (tmp_path / "b").mkdir()
    bare = write_v5(tmp_path / "b", scenario="zigzag_hall", instruction=False)
    with h5py.File(bare, "a") as f:
        f.attrs["instruction"] = "Follow the hallway"
    assert read_episode(bare).instruction == "Follow the hallway"


def test_scenario_table_is_pluggable(tmp_path):
    import re

    path = write_v5(tmp_path, "left", scenario="corridor_left_turn")
    assert not read_episode(path).scenario.known
    rule = ScenarioRule(
        "corridor",
        re.compile(r"^corridor_(?P<side>left|right)_turn$"),
        lambda m: NamedScenario(
            name=m[0], side=m["side"], default_instruction=f"Turn {m['side']} in the corridor"
        ),
    )
    register_scenario_rule(rule)
    try:
        scenario = read_episode(path).scenario
        assert scenario.known and scenario.side == "left"
    finally:
        from mobile_vla.data.scenarios import SCENARIO_RULES

        SCENARIO_RULES[:] = [r for r in SCENARIO_RULES if r.name != "corridor"]


def _mutated(src, dst, mutate):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        mutate(f)
    return dst


def _replace(key, value, dtype=None):
    def mutate(f):
        del f[key]
        f.create_dataset(key, data=value, dtype=dtype)

    return mutate


def broken_files(root):
    """Broken variants of every layout, with the text their report must contain."""
    good = root / "good"
    good.mkdir()
    v3, v5, v5j, v6 = (
        write_v3(good),
        write_v5(good),
        write_v5(good, "right", jpeg=True, stamp="250901_111111"),
        write_v6(good),
    )
    session = write_session(good)
    bad = root / "bad"
    bad.mkdir()
    cases = {}

    def case(src, name, mutate, reason):
        cases[_mutated(src, bad / f"{name}.h5", mutate).name] = reason

    case(
        v3,
        "v3_noevents",
        lambda f: f.__delitem__("action_event_types"),
        "action_event_types: missing dataset",
    )
    case(v3, "v3_noimages", lambda f: f.__delitem__("images"), "images: missing dataset")
    case(v5, "v5_noactions", lambda f: f.__delitem__("actions"), "actions: missing dataset")
    case(v5, "v5_short_actions", _replace("actions", np.zeros((17, 3))), "frame counts differ")
    case(v5, "v5_int_actions", _replace("actions", np.zeros((18, 3), np.int32)), "actions: dtype")
    case(v5, "v5_nan", _replace("actions", np.full((18, 3), np.nan)), "non-finite")
    case(v5, "v5_gray", lambda f: _replace("observations/images", np.zeros((18, 24, 32), np.uint8))(f),
         "observations/images: shape")  # fmt: skip

    def corrupt_jpeg(f):
        ds = f["observations/images"]
        ds[0] = np.frombuffer(b"\xff\xd8garbage-not-a-jpeg", np.uint8)

    case(v5j, "v5_jpeg_corrupt", corrupt_jpeg, "observations/images: frame 0 is not a decodable")
    case(
        v6,
        "v6_class_range",
        _replace("action_classes", np.full(18, 42, np.int64)),
        "action_classes: class index 42",
    )
    case(v6, "v6_class_count", _replace("action_classes", np.zeros(5, np.int64)), "frame counts differ")
    case(v6, "v6_class_float", _replace("action_classes", np.zeros(18, np.float32)), "action_classes: dtype")
    case(session, "session_noactions", lambda f: f.__delitem__("actions"), "actions: missing dataset")
    case(
        v3,
        "nolayout",
        lambda f: (f.__delitem__("images"), f.create_dataset("frames", data=[1])),
        "images: missing",
    )
    return good, bad, cases


def test_every_broken_variant_of_every_layout_is_named_and_nothing_crashes(tmp_path):
    good, bad, cases = broken_files(tmp_path)
    for path in sorted(good.glob("*.h5")):
        assert validate_episode(path).ok, (path.name, validate_episode(path).errors)
    for name, reason in cases.items():
        report = validate_episode(bad / name)
        assert not report.ok, name
        assert any(reason in e for e in report.errors), (name, report.errors)
    # Training never crashes on them either: each is skipped with its reason.
    episodes, skipped = load_episodes(bad)
    assert episodes == [] and {p.rsplit("/", 1)[-1] for p, _ in skipped} == set(cases)


def test_validate_cli_says_the_layout_of_each_file(tmp_path):
    good, _, _ = broken_files(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", "data", "validate", str(good), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    layouts = sorted(r["layout"] for r in json.loads(result.stdout))
    assert layouts == ["session", "v3", "v5", "v5", "v6"]
    text = subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", "data", "validate", str(good)],
        capture_output=True,
        text=True,
    ).stdout
    assert "layouts: session=1, v3=1, v5=2, v6=1" in text


def test_a_dataset_mixes_layouts(tmp_path):
    write_v3(tmp_path, "left")
    write_v3(tmp_path, "right", basket=True, stamp="20250815_130000")
    write_v5(tmp_path, "left", jpeg=True)
    write_v6(tmp_path, "right")
    ds = EpisodeDataset(tmp_path, frame_selection="all")
    assert sorted(e.layout for e in ds.episodes) == ["v3", "v3", "v5", "v6"]
    item = ds[len(ds) - 1]
    assert item["image"].size == (32, 24) and item["action"].shape == (2,)


def test_velocities_map_to_the_lab_key_classes():
    def names(rows):
        return [KEY_CLASSES[c] for c in action_classes_for(np.array(rows, dtype=np.float64))]

    assert names([[1.15, 0, 0], [0, 1.15, 0], [0, -1.15, 0], [-1.15, 0, 0]]) == [
        "FORWARD",
        "LEFT",
        "RIGHT",
        "BACK",
    ]
    assert names([[1.15, 1.15], [1.15, -1.15], [-1.15, 1.15], [-1.15, -1.15]]) == [
        "FORWARD_LEFT",
        "FORWARD_RIGHT",
        "BACK_LEFT",
        "BACK_RIGHT",
    ]
    assert names([[0, 0, 0], [0, 0, 1.15], [0, 0, -0.8], [0.2, -0.2, 0]]) == [
        "STOP",
        "ROTATE_LEFT",
        "ROTATE_RIGHT",
        "STOP",  # below the threshold
    ]
    assert names([[1.15, 0, 0.9]]) == ["FORWARD"]  # rotation rides along with a linear key
