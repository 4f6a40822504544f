"""Samplers and loaders whose order depends only on (seed, epoch), so a run resumed mid-epoch sees the same batches.

* training: ``DistributedSampler`` (also for a single process: one replica), or timm's ``RepeatAugSampler`` for
  repeated augmentation, wrapped in :class:`ResumableSampler`, which skips the batches already trained on;
* evaluation: :class:`ShardSampler`, every ``world_size``-th sample without padding, so summed counts are exact;
* each loader gets its own ``torch.Generator``, re-seeded every epoch, so creating a loader iterator (which draws
  the workers' base seed) never touches the global RNG that augmentations and drop path use.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .datasets import worker_seed_fn

__all__ = ['ResumableSampler', 'ShardSampler', 'create_train_loader', 'create_eval_loader', 'set_loader_epoch']


class ResumableSampler(Sampler[int]):
    """Wraps a sampler with ``set_epoch`` and skips its first ``skip`` indices (for the epoch being resumed)."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)

    @property
    def full_length(self) -> int:
        return len(self.sampler)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order: disjoint shards that together cover the dataset once."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def create_train_loader(
        dataset: Dataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        aug_repeats: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
) -> DataLoader:
    """A shuffling, ``drop_last`` training loader; call :func:`set_loader_epoch` before each epoch."""
    if aug_repeats > 1:
        base = RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, num_repeats=aug_repeats)
    else:
        base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=False)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=ResumableSampler(base), num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=True, generator=gen, worker_init_fn=worker_seed_fn,
                      persistent_workers=False)


def create_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                       num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    gen = torch.Generator()
    gen.manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=False, generator=gen,
                      worker_init_fn=worker_seed_fn)


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int, skip_batches: int = 0) -> None:
    """Put ``loader`` at the start of ``epoch`` (after ``skip_batches`` batches when resuming mid-epoch)."""
    sampler = loader.sampler
    if isinstance(sampler, ResumableSampler):
        sampler.set_epoch(epoch, skip_batches * loader.batch_size)
    loader.generator.manual_seed(seed * 100_003 + epoch)


def steps_per_epoch(loader: DataLoader) -> int:
    """Batches in a full epoch (whatever is being skipped now)."""
    sampler = loader.sampler
    n = sampler.full_length if isinstance(sampler, ResumableSampler) else len(sampler)
    return n // loader.batch_size if loader.drop_last else -(-n // loader.batch_size)
