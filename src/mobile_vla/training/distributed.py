"""Data-parallel training across processes: the same trainer under `torchrun` / `accelerate launch`.

    torchrun --nproc-per-node 2 -m mobile_vla.cli train DATA --case case1 --out runs/ddp      # one machine
    accelerate launch --num_processes 2 -m mobile_vla.cli train DATA --case case1 --out runs/ddp

Both launchers set `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`; `DistributedContext
.from_env()` reads them, and with `WORLD_SIZE` > 1 the trainer joins a process group (NCCL on GPUs, gloo on
CPUs), wraps the head in `DistributedDataParallel` and lets rank 0 alone write the run directory.

Batches: every rank draws the same shuffled order of the dataset (seeded by seed and epoch), cuts it into
global batches of `world_size x batch_size` samples, and takes its own contiguous slice of each. DDP averages
the ranks' gradients, so a step sees exactly the samples (and, without dropout, the gradient) of one process
training with batch size `world_size x batch_size`. With more than one rank, the last global batch is filled
up with samples from the start of the order when the dataset does not divide evenly (every rank must take
every step); a single process keeps a short last batch, as torch's own sampler does.

The feature cache is shared by all ranks: each writes its entries atomically, so ranks that compute the same
frame at once both succeed, and ranks never wait for each other to fill it.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel job (a single process: world size 1, rank 0).

    Attributes:
        world_size: number of processes.
        rank: this process's index, 0..world_size-1; rank 0 writes the run directory.
        local_rank: index on this machine (picks the GPU).
        backend: `nccl` (GPUs) or `gloo` (CPUs); empty for a single process.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = ""

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")

    @classmethod
    def from_env(cls, device: str = "cpu") -> DistributedContext:
        """Read `WORLD_SIZE`/`RANK`/`LOCAL_RANK` (set by torchrun and accelerate); single process if unset."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
        return cls(
            world_size, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), backend
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """Each rank takes its own GPU (`cuda:LOCAL_RANK`); CPU ranks share the CPU."""
        if self.enabled and str(device) == "cuda":
            return f"cuda:{self.local_rank}"
        return str(device)

    def init(self) -> None:
        """Join the process group (a no-op for a single process or when already joined)."""
        if not self.enabled or torch.distributed.is_initialized():
            return
        if self.backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        torch.distributed.init_process_group(
            self.backend, rank=self.rank, world_size=self.world_size, timeout=datetime.timedelta(minutes=30)
        )
        logger.info("rank %d of %d joined the %s process group", self.rank, self.world_size, self.backend)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` under DistributedDataParallel when distributed, else `model` itself."""
        if not self.enabled:
            return model
        self.init()
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        # find_unused_parameters: a case may leave a branch out of a step (e.g. a loss term switched off).
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=True
        )

    def barrier(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def all_reduce_sums(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over all ranks (every rank passes the same keys); unchanged for one process."""
        if not self.enabled or not values:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if self.backend == "nccl":
            tensor = tensor.cuda()
        torch.distributed.all_reduce(tensor)
        return dict(zip(keys, tensor.cpu().tolist(), strict=True))


def scratch_run_dir(run_dir: str | Path, rank: int, *, resuming: bool) -> Path:
    """Where rank `rank` (> 0) writes its copy of the run's files: a fresh temporary directory, seeded with
    the run's `config.json`, `metrics.jsonl` and `resume/` state when resuming. Rank 0 writes `run_dir`."""
    scratch = Path(tempfile.mkdtemp(prefix=f"mobile_vla_rank{rank}_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    if resuming:
        run_dir = Path(run_dir)
        for name in ("config.json", "metrics.jsonl"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, scratch / name)
        if (run_dir / "resume").is_dir():
            shutil.copytree(run_dir / "resume", scratch / "resume")
    return scratch


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's slice of each global batch of a seeded shuffle (see the module docstring).

    Args:
        size: number of samples in the dataset.
        batch_size: samples per rank per step.
        context: the distributed context (world size and rank).
        shuffle: draw a fresh order each epoch (else dataset order).
        seed, epoch: the order depends on these only, so every rank draws the same one.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        context: DistributedContext,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.size, self.batch_size, self.context = size, batch_size, context
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        global_batch = self.batch_size * self.context.world_size
        return -(-self.size // global_batch) if self.size else 0

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        if not order:
            return
        global_batch = self.batch_size * self.context.world_size
        if self.context.enabled:
            while len(order) % global_batch:  # every rank must take every step: wrap around
                order = order + order[: global_batch - len(order) % global_batch]
        start = self.context.rank * self.batch_size
        for offset in range(0, len(order), global_batch):
            yield order[offset + start : offset + start + self.batch_size]
