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

Reused from image classification training (:mod:`mlpvision.engine.train`): the loaders whose order is a function of
(seed, epoch), the checkpoint helpers (atomic writes, every RNG saved, ``weights_only`` loading), SIGINT / SIGTERM
stopping at a step boundary with a resumable checkpoint, the distributed set-up (one process per device, ``torchrun``)
and the bf16 autocast. A resumed run (``--resume``) continues bit-exactly where it stopped on the same machine and
process count (tests/test_segmentation.py).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import shlex
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checkpoint import load_weights
from ..data.loader import create_eval_loader, create_train_loader, set_loader_epoch, steps_per_epoch
from ..data.segmentation import SegEvalTransform, SegTrainTransform, build_seg_dataset
from ..errors import UsageError
from .checkpoint import get_rng_state, load_checkpoint_file, save_checkpoint, set_rng_state
from .distributed import DistInfo, all_reduce_sum, barrier, destroy_distributed, init_distributed
from .evaluate import autocast_context
from .metrics import _floats, read_metrics
from .train import NonFiniteLossError, TrainingInterrupted, _amp_dtype, _StopRequest, available_cores

__all__ = ['SegConfig', 'SegMetrics', 'confusion_matrix', 'seg_metrics', 'build_seg_model', 'poly_lr',
           'slide_inference', 'predict_logits', 'evaluate_seg', 'fit_seg', 'SegResult', 'model_from_checkpoint',
           'resolve_seg_config', 'plot_seg_curves', 'write_per_class']

_logger = logging.getLogger('mlpvision.segmentation')


@dataclass
class SegConfig:
    """Every option of ``mlpvision train-seg`` (defaults: the AS-MLP ADE20K config where it has one)."""
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
    """The UperNet a ``train-seg`` checkpoint (best.pth / last.pth) holds, in eval mode, and its metadata."""
    from .._checkpoint import CheckpointError
    ckpt = load_checkpoint_file(path)
    meta = ckpt.get('mlpvision') or {}
    if meta.get('task') != 'segmentation':
        raise CheckpointError(f'{str(path)!r} is not a train-seg checkpoint (no segmentation metadata); pass the '
                              f'best.pth or last.pth of a train-seg run')
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


_COLUMNS = ('epoch', 'step', 'lr', 'train_loss', 'val_miou', 'val_pixel_acc', 'img_per_s', 'epoch_time_s', 'wall_s')


def _check(cfg: SegConfig) -> None:
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


def _output(cfg: SegConfig, info: DistInfo) -> Path:
    if cfg.resume:
        out = Path(cfg.output) if cfg.output else Path(cfg.resume).parent
    else:
        if not cfg.output:
            raise UsageError('--output is required (the run folder)')
        out = Path(cfg.output)
        if (out / 'last.pth').exists() and not cfg.overwrite:
            raise UsageError(f'{str(out)!r} already holds a run (last.pth); pass --resume auto to continue it, '
                             f'--overwrite to start it again, or another --output')
    barrier(info)
    if info.primary:
        out.mkdir(parents=True, exist_ok=True)
    return out


def resume_path(resume: str, output: str) -> Path | None:
    if not resume:
        return None
    path = Path(output) / 'last.pth' if resume == 'auto' else Path(resume)
    if not path.is_file():
        raise UsageError(f'--resume {resume}: no checkpoint at {str(path)!r}' +
                         ('; pass --output (the run folder) with --resume auto' if resume == 'auto' else ''))
    return path


def resolve_seg_config(overrides: dict) -> SegConfig:
    """Defaults < the resumed checkpoint's configuration < ``overrides`` (the flags given)."""
    base: dict[str, Any] = {}
    path = resume_path(overrides.get('resume', ''), overrides.get('output', ''))
    if path is not None:
        meta = load_checkpoint_file(path).get('mlpvision') or {}
        base = dict(meta.get('config') or {})
        base.pop('resume', None)
        base.pop('overwrite', None)
    names = {f.name for f in dataclasses.fields(SegConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise UsageError(f'unknown segmentation options {sorted(unknown)}')
    return SegConfig(**{**{k: v for k, v in base.items() if k in names}, **overrides})


def _threads(cfg: SegConfig) -> int:
    if cfg.threads:
        return cfg.threads
    if os.environ.get('OMP_NUM_THREADS'):
        return torch.get_num_threads()
    share = max(1, available_cores() // max(1, int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1)))
    return max(1, share - cfg.workers)


def fit_seg(cfg: SegConfig) -> SegResult:
    """Train UperNet as ``cfg`` says; the run folder gets last.pth, best.pth, metrics.csv, per_class.csv,
    confusion.csv and curves.png.

    Raises:
        TrainingInterrupted: SIGINT / SIGTERM; last.pth was saved at the next step boundary.
    """
    _check(cfg)
    info = init_distributed(cfg.device)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(_threads(cfg))
    try:
        return _fit(cfg, info)
    finally:
        torch.set_num_threads(saved_threads)
        destroy_distributed()


def _fit(cfg: SegConfig, info: DistInfo) -> SegResult:
    t0 = time.perf_counter()
    out = _output(cfg, info)
    device = info.device
    amp_dtype = _amp_dtype(cfg.amp, device)
    train_tf = SegTrainTransform(cfg.base_size, tuple(cfg.crop), tuple(cfg.ratio_range), cfg.hflip, cfg.photometric,
                                 cfg.ignore_index)
    train_data = build_seg_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, cfg.num_classes, cfg.ignore_index,
                                   train_tf)
    val_data = build_seg_dataset(cfg.dataset, cfg.data_dir, cfg.val_split, cfg.num_classes, cfg.ignore_index,
                                 SegEvalTransform(cfg.base_size))
    classes, nc = train_data.classes, len(train_data.classes)
    if len(train_data.dataset) < cfg.batch_size * info.world_size:
        raise UsageError(f'{len(train_data.dataset)} training images is fewer than one batch of '
                         f'{cfg.batch_size * info.world_size}; lower --batch-size')
    torch.manual_seed(cfg.seed)  # one initialisation on every process (DDP would broadcast rank 0's anyway)
    model = build_seg_model(cfg.backbone, nc, cfg.channels, cfg.aux_channels, cfg.aux_weight > 0, cfg.model_kwargs,
                            cfg.pyramid)
    if cfg.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(cfg.seed + info.rank)  # then each process its own dropout, drop path and augmentations
    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda'
                                                          else None)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    train_loader = create_train_loader(train_data.dataset, cfg.batch_size, cfg.seed, info.rank, info.world_size,
                                       num_workers=cfg.workers)
    val_loader = create_eval_loader(val_data.dataset, cfg.val_batch_size, info.rank, info.world_size,
                                    num_workers=cfg.workers)
    val_loader.collate_fn = _collate_eval
    steps = steps_per_epoch(train_loader)
    total = steps * cfg.epochs
    meta = _model_meta(cfg, classes, train_data.palette)

    epoch, step_in_epoch, global_step, best, best_epoch, loss_sum, loss_n = 0, 0, 0, -math.inf, 0, 0.0, 0
    path = resume_path(cfg.resume, str(out))
    if path is not None:
        ckpt = load_checkpoint_file(path)
        load_weights(model, ckpt['model'], f'checkpoint {str(path)!r}')
        try:
            optimizer.load_state_dict(ckpt['optimizer'])
        except (ValueError, KeyError) as e:
            raise UsageError(f'checkpoint {str(path)!r} cannot resume this run ({e})') from None
        epoch, step_in_epoch, global_step = ckpt['epoch'], ckpt['step_in_epoch'], ckpt['global_step']
        best, best_epoch = ckpt['best_miou'], ckpt['best_epoch']
        loss_sum, loss_n = ckpt['loss_sum'], ckpt['loss_n']
        rngs = ckpt['rng_per_rank']
        if len(rngs) != info.world_size or ckpt['steps_per_epoch'] != steps:
            raise UsageError(f'checkpoint {str(path)!r} was written by {len(rngs)} processes with '
                             f'{ckpt["steps_per_epoch"]} steps per epoch; resume it with the same process count and '
                             f'--batch-size')
        set_rng_state(rngs[info.rank])
        _logger.info('resumed %s at epoch %d, step %d/%d', path, epoch + 1, step_in_epoch, steps)

    def save_last() -> None:
        rng = [get_rng_state()]
        if info.distributed:
            import torch.distributed as dist
            rng = [None] * info.world_size
            dist.all_gather_object(rng, get_rng_state())
        if info.primary:
            save_checkpoint(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                                 step_in_epoch=step_in_epoch, global_step=global_step, best_miou=best,
                                 best_epoch=best_epoch, loss_sum=loss_sum, loss_n=loss_n, steps_per_epoch=steps,
                                 rng_per_rank=rng, mlpvision=meta), out / 'last.pth')

    csv_path = out / 'metrics.csv'
    if info.primary:
        rows = [r for r in read_metrics(csv_path) if int(r['epoch']) <= epoch] if path is not None else []
        _write_csv(csv_path, rows)
        _logger.info('train-seg: UperNet(%s), %d classes, %s params; %d train / %d val images, %d steps/epoch x %d '
                     'epochs, batch %d x %d process(es), crop %s, %d threads, device %s', cfg.backbone, nc,
                     f'{params:,}', len(train_data.dataset), len(val_data.dataset), steps, cfg.epochs,
                     cfg.batch_size, info.world_size, cfg.crop, torch.get_num_threads(), device)
    stop = _StopRequest()
    final: SegMetrics | None = None

    def stop_if_asked() -> None:
        signum = stop.requested(info)
        if signum:
            save_last()
            raise TrainingInterrupted(
                f'stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {step_in_epoch}/{steps}; saved '
                f'{out / "last.pth"}. Resume with: mlpvision train-seg --resume auto --output '
                f'{shlex.quote(str(out))}', signum)

    ce = nn.CrossEntropyLoss(ignore_index=cfg.ignore_index)
    with stop:
        while epoch < cfg.epochs:
            stop_if_asked()
            set_loader_epoch(train_loader, epoch, cfg.seed, step_in_epoch)
            train_model.train()
            t_epoch, n_img = time.perf_counter(), 0
            for x, y in train_loader:
                lr = poly_lr(global_step, total, cfg.lr, cfg.poly_power, cfg.min_lr, cfg.warmup_steps,
                             cfg.warmup_ratio)
                for g in optimizer.param_groups:
                    g['lr'] = lr
                x, y = x.to(device), y.to(device)
                with autocast_context(device, amp_dtype):
                    outs = train_model(x)
                    loss = ce(outs['out'].float(), y)
                    if 'aux' in outs:
                        loss = loss + cfg.aux_weight * ce(outs['aux'].float(), y)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f'the loss is {loss.item()} at step {global_step + 1}; lower --lr or use '
                                             f'--amp none (last.pth holds the last finite weights)')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
                step_in_epoch, global_step, n_img = step_in_epoch + 1, global_step + 1, n_img + len(x)
                if info.primary and cfg.log_interval and global_step % cfg.log_interval == 0:
                    _logger.info('epoch %d step %d/%d  loss %.4f  lr %.3g', epoch + 1, step_in_epoch, steps,
                                 loss_sum / loss_n, lr)
                if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                    save_last()
                stop_if_asked()
            row: dict[str, Any] = dict(epoch=epoch + 1, step=global_step, lr=lr, train_loss=loss_sum / max(loss_n, 1),
                                       img_per_s=n_img * info.world_size / max(time.perf_counter() - t_epoch, 1e-9),
                                       epoch_time_s=time.perf_counter() - t_epoch)
            _sync_buffers(model, info)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                final = evaluate_seg(model, val_loader, nc, cfg.ignore_index, device, cfg.eval_mode, cfg.slide_crop,
                                     cfg.slide_stride, amp_dtype, info, classes)
                row.update(val_miou=final.miou, val_pixel_acc=final.pixel_acc)
                if info.primary:
                    write_per_class(out, final)
                    if final.miou > best:
                        best, best_epoch = final.miou, epoch + 1
                        save_checkpoint(dict(model=model.state_dict(), epoch=epoch + 1, miou=best, mlpvision=meta),
                                        out / 'best.pth')
            row['wall_s'] = time.perf_counter() - t0
            if info.primary:
                _append_csv(csv_path, row)
                _logger.info('epoch %d/%d: train loss %.4f%s, %.1f img/s', epoch + 1, cfg.epochs, row['train_loss'],
                             f', val mIoU {final.miou:.2f} pixel acc {final.pixel_acc:.2f}' if 'val_miou' in row
                             else '', row['img_per_s'])
                plot_seg_curves(csv_path, out / 'curves.png', f'UperNet({cfg.backbone})')
            epoch, step_in_epoch, loss_sum, loss_n = epoch + 1, 0, 0.0, 0
            save_last()
    return SegResult(out, best, best_epoch, final, time.perf_counter() - t0, params, model)


def _sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Rank 0's BatchNorm statistics on every process. DDP broadcasts buffers before each forward, so after the last
    step of an epoch each process holds the statistics of its own last batch; evaluation and the checkpoint use
    rank 0's (without SyncBN, as DDP would at the next step)."""
    if info.distributed:
        import torch.distributed as dist
        for b in model.buffers():
            dist.broadcast(b, 0)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, _COLUMNS)
        w.writeheader()
        w.writerows({k: r.get(k, '') for k in _COLUMNS} for r in rows)


def _append_csv(path: Path, row: dict) -> None:
    with open(path, 'a', newline='') as f:
        csv.DictWriter(f, _COLUMNS).writerow({k: (f'{v:.6g}' if isinstance(v, float) else v)
                                              for k, v in row.items()})


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
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(metrics_csv)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(*_floats(rows, 'train_loss'))
    a.set(xlabel='epoch', ylabel='train loss')
    b.plot(*_floats(rows, 'val_miou'), marker='o')
    b.set(xlabel='epoch', ylabel='val mIoU (%)')
    fig.suptitle(title)
    fig.tight_layout()
    tmp = out_png.with_suffix('.tmp.png')
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png

