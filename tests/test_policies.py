"""Case heads and the case registry: sizes come from the backbone, presets carry the seed's values."""

import pytest
import torch
from fake_backbone import FakeBackbone

from mobile_vla.policies import FeatureDims, create_policy, get_case, register_case, resolve_case_name
from mobile_vla.policies.case1 import Simplified2DActionModelV2, Simplified2DConfig
from mobile_vla.policies.registry import CaseSpec, available_cases


def _features(dims: FeatureDims, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "vision": torch.randn(batch, dims.vision, generator=g),
        "text": torch.randn(batch, dims.text, generator=g),
    }


@pytest.mark.parametrize("vision,text", [(48, 40), (1024, 2048), (1280, 384)])
def test_case1_input_sizes_follow_the_backbone(vision, text):
    backbone = FakeBackbone(vision_dim=vision, text_dim=text)
    policy = create_policy("case1", backbone)
    assert policy.vision_proj.in_features == vision
    assert policy.text_proj.in_features == text
    out = policy(_features(FeatureDims.from_backbone(backbone), 3))
    assert out["action"].shape == (3, 2)


def test_seed_dim_mismatch_2x2048_and_1024x256_cannot_happen():
    # The seed typed vision_dim=1024 and fed 2048-d language features into it. Here the projections are sized
    # from the feature dims, so Kosmos-2's (1024, 2048) goes through, whichever way round the sizes are.
    for dims in (FeatureDims(vision=1024, text=2048), FeatureDims(vision=2048, text=1024)):
        policy = create_policy("case1", dims)
        assert policy(_features(dims, 2))["action"].shape == (2, 2)


def test_case1_head_is_the_seed_four_layer_mlp_without_output_normalisation():
    policy = create_policy("case1", FeatureDims(vision=1024, text=2048))
    linears = [m for m in policy.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512, 512),
        (512, 256),
        (256, 128),
        (128, 2),
    ]
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.4 for m in policy.head.modules()) == 3
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)) for m in policy.modules())
    assert isinstance(list(policy.head.net)[-1], torch.nn.Linear)  # the output is a bare linear layer


def test_case1_preset_carries_the_seed_hyperparameters_and_training_settings():
    spec = get_case("case1")
    assert spec.config.hidden_dim == 256 and spec.config.dropout == 0.4
    assert spec.config.action_dims == ("linear_x", "linear_y")
    assert spec.train["epochs"] == 50 and spec.train["batch_size"] == 2
    assert spec.train["lr"] == 5e-5 and spec.train["weight_decay"] == 1e-3
    assert spec.train["huber_delta"] == 0.1 and spec.train["early_stopping_patience"] == 3


def test_seed_class_name_is_an_alias_of_case1():
    assert resolve_case_name("Simplified2DActionModelV2") == "case1"
    policy = create_policy("Simplified2DActionModelV2", FeatureDims(vision=8, text=8))
    assert isinstance(policy, Simplified2DActionModelV2) and policy.case_name == "case1"
    assert "case1" in available_cases()


def test_unknown_case_error_lists_the_registered_ones():
    with pytest.raises(KeyError, match="case1"):
        create_policy("case99", FeatureDims(vision=8, text=8))


def test_overrides_replace_preset_fields_and_are_validated():
    policy = create_policy("case1", FeatureDims(vision=8, text=8), hidden_dim=64, dropout=0.1)
    assert policy.config.hidden_dim == 64 and policy.head.net[0].out_features == 128
    assert get_case("case1").config.hidden_dim == 256  # the preset itself is untouched
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        create_policy("case1", FeatureDims(vision=8, text=8), dropout=1.5)
    with pytest.raises(ValueError, match="hiden_dim"):
        create_policy("case1", FeatureDims(vision=8, text=8), hiden_dim=64)
    with pytest.raises(ValueError, match="activation 'swish'"):
        Simplified2DConfig(activation="swish")


def test_action_dims_are_a_config_choice():
    policy = create_policy(
        "case1", FeatureDims(vision=8, text=8), action_dims=("linear_x", "linear_y", "angular_z")
    )
    assert policy(_features(policy.dims, 4))["action"].shape == (4, 3)
    assert policy.action_dims == ("linear_x", "linear_y", "angular_z")
    with pytest.raises(ValueError, match="'forward'"):
        Simplified2DConfig(action_dims=("linear_x", "forward"))


def test_policy_config_round_trips_through_a_dict():
    config = Simplified2DConfig(action_dims=("linear_y",), hidden_dim=32, dropout=0.0, activation="gelu")
    assert Simplified2DConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown Simplified2DConfig keys"):
        Simplified2DConfig.from_dict({**config.to_dict(), "layers": 3})


def test_a_sample_prediction_does_not_depend_on_the_rest_of_the_batch():
    dims = FeatureDims(vision=48, text=40)
    policy = create_policy("case1", dims).eval()
    batch = _features(dims, 6)
    with torch.no_grad():
        together = policy(batch)["action"]
        alone = torch.cat([policy({k: v[i : i + 1] for k, v in batch.items()})["action"] for i in range(6)])
        other = _features(dims, 6, seed=1)
        mixed = policy({k: torch.cat([batch[k][:1], other[k][1:]]) for k in batch})["action"]
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(mixed[0], together[0])


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):

        @register_case("case1")
        def again() -> CaseSpec:
            return CaseSpec(policy_class=Simplified2DActionModelV2, config=Simplified2DConfig())


@pytest.mark.parametrize("case", ["case1", "case3"])
def test_predict_applies_the_text_standardisation_like_a_call(case):
    dims = FeatureDims(vision=48, text=40)
    policy = create_policy(case, dims).eval()
    g = torch.Generator().manual_seed(3)
    policy.set_text_stats(torch.randn(dims.text, generator=g), torch.rand(dims.text, generator=g) + 0.5)
    batch = _features(dims, 4)
    with torch.no_grad():
        called = policy(batch)["action"]
        raw = policy.forward(batch)["action"]
    torch.testing.assert_close(policy.predict(batch), called)
    assert not torch.allclose(raw, called)  # the stats matter, so skipping the hook would show
