"""The resume state is one unit: a crash at any point of a save leaves the previous or the new state."""

import pytest
import torch
from torch import nn

from mobile_vla.training import checkpoints
from mobile_vla.training.checkpoints import load_resume_state, resume_state_dir, save_resume_state


def _setup(seed: int):
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def _save(directory, model, optimizer, scheduler, epoch):
    save_resume_state(
        directory,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=epoch,
        counters={"best": epoch},
    )


class Crash(Exception):
    pass


@pytest.mark.parametrize("where", ["tensors", "json", "rename", "manifest"])
def test_a_save_cut_at_any_step_leaves_the_previous_state_loadable(tmp_path, monkeypatch, where):
    directory = tmp_path / "resume"
    first = _setup(0)
    _save(directory, *first, epoch=0)
    expected = {k: v.clone() for k, v in first[0].state_dict().items()}

    second = _setup(1)

    def crash(*args, **kwargs):
        raise Crash(where)

    if where == "tensors":
        monkeypatch.setattr(checkpoints, "save_file", crash)
    elif where == "json":
        monkeypatch.setattr(checkpoints, "_fsync", crash)
    elif where == "rename":
        monkeypatch.setattr(checkpoints.os, "replace", crash)
    else:
        monkeypatch.setattr(checkpoints, "_atomic_write_text", crash)
    with pytest.raises(Crash):
        _save(directory, *second, epoch=1)
    monkeypatch.undo()

    fresh = _setup(2)
    state = load_resume_state(directory, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])
    assert state == {"epoch": 0, "counters": {"best": 0}}
    for key, value in fresh[0].state_dict().items():
        assert torch.equal(value, expected[key]), key

    # The next complete save takes over and cleans up what the cut one left.
    _save(directory, *second, epoch=1)
    state = load_resume_state(directory, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])
    assert state["epoch"] == 1
    assert [p.name for p in directory.iterdir() if p.is_dir()] == [resume_state_dir(directory).name]


def test_a_manifest_naming_a_missing_state_is_a_named_error(tmp_path):
    directory = tmp_path / "resume"
    _save(directory, *_setup(0), epoch=0)
    (directory / "CURRENT").write_text("epoch-99999-gone\n")
    fresh = _setup(1)
    with pytest.raises(FileNotFoundError, match="CURRENT"):
        load_resume_state(directory, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])


def test_cuda_rng_states_are_ordered_by_device_index_not_as_strings(tmp_path, monkeypatch):
    directory = tmp_path / "resume"
    model, optimizer, scheduler = _setup(0)
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(12)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.extend(s))
    _save(directory, model, optimizer, scheduler, epoch=0)
    load_resume_state(directory, model=model, optimizer=optimizer, scheduler=scheduler)
    assert [int(s[0]) for s in restored] == list(range(12))
