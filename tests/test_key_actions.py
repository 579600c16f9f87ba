"""Key-class actions (issue 17): stored `action_classes` are the training target, optional class weights
against imbalance, key-space metrics, `predicted_class` from the server, mirror augmentation."""

from __future__ import annotations

import json
import re
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


# --- 4. key-space metrics -----------------------------------------------------------------------------------


def test_key_class_metrics_agree_with_scikit_learn():
    from sklearn.metrics import confusion_matrix, f1_score, recall_score

    from mobile_vla.metrics import key_class_metrics

    rng = np.random.default_rng(0)
    names = PLANAR.names
    target = rng.choice(5, size=200, p=[0.1, 0.6, 0.1, 0.1, 0.1])
    predicted = np.where(rng.random(200) < 0.6, target, rng.integers(0, 7, size=200))
    m = key_class_metrics(predicted, target, names)
    np.testing.assert_array_equal(
        m["confusion_matrix"], confusion_matrix(target, predicted, labels=range(len(names)))
    )
    assert m["macro_f1"] == pytest.approx(f1_score(target, predicted, average="macro", zero_division=0))
    assert m["accuracy"] == pytest.approx(100 * np.mean(predicted == target))
    assert m["balanced_accuracy"] == pytest.approx(100 * recall_score(target, predicted, average="macro", labels=np.unique(target)))  # fmt: skip
    recalls = recall_score(target, predicted, average=None, labels=range(len(names)), zero_division=0)
    for i, name in enumerate(names):
        row = m["per_class"][name]
        assert row["n"] == int((target == i).sum())
        if row["n"]:
            assert row["accuracy"] == pytest.approx(100 * recalls[i])
        else:
            assert row["accuracy"] is None
    json.dumps(m)  # plain Python numbers
    with pytest.raises(ValueError, match="class indices"):
        key_class_metrics(np.array([9]), np.array([0]), names)


@pytest.fixture(scope="module")
def both_spaces(relabelled, tmp_path_factory):
    """A keys run and a continuous run on the same v6 episodes, each evaluated on the same test split."""
    from mobile_vla.evaluation.evaluate import evaluate_run

    root = tmp_path_factory.mktemp("both_spaces")
    runs, results = {}, {}
    for space in ("keys", "continuous"):
        _train(relabelled, root / space, epochs=3, split_ratios=[0.5, 0.17, 0.33],
               policy={"hidden_dim": 32, "dropout": 0.0, "action_space": space})  # fmt: skip
        results[space] = evaluate_run(root / space, split="test", device="cpu", backbone=FakeBackbone(), n_boot=50, progress=False)  # fmt: skip
        runs[space] = root / space
    return runs, results


def test_evaluate_adds_key_metrics_for_both_action_spaces_on_the_same_frames(both_spaces):
    from mobile_vla.metrics import key_class_metrics

    runs, results = both_spaces
    for space in ("keys", "continuous"):
        keys = results[space]["key_metrics"]
        saved = json.loads((runs[space] / "eval_test.json").read_text())["key_metrics"]
        assert saved == json.loads(json.dumps(keys))
        assert keys["action_space"] == space and keys["classes"] == list(PLANAR.names)
        with np.load(runs[space] / "predictions_test.npz") as data:
            pred, target = data["predicted_classes"], data["target_classes"]
            predictions, targets = data["predictions"], data["targets"]
        assert keys["n"] == results[space]["n"] == len(pred)
        assert key_class_metrics(pred, target, PLANAR.names) == {k: v for k, v in keys.items() if k in key_class_metrics(pred, target, PLANAR.names)}  # fmt: skip
        # The recorded class is the file's stored one (RELABEL), not the velocities'.
        assert (target != PLANAR.classify(targets)).mean() > 0.5
        if space == "keys":  # a key head's command is its class's velocity
            np.testing.assert_allclose(PLANAR.velocities[pred], predictions)
        else:  # a regressed command is read as its nearest key velocity
            d = ((predictions[:, None, :] - PLANAR.velocities[None]) ** 2).sum(-1)
            np.testing.assert_array_equal(pred, d.argmin(1))
            assert "nearest key velocity" in keys["predicted_class_from"]
    # Same frames, same recorded classes, whichever head.
    with (
        np.load(runs["keys"] / "predictions_test.npz") as a,
        np.load(runs["continuous"] / "predictions_test.npz") as b,
    ):
        np.testing.assert_array_equal(a["target_classes"], b["target_classes"])
    from mobile_vla.evaluation.evaluate import format_result

    text = format_result(results["keys"])
    assert "key macro-F1" in text and "confusion matrix (rows: recorded, columns: predicted)" in text


def test_the_report_shows_key_metrics_and_plots_the_confusion_matrix(both_spaces, tmp_path):
    from PIL import Image
    from registry_helpers import fresh_store

    from mobile_vla.registry import open_registry
    from mobile_vla.registry.report import write_report
    from mobile_vla.registry.report_plots import confusion_from_predictions

    runs, results = both_spaces
    uri = fresh_store(tmp_path)
    registry = open_registry(uri)
    for space in ("keys", "continuous"):
        registry.record_run_dir(runs[space])  # what `mobile-vla registry record RUN_DIR` does
    report = write_report(registry, tmp_path / "REPORT.md")
    text = report.read_text()
    # Both action spaces side by side on the same test frames (the comparison section) ...
    assert "| Case | Run | Action space | Key acc % | Balanced acc % | Macro-F1 |" in text
    for space in ("keys", "continuous"):
        k = results[space]["key_metrics"]
        row = f"| case1 | `{space}` | {space} | {k['accuracy']:.1f} | {k['balanced_accuracy']:.1f} | {k['macro_f1']:.3f} |"
        assert row in text
    # ... and the case's shown run with per-class accuracy and n in its metrics block.
    shown = re.search(r"Shown: run `(\w+)`", text).group(1)
    keys = results[shown]["key_metrics"]
    assert f"accuracy {keys['accuracy']:.2f}%" in text and f"macro-F1 {keys['macro_f1']:.3f}" in text
    for name, row in keys["per_class"].items():
        if row["n"]:
            assert f"{name} {row['accuracy']:.1f}% (n={row['n']})" in text
    pngs = sorted((tmp_path / "REPORT_plots").glob("confusion_*.png"))
    assert len(pngs) == 2 and all(f"]({p.parent.name}/{p.name})" in text for p in pngs)
    assert min(Image.open(p).size[0] for p in pngs) > 200
    names, matrix = confusion_from_predictions(runs["keys"] / "predictions_test.npz")
    assert (
        names == list(PLANAR.names) and matrix.tolist() == results["keys"]["key_metrics"]["confusion_matrix"]
    )


# --- 3. the server names the predicted class ----------------------------------------------------------------


def test_the_server_answers_with_the_predicted_key_class_and_null_for_a_regression_head(
    both_spaces, relabelled
):
    from fastapi.testclient import TestClient

    from mobile_vla.policies import load_policy
    from mobile_vla.serving.app import ServerConfig, create_app
    from mobile_vla.serving.protocol import encode_image
    from mobile_vla.serving.safety import VelocityLimits

    runs, _ = both_spaces
    episodes, _ = load_episodes(relabelled)
    frames = [(ep.image(t), ep.instruction) for ep in episodes[:2] for t in (1, 3, 5)]
    for space in ("keys", "continuous"):
        policy = load_policy(runs[space], device="cpu", backbone=FakeBackbone())
        # Tight limits: a key's 1.15 is clamped to 0.5, the class is still named.
        config = ServerConfig(insecure_no_auth=True, velocity_limits=VelocityLimits(max_linear=0.5))
        client = TestClient(create_app(policy, {"model_name": space}, config))
        info = client.get("/model/info").json()
        assert info["action_space"] == space
        for image, instruction in frames:
            answer = client.post(
                "/predict", json={"image": encode_image(image), "instruction": instruction}
            ).json()
            expected = policy.act(image, instruction)
            np.testing.assert_allclose(answer["action"], np.clip(expected, -0.5, 0.5), atol=1e-6)
            if space == "keys":
                assert info["key_classes"] == list(PLANAR.names)
                name = answer["predicted_class"]
                np.testing.assert_allclose(PLANAR.velocities[PLANAR.names.index(name)], expected, atol=1e-6)
                assert answer["clamped"] == bool(np.abs(expected).max() > 0.5)
            else:
                assert info["key_classes"] is None and answer["predicted_class"] is None


def test_a_safe_stop_names_no_class_and_chunks_name_each_steps_class():
    from mobile_vla.serving.runner import PolicyRunner
    from mobile_vla.serving.safety import VelocityLimits

    class KeyChunks:
        action_dims = ("linear_x", "linear_y")
        key_classes = PLANAR.names
        key_velocities = PLANAR.velocities

        def __init__(self):
            self.fail = False

        def reset(self):
            pass

        def act(self, image, instruction):
            if self.fail:
                raise RuntimeError("boom")
            return PLANAR.velocities[PLANAR.names.index("LEFT")]

        def act_chunk(self, image, instruction):
            return PLANAR.velocities[[PLANAR.names.index(n) for n in ("FORWARD", "FORWARD_RIGHT", "STOP")]]

    policy = KeyChunks()
    runner = PolicyRunner(policy, VelocityLimits())
    image = np.zeros((8, 8, 3), np.uint8)
    assert runner.step(image, "go", "receding_horizon").predicted_class == "LEFT"
    steps = [runner.step(image, "go", "chunk_reuse") for _ in range(3)]
    assert [s.predicted_class for s in steps] == ["FORWARD", "FORWARD_RIGHT", "STOP"]
    assert [s.source for s in steps] == ["inferred", "reused", "reused"]
    policy.fail = True
    stop = runner.step(image, "go", "receding_horizon")
    assert stop.source.startswith("safe_stop:") and stop.predicted_class is None
    KeyChunks.key_velocities = np.zeros((3, 2))
    with pytest.raises(TypeError, match="key_velocities"):
        PolicyRunner(KeyChunks(), VelocityLimits())


@pytest.mark.slow
def test_the_onnx_runtime_names_the_same_predicted_class(tmp_path):
    from fastapi.testclient import TestClient

    from mobile_vla.cli import main
    from mobile_vla.data.synthetic import write_synthetic_dataset
    from mobile_vla.policies import load_policy
    from mobile_vla.serving.app import ServerConfig, create_app
    from mobile_vla.serving.onnx_runtime import load_onnx_for_serving
    from mobile_vla.serving.protocol import encode_image

    write_synthetic_dataset(tmp_path / "episodes", episodes=6, seed=0, image_size=(48, 64))
    config = resolve_train_config(
        "case1",
        overrides={"epochs": 1, "batch_size": 8, "lr": 1e-3, "backbone": "lite", "device": "cpu",
                   "policy": {"hidden_dim": 16, "action_space": "keys"}},
    )  # fmt: skip
    Trainer(config, tmp_path / "episodes", tmp_path / "run", progress=False).fit()
    argv = ["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "export")]
    assert main([*argv, "--verify-frames", "2", "--no-progress"]) == 0
    sidecar = json.loads((tmp_path / "export" / "model.json").read_text())
    assert sidecar["action_space"]["kind"] == "keys" and sidecar["action_space"]["classes"] == list(
        PLANAR.names
    )
    onnx_policy, metadata = load_onnx_for_serving(tmp_path / "export")
    torch_policy = load_policy(tmp_path / "run", device="cpu")
    clients = {
        "onnx": TestClient(create_app(onnx_policy, metadata, ServerConfig(insecure_no_auth=True))),
        "torch": TestClient(
            create_app(torch_policy, {"model_name": "t"}, ServerConfig(insecure_no_auth=True))
        ),
    }
    episodes, _ = load_episodes(tmp_path / "episodes")
    for t in (1, 4, 8):
        body = {"image": encode_image(episodes[0].image(t)), "instruction": episodes[0].instruction}
        answers = {k: c.post("/predict", json=body).json() for k, c in clients.items()}
        assert answers["onnx"]["predicted_class"] == answers["torch"]["predicted_class"] in PLANAR.names
    assert clients["onnx"].get("/model/info").json()["key_classes"] == list(PLANAR.names)


# --- 5. mirror augmentation ---------------------------------------------------------------------------------


def test_mirror_swaps_left_and_right_words_and_scenario_sides():
    from mobile_vla.data.mirror import mirror_instruction, mirror_scenario

    text = "Navigate around obstacles and reach the front of the beverage bottle on the left"
    assert mirror_instruction(text) == text[: -len("left")] + "right"
    assert (
        mirror_instruction("Left of the RIGHT box, leftover rightmost")
        == "Right of the LEFT box, leftover rightmost"
    )
    assert mirror_instruction(mirror_instruction(text)) == text
    assert mirror_scenario("2box_hori_left") == "2box_hori_right"
    assert mirror_scenario("target_right_straight_path") == "target_left_straight_path"
    assert mirror_scenario("free_center") == "free_center"


def test_a_mirrored_item_is_the_flipped_frame_with_swapped_instruction_negated_actions_and_mirrored_class(
    relabelled,
):
    plain = EpisodeDataset(
        relabelled, frame_selection="all", action_dims=("linear_x", "linear_y", "angular_z")
    )
    mirrored = EpisodeDataset(relabelled, frame_selection="all", action_dims=("linear_x", "linear_y", "angular_z"), mirror=1.0)  # fmt: skip
    for index in (3, 20, 40):
        a, b = plain[index], mirrored[index]
        assert b["mirrored"] is True and "mirrored" not in a
        np.testing.assert_array_equal(np.asarray(b["image"]), np.asarray(a["image"])[:, ::-1])
        assert "left" in a["text"] or "right" in a["text"]
        assert b["text"] == a["text"].replace("left", "@").replace("right", "left").replace("@", "right")
        torch.testing.assert_close(b["action"], a["action"] * torch.tensor([1.0, -1.0, -1.0]))
        assert (
            KEY_CLASSES[int(b["key_class"])]
            == KEY_CLASSES[int(mirror_classes(np.array([int(a["key_class"])]))[0])]
        )
        assert b["scenario"] != a["scenario"] and b["scenario"].replace("right", "left") == a[
            "scenario"
        ].replace("right", "left")
        np.testing.assert_allclose(mirrored.target(index), b["action"].numpy())
    assert any(int(plain[i]["key_class"]) != int(mirrored[i]["key_class"]) for i in range(len(plain)))


def test_which_items_are_mirrored_is_seeded_by_epoch_and_reproducible(relabelled):
    def draws(epoch, seed=0):
        dataset = EpisodeDataset(relabelled, frame_selection="all", mirror=0.5, seed=seed)
        dataset.set_epoch(epoch)
        return [dataset.is_mirrored(i) for i in range(len(dataset))]

    first = draws(0)
    assert first == draws(0)  # a resumed run draws the same
    assert 0.35 < np.mean(first) < 0.65
    assert first != draws(1) and first != draws(0, seed=1)
    dataset = EpisodeDataset(relabelled, frame_selection="all", mirror=0.5)
    assert [bool(dataset[i]["mirrored"]) for i in range(len(dataset))] == first
    with pytest.raises(ValueError, match="mirror"):
        EpisodeDataset(relabelled, mirror=1.5)


def test_mirrored_frames_have_their_own_cached_features_equal_to_the_flipped_images(relabelled, tmp_path):
    from PIL import Image

    from mobile_vla.data.cache import FeatureCache
    from mobile_vla.features.cached import CachedFeatureProvider

    backbone = FakeBackbone()
    cache = FeatureCache(tmp_path / "cache", durable=False)
    provider = CachedFeatureProvider(backbone, cache)
    plain = EpisodeDataset(relabelled, frame_selection="all", lazy_images=True)
    mirrored = EpisodeDataset(relabelled, frame_selection="all", lazy_images=True, mirror=1.0)
    items = [0, 5, 17, 30]
    direct = FeatureProvider(FakeBackbone())
    frames = [plain.episodes[e].image(f) for e, f in (plain.frame_refs[i] for i in items)]
    expected_plain = direct({"image": [Image.fromarray(x) for x in frames]}, ["vision"])["vision"]
    expected_flipped = direct({"image": [Image.fromarray(np.ascontiguousarray(x[:, ::-1])) for x in frames]}, ["vision"])["vision"]  # fmt: skip
    assert not torch.allclose(expected_plain, expected_flipped)
    batch_plain = collate_batch([plain[i] for i in items])
    batch_mirror = collate_batch([mirrored[i] for i in items])
    assert all(ref.mirrored and ref.key.endswith("-mirror") for ref in batch_mirror["image"])
    torch.testing.assert_close(provider(batch_plain, ["vision"])["vision"], expected_plain)  # fills the cache
    torch.testing.assert_close(provider(batch_mirror, ["vision"])["vision"], expected_flipped)  # own entries
    # Read back from a fresh provider on the same cache: both views come from the cache, each still right.
    reread = CachedFeatureProvider(FakeBackbone(), FeatureCache(tmp_path / "cache", durable=False))
    calls = reread.backbone.calls["images"]
    torch.testing.assert_close(reread(batch_mirror, ["vision"])["vision"], expected_flipped)
    torch.testing.assert_close(reread(batch_plain, ["vision"])["vision"], expected_plain)
    assert reread.backbone.calls["images"] == calls  # no frame was encoded again


def test_a_mirrored_window_is_mirrored_whole(relabelled, tmp_path):
    from mobile_vla.data.mirror import mirror_scenario
    from mobile_vla.data.windows import WindowDataset, task_label

    kwargs = dict(frame_selection="all", action_dims=("linear_x", "linear_y"), history=3, chunk=4, horizon=2)
    plain = WindowDataset(relabelled, **kwargs)
    mirrored = WindowDataset(relabelled, mirror=1.0, **kwargs)
    a, b = plain[10], mirrored[10]
    for x, y in zip(
        a["history_images"] + a["future_images"], b["history_images"] + b["future_images"], strict=True
    ):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x)[:, ::-1])
    torch.testing.assert_close(b["action_chunk"], a["action_chunk"] * torch.tensor([1.0, -1.0]))
    np.testing.assert_array_equal(
        b["action_chunk_class"].numpy(), mirror_classes(a["action_chunk_class"].numpy())
    )
    # The task label follows the mirrored scenario (box scenarios of the synthetic data).
    from mobile_vla.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "synth", episodes=2, seed=0, image_size=(24, 32))
    a, b = (
        WindowDataset(tmp_path / "synth", **kwargs)[4],
        WindowDataset(tmp_path / "synth", mirror=1.0, **kwargs)[4],
    )
    assert int(a["task"]) >= 0 and int(b["task"]) == task_label(mirror_scenario(a["scenario"])) != int(
        a["task"]
    )


def test_training_with_mirror_mirrors_only_the_training_split(relabelled, tmp_path):
    trainer, summary = _train(relabelled, tmp_path / "mirror", mirror=0.5, split_ratios=[0.5, 0.17, 0.33])
    assert summary["status"] == "finished"
    record = json.loads((tmp_path / "mirror" / "config.json").read_text())
    assert record["train"]["mirror"] == 0.5
    assert trainer.datasets["train"].mirror == 0.5 and trainer.datasets["val"].mirror == 0.0
    train = trainer.datasets["train"]
    assert any(train.is_mirrored(i) for i in range(len(train)))
