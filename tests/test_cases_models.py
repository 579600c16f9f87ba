"""Cases 2, 3 and 4 and the vision resampler, on fake features (fast): shapes, per-sample independence,
losses, and that each case can fit a few samples."""

import math

import pytest
import torch
from torch import nn

from mobile_vla.policies import available_cases, create_policy, get_case
from mobile_vla.policies.case2 import CLIPNormalized2DConfig
from mobile_vla.policies.case3 import SimpleCase3Config
from mobile_vla.policies.case4 import IGNORE_TASK, NUM_SCENARIOS, RoboVLMsConfig
from mobile_vla.policies.resampler import ResamplerConfig, VisionResampler

# Small stand-ins for a backbone's feature sizes (the real ones are tested with the real backbones).
DIMS = {"vision": 24, "text": 20, "token_dim": 16, "num_image_tokens": 9, "extra": {"clip_image": 12}}
SMALL = {
    "case1": {"hidden_dim": 32},
    "case3": {"hidden_dim": 32},
    "case2": {"hidden_dim": 32, "num_latents": 4, "resampler_heads": 2},
    "case4": {
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
    },
}


def fake_features(batch: int, seed: int = 0, history: int = 3, horizon: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, d = DIMS["num_image_tokens"], DIMS["token_dim"]
    return {
        "vision": torch.randn(batch, DIMS["vision"], generator=g),
        "text": torch.randn(batch, DIMS["text"], generator=g),
        "image_tokens": torch.randn(batch, n, d, generator=g),
        "clip_image": torch.randn(batch, DIMS["extra"]["clip_image"], generator=g),
        "history_tokens": torch.randn(batch, history, n, d, generator=g),
        "history_vision": torch.randn(batch, history, DIMS["vision"], generator=g),
        "history_mask": torch.ones(batch, history),
        "future_vision": torch.randn(batch, horizon, DIMS["vision"], generator=g),
    }


def fake_batch(batch: int, seed: int = 0, chunk: int = 4, horizon: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000)
    action_chunk = torch.randint(-1, 2, (batch, chunk, 2), generator=g).float() * 1.15
    return {
        "action": action_chunk[:, 0].clone(),
        "action_chunk": action_chunk,
        "action_chunk_mask": torch.ones(batch, chunk, dtype=torch.bool),
        "task": torch.randint(0, NUM_SCENARIOS, (batch,), generator=g),
        "future_mask": torch.ones(batch, horizon, dtype=torch.bool),
    }


def inputs_for(policy, features):
    names = tuple(policy.required_features) + tuple(getattr(policy, "training_features", ()))
    return {k: features[k] for k in names}


def build(case: str, **overrides):
    torch.manual_seed(0)
    return create_policy(case, DIMS, **{**SMALL.get(case, {}), **overrides})


# --- the resampler -----------------------------------------------------------------------------------------


def test_resampler_maps_many_tokens_to_one_vector_through_its_latents():
    resampler = VisionResampler(
        ResamplerConfig(num_latents=16, dim=32, num_heads=4), token_dim=16, num_tokens=49
    )
    pooled, latents = resampler(torch.randn(3, 49, 16), return_latents=True)
    assert pooled.shape == (3, 32)
    assert latents.shape == (3, 16, 32)
    assert torch.allclose(pooled, latents.mean(dim=1))


def test_resampler_output_depends_on_every_image_token():
    resampler = VisionResampler(
        ResamplerConfig(num_latents=4, dim=16, num_heads=2), token_dim=8, num_tokens=49
    )
    tokens = torch.randn(1, 49, 8, requires_grad=True)
    # A random read-out: the plain sum of a LayerNorm'd vector is constant, so it has no gradient at all.
    (resampler(tokens) * torch.randn(16)).sum().backward()
    per_token = tokens.grad.abs().sum(dim=-1)[0]  # (49,)
    assert bool((per_token > 0).all()), "some image tokens do not influence the output"


def test_resampler_refuses_a_pooled_vector():
    resampler = VisionResampler(ResamplerConfig(num_latents=4, dim=16, num_heads=2), token_dim=8)
    with pytest.raises(ValueError, match="image tokens"):
        resampler(torch.randn(2, 8))


def test_resampler_rejects_a_token_count_it_was_not_built_for():
    resampler = VisionResampler(
        ResamplerConfig(num_latents=4, dim=16, num_heads=2), token_dim=8, num_tokens=49
    )
    with pytest.raises(ValueError, match="49 image tokens, got 50"):
        resampler(torch.randn(2, 50, 8))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_heads", 3, "num_heads=3 must divide dim=16"),
        ("num_latents", 0, "num_latents"),
        ("dropout", 1.5, "dropout"),
    ],
)
def test_resampler_config_names_the_bad_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        ResamplerConfig(**{"num_latents": 4, "dim": 16, "num_heads": 2, field: value})


def test_case_presets_use_the_seed_resampler_sizes():
    assert get_case("case2").config.num_latents == 16 and get_case("case2").config.resampler_heads == 4
    case4 = get_case("case4").config
    assert case4.num_latents == 64 and case4.resampler_heads > 4 and case4.resampler_depth > 1
    assert (case4.hidden_dim, case4.dropout, case4.state_dim) == (512, 0.1, 64)
    assert (case4.max_plan_length, case4.max_sequence_length, case4.prediction_horizon) == (5, 5, 5)


# --- every case ---------------------------------------------------------------------------------------------


def test_cases_2_3_4_are_registered_under_their_seed_names():
    assert {"case2", "case3", "case4"} <= set(available_cases())
    assert get_case("CLIPNormalized2DActionModelV2").name == "case2"
    assert get_case("SimpleCase3Model").name == "case3"
    assert get_case("RoboVLMsCompleteModel").name == "case4"


@pytest.mark.parametrize("case", ["case2", "case3", "case4"])
def test_presets_build_at_full_size_and_predict_one_action_per_sample(case):
    policy = create_policy(case, DIMS)
    outputs = policy(inputs_for(policy, fake_features(3, history=policy.config.history_length, horizon=5))
                     if case == "case4" else inputs_for(policy, fake_features(3)))  # fmt: skip
    assert outputs["action"].shape == (3, 2)
    assert torch.isfinite(outputs["action"]).all()


@pytest.mark.parametrize("case", ["case2", "case4"])
def test_no_case_normalises_across_the_batch(case):
    policy = create_policy(case, DIMS)
    batch_coupled = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.GroupNorm)
    assert not [m for m in policy.modules() if isinstance(m, batch_coupled)]


@pytest.mark.parametrize("case", ["case2", "case4"])
def test_a_prediction_does_not_depend_on_the_rest_of_the_batch(case):
    policy = build(case).eval()
    features = inputs_for(policy, fake_features(4, seed=1))
    others = inputs_for(policy, fake_features(4, seed=2))
    with torch.no_grad():
        alone = policy({k: v[:1] for k, v in features.items()})
        together = policy(features)
        # Same batch size, different companions: exactly the same numbers.
        mixed = policy({k: torch.cat([v[:1], others[k][1:]]) for k, v in features.items()})
    for key in ("action", "action_chunk") if case == "case4" else ("action",):
        assert torch.equal(together[key][:1], mixed[key][:1])
        assert torch.allclose(alone[key], together[key][:1], atol=1e-6)


# --- Case 2 -------------------------------------------------------------------------------------------------


def test_case2_clip_normalisation_ignores_the_clip_embedding_scale():
    policy = build("case2").eval()
    features = inputs_for(policy, fake_features(2))
    scaled = {**features, "clip_image": features["clip_image"] * torch.tensor([[3.0], [0.1]])}
    with torch.no_grad():
        assert torch.allclose(policy(features)["action"], policy(scaled)["action"], atol=1e-5)


def test_case2_uses_the_clip_embedding():
    policy = build("case2").eval()
    features = inputs_for(policy, fake_features(2))
    other = {**features, "clip_image": fake_features(2, seed=5)["clip_image"]}
    with torch.no_grad():
        assert not torch.allclose(policy(features)["action"], policy(other)["action"])


def test_case2_alignment_loss_is_weighted_one_minus_cosine():
    features, batch = fake_features(3), fake_batch(3)
    plain = build("case2", clip_loss_weight=0.0).eval()
    weighted = build("case2", clip_loss_weight=0.5).eval()
    out = weighted(inputs_for(weighted, features))
    loss, logs = weighted.compute_loss(out, batch)
    action_loss, _ = plain.compute_loss(plain(inputs_for(plain, features)), batch)
    cosine = out["clip_cosine"]
    assert torch.allclose(loss, action_loss + 0.5 * (1 - cosine).mean(), atol=1e-6)
    assert -1 <= logs["clip_cosine"] <= 1


def test_case2_without_the_clip_size_says_what_to_do():
    with pytest.raises(ValueError, match="clip_image"):
        create_policy("case2", {**DIMS, "extra": {}})


def test_case2_config_records_the_seed_clip_and_validates():
    config = get_case("case2").config
    assert config.clip_model == "openai/clip-vit-base-patch32"
    assert config.clip_used is None and config.clip_pretrained is None
    with pytest.raises(ValueError, match="clip_loss_weight"):
        CLIPNormalized2DConfig(clip_loss_weight=-1)
    assert CLIPNormalized2DConfig.from_dict(config.to_dict()) == config


# --- Case 3 -------------------------------------------------------------------------------------------------


def test_case3_runs_case1s_architecture_under_its_own_preset():
    case1, case3 = build("case1"), build("case3")
    shapes1 = {k: v.shape for k, v in case1.state_dict().items()}
    assert shapes1 == {k: v.shape for k, v in case3.state_dict().items()}
    case3.load_state_dict(case1.state_dict())
    features = fake_features(2)
    with torch.no_grad():
        assert torch.equal(case1.eval()(features)["action"], case3.eval()(features)["action"])
    assert case3.config.architecture == "Simplified2DActionModelV2" == type(case1).__name__
    assert get_case("case3").train["epochs"] == 5 and get_case("case1").train["epochs"] == 50


def test_case3_config_refuses_another_architecture():
    with pytest.raises(ValueError, match="Simplified2DActionModelV2"):
        SimpleCase3Config(architecture="RoboVLMsCompleteModel")


# --- Case 4 -------------------------------------------------------------------------------------------------


def test_case4_returns_a_chunk_whose_first_step_is_the_action():
    policy = build("case4").eval()
    out = policy(inputs_for(policy, fake_features(3)))
    assert out["action_chunk"].shape == (3, 4, 2)
    assert torch.equal(out["action"], out["action_chunk"][:, 0])
    assert out["task_logits"].shape == (3, NUM_SCENARIOS)
    assert out["plan"].shape == (3, 2, 32)
    assert out["states"].shape == out["state_targets"].shape == (3, 2, 8)


def test_case4_asks_the_dataset_for_its_window():
    policy = build("case4")
    assert policy.dataset_kwargs() == {"history": 3, "chunk": 4, "horizon": 2}
    assert policy.history_length == 3


def test_case4_state_targets_carry_no_gradient():
    policy = build("case4")
    features = inputs_for(policy, fake_features(2))
    features["future_vision"].requires_grad_(True)
    out = policy(features)
    assert not out["state_targets"].requires_grad
    loss, _ = policy.compute_loss(out, fake_batch(2))
    loss.backward()
    assert features["future_vision"].grad is None


def test_case4_padded_history_frames_change_nothing():
    policy = build("case4").eval()
    features = inputs_for(policy, fake_features(2))
    features["history_mask"] = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    changed = dict(features, history_tokens=features["history_tokens"].clone())
    changed["history_tokens"][0, 0] += 5.0
    changed["history_tokens"][1, :2] -= 3.0
    with torch.no_grad():
        assert torch.allclose(policy(features)["action_chunk"], policy(changed)["action_chunk"], atol=1e-6)
        # ...while a real (unmasked) history frame does matter.
        changed["history_tokens"][0, 1] += 5.0
        assert not torch.allclose(policy(features)["action_chunk"], policy(changed)["action_chunk"])


def test_case4_steps_past_the_episode_end_carry_no_loss():
    policy = build("case4", task_loss_weight=0.0, state_loss_weight=0.0).eval()
    out = policy(inputs_for(policy, fake_features(2)))
    batch = fake_batch(2)
    batch["action_chunk_mask"][:, 2:] = False
    loss, _ = policy.compute_loss(out, batch)
    batch["action_chunk"][:, 2:] += 10.0
    assert torch.equal(loss, policy.compute_loss(out, batch)[0])
    batch["action_chunk"][:, 1] += 10.0
    assert not torch.equal(loss, policy.compute_loss(out, batch)[0])


def test_case4_task_loss_skips_unknown_scenarios():
    policy = build("case4", action_loss_weight=0.0, state_loss_weight=0.0).eval()
    out = policy(inputs_for(policy, fake_features(2)))
    batch = fake_batch(2)
    batch["task"] = torch.tensor([3, IGNORE_TASK])
    loss, logs = policy.compute_loss(out, batch)
    expected = 0.1 * nn.functional.cross_entropy(out["task_logits"][:1], batch["task"][:1])
    assert math.isclose(float(loss.detach()), float(expected.detach()), rel_tol=1e-5)
    batch["task"] = torch.tensor([IGNORE_TASK, IGNORE_TASK])
    loss, logs = policy.compute_loss(out, batch)
    assert "task_loss" not in logs and float(loss.detach()) == 0.0


def test_case4_switches_remove_their_parts():
    policy = build(
        "case4", use_state_prediction=False, use_hierarchical_planning=False, use_vision_resampler=False
    )
    assert "history_vision" in policy.required_features and "history_tokens" not in policy.required_features
    assert tuple(policy.training_features) == ()
    assert policy.dataset_kwargs()["horizon"] == 0
    out = policy(inputs_for(policy, fake_features(2)))
    assert set(out) == {"action", "action_chunk"}
    loss, logs = policy.compute_loss(out, fake_batch(2))
    assert set(logs) == {"action_loss", "chunk_loss", "chunk_mae"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_tasks", 7), ("hidden_dim", 30), ("history_length", 0), ("state_loss_weight", -1.0)],
)
def test_case4_config_names_the_bad_value(field, value):
    overrides = {"hidden_dim": 32, "num_heads": 4, field: value}
    with pytest.raises(
        ValueError, match=field if field != "hidden_dim" else "num_heads=4 must divide hidden_dim=30"
    ):
        RoboVLMsConfig(**overrides)


@pytest.mark.parametrize("loss_name", ["chunk_loss", "task_loss", "state_loss"])
def test_case4_each_loss_decreases_when_trained_alone(loss_name):
    weights = dict.fromkeys(("action_loss_weight", "task_loss_weight", "state_loss_weight"), 0.0)
    weights[{"chunk_loss": "action_loss_weight", "task_loss": "task_loss_weight",
             "state_loss": "state_loss_weight"}[loss_name]] = 1.0  # fmt: skip
    policy = build("case4", dropout=0.0, **weights)
    features, batch = inputs_for(policy, fake_features(4, seed=3)), fake_batch(4, seed=3)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        loss, logs = policy.compute_loss(policy(features), batch)
        history.append(logs[loss_name])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1] < 0.5 * history[0], f"{loss_name}: {history[0]:.4f} -> {history[-1]:.4f}"


# --- every case fits a few samples ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["case2", "case3", "case4"])
def test_each_case_overfits_a_few_windows(case):
    policy = build(case, dropout=0.0)
    features, batch = inputs_for(policy, fake_features(4, seed=4)), fake_batch(4, seed=4)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(120):
        loss, _ = policy.compute_loss(policy(features), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    with torch.no_grad():
        out = policy(features)
    assert (out["action"] - batch["action"]).abs().max() < 0.1
    if case == "case4":
        assert (out["action_chunk"] - batch["action_chunk"]).abs().max() < 0.1
