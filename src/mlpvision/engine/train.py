"""Training: :func:`fit` runs a whole configuration; :func:`train_one_epoch` is the inner loop.

The file reads top to bottom like a reference training script (timm ``train.py``, DeiT ``main.py``):
:class:`TrainState` (what ``last.pth`` holds, with its own ``save`` / ``load``), :class:`TrainContext` (everything a
run builds from its configuration, passed down whole), the set-up (:func:`build_context`: data, model, optimisation,
resume), the inner loop (:func:`train_one_epoch`) and the epoch loop (:func:`train`).

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

import contextlib
import itertools
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from timm.data.transforms import MaybeToTensor
from timm.utils import random_seed
from torch.utils.data import DataLoader

from .. import __version__
from .._checkpoint import CheckpointError, load_finetune_weights, load_weights
from ..data.datasets import CorruptImageError, DatasetInfo, build_dataset, worker_error_message
from ..data.loader import create_eval_loader, create_train_loader, set_loader_epoch, steps_per_epoch
from ..data.memory import BatchAugment, InMemoryLoader, decode_images
from ..data.transforms import DataConfig, ToMode, build_transform, resolve_data_config
from ..errors import UsageError
from ..models import create_any_model
from .checkpoint import get_rng_state, load_checkpoint_file, save_checkpoint, set_rng_state
from .config import TrainConfig, check_trainable_name, default_output, load_recipe, make_config, scaled_lrs
from .distill import Distiller, build_teacher
from .distributed import DistInfo, all_reduce_sum, barrier, destroy_distributed, init_distributed
from .evaluate import EvalResult, autocast_context, evaluate
from .metrics import MetricsLog, plot_curves, progress_bar

__all__ = ['fit', 'train', 'train_one_epoch', 'build_context', 'TrainContext', 'TrainResult', 'TrainState', 'Meters',
           'build_model', 'takes_img_size', 'describe_model', 'resolve_config', 'NonFiniteLossError',
           'BatchSizeError', 'TrainingInterrupted', 'thread_split', 'resume_command', 'regimen']

_logger = logging.getLogger('mlpvision.train')


class NonFiniteLossError(UsageError):
    """The loss (or the weights) stopped being finite; training stopped without overwriting the last checkpoint."""


class BatchSizeError(UsageError):
    """The batch does not fit the dataset or the device memory."""


# -- what a run holds ---------------------------------------------------------------------------------------------
@dataclass
class Meters:
    """Running sums of the epoch in progress (this process).

    Not timm's ``AverageMeter`` (one value's sum, count and average): these are the epoch's counts as plain numbers,
    summed over processes at the epoch end and saved per process in ``last.pth``, so an epoch resumed mid-way
    reports the same loss and accuracy as an uninterrupted one.
    """
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0
    corrupt: int = 0
    time_s: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc1(self) -> float:
        return 100.0 * self.correct / max(self.seen, 1)


@dataclass
class TrainState:
    """What ``last.pth`` holds and a resumed run restores: the model (un-wrapped), optimizer, scheduler, EMA,
    gradient scaler, where training is (epoch, step), the best score so far, the epoch's meters and every RNG."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    ema: Any = None  # timm ModelEmaV3
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in it
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0  # 1-based; 0: none yet
    meters: Meters = field(default_factory=Meters)
    last_saved: Path | None = None  # the checkpoint this state was last written to or read from

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch, self.meters = self.epoch + 1, 0, Meters()

    def save(self, path: Path, info: DistInfo, steps_per_epoch: int, meta: dict) -> None:
        """Write ``path`` (every process takes part: the RNG states and meters of all of them are gathered; the
        primary writes).

        Raises:
            NonFiniteLossError: the weights are no longer finite (the last good checkpoint is left as it is).
        """
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise NonFiniteLossError(_nan_message(f'the weights are no longer finite after step {self.global_step}',
                                                 self.last_saved))
        per_rank = _gather(dict(rng=get_rng_state(), meters=asdict(self.meters)), info)
        if info.primary:
            save_checkpoint(dict(
                model=self.model.state_dict(), ema=self.ema.module.state_dict() if self.ema else None,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict() if self.scheduler else None,
                scaler=self.scaler.state_dict() if self.scaler else None,
                epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                best_metric=self.best_metric, best_epoch=self.best_epoch, world_size=info.world_size,
                steps_per_epoch=steps_per_epoch, rng_per_rank=[r['rng'] for r in per_rank],
                meters_per_rank=[r['meters'] for r in per_rank], mlpvision=meta), path)
        self.last_saved = Path(path)

    def load(self, path: str | Path, info: DistInfo, steps_per_epoch: int, seed: int) -> None:
        """Restore everything :meth:`save` wrote. With another process count or batch size than the checkpoint's,
        the RNGs are re-seeded from (seed, rank, step) and the position in the epoch is scaled to the new batch."""
        ckpt = load_checkpoint_file(path)
        try:
            load_weights(self.model, ckpt['model'], f'checkpoint {str(path)!r}')
            self.optimizer.load_state_dict(ckpt['optimizer'])
            if self.scheduler is not None and ckpt.get('scheduler'):
                self.scheduler.load_state_dict(ckpt['scheduler'])
            if self.ema is not None:
                self.ema.module.load_state_dict(ckpt['ema'] if ckpt.get('ema') is not None
                                                else self.model.state_dict())
            if self.scaler is not None and ckpt.get('scaler'):
                self.scaler.load_state_dict(ckpt['scaler'])
        except (KeyError, ValueError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f'checkpoint {str(path)!r} cannot resume this run ({type(e).__name__}: '
                                  f'{str(e).splitlines()[0]})') from None
        self.epoch, self.step_in_epoch, self.global_step = ckpt['epoch'], ckpt['step_in_epoch'], ckpt['global_step']
        self.best_metric, self.best_epoch = ckpt['best_metric'], ckpt['best_epoch']
        rngs, meters = ckpt.get('rng_per_rank') or [], ckpt.get('meters_per_rank') or []
        if len(rngs) == info.world_size and ckpt.get('steps_per_epoch') == steps_per_epoch:
            set_rng_state(rngs[info.rank])
            self.meters = Meters(**meters[info.rank])
        else:
            _logger.warning('resuming with another process count or batch size than the checkpoint: the data order '
                            'of the resumed epoch is not the original one')
            random_seed(seed + self.global_step, info.rank)
            if self.step_in_epoch:
                self.step_in_epoch = min(self.step_in_epoch * ckpt.get('steps_per_epoch', steps_per_epoch)
                                         // steps_per_epoch, steps_per_epoch)
        if self.scheduler is not None:
            self.scheduler.step_update(self.global_step)
        self.last_saved = Path(path)


def _gather(mine: dict, info: DistInfo) -> list[dict]:
    """``mine`` from every process, in rank order."""
    if not info.distributed:
        return [mine]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def _nan_message(what: str, last_saved: Path | None) -> str:
    keep = (f'the last good checkpoint is {str(last_saved)!r}' if last_saved
            else 'no checkpoint had been written yet')
    return (f'{what}; training stopped and {keep}. Lower --lr, set --clip-grad, or use --amp bf16 or none instead '
            f'of fp16')


@dataclass
class TrainContext:
    """Everything one run builds from its configuration, passed down whole (timm's and DeiT's scripts pass
    ``args``); :attr:`state` is the part that is saved and resumed."""
    cfg: TrainConfig
    info: DistInfo
    progress: bool  # progress bars (else a log line every cfg.log_interval steps)
    output: Path
    # data
    train_data: DatasetInfo
    val_data: DatasetInfo
    data_cfg: DataConfig
    train_loader: DataLoader
    val_loader: DataLoader
    steps: int  # optimizer steps in a full epoch
    batch_global: int
    # model
    model: nn.Module  # what the loop calls: state.model wrapped in DDP and/or torch.compile
    model_kwargs: dict
    description: str
    params: int
    head_reset: list[str]  # classifier keys left new by --finetune
    # optimisation
    state: TrainState
    loss_fn: nn.Module
    mixup: Any  # timm Mixup or None
    amp_dtype: torch.dtype | None
    lr: float
    lr_text: str
    threads: str = ''  # the start-up line on compute threads and loader processes (thread_split)
    distiller: Distiller | None = None  # --distillation soft / hard: the frozen teacher and its loss rule

    @property
    def num_classes(self) -> int:
        return self.train_data.num_classes

    def meta(self) -> dict:
        """What a checkpoint needs to rebuild the model and its preprocessing without the training command."""
        return dict(version=__version__, model_name=self.cfg.model, model_kwargs=self.model_kwargs,
                    classes=list(self.train_data.classes), data_config=self.data_cfg.to_dict(),
                    config=self.cfg.to_dict(), description=self.description, dataset=self.cfg.dataset)

    def save_last(self) -> None:
        self.state.save(self.output / 'last.pth', self.info, self.steps, self.meta())

    def save_best(self, weights: nn.Module, which: str, metric: float) -> None:
        if self.info.primary:
            save_checkpoint(dict(model=weights.state_dict(), weights=which, epoch=self.state.epoch + 1,
                                 metric=metric, mlpvision=self.meta()), self.output / 'best.pth')


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


# -- configuration and model --------------------------------------------------------------------------------------
def resolve_config(recipe: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults < the resumed checkpoint's configuration (``resume``) < ``recipe`` < ``overrides``."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    base = None
    resume = overrides.get('resume')
    if resume:
        path = _resume_path(resume, overrides.get('output'))
        if path is None:
            overrides.pop('resume')
        else:
            meta = load_checkpoint_file(path).get('mlpvision') or {}
            if 'config' not in meta:
                raise CheckpointError(f'checkpoint {str(path)!r} is not an mlpvision training checkpoint (no '
                                      f'configuration in it); use --finetune to start from its weights')
            base = {k: v for k, v in meta['config'].items() if k not in ('resume', 'overwrite')}
            overrides['resume'] = str(path)
            overrides.setdefault('output', str(Path(path).parent))
    return make_config(base, load_recipe(recipe) if recipe else None, overrides)


def _resume_path(resume: str, output: str | None) -> Path | None:
    if resume != 'auto':
        if not Path(resume).is_file():
            raise CheckpointError(f'checkpoint {resume!r} does not exist')
        return Path(resume)
    if not output:
        raise UsageError('--resume auto needs --output (the run folder holding last.pth)')
    last = Path(output) / 'last.pth'
    if last.is_file():
        return last
    _logger.warning('--resume auto: nothing to resume (no %s); starting the run the other options describe', last)
    return None


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


# -- set-up -------------------------------------------------------------------------------------------------------
def build_context(cfg: TrainConfig, info: DistInfo, progress: bool) -> TrainContext:
    """Data, model, optimisation and (with ``cfg.resume``) the resumed state: everything :func:`train` needs."""
    threads_text = _configure_torch(cfg, info)
    amp_dtype = _amp_dtype(cfg.amp, info.device)
    output = _output_dir(cfg, info)

    # the primary process downloads; the others wait, then read the same files
    if not info.primary:
        barrier(info)
    size = cfg.img_size or 224
    train_data, val_data = (build_dataset(
        cfg.dataset, split, cfg.data_dir, cfg.download and info.primary, cfg.skip_corrupt, cfg.fake_size,
        cfg.fake_classes, (size, size), cfg.train_split, cfg.val_split) for split in ('train', 'val'))
    if info.primary:
        barrier(info)
    in_chans = cfg.in_chans or train_data.in_chans

    random_seed(cfg.seed, 0)  # identical initial weights in every process
    model, model_kwargs = build_model(cfg, train_data.num_classes, in_chans)
    head_reset = load_finetune_weights(model, cfg.finetune) if cfg.finetune else []
    data_cfg = resolve_data_config(model, cfg.img_size, in_chans, cfg.mean, cfg.std, cfg.interpolation,
                                   cfg.crop_pct)
    _set_transforms(cfg, data_cfg, train_data, val_data)
    random_seed(cfg.seed, info.rank)  # augmentations differ between processes

    if cfg.data_in_memory:
        train_loader, val_loader = _in_memory_loaders(cfg, info, data_cfg, train_data, val_data, output)
    else:
        pin = cfg.pin_memory and info.device.type == 'cuda'
        train_loader = create_train_loader(train_data.dataset, cfg.batch_size, cfg.seed, info.rank,
                                           info.world_size, cfg.aug_repeats, cfg.workers, pin)
        val_loader = create_eval_loader(val_data.dataset, cfg.val_batch_size or 2 * cfg.batch_size, info.rank,
                                        info.world_size, cfg.workers, pin)
    steps = steps_per_epoch(train_loader)
    batch_global = cfg.batch_size * info.world_size
    if steps == 0:
        n = len(train_data.dataset)
        raise BatchSizeError(
            f'batch size {cfg.batch_size} x {info.world_size} process(es) = {batch_global} does not fit the '
            f'{n} training images (full batches only); use --batch-size {max(n // info.world_size, 1)} or less')

    model, wrapped, ema = _prepare_model(cfg, info, model)
    lr, warmup_lr, min_lr, lr_text = scaled_lrs(cfg, batch_global)
    optimizer = _create_optimizer(cfg, model, lr)
    scheduler = _create_scheduler(cfg, optimizer, steps, warmup_lr, min_lr)
    mixup, loss_fn = _create_loss(cfg, train_data.num_classes)
    distiller = None
    if cfg.distillation != 'none':
        teacher, teacher_text = build_teacher(cfg.teacher, cfg.teacher_checkpoint, train_data.classes, in_chans,
                                              data_cfg.img_size, info.device, cfg.channels_last)
        distiller = Distiller(teacher, cfg.distillation, cfg.distillation_alpha, cfg.distillation_tau, teacher_text)
    scaler = torch.amp.GradScaler('cuda') if amp_dtype == torch.float16 else None
    state = TrainState(model, optimizer, scheduler, ema, scaler)
    if cfg.resume:
        state.load(cfg.resume, info, steps, cfg.seed)
        if info.primary:
            _logger.info('resumed from %s: epoch %d, step %d of %d (global step %d)', cfg.resume, state.epoch + 1,
                         state.step_in_epoch, steps, state.global_step)
    elif scheduler is not None:
        scheduler.step_update(0)
    return TrainContext(
        cfg=cfg, info=info, progress=progress, output=output, train_data=train_data, val_data=val_data,
        data_cfg=data_cfg, train_loader=train_loader, val_loader=val_loader, steps=steps, batch_global=batch_global,
        model=wrapped, model_kwargs=model_kwargs, description=describe_model(cfg.model, model_kwargs, data_cfg),
        params=sum(p.numel() for p in model.parameters()), head_reset=head_reset, state=state, loss_fn=loss_fn,
        mixup=mixup, amp_dtype=amp_dtype, lr=lr, lr_text=lr_text, threads=threads_text, distiller=distiller)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_split(cfg: TrainConfig, cores: int | None = None, env: dict | None = None) -> tuple[int, int, int, str]:
    """(compute threads, loader processes, cores, where the thread count comes from) for a training process.

    ``--threads`` wins; else an ``OMP_NUM_THREADS`` in the environment (torchrun sets 1) is kept; else the cores
    are shared out: the ``LOCAL_WORLD_SIZE`` training processes of this host get an equal share each, and its
    loader processes (``--workers``; none with ``--data-in-memory``) one core each out of that share, the rest
    going to torch's intra-op threads (at least one). Loader processes run one thread each (PyTorch sets it), so
    with 2 cores and the default 2 workers training gets 1 thread: sharing the cores oversubscribed them
    (2 threads and 2 workers trained at 15 img/s against 36-64 with 1 thread in issue 17's run).
    """
    env = os.environ if env is None else env
    cores = available_cores() if cores is None else cores
    loaders = 0 if cfg.data_in_memory else cfg.workers
    if cfg.threads:
        return cfg.threads, loaders, cores, '--threads'
    if env.get('OMP_NUM_THREADS'):
        return torch.get_num_threads(), loaders, cores, 'OMP_NUM_THREADS'
    share = max(1, cores // max(1, int(env.get('LOCAL_WORLD_SIZE', '1') or 1)))
    return max(1, share - loaders), loaders, cores, 'default'


def _configure_torch(cfg: TrainConfig, info: DistInfo) -> str:
    """Set torch's threads and determinism for ``cfg``; returns the start-up line saying how threads were split."""
    threads, loaders, cores, source = thread_split(cfg)
    torch.set_num_threads(threads)
    text = (f'threads: {threads} compute, {loaders} loader process{"" if loaders == 1 else "es"} (of {cores} '
            f'cores; {source})')
    if cfg.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif info.device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    return text


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == 'none':
        return None
    if amp == 'fp16' and device.type != 'cuda':
        raise UsageError('--amp fp16 needs a CUDA device; use --amp bf16 (or none) on the CPU')
    if amp == 'bf16' and device.type == 'cpu':
        from ..layers.fast_linear import onednn_bf16_supported

        if not onednn_bf16_supported():
            _logger.warning('--amp bf16: this CPU has no bf16 GEMMs (oneDNN needs AVX512 or AMX; torch reports %s), so '
                            'bf16 runs in slow fallback kernels, several times slower than fp32 here; --amp none is '
                            'faster on this machine', torch.backends.cpu.get_cpu_capability())
    return torch.bfloat16 if amp == 'bf16' else torch.float16


def _output_dir(cfg: TrainConfig, info: DistInfo) -> Path:
    if cfg.resume:
        out = Path(cfg.output) if cfg.output else Path(cfg.resume).parent
    elif cfg.output:
        out = Path(cfg.output)
        if (out / 'last.pth').exists() and not cfg.overwrite:
            raise UsageError(f'{str(out)!r} already holds a run (last.pth); pass --resume auto to continue it, '
                             f'--overwrite to start it again, or another --output')
    else:
        out = default_output(cfg)
    barrier(info)  # every process has chosen the folder before the primary creates it
    if info.primary:
        out.mkdir(parents=True, exist_ok=True)
    return out


def _set_transforms(cfg: TrainConfig, dc: DataConfig, train_data: DatasetInfo, val_data: DatasetInfo) -> None:
    train_data.dataset.transform = build_transform(
        dc, True, cfg.scale, cfg.ratio, cfg.hflip, cfg.color_jitter, cfg.aa, cfg.reprob, cfg.remode, cfg.recount,
        cfg.train_crop)
    val_data.dataset.transform = build_transform(dc, False)
    for ds in (train_data.dataset, val_data.dataset):
        if hasattr(ds, 'image_size'):  # synthetic images are drawn at the model's input size
            ds.image_size = (3, *dc.img_size)


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
            _logger.info('data: decoding the %s split into memory (%s)', name,
                         'cached' if path.is_file() else f'once; cached in {path}')
            decoded.append(decode_images(data.dataset, geometry, path))
        barrier(info)  # the primary wrote the cache; the others read it
        if not info.primary:
            decoded.append(decode_images(data.dataset, geometry, path))
    (xtr, ytr), (xva, yva) = decoded
    mean, std = dc.mean, dc.std
    train = InMemoryLoader.train(xtr, ytr, cfg.batch_size, BatchAugment(mean, std, 4, cfg.hflip), cfg.seed,
                                 info.rank, info.world_size)
    val = InMemoryLoader.eval(xva, yva, cfg.val_batch_size or 2 * cfg.batch_size,
                              BatchAugment(mean, std, train=False), info.rank, info.world_size)
    return train, val


def _prepare_model(cfg: TrainConfig, info: DistInfo, model: nn.Module) -> tuple[nn.Module, nn.Module, Any]:
    """(the model on its device, the model as the loop calls it: DDP and/or compiled, its EMA or None)."""
    from timm.utils import ModelEmaV3

    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.sync_bn and info.distributed:
        if info.device.type != 'cuda':
            raise UsageError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    wrapped = model
    if info.distributed:
        ids = [info.device.index] if info.device.type == 'cuda' else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    # after DDP's broadcast, so every process's EMA starts from the same weights
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return model, wrapped, ema


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


# -- the inner loop -----------------------------------------------------------------------------------------------
def train_one_epoch(ctx: TrainContext, on_step: Callable[[TrainState], None] | None = None) -> Meters:
    """Train over ``ctx.train_loader`` once (the rest of the epoch when resumed mid-way), updating ``ctx.state``.

    Args:
        on_step: called with the state after every optimizer step (step checkpoints).

    Raises:
        NonFiniteLossError: the loss is NaN or infinite (checked on the value averaged over processes, so every
            process stops at the same step).
    """
    from timm.utils import dispatch_clip_grad

    cfg, info, state, device = ctx.cfg, ctx.info, ctx.state, ctx.info.device
    model, optimizer, meters = ctx.model, state.optimizer, state.meters
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    desc = f'epoch {state.epoch + 1}/{cfg.epochs}'
    bar = progress_bar(range(ctx.steps - state.step_in_epoch), ctx.progress and info.primary, desc=desc,
                       total=ctx.steps, initial=state.step_in_epoch)
    bar_update = getattr(bar, 'update', None)
    t0 = t_logged = time.perf_counter()
    for batch in ctx.train_loader:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if len(batch) > 2:
            meters.corrupt += int(batch[2].sum())
        target = y
        if ctx.mixup is not None:
            x, target = ctx.mixup(x, y)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, ctx.amp_dtype):
            logits = model(x)
            loss = ctx.loss_fn(logits, target)
            if ctx.distiller is not None:  # the teacher sees the batch as the student does: augmented and mixed
                loss = ctx.distiller(x, logits, loss)
        loss_value = loss.detach().float().reshape(1)
        if info.distributed:
            loss_value = all_reduce_sum(loss_value.clone(), info) / info.world_size
        lv = float(loss_value)
        if not math.isfinite(lv):
            raise NonFiniteLossError(_nan_message(
                f'loss is {lv} at epoch {state.epoch + 1}, step {state.step_in_epoch + 1}', state.last_saved))

        optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            if cfg.clip_grad:
                state.scaler.unscale_(optimizer)
                dispatch_clip_grad(params, cfg.clip_grad, mode=cfg.clip_mode)
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            loss.backward()
            if cfg.clip_grad:
                dispatch_clip_grad(params, cfg.clip_grad, mode=cfg.clip_mode)
            optimizer.step()
        state.global_step += 1
        state.step_in_epoch += 1
        if state.ema is not None:
            state.ema.update(state.model, step=state.global_step)
        if state.scheduler is not None:
            state.scheduler.step_update(state.global_step)

        n = y.shape[0]
        meters.loss_sum += lv * n
        meters.correct += int((logits.detach().argmax(1) == y).sum())
        meters.seen += n
        meters.steps += 1
        now = time.perf_counter()
        meters.time_s += now - t0
        t0 = now
        lr = optimizer.param_groups[0]['lr']
        ips = meters.seen * info.world_size / max(meters.time_s, 1e-9)
        if bar_update is not None:
            bar_update(1)
            bar.set_postfix_str(f'loss {meters.loss:.4f} acc {meters.acc1:.1f}% lr {lr:.2e} {ips:.0f} img/s',
                                refresh=False)
        elif info.primary and ((cfg.log_interval and state.step_in_epoch % cfg.log_interval == 0)
                               or (cfg.log_seconds and now - t_logged >= cfg.log_seconds)):
            t_logged = now
            _logger.info('%s step %d/%d  loss %.4f  acc %.1f%%  lr %.2e  %.0f img/s', desc, state.step_in_epoch,
                         ctx.steps, meters.loss, meters.acc1, lr, ips)
        if on_step is not None:
            on_step(state)
    if hasattr(bar, 'close'):
        bar.close()
    return meters


# -- the epoch loop -----------------------------------------------------------------------------------------------
class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at a step boundary after ``last.pth`` was saved; the message holds the
    command that resumes. A ``KeyboardInterrupt``, so the CLI exits with 128 + the signal number (130 for Ctrl-C)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _StopRequest:
    """SIGINT / SIGTERM handlers for the epoch loop: the first signal asks the loop to save and stop at the next
    step boundary, a second SIGINT raises ``KeyboardInterrupt`` at once (nothing saved).

    Installed before the loader's worker processes are forked, so workers inherit the handler; in them it does
    nothing (PyTorch's workers would otherwise die of the terminal's Ctrl-C, which reaches the whole process group,
    and the main process could not fetch the batch it needs to reach the step boundary).
    """

    def __init__(self) -> None:
        self.signum = 0
        self._pid = os.getpid()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker: the training process decides
            return
        if self.signum:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        _logger.warning('%s: saving a resumable checkpoint at the end of this step (Ctrl-C again to exit at once '
                        'without saving)', signal.Signals(signum).name)

    def requested(self, info: DistInfo) -> int:
        """The signal that asked to stop (0: none), agreed by every process so that all of them stop together."""
        if not info.distributed:
            return self.signum
        flag = torch.tensor([float(self.signum)], device=info.device)
        all_reduce_sum(flag, info)
        return self.signum or (int(signal.SIGTERM) if float(flag) else 0)


def resume_command(ctx: TrainContext) -> str:
    """The command that resumes this run from its ``last.pth`` (the checkpoint holds the configuration)."""
    launcher = (f'torchrun --nproc_per_node={ctx.info.world_size} -m mlpvision.cli.main'
                if ctx.info.distributed else 'mlpvision')
    return f'{launcher} train --resume auto --output {shlex.quote(str(ctx.output))}'


def train(ctx: TrainContext) -> TrainResult:
    """Train from ``ctx.state`` to the last epoch: evaluate, keep best.pth and last.pth, log metrics.csv, redraw
    curves.png after every epoch.

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM arrived; ``last.pth`` was saved at the next step boundary.
    """
    cfg, info, state = ctx.cfg, ctx.info, ctx.state
    t_start = time.perf_counter()
    config_path = write_config(ctx)
    log_start(ctx)
    log = MetricsLog(ctx.output, resume_epoch=state.epoch, tensorboard=cfg.tensorboard) if info.primary else None
    final: EvalResult | None = None
    plot = None
    stop = _StopRequest()

    def stop_if_asked() -> None:
        signum = stop.requested(info)
        if not signum:
            return
        ctx.save_last()
        raise TrainingInterrupted(
            f'stopped by {signal.Signals(signum).name} at epoch {state.epoch + 1}, step {state.step_in_epoch}/'
            f'{ctx.steps}; saved {ctx.output / "last.pth"}. Resume with: {resume_command(ctx)}', signum)

    def on_step(s: TrainState) -> None:
        if cfg.checkpoint_every_steps and s.global_step % cfg.checkpoint_every_steps == 0:
            ctx.save_last()
            if info.primary and not ctx.progress:
                _logger.info('checkpoint saved at step %d (epoch %d, step %d)', s.global_step, s.epoch + 1,
                             s.step_in_epoch)
        stop_if_asked()

    try:
        with _one_line_errors(ctx), stop:
            while state.epoch < cfg.epochs:
                stop_if_asked()  # a signal during evaluation: the epoch end's checkpoint is the step boundary
                epoch = state.epoch
                set_loader_epoch(ctx.train_loader, epoch, cfg.seed, state.step_in_epoch)
                meters = train_one_epoch(ctx, on_step)
                row = _epoch_row(ctx, meters)
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    final = _evaluate_and_keep_best(ctx, row)
                if log is not None:
                    log.write(row)
                    _log_epoch(row, cfg.epochs)
                    if cfg.plot:  # every epoch, so an interrupted run has its plot
                        plot = plot_curves(ctx.output / 'metrics.csv', ctx.output / 'curves.png',
                                           title=ctx.description)
                state.next_epoch()
                ctx.save_last()
    finally:
        if log is not None:
            log.close()
    if info.primary and cfg.plot and plot is None:  # resumed after its last epoch: the plot of the rows there are
        plot = plot_curves(ctx.output / 'metrics.csv', ctx.output / 'curves.png', title=ctx.description)
    best = ctx.output / 'best.pth'
    return TrainResult(
        output_dir=ctx.output, last=ctx.output / 'last.pth', best=best if best.exists() else None,
        metrics_csv=ctx.output / 'metrics.csv', plot=plot, config_yaml=config_path, best_acc1=state.best_metric,
        best_epoch=state.best_epoch, final=final, description=ctx.description, params=ctx.params,
        elapsed_s=time.perf_counter() - t_start, model=state.model)


@contextlib.contextmanager
def _one_line_errors(ctx: TrainContext) -> Iterator[None]:
    """Errors met in the loop, restated for the user: a worker's corrupt image without the worker traceback, and
    running out of device memory as a batch-size problem."""
    try:
        yield
    except CorruptImageError as e:
        raise CorruptImageError(worker_error_message(e)) from None
    except torch.OutOfMemoryError as e:
        raise BatchSizeError(f'batch size {ctx.cfg.batch_size} does not fit in {ctx.info.device} memory '
                             f'({str(e).splitlines()[0][:120]}); lower --batch-size, or use --amp bf16 / '
                             f'--grad-checkpointing') from None


def _epoch_row(ctx: TrainContext, meters: Meters) -> dict[str, Any]:
    """The epoch's metrics.csv row so far (training figures summed over processes)."""
    info = ctx.info
    sums = torch.tensor([meters.loss_sum, meters.correct, meters.seen, meters.corrupt], dtype=torch.float64,
                        device=info.device)
    all_reduce_sum(sums, info)
    return dict(
        epoch=ctx.state.epoch + 1, step=ctx.state.global_step, lr=ctx.state.optimizer.param_groups[0]['lr'],
        train_loss=float(sums[0] / max(sums[2], 1)), train_acc1=float(100 * sums[1] / max(sums[2], 1)),
        img_per_s=meters.seen * info.world_size / max(meters.time_s, 1e-9), epoch_time_s=meters.time_s,
        corrupt_skipped=int(sums[3]))


def _evaluate_and_keep_best(ctx: TrainContext, row: dict[str, Any]) -> EvalResult:
    """Evaluate the model (and its EMA) into ``row``; write best.pth when the score (the EMA's when there is one)
    beats the best so far. Returns the evaluation that counts."""
    state = ctx.state

    def run(model: nn.Module, desc: str) -> EvalResult:
        return evaluate(model, ctx.val_loader, ctx.num_classes, ctx.info.device, ctx.amp_dtype,
                        ctx.cfg.channels_last, ctx.info, ctx.train_data.classes, ctx.progress, desc=desc)

    res = run(ctx.model, 'eval')
    row.update(val_loss=res.loss, val_acc1=res.top1, val_acc5=res.top5)
    weights, which = state.model, 'model'
    if state.ema is not None:
        res = run(state.ema.module, 'eval EMA')
        row.update(ema_val_acc1=res.top1, ema_val_acc5=res.top5)
        weights, which = state.ema.module, 'ema'
    if res.top1 > state.best_metric:
        state.best_metric, state.best_epoch = res.top1, state.epoch + 1
        ctx.save_best(weights, which, res.top1)
    return res


def write_config(ctx: TrainContext) -> Path:
    """config.yaml: the resolved configuration and what was derived at run time. ``command`` stays the command
    that started the run; each resume adds its own to ``resume_commands``."""
    cfg, info = ctx.cfg, ctx.info
    path = ctx.output / 'config.yaml'
    if info.primary:
        command, resumes = ' '.join(sys.argv), []
        if cfg.resume and path.is_file():
            try:
                before = (yaml.safe_load(path.read_text()) or {}).get('resolved') or {}
            except yaml.YAMLError:  # a damaged file: this run's command is all there is
                before = {}
            if before.get('command'):
                command, resumes = before['command'], [*before.get('resume_commands', []), command]
        resolved = dict(
            world_size=info.world_size, global_batch_size=ctx.batch_global, lr=ctx.lr, lr_rule=ctx.lr_text,
            steps_per_epoch=ctx.steps, device=str(info.device), model=ctx.description,
            model_kwargs=ctx.model_kwargs, params=ctx.params, num_classes=ctx.num_classes,
            train_images=len(ctx.train_data.dataset), val_images=len(ctx.val_data.dataset),
            data_config=ctx.data_cfg.to_dict(),
            **(dict(teacher=ctx.distiller.description) if ctx.distiller is not None else {}), command=command,
            **(dict(resume_commands=resumes) if resumes else {}),
            versions=dict(mlpvision=__version__, torch=str(torch.__version__), timm=_timm_version()))
        text = yaml.safe_dump(dict(cfg.to_dict(), resolved=resolved), sort_keys=False)
        tmp = path.with_suffix('.yaml.tmp')
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def log_start(ctx: TrainContext) -> None:
    if not ctx.info.primary:
        return
    cfg, info = ctx.cfg, ctx.info
    _logger.info('model: %s, %s params', ctx.description, f'{ctx.params:,}')
    if ctx.head_reset:
        _logger.info('fine-tuning from %s with a new classifier (%s)', cfg.finetune, ', '.join(ctx.head_reset))
    elif cfg.finetune:
        _logger.info('fine-tuning from %s', cfg.finetune)
    _logger.info('data: %s, %d training / %d validation images, %d classes', cfg.dataset,
                 len(ctx.train_data.dataset), len(ctx.val_data.dataset), ctx.num_classes)
    _logger.info('device: %s x %d process(es), batch %d per process (global %d), %d steps per epoch, AMP %s',
                 info.device, info.world_size, cfg.batch_size, ctx.batch_global, ctx.steps, cfg.amp)
    if ctx.threads:
        _logger.info(ctx.threads)
    _logger.info('optimizer: %s, %s', cfg.opt, ctx.lr_text)
    if ctx.distiller is not None:
        _logger.info('distillation: %s, alpha %g%s, teacher %s', cfg.distillation, cfg.distillation_alpha,
                     f', tau {cfg.distillation_tau:g}' if cfg.distillation == 'soft' else '',
                     ctx.distiller.description)
    augment, regularise = regimen(cfg, ctx.model_kwargs)
    _logger.info('augmentation: %s', augment)
    _logger.info('regularisation: %s', regularise)
    _logger.info('output: %s', ctx.output)


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


def _log_epoch(row: dict, epochs: int) -> None:
    parts = [f'epoch {row["epoch"]}/{epochs}', f'train loss {row["train_loss"]:.4f}', f'acc {row["train_acc1"]:.1f}%']
    if 'val_acc1' in row:
        parts.append(f'val loss {row["val_loss"]:.4f} top-1 {row["val_acc1"]:.2f}% top-5 {row["val_acc5"]:.2f}%')
    if 'ema_val_acc1' in row:
        parts.append(f'EMA top-1 {row["ema_val_acc1"]:.2f}%')
    parts.append(f'lr {row["lr"]:.2e}  {row["img_per_s"]:.0f} img/s  {row["epoch_time_s"]:.1f}s')
    if row.get('corrupt_skipped'):
        parts.append(f'{row["corrupt_skipped"]} corrupt images skipped')
    _logger.info('  '.join(parts))


def _timm_version() -> str:
    import timm
    return timm.__version__


# -- the whole run ------------------------------------------------------------------------------------------------
def fit(cfg: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` in this process (one of ``WORLD_SIZE`` processes under torchrun) and return where the results
    are. Only the primary process (rank 0) writes files and logs."""
    cfg.validate()
    if progress is None:
        progress = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    started_group = not (dist.is_available() and dist.is_initialized())
    # settings a run may change, restored afterwards for the caller
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    info = init_distributed(cfg.device)
    try:
        try:
            ctx = build_context(cfg, info, progress)
        except torch.OutOfMemoryError as e:
            raise BatchSizeError(f'the model does not fit in {info.device} memory ({str(e).splitlines()[0][:120]})') \
                from None
        return train(ctx)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        if started_group:
            destroy_distributed()
