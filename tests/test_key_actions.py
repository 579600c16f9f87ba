"""Key-class actions (issue 17): stored `action_classes` are the training target, optional class weights
against imbalance, key-space metrics, `predicted_class` from the server, mirror augmentation."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_backbone import FakeBackbone
from layout_files import write_v6

from mobile_vla.data.action_space import KEY_CLASSES, KeySpace, action_classes_for, mirror_classes
from mobile_vla.data.dataset import EpisodeDataset, collate_batch, load_episodes
from mobile_vla.features.providers import FeatureProvider
from mobile_vla.policies import create_policy
from mobile_vla.policies.base import FeatureDims
from mobile_vla.training.class_weights import class_counts, inverse_frequency_weights
from mobile_vla.training.config import TrainConfig, resolve_train_config
from mobile_vla.training.trainer import Trainer

PLANAR = KeySpace(("linear_x", "linear_y"))
# The relabelling the stored classes get: what the collector wrote differs from what the velocities say.
RELABEL = {"FORWARD": "FORWARD_LEFT", "LEFT": "RIGHT", "RIGHT": "LEFT", "STOP": "ROTATE_LEFT"}


def write_relabelled_v6(root, count=6):
    """v6 files whose stored action_classes differ from the velocities' classes (RELABEL)."""
    paths = []
    for i in range(count):
        side = ("left", "right")[i % 2]
        path = write_v6(root, side, stamp=f"20251001_0900{i:02d}", seed=i)
        with h5py.File(path, "r+") as f:
            derived = action_classes_for(f["actions"][()])
            stored = np.array(
                [KEY_CLASSES.index(RELABEL.get(KEY_CLASSES[c], KEY_CLASSES[c])) for c in derived]
            )
            attrs = dict(f["action_classes"].attrs)
            del f["action_classes"]
            ds = f.create_dataset("action_classes", data=stored.astype(np.int64))
            ds.attrs.update(attrs)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def relabelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("v6_relabelled")
    write_relabelled_v6(root)
    return root


def _train(data, out, **overrides):
    config = resolve_train_config(
        "case1",
        overrides={"lr": 3e-3, "batch_size": 16, "epochs": 2, "frame_selection": "all", "device": "cpu",
                   "early_stopping_patience": 0, "policy": {"hidden_dim": 32, "dropout": 0.0, "action_space": "keys"},
                   **overrides},
    )  # fmt: skip
    trainer = Trainer(config, data, out, backbone=FakeBackbone(), progress=False)
    return trainer, trainer.fit()


# --- 1. stored action_classes are the target ---------------------------------------------------------------


def test_key_space_projects_stored_classes_onto_its_axes():
    names = ["FORWARD_LEFT", "ROTATE_LEFT", "BACK_RIGHT", "STOP"]
    stored = np.array([KEY_CLASSES.index(n) for n in names])
    assert [PLANAR.names[c] for c in PLANAR.project(stored)] == names[:1] + ["STOP"] + names[2:]
    turn = KeySpace(("linear_x", "angular_z"))
    assert [turn.names[c] for c in turn.project(stored)] == ["FORWARD", "ROTATE_LEFT", "BACK", "STOP"]
    # stored where >= 0, else the velocities' class
    actions = np.array([[1.15, 0.0], [1.15, 0.0], [0.0, -1.15]])
    targets = PLANAR.targets(actions, np.array([KEY_CLASSES.index("BACK"), -1, -1]))
    assert [PLANAR.names[c] for c in targets] == ["BACK", "FORWARD", "RIGHT"]
    with pytest.raises(ValueError, match="outside"):
        PLANAR.project(np.array([11]))


def test_dataset_items_carry_the_files_stored_class(relabelled, tmp_path):
    dataset = EpisodeDataset(relabelled, frame_selection="all")
    batch = collate_batch([dataset[i] for i in range(len(dataset))])
    stored = np.concatenate([e.stored_action_classes for e in dataset.episodes])
    np.testing.assert_array_equal(batch["key_class"].numpy(), stored)
    derived = action_classes_for(np.concatenate([e.actions for e in dataset.episodes]))
    assert (stored != derived).mean() > 0.5  # the labels really disagree with the velocities
    # A file without stored classes gives -1 (derive from the velocities).
    plain = write_v6(tmp_path, "left", classes=False)
    item = EpisodeDataset([plain])[3]
    assert int(item["key_class"]) == -1


def test_the_keys_loss_is_the_cross_entropy_against_the_stored_class(relabelled):
    dataset = EpisodeDataset(relabelled, frame_selection="all")
    batch = collate_batch([dataset[i] for i in range(24)])
    backbone = FakeBackbone()
    dims = FeatureDims(vision=backbone.vision_dim, text=backbone.text_dim)
    torch.manual_seed(0)
    policy = create_policy("case1", dims, action_space="keys", hidden_dim=16)
    outputs = policy(FeatureProvider(backbone)(batch, ("vision", "text")))
    loss, logs = policy.compute_loss(outputs, batch)
    stored = torch.from_numpy(PLANAR.project(batch["key_class"].numpy()))
    from_velocities = torch.from_numpy(PLANAR.classify(batch["action"].numpy()))
    assert not torch.equal(stored, from_velocities)
    torch.testing.assert_close(loss, F.cross_entropy(outputs["action_logits"], stored))
    assert (
        abs(float(loss.detach()) - float(F.cross_entropy(outputs["action_logits"], from_velocities).detach()))
        > 1e-4
    )
    # Without the stored classes in the batch, the velocities decide (what a v3/v5 file trains on).
    loss_v, _ = policy.compute_loss(outputs, {"action": batch["action"]})
    torch.testing.assert_close(loss_v, F.cross_entropy(outputs["action_logits"], from_velocities))


def test_a_head_trained_on_a_v6_file_learns_the_stored_classes_not_the_velocities(relabelled, tmp_path):
    trainer, _ = _train(relabelled, tmp_path / "run", epochs=12, split_ratios=[1.0, 0.0, 0.0])
    dataset = EpisodeDataset(relabelled, frame_selection="all")
    batch = collate_batch([dataset[i] for i in range(len(dataset))])
    policy = trainer.policy.eval()
    with torch.no_grad():
        logits = policy(FeatureProvider(FakeBackbone())(batch, ("vision", "text")))["action_logits"]
    predicted = logits.argmax(-1).numpy()
    stored = PLANAR.project(batch["key_class"].numpy())
    derived = PLANAR.classify(batch["action"].numpy())
    assert (predicted == stored).mean() > 0.8
    assert (predicted == derived).mean() < 0.5


# --- 2. class weights --------------------------------------------------------------------------------------


def test_inverse_frequency_weights_follow_the_training_frames(relabelled):
    episodes, _ = load_episodes(relabelled)
    counts = class_counts(episodes, PLANAR)
    stored = np.concatenate([PLANAR.project(e.stored_action_classes) for e in episodes])
    np.testing.assert_array_equal(counts, np.bincount(stored, minlength=PLANAR.num_classes))
    weights = inverse_frequency_weights(counts, cap=5.0)
    present = counts > 0
    expected = np.minimum(5.0, counts.sum() / (present.sum() * np.maximum(counts, 1)))
    np.testing.assert_allclose(weights[present], expected[present])
    assert np.all(weights[~present] == 5.0)
    np.testing.assert_allclose(inverse_frequency_weights(np.array([3, 3, 3]), cap=5.0), [1.0, 1.0, 1.0])


def test_class_weights_scale_each_frames_cross_entropy_by_its_class():
    dims = FeatureDims(vision=12, text=10)
    torch.manual_seed(0)
    policy = create_policy("case1", dims, action_space="keys", hidden_dim=16)
    features = {"vision": torch.randn(6, 12), "text": torch.randn(6, 10)}
    target = torch.tensor([[1.15, 0.0]] * 4 + [[0.0, 1.15], [0.0, -1.15]])  # FORWARD x4, LEFT, RIGHT
    outputs = policy(features)
    plain, _ = policy.compute_loss(outputs, {"action": target})
    weights = torch.ones(PLANAR.num_classes)
    weights[PLANAR.names.index("LEFT")] = 3.0
    policy.set_class_weights(weights)
    weighted, _ = policy.compute_loss(outputs, {"action": target})
    per_frame = F.cross_entropy(outputs["action_logits"], torch.from_numpy(PLANAR.classify(target.numpy())), reduction="none")  # fmt: skip
    torch.testing.assert_close(plain, per_frame.mean())
    torch.testing.assert_close(weighted, (per_frame * torch.tensor([1, 1, 1, 1, 3.0, 1])).mean())
    with pytest.raises(ValueError, match="shape"):
        policy.set_class_weights(torch.ones(3))
    regression = create_policy("case1", dims, hidden_dim=16)
    with pytest.raises(ValueError, match="action_space: keys"):
        regression.set_class_weights(torch.ones(9))


def test_a_run_with_inverse_frequency_weights_records_them_and_trains_on_them(relabelled, tmp_path):
    trainer, _ = _train(
        relabelled, tmp_path / "weighted", class_weights="inverse_frequency", class_weight_cap=4.0
    )
    record = json.loads((tmp_path / "weighted" / "config.json").read_text())
    info = record["class_weights"]
    assert record["train"]["class_weights"] == "inverse_frequency" and info["cap"] == 4.0
    counts = np.array([info["counts"][n] for n in PLANAR.names])
    train_eps = [e for e in trainer.datasets["train"].episodes]
    np.testing.assert_array_equal(counts, class_counts(train_eps, PLANAR))
    np.testing.assert_allclose([info["weights"][n] for n in PLANAR.names], inverse_frequency_weights(counts, 4.0), atol=1e-6)  # fmt: skip
    torch.testing.assert_close(trainer.policy.class_weights, torch.from_numpy(inverse_frequency_weights(counts, 4.0)).float())  # fmt: skip
    _, _ = _train(relabelled, tmp_path / "plain")
    first = [
        json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[0])
        for r in ("weighted", "plain")
    ]
    assert first[0]["train_loss"] != pytest.approx(first[1]["train_loss"], rel=1e-3)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["class_weights"] == {"mode": "none"}


def test_class_weights_are_refused_for_a_regression_head_and_a_bad_mode(relabelled, tmp_path):
    with pytest.raises(ValueError, match="class_weights"):
        TrainConfig(class_weights="inverse")
    config = resolve_train_config(
        "case1", overrides={"class_weights": "inverse_frequency", "epochs": 1, "device": "cpu"}
    )
    with pytest.raises(ValueError, match="action_space: keys"):
        Trainer(config, relabelled, tmp_path / "r", backbone=FakeBackbone(), progress=False).fit()


def test_train_help_documents_class_weights_and_mirror():
    out = subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--class-weights {none,inverse_frequency}" in out and "--mirror P" in out
    assert "inverse_frequency" in out and "feature-cache" in out


def test_mirror_classes_swap_left_and_right():
    names = ["LEFT", "FORWARD_RIGHT", "BACK_LEFT", "ROTATE_RIGHT", "FORWARD", "STOP", "BACK"]
    mirrored = mirror_classes(np.array([KEY_CLASSES.index(n) for n in names]))
    assert [KEY_CLASSES[c] for c in mirrored] == ["RIGHT", "FORWARD_LEFT", "BACK_RIGHT", "ROTATE_LEFT", "FORWARD", "STOP", "BACK"]  # fmt: skip
    assert mirror_classes(np.array([-1]))[0] == -1


# --- 6. data stats: class balance per scenario ---------------------------------------------------------------


def test_data_stats_reports_class_balance_per_scenario_and_warns_over_60_percent(tmp_path):
    from collections import Counter

    from mobile_vla.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "synth", episodes=8, seed=1, image_size=(24, 32))
    episodes, _ = load_episodes(tmp_path / "synth")
    out = subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", "data", "stats", str(tmp_path / "synth"), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    balance = json.loads(out)["class_balance"]
    # Counts from the velocities, independently of the stats code.
    by_scenario: dict[str, Counter] = {}
    for ep in episodes:
        by_scenario.setdefault(ep.scenario.name, Counter()).update(
            KEY_CLASSES[c] for c in action_classes_for(ep.actions)
        )
    overall = sum(by_scenario.values(), Counter())
    assert balance["overall"]["counts"] == dict(overall) and balance["overall"]["frames"] == sum(
        overall.values()
    )
    expected_warnings = []
    for where, counts in [("overall", overall)] + [
        (f"in scenario {n}", c) for n, c in sorted(by_scenario.items())
    ]:
        row = balance["overall"] if where == "overall" else balance["per_scenario"][where.split()[-1]]
        assert row["counts"] == dict(counts)
        for cls, n in counts.items():
            assert row["shares"][cls] == pytest.approx(n / sum(counts.values()))
            if n / sum(counts.values()) > 0.6:
                expected_warnings.append((cls, where))
    assert (
        expected_warnings and ("FORWARD", "overall") in expected_warnings
    )  # synthetic data is FORWARD-heavy
    got = [(w.split()[1], w.split(" of the frames ")[1].split(" (")[0]) for w in balance["warnings"]]
    assert got == expected_warnings
    text = subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", "data", "stats", str(tmp_path / "synth")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "key-class balance" in text and "warning: FORWARD is" in text


def test_balanced_data_gives_no_class_warning(tmp_path):
    from mobile_vla.data.stats import class_balance

    # v6 files of the lab's left/right guides cut at 9 frames: STOP, then 8 keys of which 5 are FORWARD (56%).
    paths = [
        write_v6(tmp_path, side, stamp=f"20251001_0910{i}", frames=9)
        for i, side in enumerate(("left", "right"))
    ]
    episodes, _ = load_episodes(paths)
    balance = class_balance(episodes)
    assert max(balance["overall"]["shares"].values()) <= 0.6 and balance["warnings"] == []
    assert class_balance(episodes, threshold=0.5)["warnings"]  # the same data over a lower bar
