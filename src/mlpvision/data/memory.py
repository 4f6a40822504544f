"""Small datasets held in memory, augmented a batch at a time.

For data sets that fit in memory (CIFAR-10: 50,000 x 3 x 32 x 32 bytes = 147 MiB decoded), decoding every image
once and augmenting whole batches of tensors replaces the per-image Python work of a ``DataLoader`` (PIL decode,
``RandomCrop``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``: one call chain per image) by a handful of
tensor operations per batch, and needs no loader processes competing with the compute threads for the cores.

* :func:`decode_images` decodes a dataset of PIL images (e.g. an ImageNet-style folder) once, through the resize /
  centre-crop geometry of the per-image pipeline, into a ``uint8`` tensor ``(N, C, H, W)`` and its labels,
  optionally cached as a ``.npz`` file (written atomically, read without pickle, and used only when it was made from
  the same files and decoding parameters: :func:`dataset_source`);
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

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, Sampler

from .loader import ResumableSampler, ShardSampler

__all__ = ['decode_images', 'Decoded', 'dataset_source', 'BatchAugment', 'InMemoryLoader']

_logger = logging.getLogger(__name__)


class Decoded(NamedTuple):
    """What :func:`decode_images` returns: ``uint8`` images ``(N, C, H, W)``, ``int64`` labels ``(N,)``, and ``uint8``
    flags ``(N,)``: 1 where the file was corrupt and a readable neighbour stands in (``skip_corrupt``)."""
    images: torch.Tensor
    labels: torch.Tensor
    corrupt: torch.Tensor


CACHE_FORMAT = 2  # bump when what the cache holds changes; older caches are then decoded again


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f'{a.dtype}{a.shape}'.encode())
        h.update(a.data)
    return h.hexdigest()


def dataset_source(dataset: Dataset) -> str | None:
    """A fingerprint of what ``dataset``'s images are read from, or None when its type gives no way to tell.

    Image files: each file's path, size, modification time and label (``samples`` of ``(path, target)``, as
    :class:`~mlpvision.data.datasets.ImageFileDataset`); arrays held in memory (``images`` / ``data`` with
    ``targets``: digits, CIFAR): a hash of their bytes; torchvision's ``FakeData``: its parameters.
    """
    samples = getattr(dataset, 'samples', None)
    if isinstance(samples, list) and all(isinstance(s, tuple) and len(s) == 2 for s in samples):
        h = hashlib.blake2b(digest_size=16)
        for path, target in samples:
            try:
                st = os.stat(path)
                h.update(f'{path}\0{st.st_size}\0{st.st_mtime_ns}\0{int(target)}\n'.encode())
            except OSError:  # a file gone since the scan: the decode names it
                h.update(f'{path}\0missing\0{int(target)}\n'.encode())
        return f'files:{len(samples)}:{h.hexdigest()}'
    arrays = getattr(dataset, 'images', None)
    if arrays is None:
        arrays = getattr(dataset, 'data', None)
    targets = getattr(dataset, 'targets', None)
    if isinstance(arrays, np.ndarray) and targets is not None:
        return f'arrays:{len(targets)}:{_digest(arrays, np.asarray(targets, dtype=np.int64))}'
    if type(dataset).__name__ == 'FakeData':
        return (f'fake:{dataset.size}:{tuple(dataset.image_size)}:{dataset.num_classes}:'
                f'{dataset.random_offset}')
    return None


def _cache_key(dataset: Dataset, transform: Callable | None) -> dict[str, str] | None:
    source = dataset_source(dataset)
    if source is None:
        return None
    # the transform's repr holds its parameters (torchvision's Compose, Resize, CenterCrop); object addresses in the
    # repr of a function or plain object say nothing about what it does and change every run
    decode = re.sub(r' at 0x[0-9a-fA-F]+', '', repr(transform))
    return dict(format=str(CACHE_FORMAT), source=source, decode=decode)


def _read_cache(cache: Path, key: dict[str, str] | None, log: bool) -> Decoded | None:
    """The cache's arrays when it was made from ``key``; None (after one line saying why) otherwise."""
    if not cache.is_file():
        return None
    if key is None:
        if log:
            _logger.info('%s: the data set does not say what its images are read from, so the cache cannot be '
                         'checked against it; decoding again', cache)
        return None
    try:
        with np.load(cache, allow_pickle=False) as f:
            stored = json.loads(str(f['key'])) if 'key' in f.files else {}
            if stored != key:
                if log:
                    what = next((k for k in ('format', 'source', 'decode') if stored.get(k) != key[k]), 'format')
                    reason = {'format': 'by an older version of mlpvision',
                              'source': 'from other image files (names, sizes or modification times) or labels',
                              'decode': f'with other decoding parameters ({stored.get("decode")} there, '
                                        f'{key["decode"]} now)'}[what]
                    _logger.info('%s was made %s; decoding again', cache, reason)
                return None
            return Decoded(torch.from_numpy(f['images']), torch.from_numpy(f['labels']),
                           torch.from_numpy(f['corrupt']))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        if log:
            _logger.warning('%s is unreadable (%s: %s); decoding again', cache, type(e).__name__,
                            str(e).splitlines()[0][:120] if str(e) else '')
        return None


def decode_images(
        dataset: Dataset,
        transform: Callable[[Image.Image], Image.Image] | None = None,
        cache: str | os.PathLike | None = None,
        log: bool = True,
) -> Decoded:
    """Decode every sample of ``dataset`` (a PIL image and its label first) into ``uint8`` ``(N, C, H, W)`` and labels.

    Args:
        dataset: yields ``(PIL.Image, int, ...)`` (no transform), e.g. ``ImageFileDataset`` or ``ArrayDataset``; a
            third item, when there is one, is 1 for a corrupt file replaced by a readable one (``skip_corrupt``),
            kept in :attr:`Decoded.corrupt` so that the loops count it.
        transform: PIL-to-PIL geometry applied before storing (the resize / centre crop of the per-image pipeline,
            and the conversion to the model's channel count), so that the stored images are what the per-image
            pipeline would have cropped from; every result must have one size.
        cache: a ``.npz`` file, read when it was made from the same source and decoding parameters
            (:func:`dataset_source`: the image files' names, sizes and modification times and the labels, or the
            arrays' bytes; the transform's parameters), else decoded again with one line saying why (an unreadable
            or truncated cache too) and written (atomically). A data set whose source cannot be told
            (:func:`dataset_source` is None) is decoded every time and not cached.
        log: say (through logging) whether the cache was used; False on the processes that only read it.
    """
    key = _cache_key(dataset, transform)
    if cache is not None:
        cache = Path(cache)
        hit = _read_cache(cache, key, log)
        if hit is not None and len(hit.images) == len(dataset):
            if log:
                _logger.info('read %d decoded images from %s', len(hit.images), cache)
            return hit
    images = labels = corrupt = None
    for i in range(len(dataset)):
        sample = dataset[i]
        img = transform(sample[0]) if transform is not None else sample[0]
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1)  # C, H, W
        if images is None:
            images = np.empty((len(dataset), *arr.shape), dtype=np.uint8)
            labels = np.empty(len(dataset), dtype=np.int64)
            corrupt = np.zeros(len(dataset), dtype=np.uint8)
        elif arr.shape != images.shape[1:]:
            raise ValueError(f'image {i} of the dataset is {arr.shape} (C, H, W) after the transform, the first was '
                             f'{images.shape[1:]}: give a transform that resizes every image to one size.')
        images[i], labels[i] = arr, int(sample[1])
        if len(sample) > 2:
            corrupt[i] = int(sample[2])
    if images is None:
        raise ValueError('the dataset is empty: nothing to hold in memory.')
    if cache is not None and key is None:
        if log:
            _logger.info('not caching the decoded images in %s: a %s does not say what its images are read from',
                         cache, type(dataset).__name__)
    elif cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f'.{cache.stem}.tmp.npz')
        np.savez(tmp, images=images, labels=labels, corrupt=corrupt, key=np.array(json.dumps(key, sort_keys=True)))
        os.replace(tmp, cache)
    return Decoded(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(corrupt))


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
                 sampler: Sampler[int], drop_last: bool, seed: int = 0, channels_last: bool = False,
                 corrupt: torch.Tensor | None = None) -> None:
        if len(images) != len(labels) or (corrupt is not None and len(corrupt) != len(labels)):
            raise ValueError(f'{len(images)} images but {len(labels)} labels'
                             + (f' and {len(corrupt)} corrupt flags.' if corrupt is not None else '.'))
        self.images, self.labels = images, labels
        # with corrupt flags each batch is (images, labels, flags), as ImageFileDataset's loader gives it, so the
        # training loop counts replaced images and evaluation leaves them out alike in both paths
        self.corrupt = corrupt
        self.dataset = labels  # len() and the class count come from here
        self.batch_size, self.augment, self.sampler, self.drop_last = batch_size, augment, sampler, drop_last
        self.channels_last = channels_last
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    @classmethod
    def train(cls, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: BatchAugment, seed: int,
              rank: int = 0, world_size: int = 1, channels_last: bool = False,
              corrupt: torch.Tensor | None = None) -> InMemoryLoader:
        """A shuffling, ``drop_last`` loader (the :func:`~mlpvision.data.loader.create_train_loader` order)."""
        base = DistributedSampler(labels, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=False)
        return cls(images, labels, batch_size, augment, ResumableSampler(base), drop_last=True, seed=seed,
                   channels_last=channels_last, corrupt=corrupt)

    @classmethod
    def eval(cls, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: BatchAugment,
             rank: int = 0, world_size: int = 1, channels_last: bool = False,
             corrupt: torch.Tensor | None = None) -> InMemoryLoader:
        """Every ``world_size``-th sample in order, no padding (the ``create_eval_loader`` order)."""
        return cls(images, labels, batch_size, augment, ShardSampler(len(labels), rank, world_size),
                   drop_last=False, channels_last=channels_last, corrupt=corrupt)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
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
            yield (x, self.labels[idx]) if self.corrupt is None else (x, self.labels[idx], self.corrupt[idx])
