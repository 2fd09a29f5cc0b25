"""The only module that touches torch.distributed.

Works in three settings: a plain single process (every collective is the identity), torchrun
(RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR in the environment) and SLURM tasks (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR/PORT exported by the launcher). NCCL on GPU, gloo on CPU.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as torch_dist


def _env_int(*names: str) -> int | None:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return None


def init_distributed(device_type: str) -> None:
    """Join the process group described by the environment, if any; no-op for a single process."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return
    world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    if world_size == 1 or "MASTER_ADDR" not in os.environ:
        return
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    backend = "nccl" if device_type == "cuda" else "gloo"
    torch_dist.init_process_group(backend=backend, rank=rank, world_size=world_size)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (B, ...) from all ranks in rank order -> (world*B, ...), without gradient."""
    if not is_distributed():
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch_dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over ranks (a new tensor; the input is untouched)."""
    if not is_distributed():
        return tensor
    reduced = tensor.detach().clone()
    torch_dist.all_reduce(reduced)
    return reduced / world_size()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise max of `tensor` over ranks (a new tensor; the input is untouched)."""
    if not is_distributed():
        return tensor
    reduced = tensor.detach().clone()
    torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.MAX)
    return reduced


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def destroy() -> None:
    if is_distributed():
        torch_dist.destroy_process_group()
