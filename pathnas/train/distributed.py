"""torchrun / DistributedDataParallel plumbing, and the device choice."""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    in_group: bool = False  # a process group is initialised (torchrun), even with a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.in_group


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device {preference!r}: allowed values are auto, cpu, cuda")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available on this machine")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Join the process group that torchrun describes through its environment; else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    # torchrun marks its processes; with one process the group is still formed, so a
    # `torchrun --nproc_per_node 1` run exercises the same NCCL / gloo path as a multi-GPU one.
    launched = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, device, in_group=dist.is_initialized())


@contextmanager
def distributed_session(device_preference: str = "auto") -> Iterator[DistContext]:
    """``init_distributed`` for the length of a ``with``; a process group it formed is destroyed at the end."""
    formed_here = not dist.is_initialized()
    ctx = init_distributed(device_preference)
    try:
        yield ctx
    finally:
        if formed_here and dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(value: float, ctx: DistContext) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item())


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BN running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last step of an epoch
    every rank holds statistics updated by its own batch; this makes them equal again.
    """
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
