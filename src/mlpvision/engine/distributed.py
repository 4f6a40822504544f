"""Distributed set-up from the environment ``torchrun`` provides (``LOCAL_RANK``, ``RANK``, ``WORLD_SIZE``).

No ``--local_rank`` argument: torch >= 2 launchers pass ``--local-rank`` or nothing, which is why the official
Swin-based scripts break or put every rank on GPU 0. The backend is NCCL on CUDA and gloo on CPU.

Not ``timm.utils.init_distributed_device``: ours also resolves ``device='auto'``, reports a missing GPU as a
one-line :class:`~mlpvision.errors.UsageError` (timm asserts), joins a process group the caller already started
instead of starting a second one, binds the NCCL group to this process's GPU (``device_id``) and works with every
timm version the package accepts (timm >= 1.0.9).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UsageError

__all__ = ['DistInfo', 'init_distributed', 'destroy_distributed', 'all_reduce_sum', 'barrier', 'resolve_device']


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def primary(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = 'auto', local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU when CUDA is available, else the CPU."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        device = f'cuda:{local_rank}'
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise UsageError(f'device {device!r} requested but CUDA is not available; use --device cpu')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f'device {device!r} requested but only {torch.cuda.device_count()} GPUs are visible')
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str = 'auto') -> DistInfo:
    """Join the process group when ``WORLD_SIZE`` > 1 (one process per device), else describe a single process."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = 'nccl' if dev.type == 'cuda' else 'gloo'
        kwargs = dict(device_id=dev) if dev.type == 'cuda' else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank, local_rank, world_size, dev)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over processes, in place (a no-op for a single process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
