"""Multi-process training with torch.distributed (``torchrun --nproc_per_node N -m pwfn_viz run ...``).

What changes under DDP, and why it stays correct:

* training uses DistributedDataParallel and a DistributedSampler; each process draws its own weight
  noise, and the regulariser, a loss term, is averaged with the task gradient like any loss;
* ``batch_size`` stays the global batch: each of N processes takes ``batch_size // N``;
* clustering runs on rank 0 and its result (mu, sigma, fixed mask) is broadcast, so every rank holds
  the same network by construction; ``ranks_identical`` checks it after every round;
* evaluation is sharded (sample i goes to rank i % N) and the counts are summed;
* only rank 0 writes the run record.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        cuda = (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
        if cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return info


def current() -> DistInfo:
    """This process's place in an initialised process group (a plain ``DistInfo()`` without one),
    whoever initialised it: :func:`setup` or the user's own training script."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def train_loader(dataset, batch_size: int, seed: int, info: DistInfo, *, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Shuffled training batches; under DDP each rank sees its own 1/N of every epoch. Worker
    processes and pinned memory as :func:`pwfn_viz.data.datasets.make_loader`."""
    from ..data.datasets import make_loader
    if not info.enabled:
        return make_loader(dataset, batch_size, shuffle=True, seed=seed, num_workers=num_workers, pin_memory=pin_memory)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    return make_loader(dataset, max(1, batch_size // info.world_size), seed=seed, sampler=sampler,
                       num_workers=num_workers, pin_memory=pin_memory)


def eval_shard(dataset, info: DistInfo):
    """This rank's share of an evaluation set: every sample exactly once across the ranks."""
    return Subset(dataset, range(info.rank, len(dataset), info.world_size)) if info.enabled else dataset


def sum_across(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.tolist()


def broadcast_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values, in place."""
    if info.enabled:
        for t in tensors:
            dist.broadcast(t, src=0)


def ranks_identical(model: torch.nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds bitwise the same parameters and buffers (compared by a checksum of
    the raw bytes of each tensor)."""
    if not info.enabled:
        return True
    sums = []
    for t in list(model.parameters()) + list(model.buffers()):
        raw = t.detach().contiguous().view(-1).view(torch.uint8) if t.numel() else torch.zeros(1, dtype=torch.uint8)
        weights = torch.arange(1, raw.numel() + 1, dtype=torch.float64, device=raw.device)
        sums.append((raw.double() * weights).sum())
    mine = torch.stack(sums)
    gathered = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
