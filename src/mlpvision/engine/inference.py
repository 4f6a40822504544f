"""Validating a classifier on a dataset, and predicting labels for image files.

The model comes from WEIGHTS through :func:`mlpvision.engine.loading.open_weights` (a name, ``name.tag``, a
checkpoint file of any format mlpvision reads, train or deploy form, or a convert folder).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.checks import check_class_names
from ..data.datasets import (
    IMG_EXTENSIONS,
    CorruptImageError,
    DatasetError,
    build_dataset,
    load_image,
    worker_error_message,
)
from ..data.loader import create_eval_loader
from ..data.transforms import build_transform
from ..errors import UsageError
from .distributed import resolve_device
from .evaluate import EvalResult, evaluate
from .loading import Loaded, open_weights, require_task
from .metrics import plot_confusion, write_per_class_csv
from .run import amp_dtype

__all__ = ['LoadedModel', 'load_for_inference', 'validate_checkpoint', 'ValidateResult', 'predict_images',
           'Prediction', 'find_images']

_logger = logging.getLogger('mlpvision.inference')


LoadedModel = Loaded  # the old name of what open_weights returns


def load_for_inference(
        checkpoint: str | os.PathLike,
        model: str | None = None,
        model_kwargs: dict | None = None,
        use_ema: bool = False,
        reparam: bool = False,
        img_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
) -> Loaded:
    """A classifier from WEIGHTS (:func:`mlpvision.engine.loading.open_weights`, the one opener; this is its
    classification-only form, the old name kept): a segmentation or detection checkpoint is refused naming the
    commands that take it."""
    loaded = open_weights(checkpoint, model=model, model_kwargs=model_kwargs, use_ema=use_ema, deploy=reparam,
                          img_size=img_size, crop_pct=crop_pct, interpolation=interpolation)
    require_task(loaded, 'classification', 'validate / predict (classification)')
    return loaded


@dataclass
class ValidateResult:
    result: EvalResult
    loaded: LoadedModel
    dataset: str
    split: str
    confusion_png: Path | None
    per_class_csv: Path | None


def validate_checkpoint(
        checkpoint: str | os.PathLike | Loaded,
        dataset: str | None = None,
        split: str = 'val',
        data_dir: str | None = None,
        model: str | None = None,
        model_kwargs: dict | None = None,
        use_ema: bool = False,
        reparam: bool = False,
        batch_size: int = 128,
        workers: int = 2,
        device: str = 'auto',
        output_dir: str | os.PathLike | None = None,
        skip_corrupt: bool = False,
        download: bool = False,
        img_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        progress: bool = False,
        max_confusion_classes: int = 100,
        relabel: bool = False,
        amp: str = 'none',
) -> ValidateResult:
    """Top-1 / top-5 and per-class accuracy of a checkpoint on a dataset split; writes the confusion-matrix PNG (up
    to ``max_confusion_classes`` classes) and a per-class CSV into ``output_dir`` (default: beside the checkpoint).

    The dataset defaults to the one an mlpvision checkpoint was trained on. The class names an mlpvision checkpoint
    records must be the data set's, in order, unless ``relabel`` (the outputs read as the data set's classes by
    position). ``checkpoint`` is WEIGHTS (:func:`mlpvision.engine.loading.open_weights`) or what it opened;
    ``amp`` is the autocast precision ('none', 'bf16', 'fp16').
    """
    if isinstance(checkpoint, Loaded):
        loaded = checkpoint
        require_task(loaded, 'classification', 'validate (classification)')
    else:
        loaded = load_for_inference(checkpoint, model, model_kwargs, use_ema, reparam, img_size, crop_pct,
                                    interpolation)
    cfg = (loaded.meta or {}).get('config') or {}
    dataset = dataset or cfg.get('dataset')
    if dataset is None:
        raise UsageError('pass --dataset (and --data-dir): the checkpoint does not say which dataset it was trained '
                         'on')
    same = dataset == cfg.get('dataset')
    data_dir = data_dir or (cfg.get('data_dir') if same else None)
    fake = dict(fake_size=cfg.get('fake_size', 256), fake_classes=cfg.get('fake_classes', loaded.num_classes)) \
        if same else dict(fake_classes=loaded.num_classes)
    info = build_dataset(dataset, split, data_dir, download, skip_corrupt, fake_image_size=loaded.data_cfg.img_size,
                         train_folder=cfg.get('train_split', 'train'), val_folder=cfg.get('val_split', 'val'), **fake)
    if info.num_classes != loaded.num_classes:
        raise DatasetError(f'the model predicts {loaded.num_classes} classes but {dataset} ({split}) has '
                           f'{info.num_classes}; is it the dataset the checkpoint was trained on?')
    if (loaded.meta or {}).get('classes'):  # official checkpoints name no classes: nothing to compare
        check_class_names(loaded.classes, info.classes, f'checkpoint {loaded.source!r}', f'{dataset} ({split})',
                          relabel, fix='validate it on the data set it was trained on')
    info.dataset.transform = build_transform(loaded.data_cfg, False)
    dev = resolve_device(device)
    net = loaded.model.to(dev)
    loader = create_eval_loader(info.dataset, batch_size, num_workers=workers,
                                pin_memory=dev.type == 'cuda')
    try:
        res = evaluate(net, loader, loaded.num_classes, dev, amp_dtype=amp_dtype(amp, dev), classes=loaded.classes,
                       progress=progress, desc=f'validate {dataset} {split}')
    except CorruptImageError as e:
        raise CorruptImageError(worker_error_message(e)) from None
    source = Path(loaded.source)
    out = Path(output_dir) if output_dir else source.resolve().parent if loaded.kind == 'file' else Path('.')
    out.mkdir(parents=True, exist_ok=True)
    stem = f'{source.stem if loaded.kind == "file" else loaded.source.replace("/", "_")}_{dataset}_{split}'
    png = plot_confusion(res.confusion, loaded.classes, out / f'confusion_{stem}.png',
                         title=f'{loaded.name} on {dataset} ({split}): top-1 {res.top1:.2f}%',
                         max_classes=max_confusion_classes)
    csv_path = write_per_class_csv(res.confusion, loaded.classes, out / f'per_class_{stem}.csv')
    return ValidateResult(res, loaded, dataset, split, png, csv_path)


@dataclass
class Prediction:
    path: str
    labels: list[str]
    probs: list[float]
    indices: list[int]


def find_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Image files named in ``inputs`` (files as given; folders searched recursively, sorted)."""
    files: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob('*') if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise DatasetError(f'folder {str(p)!r} holds no images ({", ".join(IMG_EXTENSIONS)})')
            files += found
        elif p.is_file():
            files.append(str(p))
        else:
            raise DatasetError(f'image {str(p)!r} does not exist')
    if not files:
        raise DatasetError('no images given')
    return files


@torch.no_grad()
def predict_images(
        loaded: LoadedModel,
        inputs: Sequence[str | os.PathLike],
        topk: int = 5,
        batch_size: int = 32,
        device: str = 'auto',
        skip_corrupt: bool = False,
        amp: str = 'none',
) -> tuple[list[Prediction], list[str]]:
    """Top-k labels and probabilities for each image; returns the predictions and the corrupt files skipped.

    Images go through the model's eval preprocessing; the first one whose size is not the model's input is logged
    with what is done to it (resize and centre crop), once per call.
    """
    files = find_images(inputs)
    tf = build_transform(loaded.data_cfg, False)
    dev = resolve_device(device)
    net = loaded.model.to(dev).eval()
    k = max(1, min(topk, loaded.num_classes))
    preds: list[Prediction] = []
    skipped: list[str] = []
    batch: list[tuple[str, torch.Tensor]] = []
    dc = loaded.data_cfg
    h, w = dc.img_size
    resized = False  # said once per call, at the first image of another size than the model's input

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([t for _, t in batch]).to(dev)
        dtype = amp_dtype(amp, dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            probs = net(x).float().softmax(-1)
        p, i = probs.topk(k, dim=-1)
        for (f, _), pr, ix in zip(batch, p.tolist(), i.tolist(), strict=True):
            preds.append(Prediction(f, [loaded.classes[j] for j in ix], pr, ix))
        batch.clear()

    for f in files:
        try:
            img = load_image(f)
        except CorruptImageError:
            if not skip_corrupt:
                raise
            skipped.append(f)
            continue
        if not resized and img.size != (w, h):  # PIL sizes are (W, H)
            resized = True
            _logger.info('images are resized (shorter side to %d px, %s) and centre-cropped to %dx%d, the model\'s '
                         'input (first: %s, %dx%d)', math.floor(min(h, w) / dc.crop_pct), dc.interpolation, w, h, f,
                         *img.size)
        batch.append((f, tf(img)))
        if len(batch) == batch_size:
            flush()
    flush()
    return preds, skipped
