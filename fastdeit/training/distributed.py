"""DDP set-up from torchrun's environment, and the few collectives training needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (on one node or many, through its rendezvous). LOCAL_RANK
picks this process's GPU; RANK and WORLD_SIZE shard the data. Without them the run is one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: `rank` of `world_size` processes, on `device`."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (set by torchrun), got {value!r}") from None


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun (nccl on GPUs, gloo on CPUs); else a single process.

    device: "auto" (CUDA when available), "cuda" or "cpu".
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible to torch; use device='cpu' or 'auto'")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv(0, 0, 1, torch.device("cuda" if use_cuda else "cpu"))
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s): launch at most "
                "that many processes per node (torchrun --nproc_per_node)"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        # device_id binds the NCCL communicator to this GPU at once (no guessing, no hang on the first collective).
        dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
    return DistEnv(rank, local_rank, world_size, dev)


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `tensor` over all processes, in place; returns it."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every process's `obj` (picklable), in rank order."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every process."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
