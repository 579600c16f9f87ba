"""The simulated lab: scenarios, layouts, motion, collisions, rendering, determinism."""

import math

import numpy as np
import pytest

from mobile_vla.sim import LabEnv, SimConfig, resolve_scenarios, sample_layout
from mobile_vla.sim._gl import ensure_gl_backend
from mobile_vla.sim.layouts import DISTANCES, all_scenarios
from mobile_vla.sim.planner import RoutePlanner, shortest_path_length

W = [1.15, 0.0]
A = [0.0, 1.15]
TWO_D = ("linear_x", "linear_y")


@pytest.fixture(scope="module")
def env():
    env = LabEnv(SimConfig(image_size=(48, 64)))
    yield env
    env.close()


def test_all_48_scenarios_and_name_resolution():
    scenarios = all_scenarios()
    assert len(scenarios) == len(set(scenarios)) == 48
    first_block = {s.name for s in scenarios[:8]}
    assert len(first_block) == 8  # any 8 consecutive episodes cover the 8 tasks
    assert {s.pattern for s in scenarios[:8]} == {"core", "variant"}
    task = resolve_scenarios(["1box_vert_left"])
    assert len(task) == 6 and all(s.name == "1box_vert_left" for s in task)
    assert [s.full_name for s in resolve_scenarios("2box_hori_right_variant_far")] == [
        "2box_hori_right_variant_far"
    ]
    with pytest.raises(ValueError, match="3box_vert_left"):
        resolve_scenarios(["3box_vert_left"])


def test_layouts_follow_the_scenario_names():
    for scenario in all_scenarios():
        layout = sample_layout(scenario, seed=3)
        assert len(layout.boxes) == scenario.num_boxes
        xmin, xmax, ymin, ymax = layout.obstacle_bounds()
        assert (
            abs(xmin - DISTANCES[scenario.distance]) < 0.15
        )  # near face of the first box (jittered, turned)
        if scenario.num_boxes == 2:
            (a, b) = layout.boxes
            along, across = abs(a.x - b.x), abs(a.y - b.y)
            assert (along > across) == (scenario.layout == "vert")
        assert layout.bottle.x > xmax + 0.5 and abs(layout.bottle.y) < 0.1  # beyond the boxes
        assert layout.goal[0] < layout.bottle.x


def test_core_placements_vary_less_than_variants():
    def spread(pattern):
        xs = [sample_layout(f"1box_vert_left_{pattern}_medium", s).boxes[0].half_size[0] for s in range(30)]
        return np.std(xs)

    assert 0 < spread("core") < spread("variant") / 2


def test_same_seed_same_images_and_trajectory(env):
    def rollout(seed):
        frames = [env.reset("2box_hori_right_variant_far", seed)]
        for action in (W, W, [0.0, -1.15], [1.15, -1.15], W):
            env.step(action, TWO_D)
            frames.append(env.render())
        return np.stack(frames), np.stack(env.trajectory)

    frames1, poses1 = rollout(7)
    frames2, poses2 = rollout(7)
    np.testing.assert_array_equal(frames1, frames2)
    np.testing.assert_array_equal(poses1, poses2)
    frames3, _ = rollout(8)
    assert not np.array_equal(frames1[0], frames3[0])


def test_reset_moves_bodies_without_recompiling(env):
    env.reset("1box_vert_left_core_close", 0)
    model = env.scene.model
    box_close = env.scene.data.xpos[env.scene._box_bodies[0]].copy()
    env.reset("2box_vert_left_core_far", 0)
    assert env.scene.model is model
    box_far = env.scene.data.xpos[env.scene._box_bodies[0]].copy()
    assert box_far[0] > box_close[0] + 0.4
    assert env.scene.data.xpos[env.scene._box_bodies[1]][2] > 0  # the second box came up from under the floor


def test_a_key_press_moves_the_robot_0_2_m_in_the_body_frame():
    env = LabEnv(SimConfig(image_size=(16, 16), motion_noise=0.0))
    env.reset("2box_vert_left_core_far", 0)
    env.step(W, TWO_D)
    np.testing.assert_allclose(env.pose, [0.2, 0.0, 0.0], atol=1e-9)
    env.step(A, TWO_D)
    np.testing.assert_allclose(env.pose, [0.2, 0.2, 0.0], atol=1e-9)
    env.step([0.0, 0.0, 1.15])  # turn left 0.2 rad on the spot
    assert env.pose[2] == pytest.approx(0.2)
    env.step(W, TWO_D)  # forward is now along the new heading
    np.testing.assert_allclose(
        env.pose[:2], [0.2 + 0.2 * math.cos(0.2), 0.2 + 0.2 * math.sin(0.2)], atol=1e-9
    )
    assert env.path_length == pytest.approx(0.6)
    env.close()


def test_commands_are_clipped_to_a_key_press(env):
    env.reset("2box_vert_left_core_far", 0)
    env.config.motion_noise, noise = 0.0, env.config.motion_noise
    try:
        env.step([5.0, 0.0], TWO_D)
        assert env.pose[0] == pytest.approx(0.2)
    finally:
        env.config.motion_noise = noise


def test_driving_into_a_box_is_a_collision_and_stops_the_robot(env):
    env.reset("1box_vert_left_core_close", 0)
    box = env.layout.boxes[0]
    for _ in range(6):
        env.step(W, TWO_D)
    assert env.collided
    assert "box0" in env.contacts
    # stopped at its last free pose, short of the box's near face
    assert env.pose[0] + 0.15 <= box.footprint()[0] + 0.03
    outcome = env.outcome()
    assert outcome["collided"] and not outcome["success"] and outcome["spl"] == 0.0
    x = env.pose[0]
    env.step(W, TWO_D)
    assert env.pose[0] == x  # no moving on after a collision


def test_success_needs_the_goal_and_the_bottle_ahead():
    env = LabEnv(SimConfig(image_size=(16, 16), motion_noise=0.0))
    env.reset("1box_hori_left_core_medium", 0)
    assert not env.at_goal()
    gx, gy = env.layout.goal
    env.pose = np.array([gx, gy, 0.0])
    assert env.at_goal() and env.outcome()["success"]
    env.pose = np.array([gx, gy, math.radians(90)])  # at the spot but facing away
    assert not env.at_goal()
    env.pose = np.array([gx - 0.5, gy, 0.0])
    assert not env.at_goal()
    env.close()


def test_routes_go_around_on_the_scenario_side():
    for side in ("left", "right"):
        layout = sample_layout(f"2box_hori_{side}_core_medium", 0)
        route = RoutePlanner(layout).route((0.0, 0.0))
        _, _, ymin, ymax = layout.obstacle_bounds()
        beside = route[0]
        assert (beside[1] > ymax) if side == "left" else (beside[1] < ymin)
        straight = math.dist((0.0, 0.0), layout.goal)
        assert straight < shortest_path_length(layout) < 1.6 * straight


def test_frames_have_the_requested_size_and_the_same_view():
    env = LabEnv(SimConfig(image_size=(720, 1280)))
    big = env.reset("2box_vert_left_core_medium", 0)
    small = env.render((72, 128))
    square = env.render((64, 64))
    assert big.shape == (720, 1280, 3) and big.dtype == np.uint8
    assert square.shape == (64, 64, 3)
    # a 16:9 sensor: a smaller render shows the same picture (compare on a 10x downsampled big frame)
    shrunk = big.reshape(72, 10, 128, 10, 3).mean(axis=(1, 3))
    assert np.abs(shrunk - small.astype(float)).mean() < 12
    env.close()
    with pytest.raises(ValueError, match="image_size"):
        SimConfig(image_size=(720, 2000))


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="motion_noise"):
        SimConfig(motion_noise=-0.1)
    with pytest.raises(ValueError, match="control_period"):
        SimConfig(control_period=0)
    assert SimConfig().press_distance == pytest.approx(0.2)


def test_gl_backend_choice_honours_the_user(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    assert ensure_gl_backend() == "egl"
