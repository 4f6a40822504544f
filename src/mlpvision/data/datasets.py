"""Datasets for training and evaluation: ImageNet-layout folders, CIFAR-10/100, Caltech-101 (Strip-MLP's split),
scikit-learn's bundled 8x8 digits and synthetic images.

Every dataset yields PIL images (converted to the model's channel count by the transform, see
:func:`mlpvision.data.transforms.build_transform`) and integer targets, and carries ``classes`` (the class names in
target order). Datasets read from image files (``imagefolder``, ``caltech101``) yield a third item, 1 when the
sample's file was corrupt and was replaced (``skip_corrupt=True``), so the training loop can count them.
"""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import UsageError

__all__ = ['DATASETS', 'DatasetError', 'CorruptImageError', 'DatasetInfo', 'build_dataset', 'ImageFileDataset',
           'ArrayDataset', 'scan_image_folder', 'caltech101_split', 'digits_arrays', 'IMG_EXTENSIONS',
           'worker_error_message', 'load_image']

_logger = logging.getLogger(__name__)

DATASETS = ('imagefolder', 'cifar10', 'cifar100', 'caltech101', 'digits', 'fake')
SPLITS = ('train', 'val')
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')

# digits: scikit-learn's copy of the UCI optical digits test set; the split is ours (no official one exists)
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2
# Strip-MLP categories101_train_val_split.py: random.seed(1024), 80% of each class for training
CALTECH_SPLIT_SEED = 1024
CALTECH_TRAIN_FRACTION = 0.8
CALTECH_EXCLUDED = ('BACKGROUND_Google',)  # not an object class; the 101-class configs leave it out


class DatasetError(UsageError):
    """A dataset is missing, empty, unknown or unreadable; the message says which and how to fix it."""


class CorruptImageError(DatasetError):
    """An image file could not be decoded."""


@dataclass
class DatasetInfo:
    """A dataset and what the model needs to know about it."""
    dataset: Dataset
    classes: list[str]
    in_chans: int  # the images' natural channel count (1 for digits)
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W) or (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: list[str],
                 transform: Callable | None = None) -> None:
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple:
        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def load_image(path: str, skip_flag: bool = True) -> Image.Image:
    """Open and decode an image file; a file PIL cannot decode raises :class:`CorruptImageError` naming it (and
    ``--skip-corrupt`` where ``skip_flag``: only for the commands that have that flag)."""
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            img.load()  # decode now, so a truncated file fails here and not later in a transform
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL's "cannot identify image file <_io.BufferedReader ...>" says no more than this
        detail = 'not an image PIL can read' if isinstance(e, UnidentifiedImageError) else f'{type(e).__name__}: {e}'
        fix = 'remove it or pass --skip-corrupt' if skip_flag else 'remove or replace it'
        raise CorruptImageError(f'corrupt image {path!r} ({detail}); {fix}') from None
    return img


class ImageFileDataset(Dataset):
    """Image files with integer targets; yields ``(image, target, was_corrupt)``.

    With ``skip_corrupt`` a file that cannot be decoded is replaced by the next readable one (so batches keep their
    size, which Mixup needs) and ``was_corrupt`` is 1; the evaluation loop drops such samples from its counts.
    """

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: Callable | None = None,
                 skip_corrupt: bool = False) -> None:
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.classes = classes
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple:
        corrupt = 0
        for attempt in range(len(self.samples)):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                img = load_image(path)
                break
            except CorruptImageError as e:
                if not self.skip_corrupt:
                    raise
                corrupt = 1
                if path not in self._reported:
                    self._reported.add(path)
                    _logger.warning('skipping %s', str(e).split(';')[0])
        else:
            raise DatasetError('every image in the dataset is corrupt')
        if self.transform is not None:
            img = self.transform(img)
        return img, target, corrupt


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith('.')


def scan_image_folder(root: str | os.PathLike, exclude: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """Class names (sorted sub-folders) and each class's image files (sorted, recursive) under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f'dataset folder {str(root)!r} does not exist')
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith('.')
                     and d.name not in exclude)
    if not classes:
        raise DatasetError(f'dataset folder {str(root)!r} has no class sub-folders; expected '
                           f'{root}/<class name>/<image files>')
    files = []
    for c in classes:
        found = []
        for dirpath, _, names in os.walk(root / c, followlinks=True):
            found += [os.path.join(dirpath, n) for n in names if _is_image(n)]
        files.append(sorted(found))
    if not any(files):
        raise DatasetError(f'dataset folder {str(root)!r} has {len(classes)} class folders but no images '
                           f'({", ".join(IMG_EXTENSIONS)})')
    return classes, files


def caltech101_split(class_files: list[list[str]], seed: int = CALTECH_SPLIT_SEED,
                     train_fraction: float = CALTECH_TRAIN_FRACTION) -> tuple[list[tuple[str, int]], ...]:
    """Strip-MLP's Caltech-101 split: per class, shuffle the files and keep ``int(n * 0.8)`` for training.

    The official script (``categories101_train_val_split.py``) seeds Python's ``random`` with 1024 once and shuffles
    each class's ``os.listdir`` order in the ``os.listdir`` order of the classes; listdir order depends on the file
    system, so here both are sorted (the same split on every machine, but not necessarily the authors' files).
    """
    rng = random.Random(seed)
    train, val = [], []
    for target, files in enumerate(class_files):
        files = sorted(files)
        rng.shuffle(files)
        n = int(len(files) * train_fraction)
        train += [(f, target) for f in files[:n]]
        val += [(f, target) for f in files[n:]]
    return train, val


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 images, split 80/20 per class with a fixed seed.

    Returns:
        train images (N, 8, 8), train targets, val images, val targets.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise DatasetError('the digits dataset needs scikit-learn: pip install "mlpvision[train]"') from e
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    xtr, xva, ytr, yva = train_test_split(images, digits.target, test_size=DIGITS_VAL_FRACTION,
                                          random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
    return xtr, ytr, xva, yva


def _caltech_root(data_dir: str, download: bool) -> Path:
    """The 101_ObjectCategories folder: ``data_dir`` itself, or below it (torchvision's download layout)."""
    root = Path(data_dir)
    for c in (root / 'caltech101' / '101_ObjectCategories', root / '101_ObjectCategories'):
        if c.is_dir():
            return c
    if download:
        try:
            from torchvision.datasets import Caltech101
            Caltech101(str(root), download=True)
        except Exception as e:  # network errors come in many types
            raise DatasetError(f'could not download Caltech-101 into {str(root)!r}: {type(e).__name__}: {e}') from e
        return root / 'caltech101' / '101_ObjectCategories'
    if not root.is_dir():
        raise DatasetError(f'dataset folder {str(root)!r} does not exist; pass --download to fetch Caltech-101 '
                           f'there, or --data-dir pointing to its 101_ObjectCategories folder')
    return root


def _cifar(name: str, data_dir: str, split: str, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100
    cls = CIFAR10 if name == 'cifar10' else CIFAR100
    try:
        return cls(data_dir, train=split == 'train', download=download)
    except RuntimeError as e:
        folder = 'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'
        raise DatasetError(f'{name.upper()} not found under {str(data_dir)!r} (expected {folder}/ there); pass '
                           f'--download to fetch it, or --data-dir pointing to the folder that holds {folder}/') from e
    except OSError as e:
        raise DatasetError(f'could not get {name.upper()} into {str(data_dir)!r}: {type(e).__name__}: {e}') from e


def build_dataset(
        name: str,
        split: str,
        data_dir: str | None = None,
        download: bool = False,
        skip_corrupt: bool = False,
        fake_size: int = 256,
        fake_classes: int = 10,
        fake_image_size: tuple[int, int] = (32, 32),
        train_folder: str = 'train',
        val_folder: str = 'val',
) -> DatasetInfo:
    """Build the ``split`` ('train' or 'val') of dataset ``name``, without a transform (set ``.transform`` later).

    Args:
        name: one of :data:`DATASETS`.
        data_dir: the dataset's folder (all but ``digits`` and ``fake`` need one).
        download: fetch CIFAR / Caltech-101 into ``data_dir`` when missing (needs internet).
        skip_corrupt: replace undecodable image files instead of stopping (file-based datasets).
        fake_size: number of synthetic training images (the val split has a quarter as many, at least 8).
        train_folder / val_folder: the split folders of an ``imagefolder`` dataset.
    """
    if name not in DATASETS:
        raise DatasetError(f'unknown dataset {name!r}; choose one of {", ".join(DATASETS)}')
    if split not in SPLITS:
        raise DatasetError(f'unknown split {split!r}; choose one of {", ".join(SPLITS)}')
    if name == 'digits':
        xtr, ytr, xva, yva = digits_arrays()
        x, y = (xtr, ytr) if split == 'train' else (xva, yva)
        return DatasetInfo(ArrayDataset(x, y, [str(i) for i in range(10)]), [str(i) for i in range(10)], 1, name)
    if name == 'fake':
        from torchvision.datasets import FakeData
        size = fake_size if split == 'train' else max(fake_size // 4, 8)
        ds = FakeData(size=size, image_size=(3, *fake_image_size), num_classes=fake_classes,
                      random_offset=0 if split == 'train' else 10 ** 6)
        classes = [f'class{i}' for i in range(fake_classes)]
        ds.classes = classes
        return DatasetInfo(ds, classes, 3, name)
    if not data_dir:
        hint = ' (with --download to fetch it)' if name != 'imagefolder' else ''
        raise DatasetError(f'dataset {name!r} needs --data-dir{hint}')
    if name in ('cifar10', 'cifar100'):
        ds = _cifar(name, data_dir, split, download)
        return DatasetInfo(ds, list(ds.classes), 3, name)
    if name == 'caltech101':
        classes, files = scan_image_folder(_caltech_root(data_dir, download), exclude=CALTECH_EXCLUDED)
        train, val = caltech101_split(files)
        samples = train if split == 'train' else val
        return DatasetInfo(ImageFileDataset(samples, classes, skip_corrupt=skip_corrupt), classes, 3, name)
    # imagefolder: <data_dir>/train/<class>/<images>, <data_dir>/val/<class>/<images>
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f'dataset folder {str(root)!r} does not exist')
    sub = root / (train_folder if split == 'train' else val_folder)
    if not sub.is_dir():
        others = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith('.')
                        and d.name != (val_folder if split == 'train' else train_folder))
        hint = (f'; it has {", ".join(repr(o) for o in others)}: pass --{split}-split {others[0]} if that is the '
                f'{"validation" if split == "val" else "training"} set' if others else '')
        raise DatasetError(f'dataset folder {str(root)!r} has no {sub.name!r} folder; expected the ImageNet layout '
                           f'{root}/{train_folder}/<class>/<images> and {root}/{val_folder}/<class>/<images>{hint}')
    classes, files = scan_image_folder(sub)
    train_sub = root / train_folder
    if split == 'val' and train_sub.is_dir():
        # targets are indices into the training classes: a validation folder that lacks a class must not shift the
        # others' indices, and one with a class the model never learnt cannot be scored
        train_classes = sorted(d.name for d in train_sub.iterdir() if d.is_dir() and not d.name.startswith('.'))
        extra = [c for c in classes if c not in train_classes]
        if extra:
            shown = ', '.join(repr(c) for c in extra[:5]) + (f', ... ({len(extra)} in all)' if len(extra) > 5 else '')
            raise DatasetError(f'the {val_folder!r} split of {str(root)!r} has classes the {train_folder!r} split '
                               f'lacks: {shown}; remove them or add them to {train_folder}/')
        index = {c: i for i, c in enumerate(train_classes)}
        samples = [(f, index[c]) for c, fs in zip(classes, files, strict=True) for f in fs]
        return DatasetInfo(ImageFileDataset(samples, train_classes, skip_corrupt=skip_corrupt), train_classes, 3,
                           name)
    samples = [(f, t) for t, fs in enumerate(files) for f in fs]
    return DatasetInfo(ImageFileDataset(samples, classes, skip_corrupt=skip_corrupt), classes, 3, name)


def worker_seed_fn(worker_id: int) -> None:
    """Seed numpy in each DataLoader worker from torch's per-worker seed (torch seeds Python's random itself)."""
    np.random.seed(torch.initial_seed() % 2 ** 32)


def worker_error_message(e: Exception) -> str:
    """The message of an error that a DataLoader worker raised, without the worker traceback torch adds to it."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else str(e)
    prefix = f'{type(e).__module__}.{type(e).__name__}: '
    return last[len(prefix):] if last.startswith(prefix) else last
