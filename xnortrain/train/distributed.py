"""Distributed data parallel under PyTorch's launcher (`torchrun`), with no config change.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 the trainer joins the
process group (`nccl` on CUDA, `gloo` on CPU), gives each process its shard of every
epoch's sample order and of the evaluation set, wraps the model (BinOp attached first) in
DistributedDataParallel, sums the epoch's metric sums over the processes, and lets only
rank 0 write files. The processes agree after every step on whether to stop (a signal
that reached any one of them stops them all at that step), through host memory, so the
agreement waits for no device. The group is destroyed when the run ends (see `process_group`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

# Imported before any group is joined, for `process_group`: the default argument
# `group=group.WORLD` of its functions is evaluated at import (PyTorch 2.14), so imported
# while a group is up (DistributedDataParallel imports it, through torch.compile's modules)
# it would hold the default group for good, and destroy_process_group() could not free it.
# (A torch built without distributed support has no such module and no groups.)
if dist.is_available():
    import torch.distributed.nn.functional  # noqa: F401


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    # the group of host-side agreements: the default group under gloo; a gloo group beside NCCL's
    host_group: object = field(default=None, compare=False, repr=False)

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
    host_group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
    return Process(dist.get_rank(), dist.get_world_size(), local_rank, host_group)


@contextlib.contextmanager
def process_group() -> Iterator[Process]:
    """This process's place in the launch, for the duration of a run. A group that the run
    joined is destroyed when the run ends without an exception; on an exception the process
    exits leaving it, since destroying a group is collective and the others may never get there.

    Destroying the group frees it, which joins gloo's worker threads. Left alive, those
    threads race interpreter finalisation: one that frees a finished collective's tensors
    takes the GIL, and during finalisation that aborts the process ("terminate called
    without an active exception"). For the destroy to free the group nothing may still hold
    it: the run's DistributedDataParallel is gone by then, and torch.distributed.nn.functional
    was imported before the group was joined (top of this module). A group that the caller
    made stays theirs."""
    joins = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    yield join_from_env()
    if joins:
        dist.destroy_process_group()


def sum_over_processes(sums: dict[str, torch.Tensor], process: Process) -> dict[str, float]:
    """The metric sums (tensors on the training device, in its accumulator dtype) of all
    processes, read to the host in one transfer."""
    names = sorted(sums)
    stacked = torch.stack([sums[n] for n in names])  # (len(names),)
    if process.world > 1:
        dist.all_reduce(stacked)
    return dict(zip(names, stacked.tolist()))


def broadcast_buffers(model: torch.nn.Module, process: Process) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) in every process. Each process's
    last training forward updated its own; rank 0's are those its checkpoints hold."""
    if process.world == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def any_over_processes(flag: torch.Tensor, process: Process) -> torch.Tensor:
    """`flag` (a bool tensor on the training device) or-ed over the processes, on the device:
    no host read, so that they all take the same branch without waiting for the device."""
    if process.world == 1:
        return flag
    agreed = flag.to(torch.uint8)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return agreed.bool()


def largest_over_processes(value: int, process: Process) -> int:
    """The largest `value` of all processes, agreed through host memory (gloo): it waits for
    the other processes' last step to be queued, not for any device. One process: no collective."""
    if process.world == 1:
        return value
    agreed = torch.tensor([value])
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=process.host_group)
    return int(agreed.item())


def wait_for_all(process: Process) -> None:
    """A barrier of the processes through host memory (e.g. until rank 0 has written a checkpoint)."""
    if process.world > 1:
        dist.barrier(group=process.host_group)
