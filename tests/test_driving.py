"""Every case drives the robot (issue 12): the key-class action space, lockstep closed-loop evaluation and
Case 4's state loss without a trivial zero."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobile_vla.data.action_space import KEY_CLASSES, KeySpace
from mobile_vla.policies import load_policy
from mobile_vla.policies.base import FeatureDims
from mobile_vla.policies.registry import create_policy
from mobile_vla.sim.env import SimConfig
from mobile_vla.sim.evaluate import evaluate_closed_loop
from mobile_vla.training.config import resolve_train_config
from mobile_vla.training.trainer import Trainer

DIMS = FeatureDims(vision=12, text=10, token_dim=6, num_image_tokens=4)
SMALL = {
    "case1": {"hidden_dim": 16, "dropout": 0.0},
    "case3": {"hidden_dim": 16, "dropout": 0.0},
    "case4": {"hidden_dim": 16, "state_dim": 8, "dropout": 0.0, "num_heads": 2, "num_latents": 4, "resampler_heads": 2,
              "history_length": 3, "max_sequence_length": 3, "prediction_horizon": 2},
}  # fmt: skip


def features_for(b: int) -> dict[str, torch.Tensor]:
    """Random features of DIMS' sizes for every case in SMALL (Case 4: 3-frame windows, 2 future frames)."""
    return {
        "vision": torch.randn(b, 12),
        "text": torch.randn(b, 10),
        "history_tokens": torch.randn(b, 3, 4, 6),
        "history_mask": torch.ones(b, 3),
        "future_vision": torch.randn(b, 2, 12),
    }


def test_key_space_holds_the_classes_that_move_only_along_the_predicted_axes():
    planar = KeySpace(("linear_x", "linear_y"))
    assert planar.names == KEY_CLASSES[:9]  # STOP and the eight translations; no rotation without angular_z
    assert KeySpace(("linear_x", "linear_y", "angular_z")).num_classes == len(KEY_CLASSES)
    assert KeySpace(("linear_x",)).names == ("STOP", "FORWARD", "BACK")
    commands = np.array([[1.15, 0.0], [0.0, -1.15], [0.05, 0.0], [1.15, 1.15], [-1.15, -1.15]])
    classes = planar.classify(commands)
    assert [planar.names[c] for c in classes] == ["FORWARD", "RIGHT", "STOP", "FORWARD_LEFT", "BACK_RIGHT"]
    np.testing.assert_allclose(planar.velocities[classes], [[1.15, 0], [0, -1.15], [0, 0], [1.15, 1.15], [-1.15, -1.15]])  # fmt: skip
    with pytest.raises(ValueError, match="actions must be"):
        planar.classify(np.zeros((2, 3)))


@pytest.mark.parametrize("case", ["case1", "case4"])
def test_a_keys_head_outputs_logits_commands_a_key_and_learns_by_cross_entropy(case):
    torch.manual_seed(0)
    policy = create_policy(case, DIMS, action_space="keys", **SMALL[case])
    keys = policy.key_space
    b = 6
    features = features_for(b)
    outputs = policy(features)
    assert outputs["action_logits"].shape == (b, keys.num_classes) and outputs["action"].shape == (b, 2)
    # The command is the arg-max class's velocity: every row is one of the key commands.
    expected = torch.from_numpy(keys.velocities)[outputs["action_logits"].argmax(-1)]
    torch.testing.assert_close(outputs["action"], expected)
    target = torch.tensor([[1.15, 0.0], [0.0, 1.15], [0.0, -1.15], [0.0, 0.0], [1.15, 1.15], [1.15, -1.15]])
    batch = {"action": target}
    if case == "case4":
        assert outputs["action_chunk_logits"].shape == (b, 3, keys.num_classes)
        batch.update(action_chunk=target[:, None].expand(b, 3, 2), action_chunk_mask=torch.ones(b, 3))
    loss, logs = policy.compute_loss(outputs, batch)
    classes = torch.from_numpy(keys.classify(target.numpy()))
    first_step_ce = torch.nn.functional.cross_entropy(outputs["action_logits"], classes)
    torch.testing.assert_close(torch.tensor(logs["action_loss"]), first_step_ce.detach())
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    policy.train()
    for _ in range(150):
        optimizer.zero_grad()
        loss, _ = policy.compute_loss(policy(features), batch)
        loss.backward()
        optimizer.step()
    policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(policy(features)["action"], target)  # it fits the six commands exactly


def test_a_keys_run_trains_reloads_and_commands_keys(sim_runs, tmp_path):
    episodes = sim_runs[0]["case1"].parent / "episodes"
    config = resolve_train_config(
        "case1",
        overrides={"backbone": "kosmos2-tiny", "epochs": 2, "batch_size": 8, "lr": 1e-3,
                   "frame_selection": "all", "policy": {"hidden_dim": 16, "action_space": "keys"}},
    )  # fmt: skip
    Trainer(config, episodes, tmp_path / "run", progress=False).fit()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["policy"]["action_space"] == "keys"
    policy = load_policy(tmp_path / "run", device="cpu")
    action = policy.act(np.zeros((48, 64, 3), np.uint8), "Navigate to the bottle on the left")
    keys = KeySpace(("linear_x", "linear_y"))
    assert any(np.allclose(action, v) for v in keys.velocities)


def test_case4s_state_loss_has_no_trivial_zero():
    torch.manual_seed(0)
    policy = create_policy("case4", DIMS, **SMALL["case4"])
    with torch.no_grad():  # collapse the state encoder: every frame gets the same encoding
        linear = policy.state_encoder[0]
        linear.weight.zero_()
        linear.bias.copy_(torch.randn_like(linear.bias))
    b = 4
    features = features_for(b)
    outputs = policy(features)
    batch = {"action": torch.zeros(b, 2), "action_chunk": torch.zeros(b, 3, 2), "action_chunk_mask": torch.ones(b, 3)}  # fmt: skip
    _, logs = policy.compute_loss(outputs, batch)
    # Predicted and target states can agree perfectly, but the collapsed encoder pays the variance term.
    assert logs["state_std"] < 1e-6
    assert logs["state_variance_loss"] == pytest.approx(policy.config.state_variance_target)


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory):
    from mobile_vla.sim.collect import collect_episodes

    root = tmp_path_factory.mktemp("lockstep")
    config = SimConfig(image_size=(48, 48))
    collect_episodes(root / "episodes", 8, seed=5, config=config, progress=False)
    runs = {}
    for case in ("case1", "case4"):
        train = resolve_train_config(
            case,
            overrides={"backbone": "kosmos2-tiny", "epochs": 1, "batch_size": 8, "frame_selection": "all",
                       "policy": SMALL[case]},
        )  # fmt: skip
        Trainer(train, root / "episodes", root / case, progress=False).fit()
        runs[case] = root / case
    return runs, config


@pytest.mark.parametrize("case", ["case1", "case4"])
def test_lockstep_episodes_drive_exactly_as_one_at_a_time(sim_runs, case):
    runs, config = sim_runs
    policy = load_policy(runs[case], device="cpu")
    alone = evaluate_closed_loop(policy, episodes=5, seed=3, config=config, progress=False, lockstep=1)
    side_by_side = evaluate_closed_loop(policy, episodes=5, seed=3, config=config, progress=False, lockstep=3)
    for a, b in zip(alone["records"], side_by_side["records"], strict=True):
        assert (a["scenario"], a["seed"], a["success"], a["steps_taken"]) == (
            b["scenario"], b["seed"], b["success"], b["steps_taken"]
        )  # fmt: skip
        np.testing.assert_allclose(a["actions"], b["actions"], atol=1e-4)
    assert alone["success_rate"] == side_by_side["success_rate"]
