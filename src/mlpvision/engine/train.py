"""Image classification: the task :class:`ClassifyTask` that :mod:`mlpvision.engine.run` trains, and :func:`fit`.

The file reads top to bottom like a reference training script (timm ``train.py``, DeiT ``main.py``): the
configuration and model, the task (data, model, optimisation, the loss of a batch, evaluation), then :func:`fit`.
The loop itself (resume, signals, checkpoints, metrics, DDP) is :mod:`mlpvision.engine.run`, shared with segmentation
and detection.

Built from timm's parts: ``create_optimizer_v2`` (given the model, so its ``no_weight_decay()`` set and every
bias / norm parameter get no weight decay), ``create_scheduler_v2`` (warmup + cosine, stepped every update),
``Mixup`` with ``SoftTargetCrossEntropy`` or ``LabelSmoothingCrossEntropy``, ``ModelEmaV3``, ``dispatch_clip_grad``,
``random_seed``.

Exact resumption: the data order depends only on (seed, epoch) (see :mod:`mlpvision.data.loader`), every RNG is
saved in the checkpoint, and a run resumed from a mid-epoch checkpoint skips the batches already trained on. With
``deterministic=True`` and ``workers=0`` a killed and resumed run ends with the same weights, bit for bit, as an
uninterrupted one; with worker processes the data order is still exact but the augmentations of the rest of the
resumed epoch are drawn afresh.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data.transforms import MaybeToTensor
from timm.utils import random_seed

from .._checkpoint import load_finetune_state_dict
from ..data.checks import check_class_names, check_empty_classes, class_counts, class_counts_line, same_stem_groups
from ..data.datasets import DatasetInfo, build_dataset
from ..data.loader import create_eval_loader, create_train_loader
from ..data.memory import BatchAugment, InMemoryLoader, decode_images
from ..data.transforms import DataConfig, ToMode, build_transform, resolve_data_config
from ..errors import UsageError
from ..models import create_any_model
from .config import TrainConfig, check_trainable_name, load_recipe, make_config, scaled_lrs
from .distill import Distiller, build_teacher
from .distributed import DistInfo, barrier
from .evaluate import EvalResult, evaluate
from .loading import finetune_source
from .metrics import METRIC_COLUMNS, eval_split_label, plot_curves
from .run import (
    BatchSizeError,
    Meters,
    NonFiniteLossError,
    Run,
    StepOutput,
    Task,
    TrainingInterrupted,
    TrainState,
    _StopRequest,
    amp_dtype,
    available_cores,
    build_run,
    resume_command,
    resumed_options,
    thread_split,
)
from .run import fit as fit_task
from .run import train_one_epoch as _train_one_epoch

__all__ = ['fit', 'train_one_epoch', 'build_context', 'ClassifyTask', 'TrainResult', 'TrainState', 'Meters',
           'build_model', 'takes_img_size', 'describe_model', 'resolve_config', 'NonFiniteLossError',
           'BatchSizeError', 'TrainingInterrupted', 'thread_split', 'resume_command', 'regimen', 'available_cores',
           '_StopRequest', '_amp_dtype']

_logger = logging.getLogger('mlpvision.train')
_amp_dtype = amp_dtype  # the name distill and older callers import


@dataclass
class TrainResult:
    output_dir: Path
    last: Path
    best: Path | None
    metrics_csv: Path
    plot: Path | None
    config_yaml: Path
    best_acc1: float
    best_epoch: int
    final: EvalResult | None  # the last evaluation (model weights, or EMA weights when EMA is on)
    description: str
    params: int
    elapsed_s: float
    model: nn.Module = field(repr=False)
    counts: dict[str, int] = field(default_factory=dict)  # skipped / replaced items over the run (Task.counters)


# -- configuration and model --------------------------------------------------------------------------------------
def resolve_config(recipe: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults < the resumed checkpoint's configuration (``resume``) < ``recipe`` < ``overrides``."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    base, meta = resumed_options(overrides)
    if base is not None and meta.get('task', 'classification') != 'classification':
        raise UsageError(f'{overrides["resume"]!r} is a {meta["task"]} run; resume it with mlpvision train --resume '
                         f'auto --output {overrides["output"]} (the task is read from the checkpoint)')
    return make_config(base, load_recipe(recipe) if recipe else None, overrides)


def takes_img_size(name: str) -> bool:
    """Whether model ``name`` is built for one input size, given as its ``img_size`` argument.

    Read from the registry: the ``fixed_input_size`` flag of the model's pretrained cfg (ResMLP, Strip-MLP, RepMLP
    and RepMLPNet: their token-mixing weights are sized for the input). The other families take any input size and
    have no ``img_size`` argument; tests/test_train.py holds every family's constructor to its flag.
    """
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    return bool(pcfg is not None and pcfg.fixed_input_size)


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, dict]:
    """The model of ``cfg`` for ``num_classes`` classes and ``in_chans`` channels, and the kwargs that built it.

    ``cfg.img_size`` goes to the constructor of a fixed-size model (:func:`takes_img_size`); any other model is
    simply fed inputs of that size. ``img_size`` in ``cfg.model_kwargs`` is always passed on. A timm model name
    (not an mlpvision one) is built by ``timm.create_model`` without pretrained weights (:func:`create_any_model`).
    """
    check_trainable_name(cfg.model)
    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    kwargs.update(num_classes=num_classes, in_chans=in_chans)
    if cfg.drop_rate is not None:
        kwargs['drop_rate'] = cfg.drop_rate
    if cfg.drop_path_rate is not None:
        kwargs['drop_path_rate'] = cfg.drop_path_rate
    if cfg.img_size is not None and 'img_size' not in kwargs and takes_img_size(cfg.model):
        kwargs['img_size'] = cfg.img_size
    try:
        return create_any_model(cfg.model, **kwargs), kwargs
    except (TypeError, ValueError) as e:  # an unknown argument, or a value the constructor's checks refuse
        raise UsageError(f'model {cfg.model} does not accept these arguments ({e}); check --model-kwargs') from None


def describe_model(name: str, kwargs: dict, data_cfg: DataConfig) -> str:
    """e.g. ``resmlp_s12 (embed_dim=128, depth=4, patch_size=4; 1x32x32 input, 10 classes)``."""
    shown = {k: v for k, v in kwargs.items() if k not in ('num_classes', 'in_chans', 'img_size')}
    extra = ', '.join(f'{k}={v}' for k, v in shown.items())
    c, h, w = data_cfg.input_size
    return f'{name} ({extra + "; " if extra else ""}{c}x{h}x{w} input, {kwargs.get("num_classes")} classes)'



def regimen(cfg: TrainConfig, model_kwargs: dict | None = None) -> tuple[str, str]:
    """The augmentations and the regularisers in effect, as two start-up lines; values left at their default
    (:class:`TrainConfig`'s, not asked for by a recipe or a flag unless those give the same value) say so."""
    defaults = TrainConfig()

    def said(name: str, text: str) -> str:
        return f'{text} (default)' if getattr(cfg, name) == getattr(defaults, name) else text

    if cfg.train_crop == 'pad':
        crop = said('train_crop', 'random crop after 4 px padding')
    else:
        scale, ratio = cfg.scale or (0.08, 1.0), cfg.ratio or (3 / 4, 4 / 3)
        crop = said('train_crop', f'RandomResizedCrop scale {scale[0]:g}-{scale[1]:g} ratio '
                                  f'{ratio[0]:.3g}-{ratio[1]:.3g}')
    aa = cfg.aa not in (None, '', 'none')
    augment = [crop, said('hflip', f'hflip {cfg.hflip:g}' if cfg.hflip else 'no hflip')]
    augment.append(said('aa', f'RandAugment {cfg.aa}' if aa else 'no auto-augment'))
    if not aa:  # timm ignores colour jitter when an auto-augment policy is given
        augment.append(said('color_jitter', f'colour jitter {cfg.color_jitter:g}' if cfg.color_jitter
                            else 'no colour jitter'))
    augment.append(said('reprob', f'random erasing {cfg.reprob:g} ({cfg.remode}, x{cfg.recount})' if cfg.reprob
                        else 'no random erasing'))
    if cfg.mixup_active:
        augment.append(f'mixup {cfg.mixup:g} / cutmix {cfg.cutmix:g} (prob {cfg.mixup_prob:g}, {cfg.mixup_mode})')
    else:
        augment.append(said('mixup', 'no mixup/cutmix'))
    if cfg.aug_repeats > 1:
        augment.append(f'repeated augmentation x{cfg.aug_repeats}')
    kw = model_kwargs or {}
    regularise = [
        said('smoothing', f'label smoothing {cfg.smoothing:g}' if cfg.smoothing else 'no label smoothing'),
        said('weight_decay', f'weight decay {cfg.weight_decay:g}'),
        f'drop path {cfg.drop_path_rate:g}' if cfg.drop_path_rate is not None else
        f'drop path {kw["drop_path_rate"]:g}' if 'drop_path_rate' in kw else "drop path: the model's default",
        f'dropout {cfg.drop_rate:g}' if cfg.drop_rate is not None else "dropout: the model's default",
        said('model_ema', f'EMA {cfg.model_ema_decay:g}' if cfg.model_ema else 'no EMA'),
        said('clip_grad', f'gradient clipping {cfg.clip_grad:g} ({cfg.clip_mode})' if cfg.clip_grad
             else 'no gradient clipping')]
    return ', '.join(augment), ', '.join(regularise)



# -- data and optimisation ---------------------------------------------------------------------------------------
def _set_transforms(cfg: TrainConfig, dc: DataConfig, train_data: DatasetInfo, val_data: DatasetInfo) -> None:
    train_data.dataset.transform = build_transform(
        dc, True, cfg.scale, cfg.ratio, cfg.hflip, cfg.color_jitter, cfg.aa, cfg.reprob, cfg.remode, cfg.recount,
        cfg.train_crop)
    val_data.dataset.transform = build_transform(dc, False)
    for ds in (train_data.dataset, val_data.dataset):
        if hasattr(ds, 'image_size'):  # synthetic images are drawn at the model's input size
            ds.image_size = (3, *dc.img_size)


def _check_finetune_classes(cfg: TrainConfig, train_data: DatasetInfo, meta: dict | None) -> None:
    """The class names a ``--finetune`` checkpoint records (ours do; official ones name none) against the data
    set's, when its classifier fits and is kept."""
    if isinstance(meta, dict) and meta.get('classes'):
        check_class_names(meta['classes'], train_data.classes, f'--finetune {cfg.finetune!r}',
                          f'the training split of {cfg.data_dir or cfg.dataset}', cfg.relabel,
                          fix="name the data set's classes as the checkpoint's")


def _data_shape(cfg: TrainConfig, train_data: DatasetInfo, val_data: DatasetInfo) -> list[str]:
    """The data set's shape as start-up lines (images per class of each split, files of one stem in one folder);
    a class without training images stops the run unless ``--allow-empty-classes``."""
    lines = []
    for split, data in (('training', train_data), ('validation', val_data)):
        counts = class_counts(data.dataset, data.num_classes)
        if counts is None:
            continue
        where = f'the {split} split of {cfg.data_dir or cfg.dataset}'
        if split == 'training':
            empty = check_empty_classes(data.classes, counts, where, cfg.allow_empty_classes)
        else:  # a validation split may lack classes; their per-class accuracy is then unknown
            empty = [c for c, n in zip(data.classes, counts, strict=True) if not n]
        lines.append(f'{split} images per class: {class_counts_line(data.classes, counts)}'
                     + (f'; no images of {", ".join(repr(c) for c in empty[:5])}'
                        f'{" ..." if len(empty) > 5 else ""}' if empty else ''))
        samples = getattr(data.dataset, 'samples', None)
        clash = same_stem_groups([p for p, _ in samples]) if isinstance(samples, list) else []
        if clash:
            _logger.warning('%d file names in the %s split share a stem with another in their folder, e.g. %s: the '
                            'same picture twice?', len(clash), split, ' and '.join(repr(p) for p in clash[0]))
    return lines


def _in_memory_loaders(cfg: TrainConfig, info: DistInfo, dc: DataConfig, train_data: DatasetInfo,
                       val_data: DatasetInfo, output: Path) -> tuple[InMemoryLoader, InMemoryLoader]:
    """``--data-in-memory``: both splits decoded once through the per-image pipeline's geometry (training: the
    resize of ``--train-crop pad``; evaluation: the resize and centre crop of the eval transform), then pad-crop,
    flip and normalisation on whole batches (:mod:`mlpvision.data.memory`)."""
    import torchvision.transforms as T

    interp = T.InterpolationMode(dc.interpolation if dc.interpolation != 'random' else 'bilinear')
    train_geometry = T.Compose([ToMode(dc.in_chans), T.Resize(dc.img_size, interpolation=interp)])
    # the eval transform is [ToMode, timm's eval Compose]; its PIL steps are those before the tensor conversion
    timm_eval = val_data.dataset.transform.transforms[1].transforms
    steps = list(itertools.takewhile(lambda t: not isinstance(t, (T.ToTensor, MaybeToTensor)), timm_eval))
    val_geometry = T.Compose([ToMode(dc.in_chans), *steps])
    cache = Path(cfg.data_cache) if cfg.data_cache else output
    tag = f'{cfg.dataset}-{dc.in_chans}x{dc.img_size[0]}x{dc.img_size[1]}'
    decoded = []
    for name, data, geometry in (('train', train_data, train_geometry), ('val', val_data, val_geometry)):
        data.dataset.transform = None  # decode_images applies the geometry; the batches get the rest
        path = cache / f'decoded-{tag}-{name}.npz'
        if info.primary:
            _logger.info('data: the %s split in memory (cache %s)', name, path)
            decoded.append(decode_images(data.dataset, geometry, path))
        barrier(info)  # the primary wrote the cache; the others read it
        if not info.primary:
            decoded.append(decode_images(data.dataset, geometry, path, log=False))
    tr, va = decoded
    # datasets of image files flag the corrupt files they replaced: the batches carry the flags, to be counted
    flags = [d.corrupt if getattr(data.dataset, 'skip_corrupt', False) else None
             for d, data in ((tr, train_data), (va, val_data))]
    mean, std = dc.mean, dc.std
    train = InMemoryLoader.train(tr.images, tr.labels, cfg.batch_size, BatchAugment(mean, std, 4, cfg.hflip),
                                 cfg.seed, info.rank, info.world_size, corrupt=flags[0])
    val = InMemoryLoader.eval(va.images, va.labels, cfg.val_batch_size or 2 * cfg.batch_size,
                              BatchAugment(mean, std, train=False), info.rank, info.world_size, corrupt=flags[1])
    return train, val



def _create_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    opt_kwargs: dict[str, Any] = {}
    if cfg.opt_eps is not None:
        opt_kwargs['eps'] = cfg.opt_eps
    if cfg.opt_betas is not None:
        opt_kwargs['betas'] = tuple(cfg.opt_betas)
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                   **opt_kwargs)
    except (AssertionError, ValueError) as e:  # timm's checks of the optimizer name and its arguments
        raise UsageError(f'optimizer {cfg.opt!r}: {e}') from None


def _create_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int, warmup_lr: float,
                      min_lr: float) -> Any:
    from timm.scheduler import create_scheduler_v2

    if cfg.sched == 'none':
        return None
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
        min_lr=min_lr, warmup_lr=warmup_lr, warmup_epochs=cfg.warmup_epochs, step_on_epochs=False,
        updates_per_epoch=steps)
    return scheduler


def _create_loss(cfg: TrainConfig, num_classes: int) -> tuple[Any, nn.Module]:
    """(timm Mixup or None, the training loss)."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup_active:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return None, nn.CrossEntropyLoss()



# -- the task -----------------------------------------------------------------------------------------------------
class ClassifyTask(Task):
    """Image classification: an mlpvision (or timm) classifier, cross-entropy (label smoothing, mixup / cutmix,
    DeiT distillation), top-1 / top-5; best.pth by validation top-1."""
    name = 'classify'
    columns = METRIC_COLUMNS
    score = 'val_acc1'
    score_label = 'top-1'
    counters = {'corrupt_skipped': 'corrupt training images replaced by a readable one',
                'val_corrupt_skipped': 'corrupt validation images left out of the scores'}

    cfg: TrainConfig
    final: EvalResult | None = None

    def setup(self, run: Run) -> None:
        cfg, info = self.cfg, run.info
        # the primary process downloads; the others wait, then read the same files
        if not info.primary:
            barrier(info)
        size = cfg.img_size or 224
        train_data, val_data = (build_dataset(
            cfg.dataset, split, cfg.data_dir, cfg.download and info.primary, cfg.skip_corrupt, cfg.fake_size,
            cfg.fake_classes, (size, size), cfg.train_split, cfg.val_split) for split in ('train', 'val'))
        if info.primary:
            barrier(info)
        self.shape_lines = _data_shape(cfg, train_data, val_data)
        in_chans = cfg.in_chans or train_data.in_chans

        random_seed(cfg.seed, 0)  # identical initial weights in every process
        model, self.model_kwargs = build_model(cfg, train_data.num_classes, in_chans)
        self.head_reset = []
        if cfg.finetune:  # WEIGHTS: a file, a convert folder or a released NAME.TAG (engine.loading)
            sd, source, meta = finetune_source(cfg.finetune)
            self.head_reset = load_finetune_state_dict(model, sd, source)
            if not self.head_reset:  # the checkpoint's classifier is kept: its classes must be these
                _check_finetune_classes(cfg, train_data, meta)
        data_cfg = resolve_data_config(model, cfg.img_size, in_chans, cfg.mean, cfg.std, cfg.interpolation,
                                       cfg.crop_pct)
        _set_transforms(cfg, data_cfg, train_data, val_data)
        random_seed(cfg.seed, info.rank)  # augmentations differ between processes

        if cfg.data_in_memory:
            self.train_loader, self.val_loader = _in_memory_loaders(cfg, info, data_cfg, train_data, val_data,
                                                                    run.output)
        else:
            pin = cfg.pin_memory and info.device.type == 'cuda'
            self.train_loader = create_train_loader(train_data.dataset, cfg.batch_size, cfg.seed, info.rank,
                                                    info.world_size, cfg.aug_repeats, cfg.workers, pin)
            self.val_loader = create_eval_loader(val_data.dataset, cfg.val_batch_size or 2 * cfg.batch_size,
                                                 info.rank, info.world_size, cfg.workers, pin)
        self.train_data, self.val_data, self.data_cfg, self.in_chans = train_data, val_data, data_cfg, in_chans
        self.train_size, self.val_size = len(train_data.dataset), len(val_data.dataset)
        self.model = model
        self.description = describe_model(cfg.model, self.model_kwargs, data_cfg)
        self.mixup, self.loss_fn = _create_loss(cfg, train_data.num_classes)
        self.distiller = None
        if cfg.distillation != 'none':
            teacher, teacher_text = build_teacher(cfg.teacher, cfg.teacher_checkpoint, train_data.classes, in_chans,
                                                  data_cfg.img_size, info.device, cfg.channels_last)
            self.distiller = Distiller(teacher, cfg.distillation, cfg.distillation_alpha, cfg.distillation_tau,
                                       teacher_text)

    @property
    def num_classes(self) -> int:
        return self.train_data.num_classes

    def optimizer(self, run: Run, model: nn.Module) -> tuple[torch.optim.Optimizer, Any, str]:
        cfg = self.cfg
        lr, warmup_lr, min_lr, self.lr_text = scaled_lrs(cfg, run.batch_global)
        self.lr = lr
        optimizer = _create_optimizer(cfg, model, lr)
        return optimizer, _create_scheduler(cfg, optimizer, run.steps, warmup_lr, min_lr), \
            f'optimizer: {cfg.opt}, {self.lr_text}'

    def loss(self, run: Run, batch: Any) -> StepOutput:
        device = run.info.device
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        sums = {'correct': 0.0}
        if len(batch) > 2:
            sums['corrupt'] = float(batch[2].sum())
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = run.model(x)
        loss = self.loss_fn(logits, target)
        if self.distiller is not None:  # the teacher sees the batch as the student does: augmented and mixed
            loss = self.distiller(x, logits, loss)
        sums['correct'] = float((logits.detach().argmax(1) == y).sum())
        return StepOutput(loss, y.shape[0], sums)

    def train_row(self, sums: dict[str, float], seen: float) -> dict[str, Any]:
        return dict(train_acc1=100 * sums.get('correct', 0.0) / max(seen, 1),
                    corrupt_skipped=int(sums.get('corrupt', 0)))

    def postfix(self, meters: Meters) -> str:
        return f'acc {100 * meters.sums.get("correct", 0.0) / max(meters.seen, 1):.1f}%'

    def evaluate(self, run: Run, model: nn.Module, desc: str) -> dict[str, Any]:
        res = evaluate(model, self.val_loader, self.num_classes, run.info.device, run.amp_dtype,
                       self.cfg.channels_last, run.info, self.train_data.classes, run.progress, desc=desc)
        self.final = res
        return dict(val_loss=res.loss, val_acc1=res.top1, val_acc5=res.top5, val_corrupt_skipped=res.skipped)

    def epoch_line(self, row: dict[str, Any]) -> str:
        parts = []
        if 'val_acc1' in row:
            parts.append(f'val loss {row["val_loss"]:.4f} top-1 {row["val_acc1"]:.2f}% top-5 {row["val_acc5"]:.2f}%')
        if 'ema_val_acc1' in row:
            parts.append(f'EMA top-1 {row["ema_val_acc1"]:.2f}%')
        return '  '.join(parts)

    def meta(self) -> dict:
        """What a checkpoint needs to rebuild the model and its preprocessing without the training command."""
        return dict(model_name=self.cfg.model, model_kwargs=self.model_kwargs, classes=list(self.train_data.classes),
                    data_config=self.data_cfg.to_dict())

    def resolved(self) -> dict:
        return dict(lr=self.lr, lr_rule=self.lr_text, model_kwargs=self.model_kwargs, num_classes=self.num_classes,
                    data_config=self.data_cfg.to_dict(),
                    **(dict(teacher=self.distiller.description) if self.distiller is not None else {}))

    def start_lines(self, run: Run) -> list[str]:
        cfg = self.cfg
        lines = []
        if self.head_reset:
            lines.append(f'fine-tuning from {cfg.finetune} with a new classifier ({", ".join(self.head_reset)})')
        elif cfg.finetune:
            lines.append(f'fine-tuning from {cfg.finetune}')
        lines.append(f'data: {cfg.dataset}, {self.train_size} training / {self.val_size} validation images, '
                     f'{self.num_classes} classes')
        lines += self.shape_lines
        if self.distiller is not None:
            tau = f', tau {cfg.distillation_tau:g}' if cfg.distillation == 'soft' else ''
            lines.append(f'distillation: {cfg.distillation}, alpha {cfg.distillation_alpha:g}{tau}, teacher '
                         f'{self.distiller.description}')
        augment, regularise = regimen(cfg, self.model_kwargs)
        lines += [f'augmentation: {augment}', f'regularisation: {regularise}']
        return lines

    def plot(self, metrics_csv: Path, out_png: Path, title: str) -> Path | None:
        return plot_curves(metrics_csv, out_png, title=title, eval_split=eval_split_label(self.cfg.to_dict()))


def build_context(cfg: TrainConfig, info: DistInfo, progress: bool) -> Run:
    """The classification run of ``cfg``, built and resumed but not trained (:func:`train_one_epoch` trains it)."""
    return build_run(ClassifyTask(cfg), info, progress)


def train_one_epoch(run: Run, on_step: Any = None) -> Meters:
    """One epoch of ``run`` (:func:`mlpvision.engine.run.train_one_epoch`)."""
    return _train_one_epoch(run, on_step)


def fit(cfg: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` in this process (one of ``WORLD_SIZE`` processes under torchrun) and return where the results
    are. Only the primary process (rank 0) writes files and logs."""
    task = ClassifyTask(cfg)
    r = fit_task(task, progress)
    return TrainResult(output_dir=r.output_dir, last=r.last, best=r.best, metrics_csv=r.metrics_csv, plot=r.plot,
                       config_yaml=r.config_yaml, best_acc1=r.best_metric, best_epoch=r.best_epoch, final=task.final,
                       description=r.description, params=r.params, elapsed_s=r.elapsed_s, model=r.model,
                       counts=r.counts)
