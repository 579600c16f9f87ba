"""The scripted expert reaches the bottle around the boxes, on the instructed side, with the lab's keys."""

import numpy as np
import pytest

from mobile_vla.sim import KEY_COMMAND, ExpertPolicy, LabEnv, SimConfig, key_for_action, resolve_scenarios
from mobile_vla.sim.layouts import all_scenarios

PRESSES = 17  # an episode's key presses after the episode_start frame


@pytest.fixture(scope="module")
def env():
    env = LabEnv(SimConfig(image_size=(16, 16)))
    yield env
    env.close()


def drive(env, expert, scenario, seed, steps=PRESSES):
    env.reset(scenario, seed, max_steps=steps)
    expert.reset()
    actions, ys = [], []
    for _ in range(steps):
        action = expert.act()
        actions.append(action)
        env.step(action)
        ys.append(env.pose[1])
    return np.array(actions), np.array(ys), env.outcome()


@pytest.mark.parametrize("style", ["teleop", "continuous"])
def test_expert_reaches_the_bottle_in_every_scenario(env, style):
    expert = ExpertPolicy(env, style=style)
    failures = []
    for i, scenario in enumerate(all_scenarios()[:16]):  # the 8 tasks, core and variant, all 3 distances
        _, _, outcome = drive(env, expert, scenario, seed=9000 + i)
        if not outcome["success"]:
            failures.append((scenario.full_name, outcome))
    assert not failures


def test_teleop_expert_presses_only_the_lab_keys(env):
    expert = ExpertPolicy(env, style="teleop")
    for scenario in resolve_scenarios(["2box_vert_right_core_far", "1box_hori_left_variant_medium"]):
        actions, _, outcome = drive(env, expert, scenario, seed=3)
        assert outcome["success"]
        assert set(np.round(np.abs(actions), 6).ravel()) <= {0.0, KEY_COMMAND}
        keys = {key_for_action(a) for a in actions}
        if scenario.pattern == "core":  # the guides' keys only
            assert keys <= {"W", "A", "S", "D", "stop"}
        assert "-" not in keys


def test_core_teleop_looks_like_the_guides(env):
    """1box/left guide: W W W A A W W D D - runs of one key, sideways out, forward past, back in."""
    expert = ExpertPolicy(env, style="teleop")
    actions, _, outcome = drive(env, expert, "1box_vert_left_core_medium", seed=0)
    keys = [key_for_action(a) for a in actions if key_for_action(a) != "stop"]
    runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    assert outcome["success"]
    assert runs == ["A", "W", "D"] or runs == ["W", "A", "W", "D"], keys


@pytest.mark.parametrize("side", ["left", "right"])
def test_expert_passes_the_boxes_on_the_instructed_side(env, side):
    expert = ExpertPolicy(env, style="teleop")
    for layout in ("vert", "hori"):
        _, ys, outcome = drive(env, expert, f"2box_{layout}_{side}_core_medium", seed=1)
        assert outcome["success"]
        widest = ys.max() if side == "left" else ys.min()
        assert (widest > 0.3) if side == "left" else (widest < -0.3)


def test_expert_stops_once_arrived(env):
    expert = ExpertPolicy(env, style="teleop")
    actions, _, outcome = drive(env, expert, "1box_vert_right_core_close", seed=2)
    moving = np.flatnonzero(np.abs(actions).sum(axis=1) > 0)
    assert outcome["success"]
    assert moving[-1] < PRESSES - 1 and not np.abs(actions[moving[-1] + 1 :]).any()


def test_unknown_style_is_refused(env):
    with pytest.raises(ValueError, match="sideways"):
        ExpertPolicy(env, style="sideways")
