"""Loading a checkpoint for inference, validating it on a dataset, and predicting labels for image files.

A checkpoint may be mlpvision's (``mlpvision train`` output: it names its model, constructor arguments, classes and
preprocessing) or an official one (a bare or wrapped state dict: the model must be named). Either may hold the train
or the deploy (re-parameterised) form; the form is found by trying both.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._checkpoint import CheckpointError, load_weights, unwrap_state_dict
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
from ..data.transforms import DataConfig, build_transform, resolve_data_config
from ..errors import UsageError
from ..models import create_any_model
from .checkpoint import load_checkpoint_file
from .distributed import resolve_device
from .evaluate import EvalResult, evaluate
from .metrics import plot_confusion, write_per_class_csv

__all__ = ['LoadedModel', 'load_for_inference', 'validate_checkpoint', 'ValidateResult', 'predict_images',
           'Prediction', 'find_images']

_logger = logging.getLogger('mlpvision.inference')


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    kwargs: dict
    data_cfg: DataConfig
    classes: list[str]
    form: str  # 'train', 'deploy' or 'train, re-parameterised'
    meta: dict | None  # the mlpvision block of our checkpoints; None for official ones

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _classifier_rows(model: nn.Module, sd: dict[str, torch.Tensor]) -> int | None:
    """Number of classes of the checkpoint's classifier, judged by the model's classifier key."""
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier', 'head')
    key = f'{classifier}.weight' if isinstance(classifier, str) else None
    return int(sd[key].shape[0]) if key and key in sd and sd[key].ndim >= 1 else None


def _class_names(n: int) -> list[str]:
    if n == 1000:
        try:
            from timm.data import ImageNetInfo
            info = ImageNetInfo()
            return [info.index_to_description(i).split(',')[0] for i in range(n)]
        except Exception:  # names are a nicety; fall back to indices
            pass
    return [str(i) for i in range(n)]


def load_for_inference(
        checkpoint: str | os.PathLike,
        model: str | None = None,
        model_kwargs: dict | None = None,
        use_ema: bool = False,
        reparam: bool = False,
        img_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
) -> LoadedModel:
    """Build the checkpoint's model, load its weights strictly and resolve its preprocessing.

    Args:
        model: the model name; needed for official checkpoints, optional for mlpvision's.
        use_ema: load the EMA weights of an mlpvision training checkpoint (``last.pth``).
        reparam: re-parameterise a train-form model into its deploy form after loading.
    """
    path = str(checkpoint)
    obj = load_checkpoint_file(path)
    meta = obj.get('mlpvision') if isinstance(obj.get('mlpvision'), dict) else None
    if use_ema:
        if not isinstance(obj.get('ema'), dict):
            raise CheckpointError(f'checkpoint {path!r} has no EMA weights (train with --model-ema; best.pth holds '
                                  f'the better of the two already)')
        sd = dict(obj['ema'])
    else:
        sd = unwrap_state_dict(obj)
    if not sd:
        raise CheckpointError(f'checkpoint {path!r} holds no weights')
    if model is None:
        if meta is None:
            raise UsageError(f'checkpoint {path!r} does not name its model (official checkpoints do not); pass '
                             f'--model NAME (`mlpvision models --names-only` lists them)')
        model = meta['model_name']
    kwargs: dict[str, Any] = dict(meta['model_kwargs']) if meta and model == meta['model_name'] else {}
    kwargs.update(model_kwargs or {})
    if img_size is not None and meta is None:
        kwargs.setdefault('img_size', img_size)

    def build(deploy: bool) -> nn.Module:  # a timm model trained by `mlpvision train` too (it has no deploy form)
        m = create_any_model(model, deploy=deploy, **kwargs)
        rows = _classifier_rows(m, sd)
        if rows is not None and 'num_classes' not in kwargs and rows != m.num_classes:
            kwargs['num_classes'] = rows  # e.g. an official checkpoint fine-tuned on another dataset
            m = create_any_model(model, deploy=deploy, **kwargs)
        load_weights(m, sd, f'checkpoint {path!r}')
        return m

    try:
        net, form = build(False), 'train'
    except CheckpointError as first:
        try:
            net, form = build(True), 'deploy'
        except (CheckpointError, TypeError):
            raise first from None
    if reparam and form == 'train':
        from .._reparam import reparameterize
        net = reparameterize(net)
        form = 'train, re-parameterised'
    net.eval()
    if meta is not None:
        dc = DataConfig.from_dict(meta['data_config'])
        if img_size or crop_pct or interpolation:
            dc = resolve_data_config(net, img_size or dc.img_size, dc.in_chans, dc.mean, dc.std,
                                     interpolation or dc.interpolation, crop_pct or dc.crop_pct)
        classes = list(meta['classes'])
    else:
        dc = resolve_data_config(net, img_size, None, None, None, interpolation, crop_pct)
        classes = _class_names(net.num_classes)
    return LoadedModel(net, model, kwargs, dc, classes, form, meta)


@dataclass
class ValidateResult:
    result: EvalResult
    loaded: LoadedModel
    dataset: str
    split: str
    confusion_png: Path | None
    per_class_csv: Path | None


def validate_checkpoint(
        checkpoint: str | os.PathLike,
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
) -> ValidateResult:
    """Top-1 / top-5 and per-class accuracy of a checkpoint on a dataset split; writes the confusion-matrix PNG (up
    to ``max_confusion_classes`` classes) and a per-class CSV into ``output_dir`` (default: beside the checkpoint).

    The dataset defaults to the one an mlpvision checkpoint was trained on. The class names an mlpvision checkpoint
    records must be the data set's, in order, unless ``relabel`` (the outputs read as the data set's classes by
    position).
    """
    loaded = load_for_inference(checkpoint, model, model_kwargs, use_ema, reparam, img_size, crop_pct, interpolation)
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
        check_class_names(loaded.classes, info.classes, f'checkpoint {str(checkpoint)!r}', f'{dataset} ({split})',
                          relabel, fix='validate it on the data set it was trained on')
    info.dataset.transform = build_transform(loaded.data_cfg, False)
    dev = resolve_device(device)
    net = loaded.model.to(dev)
    loader = create_eval_loader(info.dataset, batch_size, num_workers=workers,
                                pin_memory=dev.type == 'cuda')
    try:
        res = evaluate(net, loader, loaded.num_classes, dev, classes=loaded.classes, progress=progress,
                       desc=f'validate {dataset} {split}')
    except CorruptImageError as e:
        raise CorruptImageError(worker_error_message(e)) from None
    out = Path(output_dir) if output_dir else Path(checkpoint).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    stem = f'{Path(checkpoint).stem}_{dataset}_{split}'
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
