"""Weight averaging (TrainConfig.ema_decay): the average is what is validated and saved, and survives resume."""

import json

import pytest
import torch
from fake_backbone import FakeBackbone, write_tiny_dataset
from safetensors.torch import load_file

from mobile_vla.training.averaging import WeightAverage
from mobile_vla.training.config import TrainConfig, resolve_train_config
from mobile_vla.training.trainer import Callback, Trainer


def test_the_average_follows_every_optimiser_step_and_swaps_in_and_out():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    average = WeightAverage(layer.parameters(), decay=0.9)
    average.attach(optimizer)
    expected = [p.detach().clone() for p in layer.parameters()]
    for _ in range(5):
        optimizer.zero_grad()
        layer(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, layer.parameters(), strict=True)]
    raw = [p.detach().clone() for p in layer.parameters()]
    for got, want in zip(average.averaged, expected, strict=True):
        torch.testing.assert_close(got, want)
    with average.swapped():
        for p, want in zip(layer.parameters(), expected, strict=True):
            torch.testing.assert_close(p.detach(), want)
    for p, want in zip(layer.parameters(), raw, strict=True):
        assert torch.equal(p.detach(), want)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(layer.parameters(), decay=1.0)


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
def test_ema_decay_is_validated(value):
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=value)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_tiny_dataset(root, episodes=6)
    return root


def _config(**overrides):
    base = {
        "device": "cpu",
        "batch_size": 4,
        "lr": 1e-3,
        "epochs": 2,
        "ema_decay": 0.9,
        "policy": {"hidden_dim": 16},
    }
    return resolve_train_config("case1", overrides={**base, **overrides})


def _weights(path):
    return load_file(str(path))


def test_a_run_saves_the_average_and_keeps_training_the_raw_weights(episodes, tmp_path):
    Trainer(_config(), episodes, tmp_path / "ema", backbone=FakeBackbone(), progress=False).fit()
    Trainer(_config(ema_decay=0.0), episodes, tmp_path / "raw", backbone=FakeBackbone(), progress=False).fit()
    last = _weights(tmp_path / "ema" / "last.safetensors")
    state_dir = tmp_path / "ema" / "resume"
    state = load_file(str(state_dir / (state_dir / "CURRENT").read_text().strip() / "state.safetensors"))
    averages = [
        state[k] for k in sorted((k for k in state if k.startswith("average.")), key=lambda k: int(k[8:]))
    ]
    # Every averaged tensor is what the saved head holds for one of its parameters.
    assert averages and all(any(torch.equal(a, last[k]) for k in last) for a in averages)
    # The saved head is the average, not the raw weights the optimiser left (those are in the resume state).
    assert any(not torch.equal(last[k], state[f"model.{k}"]) for k in last if f"model.{k}" in state)
    # Without averaging, the run trains the same raw weights: same seed, same draws.
    raw_state_dir = tmp_path / "raw" / "resume"
    raw_state = load_file(
        str(raw_state_dir / (raw_state_dir / "CURRENT").read_text().strip() / "state.safetensors")
    )
    for k in last:
        if f"model.{k}" in state:
            assert torch.equal(state[f"model.{k}"], raw_state[f"model.{k}"]), k
    assert json.loads((tmp_path / "ema" / "config.json").read_text())["train"]["ema_decay"] == 0.9


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, record):
        if record["epoch"] == 0:
            raise KeyboardInterrupt("killed")


def test_an_interrupted_averaged_run_resumes_to_the_same_weights(episodes, tmp_path):
    Trainer(_config(), episodes, tmp_path / "whole", backbone=FakeBackbone(), progress=False).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(
            _config(), episodes, tmp_path / "cut", backbone=FakeBackbone(), progress=False,
            callbacks=[StopAfterFirstEpoch()],
        ).fit()  # fmt: skip
    Trainer.resume(tmp_path / "cut", backbone=FakeBackbone(), progress=False).fit()
    whole, resumed = (
        _weights(tmp_path / "whole" / "last.safetensors"),
        _weights(tmp_path / "cut" / "last.safetensors"),
    )
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_a_resume_state_without_the_average_is_refused_for_an_averaged_run(tmp_path):
    from mobile_vla.runs.checkpoints import load_resume_state, save_resume_state

    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    save_resume_state(tmp_path, model=layer, optimizer=optimizer, scheduler=scheduler, epoch=0, counters={})
    average = WeightAverage(layer.parameters(), 0.9)
    with pytest.raises(ValueError, match="averages 2 weight tensors"):
        load_resume_state(
            tmp_path, model=layer, optimizer=optimizer, scheduler=scheduler, averaged=average.averaged
        )
