"""Data-parallel training on PyTorch's own engine (torch.distributed + DistributedDataParallel).

Under ``torchrun`` (WORLD_SIZE > 1 in the environment) each process joins one process group:
NCCL when it trains on CUDA, gloo on the CPU. A single process needs none of this, and every
helper here is then a no-op, so the training code reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join(device: torch.device) -> World:
    """Join the process group torchrun set up, if any; returns this process's place in it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_all(world: World, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all processes."""
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def from_main(world: World, value: Any) -> Any:
    """Rank 0's ``value`` in every process."""
    if not world.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_all(world: World, value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (the list is complete in every process)."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values
