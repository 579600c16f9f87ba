"""Data-parallel training: batch slicing that makes N processes see what one process would."""

import pytest
import torch

from mobile_vla.training.distributed import DistributedContext, GlobalBatchSampler


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
