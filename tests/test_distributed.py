"""Data-parallel training: batch slicing that makes N processes see what one process would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobile_vla.data.cache import FeatureCache
from mobile_vla.data.synthetic import write_synthetic_dataset
from mobile_vla.training.distributed import DistributedContext, GlobalBatchSampler

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_a_single_process_sees_a_seeded_shuffle_with_a_short_last_batch():
    batches = list(GlobalBatchSampler(7, 2, DistributedContext(), seed=3, epoch=1))
    assert [len(b) for b in batches] == [2, 2, 2, 1]
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert batches == list(GlobalBatchSampler(7, 2, DistributedContext(), seed=3, epoch=1))
    assert batches != list(GlobalBatchSampler(7, 2, DistributedContext(), seed=3, epoch=2))


@pytest.mark.parametrize("size", [12, 13, 3])
def test_ranks_split_each_global_batch_of_the_single_process_order(size):
    single = list(GlobalBatchSampler(size, 4, DistributedContext(), seed=5, epoch=2))
    ranks = [list(GlobalBatchSampler(size, 2, DistributedContext(2, r), seed=5, epoch=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for step, batch in enumerate(single):
        together = ranks[0][step] + ranks[1][step]
        assert len(ranks[0][step]) == len(ranks[1][step]) == 2  # every rank takes every step
        assert together[: len(batch)] == batch  # a short last batch is filled up from the start
    assert {i for r in ranks for b in r for i in b} == set(range(size))


def test_the_context_reads_the_launchers_environment(monkeypatch):
    assert DistributedContext.from_env() == DistributedContext()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = DistributedContext.from_env("cpu")
    assert (context.world_size, context.rank, context.local_rank, context.backend) == (4, 3, 1, "gloo")
    assert not context.is_main and context.device("cuda") == "cuda:1"
    with pytest.raises(ValueError, match="rank 4"):
        DistributedContext(2, 4)


def test_a_single_process_context_leaves_the_model_alone():
    model = torch.nn.Linear(2, 2)
    assert DistributedContext().wrap(model) is model


TRAIN_SCRIPT = """
import sys
import torch
from mobile_vla.training.config import TrainConfig
from mobile_vla.training.trainer import Trainer

torch.set_num_threads(1)
episodes, out, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = TrainConfig(case="case1", backbone="kosmos2-tiny", epochs=2, batch_size=batch_size, device="cpu",
                     frame_selection="all", early_stopping_patience=0, policy={"dropout": 0.0})
Trainer(config, episodes, out, progress=False).fit()
"""


def _env(tmp_path):
    return {
        **os.environ,
        "PYTHONPATH": SRC,
        "MOBILE_VLA_CACHE": str(tmp_path / "cache"),  # one cache, shared by both ranks
        "OMP_NUM_THREADS": "1",
    }


def test_two_processes_train_like_one_process_with_their_combined_batch(tmp_path):
    """2 ranks x batch 1 under torchrun (gloo) vs 1 process x batch 2: same batches, same gradients.

    Tolerance: weights within 1e-5 and losses within 1e-6 (float32 sums in a different order; dropout is
    off because each rank draws its own masks).
    """
    write_synthetic_dataset(
        tmp_path / "episodes", episodes=5, seed=4, image_size=(32, 40)
    )  # 3 train episodes
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    runs = {
        "ddp": launcher + [str(script), str(tmp_path / "episodes"), str(tmp_path / "ddp"), "1"],
        "single": [sys.executable, str(script), str(tmp_path / "episodes"), str(tmp_path / "single"), "2"],
    }
    for name, command in runs.items():
        result = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{name} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    ddp = load_file(tmp_path / "ddp" / "last.safetensors")
    single = load_file(tmp_path / "single" / "last.safetensors")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=1e-5)
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("ddp", "single")}  # fmt: skip
    for a, b in zip(rows["ddp"], rows["single"], strict=True):
        assert a["n_train"] == b["n_train"] == 3 * 18  # every rank's samples counted once
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    # The ranks shared the feature cache: each frame's features were stored once per frame, not per rank.
    info = FeatureCache(tmp_path / "cache" / "features").info()
    (record,) = [r for r in info["backbones"] if r["profile"] == "kosmos2-tiny"]
    assert record["kinds"]["vision"]["entries"] == 4 * 18  # train + validation episodes
