"""Semantic segmentation: training (UperNet on a pyramid backbone), metrics, whole-image and sliding-window inference.

The schedule follows the AS-MLP UperNet configs (svip-lab/AS-MLP-Semantic-Segmentation@
c9838f92fae7090d9edc29d4fba7d55e078a91ac, ``configs/asmlp/upernet_asmlp_tiny_patch4_shift5_512x512_160k_ade20k.py``):
AdamW (lr 6e-5, betas 0.9 / 0.999, weight decay 0.01, none on norm layers), poly decay with power 1.0 to 0 over all
steps after a linear warm-up of 1500 steps from ratio 1e-6 (mmcv's ``PolyLrUpdaterHook`` with ``warmup='linear'``:
the warm-up scales the poly rate of that step), cross-entropy on the decode head plus 0.4 x the auxiliary head's, both
at the label's resolution with the ignore index left out. Epochs count passes over the training split (the configs
count iterations: 160k at batch 16); the learning rate is set every step.

Metrics (mmseg's ``mean_iou``): a confusion matrix over the pixels not ignored, IoU = TP / (TP + FP + FN) per class,
mIoU the mean over classes present in the labels or the predictions (NaN classes left out), pixel accuracy
(mmseg's ``aAcc``) = correct / labelled pixels, per-class accuracy = TP / labelled pixels of the class.

Training runs through the one run loop (:mod:`mlpvision.engine.run`: resume, signals, checkpoints, metrics.csv,
DDP, AMP, EMA, gradient clipping) as :class:`SegmentTask`; a resumed run (``--resume``) continues bit-exactly where it
stopped on the same machine and process count (tests/test_segmentation.py).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checkpoint import load_weights
from ..data.checks import check_empty_classes, class_counts_line
from ..data.loader import create_eval_loader, create_train_loader
from ..data.segmentation import SegEvalTransform, SegTrainTransform, build_seg_dataset
from ..errors import UsageError
from .checkpoint import load_checkpoint_file
from .distributed import DistInfo, all_reduce_sum
from .evaluate import autocast_context
from .metrics import _floats, _pyplot, _save, read_metrics
from .run import Run, StepOutput, Task, resolve_task_config
from .run import fit as fit_task

__all__ = ['SegConfig', 'SegMetrics', 'confusion_matrix', 'seg_metrics', 'build_seg_model', 'poly_lr',
           'slide_inference', 'predict_logits', 'evaluate_seg', 'fit_seg', 'SegResult', 'model_from_checkpoint',
           'resolve_seg_config', 'plot_seg_curves', 'write_per_class', 'SegmentTask', 'PolyLR']

_logger = logging.getLogger('mlpvision.segmentation')


@dataclass
class SegConfig:
    """Every option of ``mlpvision train --task segment`` (defaults: the AS-MLP ADE20K config where it has one)."""
    model: str = 'upernet'  # the head (UperNet, the AS-MLP / Hire-MLP segmentation configs' decoder)
    backbone: str = 'as_mlp_tiny'
    model_kwargs: dict = field(default_factory=dict)
    pyramid: str = 'auto'  # auto: mlpvision.dense.backbone for mlpvision models; timm: features_only for all
    channels: int = 512  # UPerHead channels (config)
    aux_channels: int = 256  # FCNHead channels (config)
    aux_weight: float = 0.4  # auxiliary loss weight (config); 0: no auxiliary head
    dataset: str = 'folder'
    data_dir: str = ''
    train_split: str = 'train'
    val_split: str = 'val'
    num_classes: int | None = None
    ignore_index: int = 255
    allow_empty_classes: bool = False  # train a class with no pixel in the training masks instead of stopping
    base_size: int = 512  # short side; the config's img_scale (2048, 512)
    crop: list = field(default_factory=lambda: [512, 512])
    ratio_range: list = field(default_factory=lambda: [0.5, 2.0])
    hflip: float = 0.5
    photometric: bool = True
    batch_size: int = 16  # 8 GPUs x 2 images (config)
    val_batch_size: int = 1
    workers: int = 0
    epochs: int = 10
    lr: float = 6e-5
    weight_decay: float = 0.01
    warmup_steps: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    amp: str = 'none'  # none | bf16 | fp16
    eval_mode: str = 'whole'  # whole | slide
    slide_crop: list = field(default_factory=lambda: [512, 512])
    slide_stride: list = field(default_factory=lambda: [341, 341])  # mmseg's ADE20K slide test: crop 512, stride 341
    eval_every: int = 1
    checkpoint_every_steps: int = 0
    log_interval: int = 20
    output: str = ''
    overwrite: bool = False
    resume: str = ''
    seed: int = 0
    device: str = 'auto'
    threads: int | None = None
    sync_bn: bool = False
    clip_grad: float | None = None
    clip_mode: str = 'norm'
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    log_seconds: float = 60.0
    progress: bool | None = None
    plot: bool = True
    tensorboard: bool = True
    deterministic: bool = False
    compile: bool = False
    channels_last: bool = False

    def validate(self) -> SegConfig:
        """Raise UsageError naming the first bad value and what is allowed."""
        _check(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- metrics ------------------------------------------------------------------------------------------------------

def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(true, predicted) pixel counts over the pixels whose label is not ``ignore_index``; int64, classes x classes."""
    keep = target != ignore_index
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


@dataclass
class SegMetrics:
    confusion: torch.Tensor  # (true, predicted) counts
    classes: list[str]

    @property
    def iou(self) -> list[float]:
        """Per-class IoU in percent; NaN for a class absent from labels and predictions."""
        cm = self.confusion.double()
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        return [100 * t / u if u else math.nan for t, u in zip(tp.tolist(), union.tolist(), strict=True)]

    @property
    def miou(self) -> float:
        vals = [v for v in self.iou if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan

    @property
    def pixel_acc(self) -> float:
        total = int(self.confusion.sum())
        return 100 * int(self.confusion.diagonal().sum()) / total if total else math.nan

    @property
    def class_acc(self) -> list[float]:
        cm = self.confusion.double()
        return [100 * t / n if n else math.nan for t, n in zip(cm.diagonal().tolist(), cm.sum(1).tolist(),
                                                               strict=True)]

    def table(self) -> list[dict[str, Any]]:
        return [dict(cls=c, iou=i, acc=a) for c, i, a in zip(self.classes, self.iou, self.class_acc, strict=True)]


def seg_metrics(confusion: torch.Tensor, classes: Sequence[str] | None = None) -> SegMetrics:
    return SegMetrics(confusion, list(classes) if classes else [str(i) for i in range(confusion.shape[0])])


# --- model --------------------------------------------------------------------------------------------------------

def build_seg_model(backbone: str, num_classes: int, channels: int = 512, aux_channels: int = 256,
                    aux_head: bool = True, model_kwargs: dict | None = None, pyramid: str = 'auto') -> nn.Module:
    from ..dense.upernet import upernet
    try:
        return upernet(backbone, num_classes, aux_head=aux_head, channels=channels, aux_channels=aux_channels,
                       pyramid=pyramid, **(model_kwargs or {}))
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise UsageError(f'unknown backbone {backbone!r}: not an mlpvision or timm model (mlpvision models, or '
                             f'timm.list_models())') from None
        raise


def _model_meta(cfg: SegConfig, classes: list[str], palette: list) -> dict:
    return dict(task='segmentation', backbone=cfg.backbone, model_kwargs=dict(cfg.model_kwargs), pyramid=cfg.pyramid,
                num_classes=len(classes), channels=cfg.channels, aux_channels=cfg.aux_channels,
                aux_head=cfg.aux_weight > 0, classes=classes, palette=[list(p) for p in palette],
                base_size=cfg.base_size, ignore_index=cfg.ignore_index, config=dataclasses.asdict(cfg))


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The UperNet a segmentation checkpoint (best.pth / last.pth) holds, in eval mode, and its metadata."""
    return model_from_checkpoint_dict(load_checkpoint_file(path), path)


def model_from_checkpoint_dict(ckpt: dict, path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """:func:`model_from_checkpoint` of a checkpoint already read (``path`` names it in errors)."""
    from .._checkpoint import CheckpointError
    meta = ckpt.get('mlpvision') or {}
    if meta.get('task') != 'segmentation':
        raise CheckpointError(f'{str(path)!r} is not a segmentation checkpoint (no segmentation metadata); pass the '
                              f'best.pth or last.pth of a `mlpvision train --task segment` run')
    model = build_seg_model(meta['backbone'], meta['num_classes'], meta['channels'], meta['aux_channels'],
                            meta['aux_head'], meta['model_kwargs'], meta['pyramid'])
    load_weights(model, ckpt['model'], f'checkpoint {str(path)!r}')
    return model.eval(), meta


# --- schedule -----------------------------------------------------------------------------------------------------

def poly_lr(step: int, total: int, base_lr: float, power: float = 1.0, min_lr: float = 0.0, warmup_steps: int = 0,
            warmup_ratio: float = 1e-6) -> float:
    """mmcv's poly rate at ``step`` (0-based) of ``total``, scaled by its linear warm-up during the first
    ``warmup_steps``: ``lr * (1 - (1 - warmup_ratio) * (1 - step / warmup_steps))``."""
    lr = (base_lr - min_lr) * (1 - min(step, total) / total) ** power + min_lr
    if step < warmup_steps:
        lr *= 1 - (1 - warmup_ratio) * (1 - step / warmup_steps)
    return lr


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on everything but normalisation layers (the configs' ``'norm': dict(decay_mult=0.)``, which by
    name catches the backbone's norms; here by type, so the heads' BatchNorms are left out too)."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [dict(params=[p for p in params if id(p) not in no_decay], weight_decay=weight_decay),
            dict(params=[p for p in params if id(p) in no_decay], weight_decay=0.0)]


# --- inference ----------------------------------------------------------------------------------------------------

def slide_inference(model: nn.Module, x: torch.Tensor, num_classes: int, crop: Sequence[int],
                    stride: Sequence[int]) -> torch.Tensor:
    """mmseg's ``slide`` test: logits of ``crop``-sized windows every ``stride`` pixels (the last window flush with
    the border), averaged where they overlap; an image smaller than the crop is one window of its own size."""
    b, _, h, w = x.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    logits = x.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh, h - ch), min(c * sw, w - cw)
            logits[:, :, y1:y1 + ch, x1:x1 + cw] += model(x[:, :, y1:y1 + ch, x1:x1 + cw])['out'].float()
            count[:, :, y1:y1 + ch, x1:x1 + cw] += 1
    return logits / count


def predict_logits(model: nn.Module, x: torch.Tensor, num_classes: int, mode: str = 'whole',
                   crop: Sequence[int] = (512, 512), stride: Sequence[int] = (341, 341),
                   size: Sequence[int] | None = None) -> torch.Tensor:
    """Logits (float32) of ``x`` by whole-image or sliding-window inference, upsampled to ``size`` if given."""
    if mode == 'whole':
        logits = model(x)['out'].float()
    elif mode == 'slide':
        logits = slide_inference(model, x, num_classes, crop, stride)
    else:
        raise UsageError(f"unknown evaluation mode {mode!r}; use 'whole' or 'slide'")
    if size is not None and tuple(logits.shape[2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode='bilinear', align_corners=False)
    return logits


def _collate_eval(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    if len({(tuple(x.shape), tuple(y.shape)) for x, y in batch}) > 1:
        raise UsageError('images of different sizes in one evaluation batch; use --val-batch-size 1')
    return torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])


@torch.no_grad()
def evaluate_seg(model: nn.Module, loader: Any, num_classes: int, ignore_index: int, device: torch.device,
                 mode: str = 'whole', crop: Sequence[int] = (512, 512), stride: Sequence[int] = (341, 341),
                 amp_dtype: torch.dtype | None = None, info: DistInfo | None = None,
                 classes: Sequence[str] | None = None) -> SegMetrics:
    """The confusion matrix of ``model`` over ``loader`` (images at the eval scale, masks at full size), summed
    over processes."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast_context(device, amp_dtype):
            logits = predict_logits(model, x, num_classes, mode, crop, stride, size=y.shape[1:])
        cm += confusion_matrix(logits.argmax(1), y, num_classes, ignore_index)
    if info is not None:
        all_reduce_sum(cm, info)
    model.train(was_training)
    return seg_metrics(cm.cpu(), classes)


# --- training -----------------------------------------------------------------------------------------------------

@dataclass
class SegResult:
    output: Path
    best_miou: float
    best_epoch: int
    final: SegMetrics | None
    elapsed_s: float
    params: int
    model: nn.Module


_COLUMNS = ('epoch', 'step', 'lr', 'train_loss', 'val_miou', 'val_pixel_acc', 'ema_val_miou', 'ema_val_pixel_acc',
            'img_per_s', 'epoch_time_s', 'wall_s')


def _check(cfg: SegConfig) -> None:
    if cfg.model != 'upernet':
        raise UsageError(f"--model {cfg.model!r}: segmentation trains 'upernet' on the --backbone (the AS-MLP and "
                         f"Hire-MLP segmentation configs' decoder)")
    if cfg.amp not in ('none', 'bf16', 'fp16'):
        raise UsageError(f"--amp {cfg.amp!r}: use 'none', 'bf16' or 'fp16'")
    if cfg.eval_mode not in ('whole', 'slide'):
        raise UsageError(f"--eval-mode {cfg.eval_mode!r}: use 'whole' or 'slide'")
    for name in ('crop', 'slide_crop', 'slide_stride'):
        v = getattr(cfg, name)
        if len(v) != 2 or min(v) < 1:
            raise UsageError(f'--{name.replace("_", "-")} takes two positive sizes H W; got {v}')
    if cfg.batch_size < 2:
        raise UsageError('--batch-size must be at least 2 (the BatchNorm of the 1x1 pyramid pool needs two values '
                         'per channel in training)')
    if not cfg.data_dir:
        raise UsageError('--data-dir is required (a CamVid folder with --dataset camvid, or a folder with '
                         '<split>/images and <split>/masks)')


def resolve_seg_config(overrides: dict) -> SegConfig:
    """Defaults < the resumed checkpoint's configuration < ``overrides`` (the flags given)."""
    return SegConfig(**resolve_task_config(SegConfig, 'segmentation', overrides))


class PolyLR:
    """mmcv's poly schedule with linear warm-up (:func:`poly_lr`), set on every parameter group at each step; a
    function of the step alone, so it has no state to save."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, cfg: SegConfig) -> None:
        self.optimizer, self.total, self.cfg = optimizer, total, cfg

    def step_update(self, step: int) -> None:
        c = self.cfg
        lr = poly_lr(step, self.total, c.lr, c.poly_power, c.min_lr, c.warmup_steps, c.warmup_ratio)
        for g in self.optimizer.param_groups:
            g['lr'] = lr


class SegmentTask(Task):
    """Semantic segmentation: UperNet on a pyramid backbone, cross-entropy on the decode head plus the auxiliary
    head's, mIoU; best.pth by validation mIoU."""
    name = 'segment'
    columns = _COLUMNS
    score = 'val_miou'
    score_label = 'mIoU'

    cfg: SegConfig
    final: SegMetrics | None = None

    def setup(self, run: Run) -> None:
        cfg, info = self.cfg, run.info
        train_tf = SegTrainTransform(cfg.base_size, tuple(cfg.crop), tuple(cfg.ratio_range), cfg.hflip,
                                     cfg.photometric, cfg.ignore_index)
        train_data = build_seg_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, cfg.num_classes,
                                       cfg.ignore_index, train_tf)
        val_data = build_seg_dataset(cfg.dataset, cfg.data_dir, cfg.val_split, cfg.num_classes, cfg.ignore_index,
                                     SegEvalTransform(cfg.base_size))
        self.classes = train_data.classes
        self.palette = train_data.palette
        # every mask read once before the first step: values checked, each class's pixels counted
        threads = max(1, min(8, os.cpu_count() or 1))
        pixels = train_data.dataset.class_pixels(threads)
        val_data.dataset.class_pixels(threads)
        check_empty_classes(self.classes, pixels, f'the training masks of {cfg.data_dir} ({cfg.train_split})',
                            cfg.allow_empty_classes, unit='pixels')
        self.pixels_line = class_counts_line(self.classes, pixels, 'of the labelled training pixels', percent=True)
        if len(train_data.dataset) < cfg.batch_size * info.world_size:
            raise UsageError(f'{len(train_data.dataset)} training images is fewer than one batch of '
                             f'{cfg.batch_size * info.world_size}; lower --batch-size')
        torch.manual_seed(cfg.seed)  # one initialisation on every process (DDP would broadcast rank 0's anyway)
        self.model = build_seg_model(cfg.backbone, len(self.classes), cfg.channels, cfg.aux_channels,
                                     cfg.aux_weight > 0, cfg.model_kwargs, cfg.pyramid)
        torch.manual_seed(cfg.seed + info.rank)  # then each process its own dropout, drop path and augmentations
        self.train_loader = create_train_loader(train_data.dataset, cfg.batch_size, cfg.seed, info.rank,
                                                info.world_size, num_workers=cfg.workers)
        self.val_loader = create_eval_loader(val_data.dataset, cfg.val_batch_size, info.rank, info.world_size,
                                             num_workers=cfg.workers)
        self.val_loader.collate_fn = _collate_eval
        self.val_data = val_data
        self.train_size, self.val_size = len(train_data.dataset), len(val_data.dataset)
        self.description = f'UperNet({cfg.backbone}), {len(self.classes)} classes'
        self.ce = nn.CrossEntropyLoss(ignore_index=cfg.ignore_index)

    def optimizer(self, run: Run, model: nn.Module) -> tuple[torch.optim.Optimizer, Any, str]:
        cfg = self.cfg
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
        text = (f'optimizer: AdamW lr {cfg.lr:g}, weight decay {cfg.weight_decay:g} (none on norms), poly power '
                f'{cfg.poly_power:g} over {run.steps * cfg.epochs} steps after {cfg.warmup_steps} warm-up steps')
        return optimizer, PolyLR(optimizer, run.steps * cfg.epochs, cfg), text

    def loss(self, run: Run, batch: Any) -> StepOutput:
        x, y = batch[0].to(run.info.device), batch[1].to(run.info.device)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = run.model(x)
        loss = self.ce(outs['out'].float(), y)
        if 'aux' in outs:
            loss = loss + self.cfg.aux_weight * self.ce(outs['aux'].float(), y)
        return StepOutput(loss, len(x))

    def preflight(self, run: Run) -> None:
        """The first validation image through the evaluation path (its size against the backbone's input policy),
        and its mask's values against the classes, before the first step."""
        cfg = self.cfg
        if not len(self.val_data.dataset):
            raise UsageError(f'the {cfg.val_split!r} split of {cfg.data_dir} has no images; pass --val-split')
        x, y = self.val_data.dataset[0]
        bad = sorted(set(torch.unique(y).tolist()) - set(range(len(self.classes))) - {cfg.ignore_index})
        if bad:
            raise UsageError(f'validation mask values {bad[:5]} are neither class ids 0..{len(self.classes) - 1} nor '
                             f'--ignore-index {cfg.ignore_index}; fix the masks or pass --num-classes / --ignore-index')
        model = run.state.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast_context(run.info.device, run.amp_dtype):
                predict_logits(model, x[None].to(run.info.device), len(self.classes), cfg.eval_mode,
                               cfg.slide_crop, cfg.slide_stride)
        except (ValueError, RuntimeError) as e:
            raise UsageError(f'evaluation at {tuple(x.shape[1:])} ({cfg.eval_mode}) fails for backbone '
                             f'{cfg.backbone}: {str(e).splitlines()[0]}; change --base-size or --eval-mode') from None
        finally:
            model.train(was_training)

    def evaluate(self, run: Run, model: nn.Module, desc: str) -> dict[str, Any]:
        cfg = self.cfg
        self.final = evaluate_seg(model, self.val_loader, len(self.classes), cfg.ignore_index, run.info.device,
                                  cfg.eval_mode, cfg.slide_crop, cfg.slide_stride, run.amp_dtype, run.info,
                                  self.classes)
        return dict(val_miou=self.final.miou, val_pixel_acc=self.final.pixel_acc)

    def after_evaluate(self, run: Run, row: dict[str, Any], best: bool) -> None:
        write_per_class(run.output, self.final)

    def epoch_line(self, row: dict[str, Any]) -> str:
        if 'val_miou' not in row:
            return ''
        ema = f'  EMA mIoU {row["ema_val_miou"]:.2f}' if 'ema_val_miou' in row else ''
        return f'val mIoU {row["val_miou"]:.2f} pixel acc {row["val_pixel_acc"]:.2f}{ema}'

    def meta(self) -> dict:
        return _model_meta(self.cfg, self.classes, self.palette)

    def resolved(self) -> dict:
        return dict(num_classes=len(self.classes), classes=list(self.classes))

    def start_lines(self, run: Run) -> list[str]:
        c = self.cfg
        return [f'data: {c.dataset} {c.data_dir}, {self.train_size} training / {self.val_size} validation images, '
                f'{len(self.classes)} classes, ignore index {c.ignore_index}',
                f'classes: {self.pixels_line}',
                f'augmentation: resize to short side {c.base_size} x ratio {c.ratio_range[0]:g}-{c.ratio_range[1]:g}, '
                f'crop {c.crop[0]}x{c.crop[1]}, hflip {c.hflip:g}, photometric {"on" if c.photometric else "off"}; '
                f'evaluation {c.eval_mode}']

    def plot(self, metrics_csv: Path, out_png: Path, title: str) -> Path | None:
        return plot_seg_curves(metrics_csv, out_png, title)


def fit_seg(cfg: SegConfig, progress: bool | None = None) -> SegResult:
    """Train UperNet as ``cfg`` says; the run folder gets config.yaml, last.pth, best.pth, metrics.csv,
    per_class.csv, confusion.csv and curves.png.

    Raises:
        TrainingInterrupted: SIGINT / SIGTERM; last.pth was saved at the next step boundary.
    """
    task = SegmentTask(cfg)
    r = fit_task(task, progress)
    return SegResult(r.output_dir, r.best_metric, r.best_epoch, task.final, r.elapsed_s, r.params, r.model)


def write_per_class(out: Path, m: SegMetrics) -> None:
    """``per_class.csv`` (IoU and accuracy per class, then mIoU and pixel accuracy) and ``confusion.csv``."""
    with open(out / 'per_class.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['class', 'iou', 'acc'])
        for r in m.table():
            w.writerow([r['cls'], f'{r["iou"]:.2f}', f'{r["acc"]:.2f}'])
        w.writerow(['mIoU', f'{m.miou:.2f}', ''])
        w.writerow(['pixel_acc', f'{m.pixel_acc:.2f}', ''])
    with open(out / 'confusion.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['true\\pred', *m.classes])
        for c, row in zip(m.classes, m.confusion.tolist(), strict=True):
            w.writerow([c, *row])


def plot_seg_curves(metrics_csv: Path, out_png: Path, title: str = '') -> Path | None:
    """Training loss and validation mIoU per epoch (None without matplotlib)."""
    plt = _pyplot()
    rows = read_metrics(metrics_csv)
    if plt is None or not rows:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(*_floats(rows, 'train_loss'))
    a.set(xlabel='epoch', ylabel='train loss')
    b.plot(*_floats(rows, 'val_miou'), marker='o')
    b.set(xlabel='epoch', ylabel='val mIoU (%)')
    tmp = Path(out_png).with_suffix('.tmp.png')
    _save(plt, fig, tmp, title)
    os.replace(tmp, out_png)
    return Path(out_png)
