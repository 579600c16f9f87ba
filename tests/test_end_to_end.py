"""Train, evaluate and predict from the command line on the real backbone code path (kosmos2-tiny, lite)."""

import json

import numpy as np
import pytest
from fake_backbone import write_tiny_dataset
from PIL import Image

from mobile_vla.backbones import create_backbone
from mobile_vla.cli import main
from mobile_vla.data.dataset import EpisodeDataset
from mobile_vla.evaluation.metrics import metric_keys
from mobile_vla.policies import create_policy, load_policy
from mobile_vla.training.checkpoints import CheckpointMismatchError
from mobile_vla.training.features import FeatureProvider


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("e2e_episodes")
    write_tiny_dataset(directory, episodes=8, image_size=(48, 64))
    return directory


@pytest.fixture(scope="module")
def tiny_run(episodes, tmp_path_factory):
    run = tmp_path_factory.mktemp("e2e") / "run"
    argv = [
        "train",
        "--case",
        "case1",
        "--data",
        str(episodes),
        "--backbone",
        "kosmos2-tiny",
        "--out",
        str(run),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--frame-selection",
        "first",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    return run


@pytest.mark.parametrize("profile", ["kosmos2-tiny", "lite"])
def test_case1_sizes_follow_every_backbone_profile(profile, episodes):
    backbone = create_backbone(profile, device="cpu")
    policy = create_policy("case1", backbone).eval()
    assert (policy.vision_proj.in_features, policy.text_proj.in_features) == (
        backbone.vision_dim,
        backbone.text_dim,
    )
    items = [EpisodeDataset(episodes)[i] for i in (0, 20)]
    features = FeatureProvider(backbone)(
        {"image": [it["image"] for it in items], "text": [it["text"] for it in items]},
        policy.required_features,
    )
    # the seed's third error: text features come from a masked mean, never a text-model pooler_output
    assert features["text"].shape == (2, backbone.text_dim) and features["vision"].shape == (
        2,
        backbone.vision_dim,
    )
    assert policy(features)["action"].shape == (2, 2)


def test_train_then_evaluate_json_prints_every_metric_with_n(tiny_run, capsys):
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["backbone"]["profile"] == "kosmos2-tiny" and config["backbone"]["pretrained"] is False
    capsys.readouterr()
    assert main(["evaluate", str(tiny_run), "--json", "--n-boot", "50", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["metrics"]) == metric_keys(("linear_x", "linear_y"))
    assert result["n"] == result["metrics"]["n"] == 18 * len(config["data"]["split"]["test"])
    assert set(result["intervals"]) == set(result["metrics"]) - {"n"}
    assert (tiny_run / "predictions_test.npz").is_file()
    assert (
        main(
            [
                "evaluate",
                str(tiny_run),
                "--split",
                "val",
                "--n-boot",
                "20",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "n=" in capsys.readouterr().out


def test_predict_prints_one_velocity(tiny_run, tmp_path, capsys):
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(tmp_path / "frame.png")
    capsys.readouterr()
    argv = [
        "predict",
        str(tiny_run),
        "--image",
        str(tmp_path / "frame.png"),
        "--device",
        "cpu",
        "--instruction",
        "Navigate around obstacles and reach the front of the beverage bottle on the left",
    ]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["action"]) == {"linear_x", "linear_y"}
    assert all(np.isfinite(v) for v in out["action"].values())
    assert out["timings_ms"]["backbone_ms"] > 0


def test_a_kosmos2_tiny_checkpoint_refuses_the_lite_backbone(tiny_run):
    lite = create_backbone("lite", device="cpu")
    with pytest.raises(CheckpointMismatchError) as exc:
        load_policy(tiny_run, device="cpu", backbone=lite)
    recorded = json.loads((tiny_run / "config.json").read_text())["backbone"]["fingerprint_hash"]
    assert recorded in str(exc.value) and lite.fingerprint_hash in str(exc.value)


def test_kosmos2_tiny_predictions_do_not_depend_on_the_rest_of_the_batch(tiny_run, episodes):
    policy = load_policy(tiny_run, device="cpu")
    dataset = EpisodeDataset(episodes)
    items = [dataset[i] for i in (1, 40, 80, 120)]
    together = policy.act_batch([it["image"] for it in items], [it["text"] for it in items])
    alone = np.stack([policy.act(it["image"], it["text"]) for it in items])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)


def test_describe_shows_parameter_counts(capsys):
    assert main(["describe", "case1", "--backbone", "kosmos2-tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "Simplified2DActionModelV2" and info["trainable_parameters"] > 0
    assert info["frozen_parameters"] > 0 and info["preset"]["policy"]["hidden_dim"] == 256
