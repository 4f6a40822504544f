"""Checks of a data set against what it will be used with, made before any step runs (issue 27).

* :func:`check_class_names`: where a model's class names meet a data set's (validate, fine-tuning, distillation,
  segmentation and detection evaluation), they are compared by name, in order, never trusted by position alone; a
  mismatch is one line naming the first differing names and the fix. ``relabel=True`` is the user saying that the
  model's outputs are to be read as the data set's classes, position by position.
* :func:`class_counts_line` and :func:`check_empty_classes`: a data set's shape before training (items per class),
  and a class with nothing to learn from named (an error unless the user allows it).
* :func:`same_stem_groups`: files of one stem in one folder (``a.jpg`` and ``a.png``), which pairing by name (images
  with masks) cannot tell apart.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .datasets import DatasetError

__all__ = ['ClassMismatchError', 'class_mismatch', 'check_class_names', 'class_counts', 'class_counts_line',
           'check_empty_classes', 'same_stem_groups']


class ClassMismatchError(DatasetError):
    """A model's class names are not the data set's, in the same order."""


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ', '.join(repr(c) for c in names[:n])
    return shown + (f', ... ({len(names)} in all)' if len(names) > n else '')


def class_mismatch(model_classes: Sequence[str], data_classes: Sequence[str]) -> str | None:
    """How ``model_classes`` differ from ``data_classes`` (one clause naming the first difference), or None."""
    model_classes, data_classes = [str(c) for c in model_classes], [str(c) for c in data_classes]
    if model_classes == data_classes:
        return None
    i = next((i for i, (a, b) in enumerate(zip(model_classes, data_classes, strict=False)) if a != b),
             min(len(model_classes), len(data_classes)))
    there = repr(model_classes[i]) if i < len(model_classes) else 'nothing'
    here = repr(data_classes[i]) if i < len(data_classes) else 'nothing'
    text = f'class {i} is {there} in the model and {here} in the data'
    if sorted(model_classes) == sorted(data_classes):
        text += ' (the same names in another order)'
    elif len(model_classes) != len(data_classes):
        text += f' ({len(model_classes)} classes in the model, {len(data_classes)} in the data)'
    else:
        missing = [c for c in model_classes if c not in set(data_classes)]
        text += f' (the data lacks {_few(missing)})'
    return text


def check_class_names(model_classes: Sequence[str], data_classes: Sequence[str], model: str, data: str,
                      relabel: bool = False, fix: str = 'use the data set the model was trained on',
                      relabel_flag: str | None = '--relabel') -> None:
    """Raise :class:`ClassMismatchError` unless the model's classes are the data set's, name by name and in order.

    Args:
        model, data: what the two lists belong to, for the message (a checkpoint's path, a data set and its split).
        relabel: the user means the model's outputs to be read as the data set's classes by position (the flag
            ``--relabel``): only the counts must agree.
        fix: what to do instead, for the message.
        relabel_flag: the option that sets ``relabel`` where this is called from (None: there is none).
    """
    if relabel and len(model_classes) == len(data_classes):
        return
    why = class_mismatch(model_classes, data_classes)
    if why is None:
        return
    if len(model_classes) != len(data_classes):
        raise ClassMismatchError(f'{model} predicts {len(model_classes)} classes but {data} has {len(data_classes)}: '
                                 f'{why}; {fix}')
    alternative = (f', or pass {relabel_flag} to read its outputs as these classes by position' if relabel_flag
                   else '')
    raise ClassMismatchError(f'{model} was trained on other classes than {data}: {why}; {fix}{alternative}')


def class_counts(dataset: Dataset, num_classes: int) -> np.ndarray | None:
    """Items per class of a data set that lists its targets (``targets``: image folders, digits, CIFAR), without
    decoding an image; None for one that does not (synthetic data draws its labels with its images)."""
    targets = getattr(dataset, 'targets', None)
    if targets is None:
        return None
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)


def class_counts_line(classes: Sequence[str], counts: Sequence[int], unit: str = 'images', shown: int = 12,
                      percent: bool = False) -> str:
    """``unit`` per class in one line (as shares of the total with ``percent``): every class up to ``shown``
    classes, else the range with the fewest named."""
    total = max(sum(int(c) for c in counts), 1)
    pairs = sorted(zip(classes, (int(c) for c in counts), strict=True), key=lambda p: p[1]) \
        if len(classes) > shown else list(zip(classes, (int(c) for c in counts), strict=True))

    def fmt(n: int) -> str:
        return f'{100 * n / total:.1f}%' if percent else str(n)

    if len(pairs) <= shown:
        return ', '.join(f'{c} {fmt(n)}' for c, n in pairs) + f' {unit}'
    fewest = ', '.join(f'{c} {fmt(n)}' for c, n in pairs[:3])
    return (f'{fmt(pairs[0][1])}-{fmt(pairs[-1][1])} {unit} per class (median {fmt(pairs[len(pairs) // 2][1])}; '
            f'fewest: {fewest})')


def check_empty_classes(classes: Sequence[str], counts: Sequence[int], where: str, allow: bool,
                        unit: str = 'images') -> list[str]:
    """The classes of ``where`` with no ``unit`` (a class that cannot be learned); an error unless ``allow``."""
    empty = [c for c, n in zip(classes, counts, strict=True) if not n]
    if empty and not allow:
        raise DatasetError(f'{len(empty)} of the {len(classes)} classes have no {unit} in {where}: {_few(empty)}; '
                           f'add {unit} for them or remove them, or pass --allow-empty-classes to train them anyway')
    return empty


def same_stem_groups(paths: Sequence[str | os.PathLike]) -> list[list[str]]:
    """Groups of two or more ``paths`` in one folder with one stem (``x/a.jpg`` and ``x/a.png``), sorted."""
    groups: dict[tuple[str, str], list[str]] = {}
    for p in paths:
        p = Path(p)
        groups.setdefault((str(p.parent), p.stem), []).append(str(p))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)
