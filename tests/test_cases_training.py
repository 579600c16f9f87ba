"""Cases 3 and 4 through the standard trainer, evaluation and inference, on a fake backbone (fast)."""

import json

import numpy as np
import pytest
from fake_backbone import FakeBackbone, write_tiny_dataset

from mobile_vla.data.windows import WindowDataset
from mobile_vla.evaluation.evaluate import evaluate_run
from mobile_vla.policies import load_policy
from mobile_vla.training.config import resolve_train_config
from mobile_vla.training.trainer import Trainer, predict_dataset

SMALL_CASE4 = {
    "hidden_dim": 32,
    "state_dim": 8,
    "num_latents": 4,
    "resampler_heads": 2,
    "resampler_depth": 1,
    "num_heads": 2,
    "history_length": 3,
    "max_sequence_length": 4,
    "prediction_horizon": 2,
    "max_plan_length": 2,
}


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_tiny_dataset(root, episodes=8)
    return root


def train(case: str, data, out_dir, **overrides):
    config = resolve_train_config(case, overrides={"device": "cpu", "batch_size": 4, **overrides})
    trainer = Trainer(config, data, out_dir, backbone=FakeBackbone(), progress=False)
    return trainer, trainer.fit()


@pytest.fixture(scope="module")
def case4_run(episodes, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "case4"
    trainer, summary = train("case4", episodes, run_dir, epochs=2, policy=SMALL_CASE4, lr=1e-3)
    return run_dir, trainer, summary


def test_case4_trains_on_windows_and_records_its_window(case4_run):
    run_dir, trainer, summary = case4_run
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    assert isinstance(trainer.datasets["train"], WindowDataset)
    assert trainer.datasets["train"].history == 3 and trainer.datasets["train"].chunk == 4
    record = json.loads((run_dir / "config.json").read_text())
    assert record["architecture"] == "RoboVLMsCompleteModel"
    assert record["train"]["early_stopping_patience"] == 5
    assert record["policy"]["history_length"] == 3 and record["policy"]["max_sequence_length"] == 4
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_chunk_loss", "train_task_loss", "train_state_loss"):
        assert all(np.isfinite(e[key]) for e in epochs), key


def test_case4_evaluation_reports_first_step_and_chunk_metrics(case4_run):
    run_dir, _, _ = case4_run
    result = evaluate_run(run_dir, split="val", backbone=FakeBackbone(), n_boot=50, progress=False)
    assert result["n"] > 0 and "mae" in result["metrics"]
    chunk = result["chunk_metrics"]
    assert chunk["n_windows"] == result["n"] and chunk["chunk_length"] == 4
    # Windows near an episode's end have fewer recorded steps than the chunk length.
    assert chunk["step_n"][0] == result["n"] > chunk["step_n"][-1]
    saved = np.load(run_dir / "predictions_val.npz")
    assert saved["chunk_predictions"].shape == (result["n"], 4, 2)
    assert np.allclose(saved["chunk_predictions"][:, 0], saved["predictions"])


def assert_inference_steps_like_the_window_dataset(run_dir, trainer, history: int) -> None:
    """Acting frame by frame through an episode gives the window dataset's predictions."""
    policy = load_policy(run_dir, device="cpu", backbone=FakeBackbone())
    assert policy.history_length == history
    dataset = WindowDataset(trainer.datasets["train"].episodes[:1], history=history, chunk=4, horizon=2)
    offline = predict_dataset(policy.policy, policy.provider, dataset, batch_size=5, device="cpu")
    episode = dataset.episodes[0]
    policy.reset()
    online = [policy.act(episode.image(t), episode.instruction) for t in range(episode.num_frames)]
    assert np.allclose(np.stack(online), offline["predictions"], atol=1e-5)


def test_case4_inference_steps_through_an_episode_like_the_window_dataset(case4_run):
    run_dir, trainer, _ = case4_run
    assert_inference_steps_like_the_window_dataset(run_dir, trainer, history=3)


def test_case4_with_a_one_frame_window_steps_like_the_window_dataset(episodes, tmp_path):
    # W = 1 still reads (B, 1, ...) history features and a mask: inference must build them per frame.
    policy_config = {**SMALL_CASE4, "history_length": 1, "use_vision_resampler": False}
    trainer, _ = train("case4", episodes, tmp_path / "w1", epochs=1, policy=policy_config, lr=1e-3)
    assert_inference_steps_like_the_window_dataset(tmp_path / "w1", trainer, history=1)


def test_case4_inference_returns_the_chunk_and_forgets_history_on_reset(case4_run):
    run_dir, trainer, _ = case4_run
    policy = load_policy(run_dir, device="cpu", backbone=FakeBackbone())
    episode = trainer.datasets["train"].episodes[0]
    frames = [episode.image(t) for t in range(3)]
    policy.reset()
    first = policy.act_chunk(frames[2], episode.instruction)
    assert first.shape == (4, 2) and first.dtype == np.float32
    policy.reset()
    policy.act(frames[0], episode.instruction)
    policy.act(frames[1], episode.instruction)
    with_history = policy.act_chunk(frames[2], episode.instruction)
    assert not np.allclose(first, with_history), "the history window has no effect"
    policy.reset()
    assert np.allclose(policy.act_chunk(frames[2], episode.instruction), first, atol=1e-6)


def test_case3_trains_with_case1s_architecture_under_its_preset(episodes, tmp_path):
    config = resolve_train_config("case3", overrides={"device": "cpu"})
    assert config.epochs == 5
    _, summary = train("SimpleCase3Model", episodes, tmp_path / "case3", epochs=1, policy={"hidden_dim": 32})
    record = json.loads((tmp_path / "case3" / "config.json").read_text())
    assert summary["status"] == "finished" and record["case"] == "case3"
    assert record["architecture"] == "Simplified2DActionModelV2"
    assert record["policy"]["architecture"] == "Simplified2DActionModelV2"
    policy = load_policy(tmp_path / "case3", device="cpu", backbone=FakeBackbone())
    action = policy.act(np.zeros((24, 32, 3), np.uint8), "go left")
    assert action.shape == (2,) and np.isfinite(action).all()


def test_case4_observed_frames_fill_the_history_like_acted_ones(case4_run):
    run_dir, trainer, _ = case4_run
    policy = load_policy(run_dir, device="cpu", backbone=FakeBackbone())
    episode = trainer.datasets["train"].episodes[0]
    frames = [episode.image(t) for t in range(4)]
    policy.reset()
    for frame in frames[:3]:
        policy.act(frame, episode.instruction)
    acted = policy.act_chunk(frames[3], episode.instruction)
    policy.reset()
    policy.act(frames[0], episode.instruction)
    policy.observe(frames[1])  # e.g. steps answered from a stored chunk
    policy.observe(frames[2])
    assert np.allclose(policy.act_chunk(frames[3], episode.instruction), acted, atol=1e-6)
