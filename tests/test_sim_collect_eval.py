"""Demonstrations in the robot's format, and closed-loop evaluation (API and CLI)."""

import json

import h5py
import numpy as np
import pytest

from mobile_vla.cli import main
from mobile_vla.data.episodes import instruction_for_side, parse_scenario, read_episode
from mobile_vla.data.validation import validate_episode
from mobile_vla.sim import RandomPolicy, SimConfig, collect_episodes, evaluate_closed_loop

SMALL = SimConfig(image_size=(32, 32))


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_episodes")
    report = collect_episodes(out, episodes=3, seed=5, config=SMALL, progress=False)
    return out, report


def test_collected_episodes_validate_in_the_robot_format(collected):
    out, report = collected
    assert len(report.paths) == 3 and not report.skipped
    for path in report.paths:
        validation = validate_episode(path, deep=True)
        assert validation.ok, validation.errors
        assert not validation.warnings
        assert path.name.startswith("episode_2025") and parse_scenario(path.name).pattern in (
            "core",
            "variant",
        )
        episode = read_episode(path)
        assert episode.num_frames == 18 and episode.image_size == (32, 32)
        assert episode.provenance == "sim" and episode.attrs["seed"] >= 0
        assert episode.has_stored_instruction
        assert episode.instruction == instruction_for_side(episode.scenario.side)
        assert episode.event_types[0] == "episode_start" and not episode.actions[0].any()
        assert set(episode.event_types[1:]) <= {"start_action", "stop_action"}
        moving = np.abs(episode.actions).sum(axis=1) > 0
        assert [e == "start_action" for e in episode.event_types[1:]] == moving[1:].tolist()
        for key in (
            "total_duration",
            "action_chunk_size",
            "obstacle_layout_type",
            "time_period",
            "collection_datetime",
        ):
            assert key in episode.attrs
        assert (
            episode.attrs["obstacle_layout_type"]
            == f"{episode.scenario.num_boxes}box_{episode.scenario.layout}"
        )


def test_collection_is_balanced_and_deterministic(collected, tmp_path):
    out, report = collected
    names = [parse_scenario(p.name).name for p in report.paths]
    assert len(set(names)) == 3  # three different tasks first
    again = collect_episodes(tmp_path, episodes=3, seed=5, config=SMALL, progress=False)
    assert [p.name for p in again.paths] == [p.name for p in report.paths]
    for a, b in zip(report.paths, again.paths, strict=True):
        with h5py.File(a) as fa, h5py.File(b) as fb:
            np.testing.assert_array_equal(fa["images"][()], fb["images"][()])
            np.testing.assert_array_equal(fa["actions"][()], fb["actions"][()])


def test_expert_far_above_random_in_closed_loop():
    expert = evaluate_closed_loop("expert", episodes=8, seed=11, config=SMALL, progress=False)
    random = evaluate_closed_loop(RandomPolicy(seed=11), episodes=8, seed=11, config=SMALL, progress=False)
    assert expert["n"] == random["n"] == 8
    assert expert["success_rate"] >= 7 / 8 and expert["collision_rate"] == 0.0
    assert random["success_rate"] <= 1 / 8
    assert expert["spl"] > 0.5 and random["spl"] < 0.2
    low, high = expert["success_rate_ci95"]
    assert 0.0 <= low <= expert["success_rate"] <= high <= 1.0
    assert sum(v["n"] for v in expert["per_scenario"].values()) == 8
    assert set(expert["per_distance"]) == {"close", "medium", "far"}
    assert all(r["steps_taken"] <= 18 for r in random["records"])


def test_policy_sees_the_camera_frame_and_the_instruction():
    seen = []

    class Recorder:
        action_dims = ("linear_x", "linear_y")

        def reset(self):
            seen.append("reset")

        def act(self, image, instruction):
            seen.append((image.shape, image.dtype, instruction))
            return np.zeros(2)

    result = evaluate_closed_loop(
        Recorder(),
        episodes=1,
        seed=0,
        scenarios=["2box_vert_right"],
        max_steps=4,
        config=SMALL,
        progress=False,
    )
    assert seen[0] == "reset" and len(seen) == 5
    assert seen[1] == ((32, 32, 3), np.uint8, instruction_for_side("right"))
    assert result["records"][0]["steps"] == 0 and not result["records"][0]["success"]


def test_cli_evaluate_json_and_video(tmp_path, capsys):
    code = main(
        [
            "sim", "evaluate", "--policy", "random", "--episodes", "2", "--seed", "1", "--max-steps", "3",
            "--image-size", "32", "--json", "--video", str(tmp_path / "videos"),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("success_rate", "collision_rate", "spl", "n", "success_rate_ci95", "per_scenario"):
        assert key in result
    assert result["n"] == 2
    gifs = sorted((tmp_path / "videos").glob("*.gif"))
    assert len(gifs) == 2
    import imageio.v2 as imageio

    assert len(imageio.mimread(gifs[0])) >= 4  # a frame per step + the final view


def test_cli_collect_then_validate(tmp_path, capsys):
    out = tmp_path / "demos"
    assert (
        main(
            [
                "sim",
                "collect",
                "--out",
                str(out),
                "--episodes",
                "2",
                "--image-size",
                "24x32",
                "--style",
                "continuous",
            ]
        )
        == 0
    )
    assert "wrote 2 episodes" in capsys.readouterr().out
    assert main(["data", "validate", str(out)]) == 0


def test_a_mix_collects_a_deliberately_imbalanced_dataset(tmp_path):
    from collections import Counter

    from mobile_vla.sim.collect import mixed_schedule, parse_mix
    from mobile_vla.sim.layouts import resolve_scenarios

    mix = parse_mix("left=3,right=1,core=4,variant=1")
    schedule = mixed_schedule(resolve_scenarios(None), 48, mix, seed=1)
    sides, patterns = Counter(s.side for s in schedule), Counter(s.pattern for s in schedule)
    assert sides["left"] == 3 * sides["right"]
    assert patterns["core"] >= 3 * patterns["variant"] > 0
    assert len({s.distance for s in schedule}) == 3  # factors outside the mix stay even
    assert schedule == mixed_schedule(resolve_scenarios(None), 48, mix, seed=1)  # deterministic
    assert mixed_schedule(resolve_scenarios(None), 8, {}) == resolve_scenarios(None)[:8]  # no mix: in order

    # through the CLI, into files whose names carry the drawn scenarios
    two = ["1box_vert_left_core_close", "1box_vert_right_core_close"]
    args = ["sim", "collect", "--out", str(tmp_path), "--episodes", "8", "--image-size", "32"]
    assert main([*args, "--scenarios", *two, "--mix", "right=3"]) == 0
    names = [parse_scenario(p.name) for p in tmp_path.glob("*.h5")]
    assert len(names) == 8 and sum(s.side == "right" for s in names) == 6


@pytest.mark.parametrize(
    "text, message",
    [("up=2", "unknown key 'up'"), ("left=x", "not a number"), ("left=0", "> 0"), ("left=inf", "> 0")],
)
def test_a_bad_mix_is_named(text, message):
    from mobile_vla.sim.collect import parse_mix

    with pytest.raises(ValueError, match=message):
        parse_mix(text)
