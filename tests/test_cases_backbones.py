"""Cases 2, 3 and 4 on the real backbone profiles (kosmos2-tiny, lite) and the real (tiny, offline) CLIP."""

import json

import numpy as np
import pytest
import torch

from mobile_vla.cli import main as cli_main
from mobile_vla.data import EpisodeDataset, collate_batch
from mobile_vla.data.synthetic import write_synthetic_dataset
from mobile_vla.data.windows import WindowDataset
from mobile_vla.policies import build_policy, load_policy
from mobile_vla.training.config import resolve_train_config
from mobile_vla.training.features import FeatureProvider
from mobile_vla.training.trainer import Trainer

backbones = pytest.importorskip("mobile_vla.backbones")

SMALL = {
    "case2": {"hidden_dim": 32, "num_latents": 4, "resampler_heads": 2},
    "case3": {"hidden_dim": 32},
    "case4": {
        "hidden_dim": 32,
        "state_dim": 8,
        "num_latents": 8,
        "resampler_heads": 2,
        "resampler_depth": 1,
        "num_heads": 2,
        "history_length": 3,
        "max_sequence_length": 4,
        "prediction_horizon": 2,
        "max_plan_length": 2,
    },
}


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_synthetic_dataset(root, episodes=8, image_size=(48, 64))
    return root


@pytest.fixture(scope="module", params=["kosmos2-tiny", "lite"])
def backbone(request):
    try:
        return backbones.create_backbone(request.param, device="cpu")
    except backbones.BackboneUnavailableError as exc:  # lite's weights come with its pip package
        pytest.skip(f"{request.param} unavailable here: {exc}")


def batch_for(policy, episodes, size: int = 3) -> dict:
    kwargs = policy.dataset_kwargs()
    dataset = WindowDataset(episodes, **kwargs) if kwargs else EpisodeDataset(episodes)
    return collate_batch([dataset[i] for i in (0, 7, 16)[:size]])


@pytest.mark.parametrize("case", ["case2", "case3", "case4"])
def test_every_case_runs_on_the_backbones_features(case, backbone, episodes):
    policy, extra = build_policy(case, backbone, device="cpu", **SMALL[case])
    provider = FeatureProvider(backbone)
    provider.add_extra_features(extra)
    batch = batch_for(policy, episodes)
    features = provider(batch, policy.feature_names(training=True))
    if case != "case3":  # the resampling cases see every image token, not one pooled vector
        tokens = features["history_tokens" if case == "case4" else "image_tokens"]
        assert tokens.shape[-2:] == (backbone.num_image_tokens, backbone.token_dim)
        assert backbone.num_image_tokens > 1
    outputs = policy(features)
    assert outputs["action"].shape == (3, 2)
    if case == "case4":
        assert outputs["action_chunk"].shape == (3, 4, 2)
        assert features["history_tokens"].shape[:2] == (3, 3)
        assert features["future_vision"].shape == (3, 2, backbone.vision_dim)
    loss, logs = policy.compute_loss(outputs, batch)
    loss.backward()
    assert torch.isfinite(loss) and logs


def test_case2_without_its_clip_uses_the_pretrained_reference_and_records_it(backbone, tmp_path):
    missing = str(tmp_path / "no_clip_here")  # unavailable even where the real CLIP is in the HF cache
    policy, extra = build_policy("case2", backbone, device="cpu", clip_model=missing, **SMALL["case2"])
    assert policy.config.clip_model == missing  # what was asked for
    assert policy.config.clip_used == "efficientnet-lite0" and policy.config.clip_pretrained is True
    record = extra["clip_image"].record
    assert record["pretrained"] is True and record["fallback"]["requested"] == missing
    assert record["fingerprint"]["encoder"] == "reference-image"
    assert policy.dims.extra["clip_image"] == extra["clip_image"].dim == 1280
    # A reloaded run builds exactly the recorded encoder, with the same weights.
    again, extra_again = build_policy("case2", backbone, device="cpu", **policy.config.to_dict())
    assert extra_again["clip_image"].record["fingerprint_hash"] == record["fingerprint_hash"]
    assert again.config == policy.config


def test_case2_uses_the_random_clip_only_when_asked_and_records_it(backbone, tmp_path):
    missing = str(tmp_path / "no_clip_here")
    policy, extra = build_policy(
        "case2", backbone, device="cpu", clip_model=missing, clip_fallback="clip-tiny", **SMALL["case2"]
    )
    assert policy.config.clip_used == "clip-tiny" and policy.config.clip_pretrained is False
    assert extra["clip_image"].record["pretrained"] is False
    with pytest.raises(ValueError, match="clip_fallback"):
        build_policy("case2", backbone, device="cpu", clip_fallback="resnet", **SMALL["case2"])


def test_case2_trains_reloads_and_acts_on_kosmos2_tiny(episodes, tmp_path):
    backbone = backbones.create_backbone("kosmos2-tiny", device="cpu")
    config = resolve_train_config(
        "case2", overrides={"device": "cpu", "epochs": 1, "batch_size": 4, "policy": SMALL["case2"]}
    )
    summary = Trainer(config, episodes, tmp_path / "run", backbone=backbone, progress=False).fit()
    assert summary["status"] == "finished"
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["policy"]["clip_used"] == record["extra_features"]["clip_image"]["spec"]["name_or_path"]
    assert record["policy"]["clip_pretrained"] is record["extra_features"]["clip_image"]["pretrained"]
    policy = load_policy(tmp_path / "run", device="cpu", backbone=backbone)
    frame = np.zeros((48, 64, 3), np.uint8)
    action = policy.act(
        frame, "Navigate around obstacles and reach the front of the beverage bottle on the left"
    )
    assert action.shape == (2,) and np.isfinite(action).all()


@pytest.mark.parametrize("case", ["case2", "case3", "case4"])
def test_describe_prints_trainable_and_frozen_counts(case, capsys):
    assert cli_main(["describe", case, "--backbone", "kosmos2-tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    backbone = backbones.create_backbone("kosmos2-tiny", device="cpu")
    policy, extra = build_policy(case, backbone, device="cpu")
    assert info["trainable_parameters"] == policy.num_parameters() > 0
    frozen = backbone.num_parameters + sum(f.num_parameters for f in extra.values())
    assert info["frozen_parameters"] == frozen > 0
    assert (info["frozen_parameters"] > backbone.num_parameters) == (case == "case2")  # + Case 2's CLIP
    if case == "case2":
        assert "pretrained" in info["extra_features"]["clip_image"]
    assert info["architecture"] == ("Simplified2DActionModelV2" if case == "case3" else type(policy).__name__)
    assert info["preset"]["train"]["epochs"] == (5 if case == "case3" else 50)


def test_case2_can_refuse_to_fall_back(tmp_path):
    backbone = backbones.create_backbone("kosmos2-tiny", device="cpu")
    with pytest.raises(backbones.BackboneUnavailableError, match="no_clip_here"):
        build_policy("case2", backbone, clip_model=str(tmp_path / "no_clip_here"), clip_allow_fallback=False)
