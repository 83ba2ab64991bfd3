"""Data-parallel training under torchrun: one process per device, gradients averaged, rank 0 writes.

`torchrun --nproc_per_node=N -m latentdiff train …` starts N processes and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them a run is a single process
and nothing here touches torch.distributed. Every rank needs the same output directory (a
shared filesystem across machines) to resume from the checkpoint rank 0 wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), known before joining."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group (once) and pick this process's device.

    Gloo on CPU, NCCL on CUDA; an index-less "cuda" becomes cuda:LOCAL_RANK so that the
    processes on one machine use one GPU each.
    """
    world_size = launched_world_size()
    if world_size == 1:
        return Distributed(), device
    context = Distributed(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return context, device


def wrap_model(model: nn.Module, context: Distributed, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when there are several processes, else `model`.

    DDP averages gradients over ranks during `backward`, so equal shards with a mean loss give
    exactly the full-batch gradient. It only sees passes through the wrapper's `forward`.
    """
    if not context.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_mean(tensor: torch.Tensor, context: Distributed) -> torch.Tensor:
    """The mean of `tensor` over ranks (a copy; every rank gets the same value)."""
    tensor = tensor.detach().clone()
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= context.world_size
    return tensor


def barrier(context: Distributed) -> None:
    """Wait for every rank, e.g. until rank 0 has finished writing a checkpoint."""
    if context.enabled:
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group; call once at the end of a torchrun process."""
    if dist.is_initialized():
        dist.destroy_process_group()
