"""Issue 13: the registry's numbers are honest (intervals kept, random encoders apart, episode-level intervals,
paired ties, dead-zone direction, Case 4's selection, stated facts). Defects 4 and 5 are tested where they live:
`test_policies.py::test_predict_applies_the_text_standardisation_like_a_call` and `test_dataset.py` (splits that
never overlap or lose an episode, one id per stem, unknown provenance)."""

import numpy as np
import pytest

from mobile_vla.evaluation.metrics import bootstrap_distribution, compute_metrics, metrics_with_intervals
from mobile_vla.registry.ranking import separation_reason
from mobile_vla.registry.record import StoredRun, closed_loop_metrics, unflatten_results
from mobile_vla.sim.evaluate import summarize


def test_closed_loop_interval_from_the_simulators_own_summary_reaches_the_store():
    # summarize() is what evaluate_closed_loop emits at the top level and per scenario.
    records = [
        {"success": i < 3, "collided": False, "spl": 0.5, "steps": 10, "distance_to_goal": 0.1}
        for i in range(8)
    ]
    result = {
        "seed": 1,
        "episodes": 8,
        **summarize(records),
        "per_scenario": {"1box_vert_left": summarize(records)},
    }
    stored = unflatten_results(closed_loop_metrics(result), "closed_loop")
    assert stored["intervals"]["success_rate"] == pytest.approx(result["success_rate_ci95"])
    # Every closed-loop number the simulator reports comes with its interval, the mean steps included.
    assert set(stored["metrics"]) - {"n", "episodes"} <= set(stored["intervals"])
    per = unflatten_results(closed_loop_metrics(result), "closed_loop/per_scenario/1box_vert_left")
    assert "success_rate" in per["intervals"]


def test_a_run_with_a_random_clip_is_not_ranked():
    from mobile_vla.registry.record import frozen_encoders

    config = {
        "backbone": {"pretrained": True, "fingerprint": {"pretrained": True}},
        "extra_features": {"clip_image": {"pretrained": False, "fingerprint": {"pretrained": False}}},
        "policy": {"clip_pretrained": False},
    }
    encoders = frozen_encoders(config)
    assert encoders["backbone"] is True and encoders["clip_image"] is False
    params = {"backbone.pretrained": "true", "extra_features.clip_image.pretrained": "false"}
    tags = {"mobile_vla.dataset.provenance": "sim", "mobile_vla.backbone.pretrained": "true"}
    run = StoredRun("r", "r", "FINISHED", 0, None, tags, params, {})
    assert "clip_image" in (separation_reason(run) or "")


def test_cluster_bootstrap_resamples_whole_episodes():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 18)
    targ = rng.choice([-1.15, 0.0, 1.15], size=(180, 2))
    pred = targ + rng.normal(0, 0.5, size=(10, 2))[groups]  # one error per episode: frames are correlated
    by_frame = metrics_with_intervals(pred, targ, n_boot=300)
    by_episode = metrics_with_intervals(pred, targ, n_boot=300, groups=groups)
    assert by_episode["n_episodes"] == 10 and by_episode["n_frames"] == 180
    width = lambda r: r["intervals"]["mae"][1] - r["intervals"]["mae"][0]  # noqa: E731
    assert width(by_episode) > 2 * width(by_frame)
    dist = bootstrap_distribution(pred, targ, n_boot=5, seed=3, groups=groups)
    drawn = np.random.default_rng(3).integers(0, 10, size=(5, 10))
    for b in range(5):
        rows = np.concatenate([np.nonzero(groups == g)[0] for g in drawn[b]])
        assert dist["mae"][b] == pytest.approx(compute_metrics(pred[rows], targ[rows])["mae"])


def test_mcnemar_decides_on_the_same_seeds():
    from mobile_vla.evaluation.paired import mcnemar_exact

    a = [True] * 10 + [False] * 2
    b = [False] * 12
    assert mcnemar_exact(a, b)["distinguishable"]
    assert not mcnemar_exact([True, False], [False, False])["distinguishable"]


def test_dead_zone_direction_counts_small_values_as_stop():
    pred = np.array([[0.01], [1.0], [-0.05], [0.5]])
    targ = np.array([[0.0], [1.15], [0.0], [-1.15]])
    m = compute_metrics(pred, targ, axis_names=("linear_x",))
    assert m["direction_accuracy_linear_x"] == 25.0  # the seed's definition, kept
    assert m["direction_accuracy_deadzone_linear_x"] == 75.0


def test_case4_best_checkpoint_follows_the_action_loss_not_the_summed_loss(tmp_path):
    """Defect 6: Case 4's val_loss sums action, task and state losses; selection must use the action loss."""
    import json

    from mobile_vla.backbones import create_backbone
    from mobile_vla.data.synthetic import write_synthetic_dataset
    from mobile_vla.training.config import TrainConfig
    from mobile_vla.training.trainer import Trainer

    data = tmp_path / "episodes"
    write_synthetic_dataset(data, episodes=5, seed=2, image_size=(32, 40))
    config = TrainConfig(
        case="case4",
        backbone="kosmos2-tiny",
        epochs=3,
        device="cpu",
        early_stopping_patience=0,
        frame_selection="first",
        eval_frame_selection="first",
        lr=1e-3,
    )
    backbone = create_backbone("kosmos2-tiny", device="cpu")
    Trainer(config, data, tmp_path / "run", backbone=backbone, progress=False).fit()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    action = [h["val_action_loss"] for h in history]
    assert all(h["val_loss"] > h["val_action_loss"] for h in history)  # the sum carries task + state too
    assert summary["monitored"] == "val_action_loss"
    assert summary["best_epoch"] == int(np.argmin(action))
    assert summary["best_val_action_loss"] == pytest.approx(min(action))


@pytest.mark.parametrize("stopped", [True, False])
def test_the_report_states_training_facts_not_guesses(stopped):
    """Defect 7: no "converged"/"overfitting": epochs run of the maximum, best epoch, val/train ratio."""
    from mobile_vla.registry.report import _training_facts

    metrics = {
        "summary/epochs_completed": 7.0,
        "summary/early_stopped": 1.0 if stopped else 0.0,
        "summary/best_epoch": 3.0,
        "summary/best_val_action_loss": 0.2,
        "train_action_loss": 0.05,
    }
    run = StoredRun("r", "r", "FINISHED", 0, None, {}, {"train.epochs": "20"}, metrics)
    text = _training_facts(run)
    assert text.startswith("trained 7 of 20 epochs") and "best epoch 3" in text and "= 4.00" in text
    assert ("early stopping" in text) == stopped
    for guess in ("converged", "overfit", "underfit"):
        assert guess not in text
