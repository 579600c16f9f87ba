"""A trained run as a controller and as an evaluation target; checkpoints refuse the wrong backbone."""

import io
import json

import numpy as np
import pytest
import torch
from fake_backbone import FakeBackbone, write_tiny_dataset
from PIL import Image

from mobile_vla.data.dataset import EpisodeDataset
from mobile_vla.evaluation.evaluate import evaluate_run, format_result
from mobile_vla.evaluation.metrics import metric_keys
from mobile_vla.policies import ControlPolicy, load_policy
from mobile_vla.training.checkpoints import CheckpointMismatchError
from mobile_vla.training.config import resolve_train_config
from mobile_vla.training.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    write_tiny_dataset(root / "episodes", episodes=8)
    config = resolve_train_config(
        "case1",
        overrides={"epochs": 2, "lr": 1e-3, "batch_size": 4, "frame_selection": "random", "device": "cpu"},
    )
    Trainer(config, root / "episodes", root / "run", backbone=FakeBackbone(), progress=False).fit()
    return root


def test_a_run_loads_as_a_control_policy(trained):
    policy = load_policy(trained / "run", device="cpu", backbone=FakeBackbone())
    assert isinstance(policy, ControlPolicy)
    item = EpisodeDataset(trained / "episodes")[5]
    frame = np.asarray(item["image"])  # uint8 [H, W, 3], what the robot's camera node gives
    action = policy.act(frame, item["text"])
    assert action.shape == (2,) and action.dtype == np.float32 and np.isfinite(action).all()
    assert set(policy.timings) == {"decode_ms", "preprocess_ms", "backbone_ms", "head_ms", "total_ms"}
    np.testing.assert_allclose(policy.act(item["image"], item["text"]), action, rtol=1e-6)  # PIL input too
    png = io.BytesIO()
    item["image"].save(png, format="PNG")
    np.testing.assert_allclose(policy.act_encoded(png.getvalue(), item["text"]), action, rtol=1e-6)
    assert policy.timings["decode_ms"] > 0
    policy.reset()
    assert (
        policy.info()["case"] == "case1"
        and policy.info()["model_class"] == "Simplified2DActionModelV2"
        and policy.info()["action_dims"] == ["linear_x", "linear_y"]
    )


def test_the_instruction_is_encoded_once_per_distinct_string(trained):
    backbone = FakeBackbone()
    policy = load_policy(trained / "run", device="cpu", backbone=backbone)
    frame = np.zeros((24, 32, 3), np.uint8)
    for _ in range(5):
        policy.act(frame, "go left")
    policy.act(frame, "go right")
    assert backbone.calls["texts"] == 2 and backbone.calls["images"] == 6


def test_a_prediction_does_not_depend_on_the_rest_of_the_batch(trained):
    policy = load_policy(trained / "run", device="cpu", backbone=FakeBackbone())
    dataset = EpisodeDataset(trained / "episodes")
    items = [dataset[i] for i in (3, 30, 60, 90)]
    together = policy.act_batch([it["image"] for it in items], [it["text"] for it in items])
    alone = np.stack([policy.act(it["image"], it["text"]) for it in items])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_refuses_a_backbone_with_another_fingerprint(trained):
    other = FakeBackbone(seed=1)  # same sizes, different weights: features would be silently wrong
    with pytest.raises(CheckpointMismatchError) as exc:
        load_policy(trained / "run", device="cpu", backbone=other)
    message = str(exc.value)
    assert FakeBackbone().fingerprint_hash in message and other.fingerprint_hash in message


def test_a_checkpoint_refuses_other_action_dims(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    config = json.loads((run / "config.json").read_text())
    config["action_dims"] = ["linear_x", "angular_z"]
    config["policy"]["action_dims"] = ["linear_x", "angular_z"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointMismatchError, match=r"\['linear_x', 'linear_y'\].*\['linear_x', 'angular_z'\]"
    ):
        load_policy(run, device="cpu", backbone=FakeBackbone())


def test_evaluate_reports_every_metric_with_n_and_an_interval_and_saves_predictions(trained):
    result = evaluate_run(
        trained / "run", split="test", device="cpu", backbone=FakeBackbone(), n_boot=50, progress=False
    )
    config = json.loads((trained / "run" / "config.json").read_text())
    test_ids = config["data"]["split"]["test"]
    assert result["n"] == 18 * len(test_ids) == result["metrics"]["n"]  # every frame of the test episodes
    assert list(result["metrics"]) == metric_keys(("linear_x", "linear_y"))
    assert set(result["intervals"]) == set(result["metrics"]) - {"n"}
    for key, (low, high) in result["intervals"].items():
        # Percentile bootstrap intervals need not contain a biased point estimate (R² on a near-constant
        # axis), so only their order is checked here; tests/test_metrics.py checks their values.
        assert np.isfinite(low) and np.isfinite(high) and low <= high + 1e-12, key
    saved = np.load(trained / "run" / "predictions_test.npz")
    assert saved["predictions"].shape == saved["targets"].shape == (result["n"], 2)
    assert set(saved["episode_ids"]) == set(test_ids)
    assert abs(np.abs(saved["predictions"] - saved["targets"]).mean() - result["metrics"]["mae"]) < 1e-6
    assert json.loads((trained / "run" / "eval_test.json").read_text())["n"] == result["n"]
    text = format_result(result)
    assert f"n={result['n']}" in text and "magnitude_order_accuracy" in text


def test_evaluate_all_uses_every_episode(trained):
    result = evaluate_run(
        trained / "run",
        split="all",
        device="cpu",
        backbone=FakeBackbone(),
        n_boot=20,
        progress=False,
        save=False,
    )
    assert result["n"] == 8 * 18 and result["n_episodes"] == 8


def test_predict_from_an_image_file_matches_act(trained, tmp_path):
    policy = load_policy(trained / "run", device="cpu", backbone=FakeBackbone())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    image.save(tmp_path / "frame.png")
    from_file = policy.act_encoded((tmp_path / "frame.png").read_bytes(), "go left")
    np.testing.assert_allclose(from_file, policy.act(np.asarray(image), "go left"), rtol=1e-6)


class WindowMean(torch.nn.Module):
    """A stand-in history-window head: the action is a readout of the window's mean vision feature."""

    history_length = 3
    required_features = ("vision",)
    action_dims = ("linear_x", "linear_y")

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(48, 2)

    def forward(self, features):
        return {"action": self.fc(features["vision"].mean(dim=1))}  # (B, W, Dv) -> (B, A)


def test_history_window_policies_see_the_last_frames_padded_at_the_episode_start():
    from mobile_vla.policies.inference import InferencePolicy
    from mobile_vla.training.features import FeatureProvider

    torch.manual_seed(0)
    backbone, head = FakeBackbone(), WindowMean()
    policy = InferencePolicy(
        head, FeatureProvider(backbone), {"action_dims": ["linear_x", "linear_y"], "case": "w"}, "cpu"
    )
    frames = [np.full((24, 32, 3), 40 * i, np.uint8) for i in range(4)]

    def expected(window):
        with torch.no_grad():
            return head({"vision": backbone.encode_images([Image.fromarray(f) for f in window])[None]})[
                "action"
            ][0].numpy()

    np.testing.assert_allclose(policy.act(frames[0], "go"), expected([frames[0]] * 3), rtol=1e-5)
    policy.act(frames[1], "go")
    policy.act(frames[2], "go")
    np.testing.assert_allclose(policy.act(frames[3], "go"), expected(frames[1:4]), rtol=1e-5)
    policy.reset()
    np.testing.assert_allclose(policy.act(frames[3], "go"), expected([frames[3]] * 3), rtol=1e-5)
    with pytest.raises(NotImplementedError, match="chunk"):
        policy.act_chunk(frames[0], "go")
