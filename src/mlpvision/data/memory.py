"""Small datasets held in memory, augmented a batch at a time.

For data sets that fit in memory (CIFAR-10: 50,000 x 3 x 32 x 32 bytes = 147 MiB decoded), decoding every image
once and augmenting whole batches of tensors replaces the per-image Python work of a ``DataLoader`` (PIL decode,
``RandomCrop``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``: one call chain per image) by a handful of
tensor operations per batch, and needs no loader processes competing with the compute threads for the cores.

* :func:`decode_images` decodes a dataset of PIL images (e.g. an ImageNet-style folder) once, through the resize /
  centre-crop geometry of the per-image pipeline, into a ``uint8`` tensor ``(N, C, H, W)`` and its labels,
  optionally cached as a ``.npz`` file (written atomically, read without pickle);
* :class:`BatchAugment` is, on a ``uint8`` batch, the standard CIFAR training augmentation (zero padding + random
  crop, horizontal flip with probability 1/2) followed by conversion to float and normalisation; each image draws
  its own crop offset and flip, exactly as ``transforms.RandomCrop(size, padding)`` and
  ``RandomHorizontalFlip()`` would (the same distribution; tests/test_data_memory.py compares the statistics);
* :class:`InMemoryLoader` iterates batches in the order of a sampler (the same ``ResumableSampler`` contract as
  :func:`mlpvision.data.loader.create_train_loader`: ``set_loader_epoch`` and ``steps_per_epoch`` work on it), and
  draws each batch's augmentation from a generator seeded by (seed, epoch, batch index), so a run resumed mid-epoch
  sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, Sampler

from .loader import ResumableSampler, ShardSampler

__all__ = ['decode_images', 'BatchAugment', 'InMemoryLoader']


def decode_images(
        dataset: Dataset,
        transform: Callable[[Image.Image], Image.Image] | None = None,
        cache: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every sample of ``dataset`` (a PIL image and its label first) into ``uint8`` ``(N, C, H, W)`` and labels.

    Args:
        dataset: yields ``(PIL.Image, int, ...)`` (no transform), e.g. ``ImageFileDataset`` or ``ArrayDataset``.
        transform: PIL-to-PIL geometry applied before storing (the resize / centre crop of the per-image pipeline,
            and the conversion to the model's channel count), so that the stored images are what the per-image
            pipeline would have cropped from; every result must have one size.
        cache: a ``.npz`` file: read if it exists and holds as many images as ``dataset``, else written after
            decoding (atomically), so later runs skip the decode. The caller names it after what the images depend
            on (data set, split, transform).
    """
    if cache is not None and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as f:
            images, labels = f['images'], f['labels']
        if len(images) == len(dataset):
            return torch.from_numpy(images), torch.from_numpy(labels)
    images = labels = None
    for i in range(len(dataset)):
        sample = dataset[i]
        img = transform(sample[0]) if transform is not None else sample[0]
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1)  # C, H, W
        if images is None:
            images = np.empty((len(dataset), *arr.shape), dtype=np.uint8)
            labels = np.empty(len(dataset), dtype=np.int64)
        elif arr.shape != images.shape[1:]:
            raise ValueError(f'image {i} of the dataset is {arr.shape} (C, H, W) after the transform, the first was '
                             f'{images.shape[1:]}: give a transform that resizes every image to one size.')
        images[i], labels[i] = arr, int(sample[1])
    if images is None:
        raise ValueError('the dataset is empty: nothing to hold in memory.')
    if cache is not None:
        cache = Path(cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f'.{cache.stem}.tmp.npz')
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache)
    return torch.from_numpy(images), torch.from_numpy(labels)


class BatchAugment:
    """Pad-crop, flip and normalise a ``uint8`` batch ``(B, C, H, W)``; returns float32 ``(B, C, H, W)``.

    Args:
        mean, std: per-channel normalisation, in [0, 1] units (as ``transforms.Normalize`` after ``ToTensor``).
        padding: zero padding on every side before the random ``H x W`` crop (0: no crop).
        hflip: probability of a horizontal flip.
        train: False applies only the conversion and normalisation (evaluation).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], padding: int = 4, hflip: float = 0.5,
                 train: bool = True) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.padding, self.hflip, self.train = padding, hflip, train

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f'BatchAugment takes a uint8 (B, C, H, W) batch; got {x.dtype} {tuple(x.shape)}.')
        b, c, h, w = x.shape
        if self.train and self.padding:
            p = self.padding
            x = F.pad(x, (p, p, p, p))  # B, C, H+2p, W+2p (zeros, as RandomCrop(padding=p))
            oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * p)
            x = x.gather(2, rows)  # B, C, H, W+2p
            cols = (ox[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
            x = x.gather(3, cols)  # B, C, H, W
        if self.train and self.hflip > 0:
            flip = torch.rand(b, generator=generator) < self.hflip
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return (x.float() - self.mean) * self.inv_std


class InMemoryLoader:
    """Batches of ``(augment(images[idx]), labels[idx])`` in the order of ``sampler``.

    Quacks like the ``DataLoader`` of :mod:`mlpvision.data.loader` where the training loop looks (``sampler``,
    ``batch_size``, ``drop_last``, ``generator``, ``dataset``, ``len()``), so ``set_loader_epoch`` and
    ``steps_per_epoch`` serve both.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: BatchAugment,
                 sampler: Sampler[int], drop_last: bool, seed: int = 0, channels_last: bool = False) -> None:
        if len(images) != len(labels):
            raise ValueError(f'{len(images)} images but {len(labels)} labels.')
        self.images, self.labels = images, labels
        self.dataset = labels  # len() and the class count come from here
        self.batch_size, self.augment, self.sampler, self.drop_last = batch_size, augment, sampler, drop_last
        self.channels_last = channels_last
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    @classmethod
    def train(cls, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: BatchAugment, seed: int,
              rank: int = 0, world_size: int = 1, channels_last: bool = False) -> InMemoryLoader:
        """A shuffling, ``drop_last`` loader (the :func:`~mlpvision.data.loader.create_train_loader` order)."""
        base = DistributedSampler(labels, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=False)
        return cls(images, labels, batch_size, augment, ResumableSampler(base), drop_last=True, seed=seed,
                   channels_last=channels_last)

    @classmethod
    def eval(cls, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: BatchAugment,
             rank: int = 0, world_size: int = 1, channels_last: bool = False) -> InMemoryLoader:
        """Every ``world_size``-th sample in order, no padding (the ``create_eval_loader`` order)."""
        return cls(images, labels, batch_size, augment, ShardSampler(len(labels), rank, world_size),
                   drop_last=False, channels_last=channels_last)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.tensor(list(iter(self.sampler)), dtype=torch.int64)
        full = self.sampler.full_length if isinstance(self.sampler, ResumableSampler) else len(self.sampler)
        first = (full - len(indices)) // self.batch_size  # batches skipped when resuming mid-epoch
        # one seed per epoch (set_loader_epoch re-seeds the generator), then one generator per batch index, so the
        # augmentation of batch k does not depend on whether batches 0..k-1 were drawn in this process
        epoch_seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
        gen = torch.Generator()
        for k in range(len(self)):
            idx = indices[k * self.batch_size:(k + 1) * self.batch_size]
            gen.manual_seed(epoch_seed + first + k)
            x = self.augment(self.images[idx], gen)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
