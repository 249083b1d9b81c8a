"""Distributed data parallel under PyTorch's launcher (`torchrun`), with no config change.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 the trainer joins the
process group (`nccl` on CUDA, `gloo` on CPU), gives each process its shard of every
epoch's sample order and of the evaluation set, wraps the model (BinOp attached first) in
DistributedDataParallel, sums the epoch's metric sums over the processes, and lets only
rank 0 write files. The group is destroyed when the run ends (see `process_group`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join_from_env() -> Process:
    """This process's place in a torchrun launch (joining the group once), or the single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Process()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), local_rank)


@contextlib.contextmanager
def process_group() -> Iterator[Process]:
    """This process's place in the launch, for the duration of a run. A group that the run
    joined is destroyed when the run ends without an exception; on an exception the process
    exits leaving it, since destroying a group is collective and the others may never get there.

    Without the destroy, gloo's (and NCCL's) threads are torn down during interpreter
    finalisation, where a process that ran to the end can abort ("terminate called
    without an active exception"). The run's DistributedDataParallel, which holds the
    group, must be gone by then too. A group that the caller made stays theirs."""
    joins = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    yield join_from_env()
    if joins:
        dist.destroy_process_group()


def sum_over_processes(sums: dict[str, torch.Tensor], process: Process, device: torch.device) -> dict:
    """The metric sums of all processes (float64 CPU tensors in and out)."""
    if process.world == 1:
        return sums
    names = sorted(sums)
    stacked = torch.stack([sums[n].double() for n in names])
    stacked = stacked.to(device) if dist.get_backend() == "nccl" else stacked
    dist.all_reduce(stacked)
    return dict(zip(names, stacked.cpu()))


def broadcast_buffers(model: torch.nn.Module, process: Process) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) in every process. Each process's
    last training forward updated its own; rank 0's are those its checkpoints hold."""
    if process.world == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def all_true(flag: bool, process: Process, device: torch.device) -> bool:
    """`flag` and-ed over the processes, so that they all take the same branch (one that
    skipped a step alone would leave the others waiting in DDP's gradient all-reduce)."""
    if process.world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() == 1.0)
