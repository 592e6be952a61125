"""Process group set-up from torchrun's environment, with one plain process as the fallback.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and
OMP_NUM_THREADS=1); without them this is a single process of rank 0. gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import TrainError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (identity in one process)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_object(self, obj):
        """Rank 0's value on every process (for decisions only rank 0 can make)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def init(device: str = "cpu", threads: int | None = None) -> DistContext:
    """Join torchrun's process group if its environment is there; set this process's threads.

    torchrun sets one thread per process; we give each process its share of the machine's cores
    (``threads`` overrides), since a CPU process with one thread leaves cores idle.
    """
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    rank, local_rank = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    if device not in ("cpu", "cuda"):
        raise TrainError(f"--device {device}: cpu or cuda expected")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA device is available to this torch build")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    n = threads or max(1, available_cores() // max(1, local_world))
    torch.set_num_threads(n)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, local_world, dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
