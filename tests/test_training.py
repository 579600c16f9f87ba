"""The standard trainer: recipe config, run directory, early stopping, exact resume, failure states."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from fake_backbone import FakeBackbone, write_tiny_dataset
from PIL import Image
from safetensors.torch import load_file

from mobile_vla.data.dataset import EpisodeDataset
from mobile_vla.data.episodes import instruction_for_side
from mobile_vla.policies import create_policy
from mobile_vla.training.config import TrainConfig, resolve_train_config
from mobile_vla.training.features import FeatureProvider
from mobile_vla.training.trainer import Callback, Trainer, make_loader

FAST = {"lr": 1e-3, "batch_size": 4, "frame_selection": "random", "device": "cpu"}


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("episodes")
    write_tiny_dataset(directory, episodes=8)
    return directory


def _config(**overrides) -> TrainConfig:
    return resolve_train_config("case1", overrides={**FAST, **overrides})


def _train(episodes, out, callbacks=(), **overrides):
    trainer = Trainer(
        _config(**overrides), episodes, out, backbone=FakeBackbone(), callbacks=callbacks, progress=False
    )
    return trainer, trainer.fit()


class FailAfter(Callback):
    def __init__(self, epoch, exc=RuntimeError):
        self.epoch, self.exc = epoch, exc

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == self.epoch:
            raise self.exc(f"injected after epoch {self.epoch}")


# --- config ---------------------------------------------------------------------------------------------------


def test_train_config_defaults_are_the_seed_recipe():
    c = TrainConfig()
    assert (c.lr, c.weight_decay, c.scheduler_t_max, c.scheduler_eta_min) == (5e-5, 1e-3, 100, 1e-6)
    assert (c.huber_delta, c.grad_clip_norm, c.batch_size, c.epochs, c.early_stopping_patience) == (
        0.1,
        1.0,
        2,
        50,
        3,
    )
    assert c.split_ratios == (0.7, 0.15, 0.15)


def test_train_config_round_trips_exactly_through_json_and_yaml(tmp_path):
    c = TrainConfig(
        case="case1", lr=3e-4, split_ratios=(0.6, 0.2, 0.2), policy={"dropout": 0.2}, backbone_path="/w"
    )
    assert TrainConfig.from_json(c.to_json()) == c
    assert TrainConfig.from_yaml(c.to_yaml()) == c
    assert TrainConfig.load(c.save(tmp_path / "c.yaml")) == c
    assert TrainConfig.load(c.save(tmp_path / "c.json")) == c


@pytest.mark.parametrize(
    "field,value",
    [
        ("lr", -1.0),
        ("epochs", 0),
        ("frame_selection", "middle"),
        ("split_ratios", (0.5, 0.5, 0.5)),
        ("batch_size", 1.5),
    ],
)
def test_train_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_settings_layer_preset_then_file_then_flags(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("epochs: 7\nlr: 0.001\npolicy:\n  dropout: 0.1\n")
    c = resolve_train_config(
        "Simplified2DActionModelV2", path, {"lr": 0.01, "policy": {"hidden_dim": 64}, "seed": None}
    )
    assert c.case == "case1"
    assert c.epochs == 7 and c.lr == 0.01 and c.seed == 0
    assert c.policy == {"dropout": 0.1, "hidden_dim": 64}
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown keys \['epoch'\]"):
        resolve_train_config("case1", tmp_path / "bad.yaml")


# --- data path --------------------------------------------------------------------------------------------------


def test_pil_images_are_batched_by_the_collate_function_not_default_collate(episodes):
    # The seed's "default_collate: batch must contain tensors ... found PIL.Image" cannot happen.
    loader = make_loader(EpisodeDataset(episodes), 3, shuffle=True, seed=0, epoch=0, num_workers=0)
    batch = next(iter(loader))
    assert len(batch["image"]) == 3 and batch["action"].shape == (3, 2)
    features = FeatureProvider(FakeBackbone())(batch, ("vision", "text"))
    assert features["vision"].shape == (3, 48) and features["text"].shape == (3, 40)


def test_text_features_are_computed_once_per_distinct_instruction(episodes):
    backbone = FakeBackbone()
    provider = FeatureProvider(backbone)
    loader = make_loader(EpisodeDataset(episodes), 4, shuffle=False, seed=0, epoch=0, num_workers=0)
    for batch in loader:
        provider(batch, ("text",))
    distinct = {EpisodeDataset(episodes)[i]["text"] for i in range(0, 144, 18)}
    assert backbone.calls["texts"] == len(distinct) == 2


def test_pooled_features_and_tokens_come_from_one_backbone_pass():
    backbone = FakeBackbone()
    images = [Image.new("RGB", (32, 24), (i * 40, 0, 0)) for i in range(3)]
    features = FeatureProvider(backbone)(
        {"image": images, "text": ["a"] * 3}, ("vision", "image_tokens", "text")
    )
    assert features["vision"].shape == (3, 48) and features["image_tokens"].shape == (3, 4, 24)
    assert backbone.calls["pair"] == 1
    torch.testing.assert_close(features["vision"], backbone.encode_images(images))


def test_history_windows_give_features_with_a_time_axis():
    backbone = FakeBackbone()
    windows = [[Image.new("RGB", (32, 24), (i * 40, t * 60, 0)) for t in range(3)] for i in range(2)]
    features = FeatureProvider(backbone)({"image": windows}, ("vision", "image_tokens"))
    assert features["vision"].shape == (2, 3, 48) and features["image_tokens"].shape == (2, 3, 4, 24)
    torch.testing.assert_close(features["vision"][1, 2], backbone.encode_images([windows[1][2]])[0])


# --- learning ---------------------------------------------------------------------------------------------------


def test_case1_overfits_a_handful_of_frames(episodes):
    # Commands the seed's LayerNorm(2) output could never produce, e.g. (1.15, 0) and (0, 0).
    dataset = EpisodeDataset(episodes, frame_selection="all")
    items = [dataset[i] for i in (0, 1, 4, 5, 10, 22, 40, 77)]
    targets = torch.stack([it["action"] for it in items])
    assert {(round(float(x), 2), round(float(y), 2)) for x, y in targets} >= {(0.0, 0.0), (1.15, 0.0)}
    provider = FeatureProvider(FakeBackbone())
    features = provider(
        {"image": [it["image"] for it in items], "text": [it["text"] for it in items]}, ("vision", "text")
    )
    torch.manual_seed(0)
    policy = create_policy("case1", provider.dims, dropout=0.0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(400):
        loss, _ = policy.compute_loss(policy(features), {"action": targets})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mae = (policy.predict(features) - targets).abs().max()
    assert mae < 0.05, f"max abs error {mae:.3f} after 400 steps on 8 frames"


def test_training_writes_the_run_directory(episodes, tmp_path):
    run = tmp_path / "run"
    _, summary = _train(episodes, run, epochs=2)
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    for name in (
        "config.json",
        "best.safetensors",
        "last.safetensors",
        "metrics.jsonl",
        "loss_curve.png",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    split = config["data"]["split"]
    assert set(split["train"]).isdisjoint(split["val"]) and set(split["val"]).isdisjoint(split["test"])
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == config["data"]["num_episodes"] == 8
    assert config["data"]["provenance"] == "synthetic"
    assert config["backbone"]["fingerprint_hash"] == FakeBackbone().fingerprint_hash
    assert config["action_dims"] == ["linear_x", "linear_y"] and config["case"] == "case1"
    assert TrainConfig.from_dict(config["train"]).epochs == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["n_val"] > 0 and rows[0]["val_metrics"]["n"] == rows[0]["n_val"]
    assert "mae" in rows[0]["val_metrics"]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_an_existing_run_is_not_overwritten(episodes, tmp_path):
    _train(episodes, tmp_path / "run", epochs=1)
    with pytest.raises(FileExistsError, match="--resume"):
        _train(episodes, tmp_path / "run", epochs=1)


def test_early_stopping_stops_when_validation_loss_stops_improving(episodes, tmp_path):
    # min_delta 10 means only the first epoch (from +inf) counts as an improvement.
    _, summary = _train(
        episodes, tmp_path / "run", epochs=20, early_stopping_patience=2, early_stopping_min_delta=10.0
    )
    assert summary["early_stopped"] and summary["epochs_completed"] == 3 and summary["best_epoch"] == 0
    best = load_file(str(tmp_path / "run" / "best.safetensors"))
    last = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert any(not torch.equal(best[k], last[k]) for k in best)  # best is epoch 0, not the last epoch


def test_a_run_killed_mid_way_and_resumed_ends_with_the_same_weights(episodes, tmp_path):
    settings = {"epochs": 4, "early_stopping_patience": 0}
    _train(episodes, tmp_path / "straight", **settings)
    with pytest.raises(RuntimeError, match="injected"):
        _train(episodes, tmp_path / "cut", callbacks=[FailAfter(1)], **settings)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "failed"
    summary = Trainer.resume(tmp_path / "cut", backbone=FakeBackbone(), progress=False).fit()
    assert summary["status"] == "finished" and summary["epochs_completed"] == 4
    straight = load_file(str(tmp_path / "straight" / "last.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    rows = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["train_loss"] for r in rows("cut")] == [r["train_loss"] for r in rows("straight")]


def test_keyboard_interrupt_and_sigterm_mark_the_run_killed(episodes, tmp_path):
    from mobile_vla.cli import process_hooks

    with pytest.raises(KeyboardInterrupt):
        _train(episodes, tmp_path / "ctrl_c", callbacks=[FailAfter(0, KeyboardInterrupt)], epochs=3)
    assert json.loads((tmp_path / "ctrl_c" / "summary.json").read_text())["status"] == "killed"

    class Terminate(Callback):
        def on_epoch_end(self, trainer, record):
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited, process_hooks():  # what every CLI command runs under
        _train(episodes, tmp_path / "term", callbacks=[Terminate()], epochs=3)
    assert exited.value.code == 128 + signal.SIGTERM
    summary = json.loads((tmp_path / "term" / "summary.json").read_text())
    assert summary["status"] == "killed" and summary["epochs_completed"] == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is only installed while the command runs


def test_the_library_installs_no_process_hook(episodes, tmp_path):
    """Training (and the registry run it opens) leaves SIGTERM, sys.excepthook and the environment alone."""
    import sys

    from mobile_vla.registry import open_registry

    registry = open_registry(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    sigterm, excepthook, environ = signal.getsignal(signal.SIGTERM), sys.excepthook, dict(os.environ)

    class Check(Callback):
        def on_epoch_end(self, trainer, record):
            assert signal.getsignal(signal.SIGTERM) is sigterm and sys.excepthook is excepthook

    _train(episodes, tmp_path / "run", callbacks=[registry.training_callback(), Check()], epochs=1)
    assert signal.getsignal(signal.SIGTERM) is sigterm and sys.excepthook is excepthook
    assert dict(os.environ) == environ


def test_resume_refuses_different_data(episodes, tmp_path):
    with pytest.raises(RuntimeError):
        _train(episodes, tmp_path / "run", callbacks=[FailAfter(0)], epochs=2)
    other = tmp_path / "other"
    write_tiny_dataset(other, episodes=8, seed=5)
    with pytest.raises(ValueError, match="fingerprint"):
        Trainer.resume(tmp_path / "run", data=other, backbone=FakeBackbone(), progress=False).fit()


def test_callbacks_see_every_epoch_and_the_final_summary(episodes, tmp_path):
    seen = {"epochs": [], "end": None}

    class Recorder(Callback):
        def on_epoch_end(self, trainer, record):
            seen["epochs"].append(record["epoch"])

        def on_run_end(self, trainer, summary):
            seen["end"] = summary["status"]

    _train(episodes, tmp_path / "run", callbacks=[Recorder()], epochs=3)
    assert seen == {"epochs": [0, 1, 2], "end": "finished"}


def test_random_frame_selection_draws_new_frames_each_epoch(episodes):
    dataset = EpisodeDataset(episodes, frame_selection="random", seed=0)
    first = list(dataset.frame_refs)
    dataset.set_epoch(1)
    assert dataset.frame_refs != first
    assert np.all([a[0] == b[0] for a, b in zip(first, dataset.frame_refs, strict=True)])


def test_train_cli_has_a_flag_for_every_recipe_field_and_layers_them(tmp_path, capsys):
    import dataclasses

    import yaml

    from mobile_vla.cli import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 9\nlr: 1e-3\nbatch_size: 8\n")
    argv = [
        "train",
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(recipe),
        "--batch-size",
        "4",
        "--policy",
        "dropout=0.2",
        "--split-ratios",
        "0.8",
        "0.1",
        "0.1",
        "--drop-start-frame",
        "--print-config",
    ]
    assert main(argv) == 0
    config = TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert (config.case, config.epochs, config.lr, config.batch_size) == ("case1", 9, 1e-3, 4)
    assert (
        config.policy == {"dropout": 0.2}
        and config.split_ratios == (0.8, 0.1, 0.1)
        and config.drop_start_frame
    )
    assert config.weight_decay == 1e-3  # untouched fields keep the preset


def test_instruction_features_are_standardised_from_the_training_split(episodes, tmp_path):
    """Left and right instructions differ by one word; the head sees them standardised, far apart."""
    trainer, _ = _train(episodes, tmp_path / "run", epochs=1)
    policy = trainer.policy
    assert torch.count_nonzero(policy.text_mean) > 0 and not torch.allclose(
        policy.text_std, torch.ones_like(policy.text_std)
    )
    left, right = (instruction_for_side(side) for side in ("left", "right"))
    raw = trainer.provider({"text": [left, right]}, ["text"])["text"]
    standardised = ((raw - policy.text_mean) / policy.text_std).clamp(-10, 10)
    raw_cos = torch.nn.functional.cosine_similarity(raw[0], raw[1], dim=0)
    std_cos = torch.nn.functional.cosine_similarity(standardised[0], standardised[1], dim=0)
    assert std_cos < raw_cos - 0.5  # the one-word difference now dominates
    # The statistics travel with the checkpoint: a reloaded head holds the same buffers.
    saved = load_file(tmp_path / "run" / "best.safetensors")
    assert torch.equal(saved["text_mean"], policy.text_mean.cpu())
