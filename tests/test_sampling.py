"""The training sampler: uniform vs balanced draws by scenario, core/variant pattern and action class."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from fake_backbone import FakeBackbone
from safetensors.torch import load_file

from mobile_vla.data.action_space import KEY_CLASSES
from mobile_vla.data.dataset import EpisodeDataset
from mobile_vla.data.episodes import Scenario, write_episode
from mobile_vla.data.synthetic import write_synthetic_episode
from mobile_vla.training import trainer as trainer_module
from mobile_vla.training.config import TrainConfig, resolve_train_config
from mobile_vla.training.distributed import DistributedContext
from mobile_vla.training.sampling import (
    SamplingSettings,
    WeightedGlobalBatchSampler,
    draw,
    draw_shares,
    item_weights,
    scenario_group,
)
from mobile_vla.training.trainer import Callback, Trainer

BALANCED = SamplingSettings("balanced", variant_ratio=0.3)


def write_imbalanced(directory, per_cell=None, image_size=(16, 20)):
    """1box_vert episodes at `medium`: left:right 3:1 and core:variant 4:1 (12/3/4/1 by default)."""
    per_cell = per_cell or {
        ("left", "core"): 12,
        ("left", "variant"): 3,
        ("right", "core"): 4,
        ("right", "variant"): 1,
    }
    seed = 0
    for (side, pattern), count in per_cell.items():
        for _ in range(count):
            scenario = Scenario(1, "vert", side, pattern, "medium")
            write_synthetic_episode(directory, scenario, seed=seed, image_size=image_size)
            seed += 1
    return directory


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    return EpisodeDataset(write_imbalanced(tmp_path_factory.mktemp("imbalanced")), frame_selection="all")


def test_uniform_draws_what_the_data_holds(imbalanced):
    shares = draw_shares(imbalanced, item_weights(imbalanced, SamplingSettings("uniform")))
    assert shares["scenario"] == {
        "1box_vert_left_medium": pytest.approx(0.75),
        "1box_vert_right_medium": pytest.approx(0.25),
    }
    assert shares["pattern"]["variant"] == pytest.approx(0.2)


def test_balanced_draws_every_scenario_equally_with_the_variant_ratio(imbalanced):
    shares = draw_shares(imbalanced, item_weights(imbalanced, BALANCED))
    assert shares["scenario"]["1box_vert_left_medium"] == pytest.approx(0.5)
    assert shares["scenario"]["1box_vert_right_medium"] == pytest.approx(0.5)
    assert shares["pattern"]["variant"] == pytest.approx(0.3)
    # variant_ratio None keeps the data's pattern mix (0.2) but still balances the scenarios.
    as_data = draw_shares(imbalanced, item_weights(imbalanced, SamplingSettings("balanced")))
    assert as_data["pattern"]["variant"] == pytest.approx(0.2)
    assert as_data["scenario"]["1box_vert_right_medium"] == pytest.approx(0.5)


def test_the_draw_follows_the_weights_and_depends_only_on_seed_and_epoch(imbalanced):
    weights = item_weights(imbalanced, BALANCED)
    picks = draw(weights, 40_000, seed=3, epoch=1)
    sides = Counter(imbalanced[i]["scenario"] for i in picks[:4000])  # cheap: scenario from the item
    assert sides["1box_vert_right"] / 4000 == pytest.approx(0.5, abs=0.03)
    counts = np.bincount(picks, minlength=len(weights)) / len(picks)
    assert np.abs(counts - weights).max() < 0.006
    assert picks == draw(weights, 40_000, seed=3, epoch=1)
    assert picks != draw(weights, 40_000, seed=3, epoch=2)
    assert picks != draw(weights, 40_000, seed=4, epoch=1)


def test_unknown_scenarios_form_their_own_group(tmp_path):
    write_imbalanced(tmp_path, {("left", "core"): 3, ("right", "core"): 1})
    images = np.zeros((18, 16, 20, 3), np.uint8)
    write_episode(tmp_path / "episode_20250101_000000_mystery.h5", images, np.zeros((18, 3), np.float32))
    dataset = EpisodeDataset(tmp_path, frame_selection="all")
    shares = draw_shares(dataset, item_weights(dataset, SamplingSettings("balanced")))
    assert scenario_group(None) == "unknown"
    assert shares["scenario"] == {
        k: pytest.approx(1 / 3) for k in ("1box_vert_left_medium", "1box_vert_right_medium", "unknown")
    }


def test_class_balance_draws_rare_keys_more_and_keeps_the_scenario_shares(imbalanced):
    plain = draw_shares(imbalanced, item_weights(imbalanced, BALANCED))
    settings = SamplingSettings("balanced", variant_ratio=0.3, class_balance=True, class_weight_cap=5.0)
    weighted = draw_shares(imbalanced, item_weights(imbalanced, settings))
    assert weighted["scenario"] == pytest.approx(plain["scenario"])
    assert weighted["pattern"] == pytest.approx(plain["pattern"])
    assert (
        weighted["action_class"]["FORWARD"] < plain["action_class"]["FORWARD"]
    )  # the majority key is drawn less
    rare = min(plain["action_class"], key=plain["action_class"].get)
    assert weighted["action_class"][rare] > plain["action_class"][rare]
    # Within an episode, frames are weighted by min(cap, 1 / (classes x class share)), the shares being the
    # plain balanced draw's.
    episode = imbalanced.episodes[0]
    classes = [KEY_CLASSES[c] for c in episode.action_classes]
    for cap in (5.0, 1.5):
        weights = item_weights(imbalanced, SamplingSettings("balanced", 0.3, True, cap))[:18]
        inv = {c: min(cap, 1 / (len(plain["action_class"]) * s)) for c, s in plain["action_class"].items()}
        expected = np.array([inv[c] for c in classes])
        np.testing.assert_allclose(weights / weights.sum(), expected / expected.sum(), rtol=1e-9)


def test_config_validates_and_round_trips_the_sampling_fields():
    config = TrainConfig(sampling="balanced", variant_ratio="0.3", class_balance=True, frame_selection="all")
    assert config.variant_ratio == 0.3 and TrainConfig.from_json(config.to_json()) == config
    assert TrainConfig(sampling="balanced", variant_ratio="none").variant_ratio is None
    for bad, match in (
        ({"sampling": "weighted"}, "sampling"),
        ({"sampling": "balanced", "variant_ratio": 1.5}, "variant_ratio"),
        ({"variant_ratio": 0.3}, "variant_ratio"),  # uniform draws ignore it: refuse rather than mislead
        ({"sampling": "balanced", "class_balance": True, "frame_selection": "random"}, "class_balance"),
        ({"sampling": "balanced", "class_weight_cap": 0.5}, "class_weight_cap"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_ranks_split_each_global_batch_of_the_single_process_draw(imbalanced):
    weights = item_weights(imbalanced, BALANCED)
    single = list(WeightedGlobalBatchSampler(weights, 4, DistributedContext(), seed=5, epoch=2))
    ranks = [
        list(WeightedGlobalBatchSampler(weights, 2, DistributedContext(2, r), seed=5, epoch=2))
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == -(-len(weights) // 4)
    for step, batch in enumerate(single):
        assert (ranks[0][step] + ranks[1][step])[: len(batch)] == batch


def test_train_cli_documents_the_strategy_and_parses_its_flags(tmp_path, capsys):
    import yaml

    from mobile_vla.cli import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--sampling {uniform,balanced}", "--variant-ratio", "--class-balance", "--class-weight-cap"):
        assert flag in help_text
    flat = " ".join(help_text.split())  # argparse wraps lines
    assert "task x side x distance" in flat and "--resume and DDP ranks draw exactly" in flat
    argv = ["train", "--out", str(tmp_path / "r"), "--sampling", "balanced", "--variant-ratio", "0.3"]
    assert main([*argv, "--frame-selection", "all", "--class-balance", "--print-config"]) == 0
    config = TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert (config.sampling, config.variant_ratio, config.class_balance) == ("balanced", 0.3, True)


# --- the trainer: config.json records it, resume redraws the same samples ------------------------------------


class DrawLog:
    """Records the (episode_id, frame_index) of every training batch by wrapping the trainer's loader."""

    def __init__(self, monkeypatch):
        self.batches: list[list[tuple[str, int]]] = []
        original = trainer_module.make_loader

        def logged(dataset, batch_size, *, shuffle, **kwargs):
            loader = original(dataset, batch_size, shuffle=shuffle, **kwargs)
            if not shuffle:
                return loader
            log = self.batches

            class Logged:
                def __iter__(self):
                    for batch in loader:
                        log.append(list(zip(batch["episode_id"], batch["frame_index"].tolist(), strict=True)))
                        yield batch

                def __len__(self):
                    return len(loader)

            return Logged()

        monkeypatch.setattr(trainer_module, "make_loader", logged)


class FailAfter(Callback):
    def on_epoch_end(self, trainer, record):
        if record["epoch"] == 1:
            raise RuntimeError("injected after epoch 1")


def _balanced_config(**overrides):
    return resolve_train_config(
        "case1",
        overrides={
            "lr": 1e-3,
            "batch_size": 4,
            "frame_selection": "all",
            "device": "cpu",
            "epochs": 3,
            "early_stopping_patience": 0,
            "sampling": "balanced",
            "variant_ratio": 0.3,
            "class_balance": True,
            "split_ratios": (0.8, 0.2, 0.0),
            **overrides,
        },
    )


def test_a_resumed_balanced_run_draws_the_same_samples_and_records_the_sampler(tmp_path, monkeypatch):
    data = write_imbalanced(tmp_path / "episodes")
    straight_log = DrawLog(monkeypatch)
    Trainer(_balanced_config(), data, tmp_path / "straight", backbone=FakeBackbone(), progress=False).fit()
    straight = list(straight_log.batches)
    cut_log = DrawLog(monkeypatch)
    with pytest.raises(RuntimeError, match="injected"):
        Trainer(
            _balanced_config(),
            data,
            tmp_path / "cut",
            backbone=FakeBackbone(),
            callbacks=[FailAfter()],
            progress=False,
        ).fit()
    Trainer.resume(tmp_path / "cut", backbone=FakeBackbone(), progress=False).fit()
    assert cut_log.batches == straight
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("straight", "cut"))
    for key in a:
        assert torch.equal(a[key], b[key]), key

    record = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert record["train"]["sampling"] == "balanced" and record["train"]["variant_ratio"] == 0.3
    assert record["sampling"]["strategy"] == "balanced" and record["sampling"]["class_balance"] is True
    assert record["sampling"]["variant_share"]["drawn"] == pytest.approx(0.3)
    # Every epoch draws len(train) items, with the right share from the minority side.
    n_items = record["sampling"]["num_items"]
    per_epoch = -(-n_items // 4)
    epoch0 = [item for batch in straight[:per_epoch] for item in batch]
    assert len(epoch0) == n_items
    drawn = [item for batch in straight for item in batch]
    right = sum("_right_" in episode for episode, _ in drawn) / len(drawn)
    train_ids = record["data"]["split"]["train"]
    assert sum("_right_" in e for e in train_ids) / len(train_ids) < 0.35  # the data is imbalanced ...
    assert right == pytest.approx(0.5, abs=0.1)  # ... the draw is not (n = 3 epochs of draws)


def test_a_uniform_run_draws_each_training_frame_once_per_epoch(tmp_path, monkeypatch):
    data = write_imbalanced(tmp_path / "episodes", {("left", "core"): 3, ("right", "core"): 2})
    log = DrawLog(monkeypatch)
    config = _balanced_config(sampling="uniform", variant_ratio=None, class_balance=False, epochs=1)
    Trainer(config, data, tmp_path / "run", backbone=FakeBackbone(), progress=False).fit()
    drawn = [item for batch in log.batches for item in batch]
    assert len(drawn) == len(set(drawn)) == 4 * 18
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["sampling"] == {
        "strategy": "uniform",
        "variant_ratio": None,
        "class_balance": False,
        "class_weight_cap": 5.0,
        "num_items": 72,
    }
