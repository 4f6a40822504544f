"""Training: :func:`fit` runs a whole configuration; :func:`train_one_epoch` is the inner loop.

Built from timm's parts: ``create_optimizer_v2`` (given the model, so its ``no_weight_decay()`` set and every
bias / norm parameter get no weight decay), ``create_scheduler_v2`` (warmup + cosine, stepped every update),
``Mixup`` with ``SoftTargetCrossEntropy`` or ``LabelSmoothingCrossEntropy``, ``ModelEmaV3``, ``dispatch_clip_grad``.

Exact resumption: the data order depends only on (seed, epoch) (see :mod:`mlpvision.data.loader`), every RNG is
saved in the checkpoint, and a run resumed from a mid-epoch checkpoint skips the batches already trained on. With
``deterministic=True`` and ``workers=0`` a killed and resumed run ends with the same weights, bit for bit, as an
uninterrupted one; with worker processes the data order is still exact but the augmentations of the rest of the
resumed epoch are drawn afresh.
"""
from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader

from .. import __version__
from .._checkpoint import CheckpointError, load_finetune_weights, load_weights
from ..data.datasets import CorruptImageError, DatasetInfo, build_dataset, worker_error_message
from ..data.loader import create_eval_loader, create_train_loader, set_loader_epoch, steps_per_epoch
from ..data.transforms import DataConfig, build_transform, resolve_data_config
from ..models import create_model
from .checkpoint import get_rng_state, load_checkpoint_file, save_checkpoint, set_rng_state
from .config import TrainConfig, default_output, load_recipe, make_config, scaled_lrs
from .distributed import DistInfo, all_reduce_sum, barrier, destroy_distributed, init_distributed
from .evaluate import EvalResult, autocast_context, evaluate
from .metrics import MetricsLog, plot_curves, progress_bar

__all__ = ['fit', 'train_one_epoch', 'TrainResult', 'TrainState', 'Meters', 'build_model', 'describe_model',
           'resolve_config', 'NonFiniteLossError', 'BatchSizeError', 'seed_everything']

_logger = logging.getLogger('mlpvision.train')


class NonFiniteLossError(ValueError):
    """The loss (or the weights) stopped being finite; training stopped without overwriting the last checkpoint."""


class BatchSizeError(ValueError):
    """The batch does not fit the dataset or the device memory."""


@dataclass
class Meters:
    """Running sums of the epoch in progress (this process)."""
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
    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in it
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0  # 1-based; 0: none yet
    meters: Meters = field(default_factory=Meters)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, dict]:
    """The model of ``cfg`` for ``num_classes`` classes and ``in_chans`` channels, and the kwargs that built it."""
    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    kwargs.update(num_classes=num_classes, in_chans=in_chans)
    if cfg.drop_rate is not None:
        kwargs['drop_rate'] = cfg.drop_rate
    if cfg.drop_path_rate is not None:
        kwargs['drop_path_rate'] = cfg.drop_path_rate
    if cfg.img_size is not None and 'img_size' not in kwargs:
        kwargs['img_size'] = cfg.img_size
    for attempt in range(2):
        try:
            return create_model(cfg.model, **kwargs), kwargs
        except TypeError as e:
            error = e
            if attempt or 'img_size' not in str(e) or 'img_size' in cfg.model_kwargs:
                break
            kwargs.pop('img_size')  # a model that takes any input size has no img_size argument
    raise ValueError(f'model {cfg.model} does not accept these arguments ({error}); check --model-kwargs')


def describe_model(name: str, kwargs: dict, data_cfg: DataConfig) -> str:
    """e.g. ``resmlp_s12 (embed_dim=128, depth=4, patch_size=4; 1x32x32 input, 10 classes)``."""
    shown = {k: v for k, v in kwargs.items() if k not in ('num_classes', 'in_chans', 'img_size')}
    extra = ', '.join(f'{k}={v}' for k, v in shown.items())
    c, h, w = data_cfg.input_size
    return f'{name} ({extra + "; " if extra else ""}{c}x{h}x{w} input, {kwargs.get("num_classes")} classes)'


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
        raise ValueError('--resume auto needs --output (the run folder holding last.pth)')
    last = Path(output) / 'last.pth'
    return last if last.is_file() else None  # nothing to resume yet: start the run


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == 'none':
        return None
    if amp == 'fp16' and device.type != 'cuda':
        raise ValueError('--amp fp16 needs a CUDA device; use --amp bf16 (or none) on the CPU')
    return torch.bfloat16 if amp == 'bf16' else torch.float16


def _all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def train_one_epoch(
        model: nn.Module,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        state: TrainState,
        device: torch.device,
        total_steps: int,
        mixup: Any = None,
        scheduler: Any = None,
        ema: Any = None,
        ema_source: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        amp_dtype: torch.dtype | None = None,
        clip_grad: float | None = None,
        clip_mode: str = 'norm',
        channels_last: bool = False,
        info: DistInfo | None = None,
        on_step: Any = None,
        progress: bool = False,
        log_interval: int = 50,
        desc: str = 'train',
) -> Meters:
    """Train over ``loader`` once, updating ``state`` (steps, meters) as it goes.

    Args:
        total_steps: batches in a full epoch (the progress bar's length; a resumed epoch starts part-way).
        ema / ema_source: a timm ``ModelEmaV3`` and the un-wrapped model it follows.
        on_step: called with ``state`` after every optimizer step (checkpointing).

    Raises:
        NonFiniteLossError: the loss is NaN or infinite (checked on the value averaged over processes, so every
            process stops at the same step).
    """
    from timm.utils import dispatch_clip_grad

    info = info or DistInfo(device=device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    meters = state.meters
    bar = progress_bar(range(total_steps - state.step_in_epoch), progress and info.primary, desc=desc,
                       total=total_steps, initial=state.step_in_epoch)
    bar_update = getattr(bar, 'update', None)
    t0 = time.perf_counter()
    for batch in loader:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if len(batch) > 2:
            meters.corrupt += int(batch[2].sum())
        target = y
        if mixup is not None:
            x, target = mixup(x, y)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp_dtype):
            logits = model(x)
            loss = loss_fn(logits, target)
        loss_value = loss.detach().float().reshape(1)
        if info.distributed:
            loss_value = all_reduce_sum(loss_value.clone(), info) / info.world_size
        lv = float(loss_value)
        if not math.isfinite(lv):
            raise NonFiniteLossError(f'loss is {lv} at epoch {state.epoch + 1}, step {state.step_in_epoch + 1}')
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(params, clip_grad, mode=clip_mode)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                dispatch_clip_grad(params, clip_grad, mode=clip_mode)
            optimizer.step()
        state.global_step += 1
        state.step_in_epoch += 1
        if ema is not None:
            ema.update(ema_source, step=state.global_step)
        if scheduler is not None:
            scheduler.step_update(state.global_step)
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
        elif info.primary and log_interval and state.step_in_epoch % log_interval == 0:
            _logger.info('%s step %d/%d  loss %.4f  acc %.1f%%  lr %.2e  %.0f img/s', desc, state.step_in_epoch,
                         total_steps, meters.loss, meters.acc1, lr, ips)
        if on_step is not None:
            on_step(state)
    if hasattr(bar, 'close'):
        bar.close()
    return meters


class _Run:
    """One training run: everything :func:`fit` builds, and the checkpoint plumbing."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, progress: bool) -> None:
        self.cfg, self.info, self.progress = cfg, info, progress
        self.state = TrainState()
        self.last_saved: Path | None = None

    # -- set-up -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif info.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = _amp_dtype(cfg.amp, info.device)
        self.output = self._output_dir()

        # the primary process downloads; the others wait, then read the same files
        if not info.primary:
            barrier(info)
        self.train_info = self._dataset('train')
        self.val_info = self._dataset('val')
        if info.primary:
            barrier(info)
        num_classes = self.train_info.num_classes
        in_chans = cfg.in_chans or self.train_info.in_chans

        seed_everything(cfg.seed)  # identical initial weights in every process
        model, self.model_kwargs = build_model(cfg, num_classes, in_chans)
        self.head_reset: list[str] = []
        if cfg.finetune:
            self.head_reset = load_finetune_weights(model, cfg.finetune)
        self.data_cfg = resolve_data_config(model, cfg.img_size, in_chans, cfg.mean, cfg.std, cfg.interpolation,
                                            cfg.crop_pct)
        self.description = describe_model(cfg.model, self.model_kwargs, self.data_cfg)
        self.params = sum(p.numel() for p in model.parameters())
        self._set_transforms()
        seed_everything(cfg.seed + info.rank)  # augmentations differ between processes

        self.batch_global = cfg.batch_size * info.world_size
        self.train_loader = create_train_loader(
            self.train_info.dataset, cfg.batch_size, cfg.seed, info.rank, info.world_size, cfg.aug_repeats,
            cfg.workers, cfg.pin_memory and info.device.type == 'cuda')
        self.val_loader = create_eval_loader(
            self.val_info.dataset, cfg.val_batch_size or 2 * cfg.batch_size, info.rank, info.world_size,
            cfg.workers, cfg.pin_memory and info.device.type == 'cuda')
        self.steps = steps_per_epoch(self.train_loader)
        if self.steps == 0:
            n = len(self.train_info.dataset)
            raise BatchSizeError(
                f'batch size {cfg.batch_size} x {info.world_size} process(es) = {self.batch_global} does not fit the '
                f'{n} training images (full batches only); use --batch-size {max(n // info.world_size, 1)} or less')

        self._setup_model(model)
        self._setup_optimization()
        if cfg.resume:
            self._load_resume(cfg.resume)
        elif self.scheduler is not None:
            self.scheduler.step_update(0)

    def _output_dir(self) -> Path:
        cfg = self.cfg
        if cfg.resume:
            out = Path(cfg.output) if cfg.output else Path(cfg.resume).parent
        elif cfg.output:
            out = Path(cfg.output)
            if (out / 'last.pth').exists() and not cfg.overwrite:
                raise ValueError(f'{str(out)!r} already holds a run (last.pth); pass --resume auto to continue it, '
                                 f'--overwrite to start it again, or another --output')
        else:
            out = default_output(cfg)
        barrier(self.info)  # every process has chosen the folder before the primary creates it
        if self.info.primary:
            out.mkdir(parents=True, exist_ok=True)
        return out

    def _dataset(self, split: str) -> DatasetInfo:
        cfg = self.cfg
        size = cfg.img_size or 224
        return build_dataset(cfg.dataset, split, cfg.data_dir, cfg.download and self.info.primary, cfg.skip_corrupt,
                             cfg.fake_size, cfg.fake_classes, (size, size), cfg.train_split, cfg.val_split)

    def _set_transforms(self) -> None:
        cfg, dc = self.cfg, self.data_cfg
        self.train_info.dataset.transform = build_transform(
            dc, True, cfg.scale, cfg.ratio, cfg.hflip, cfg.color_jitter, cfg.aa, cfg.reprob, cfg.remode,
            cfg.recount, cfg.train_crop)
        self.val_info.dataset.transform = build_transform(dc, False)
        for ds in (self.train_info.dataset, self.val_info.dataset):
            if hasattr(ds, 'image_size'):  # synthetic images are drawn at the model's input size
                ds.image_size = (3, *dc.img_size)

    def _setup_model(self, model: nn.Module) -> None:
        cfg, info = self.cfg, self.info
        from timm.utils import ModelEmaV3

        model.to(info.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if cfg.sync_bn and info.distributed:
            if info.device.type != 'cuda':
                raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model_raw = model
        wrapped = model
        if info.distributed:
            ids = [info.device.index] if info.device.type == 'cuda' else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        # after DDP's broadcast, so every process's EMA starts from the same weights
        self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) \
            if cfg.model_ema else None
        if cfg.compile:
            wrapped = torch.compile(wrapped)
        self.model = wrapped

    def _setup_optimization(self) -> None:
        cfg = self.cfg
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        self.lr, warmup_lr, min_lr, self.lr_text = scaled_lrs(cfg, self.batch_global)
        opt_kwargs: dict[str, Any] = {}
        if cfg.opt_eps is not None:
            opt_kwargs['eps'] = cfg.opt_eps
        if cfg.opt_betas is not None:
            opt_kwargs['betas'] = tuple(cfg.opt_betas)
        try:
            self.optimizer = create_optimizer_v2(self.model_raw, opt=cfg.opt, lr=self.lr,
                                                 weight_decay=cfg.weight_decay, momentum=cfg.momentum, **opt_kwargs)
        except (AssertionError, ValueError) as e:
            raise ValueError(f'optimizer {cfg.opt!r}: {e}') from None
        self.scheduler = None
        if cfg.sched != 'none':
            self.scheduler, _ = create_scheduler_v2(
                self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs,
                decay_rate=cfg.decay_rate, min_lr=min_lr, warmup_lr=warmup_lr, warmup_epochs=cfg.warmup_epochs,
                step_on_epochs=False, updates_per_epoch=self.steps)
        self.mixup = None
        if cfg.mixup_active:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                               switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                               num_classes=self.train_info.num_classes)
            self.loss_fn = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.loss_fn = nn.CrossEntropyLoss()
        self.scaler = torch.amp.GradScaler('cuda') if self.amp_dtype == torch.float16 else None

    # -- checkpoints --------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return dict(version=__version__, model_name=self.cfg.model, model_kwargs=self.model_kwargs,
                    classes=list(self.train_info.classes), data_config=self.data_cfg.to_dict(),
                    config=self.cfg.to_dict(), description=self.description, dataset=self.cfg.dataset)

    def _per_rank(self) -> list[dict]:
        mine = dict(rng=get_rng_state(), meters=asdict(self.state.meters))
        if not self.info.distributed:
            return [mine]
        gathered: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(gathered, mine)
        return gathered

    def save_last(self) -> None:
        """Write last.pth (every process takes part: the RNG states of all of them are gathered)."""
        if not _all_finite(self.model_raw):
            raise NonFiniteLossError(self._nan_message('the weights are no longer finite',
                                                       self.state.step_in_epoch))
        per_rank = self._per_rank()
        if not self.info.primary:
            return
        s = self.state
        state = dict(
            model=self.model_raw.state_dict(), ema=self.ema.module.state_dict() if self.ema else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler else None,
            scaler=self.scaler.state_dict() if self.scaler else None,
            epoch=s.epoch, step_in_epoch=s.step_in_epoch, global_step=s.global_step, best_metric=s.best_metric,
            best_epoch=s.best_epoch, world_size=self.info.world_size, steps_per_epoch=self.steps,
            rng_per_rank=[r['rng'] for r in per_rank], meters_per_rank=[r['meters'] for r in per_rank],
            mlpvision=self.meta())
        self.last_saved = save_checkpoint(state, self.output / 'last.pth')

    def save_best(self, weights: nn.Module, which: str, metric: float) -> None:
        if self.info.primary:
            save_checkpoint(dict(model=weights.state_dict(), weights=which, epoch=self.state.epoch + 1,
                                 metric=metric, mlpvision=self.meta()), self.output / 'best.pth')

    def _load_resume(self, path: str) -> None:
        ckpt = load_checkpoint_file(path)
        try:
            load_weights(self.model_raw, ckpt['model'], f'checkpoint {path!r}')
            self.optimizer.load_state_dict(ckpt['optimizer'])
            if self.scheduler is not None and ckpt.get('scheduler'):
                self.scheduler.load_state_dict(ckpt['scheduler'])
            if self.ema is not None:
                self.ema.module.load_state_dict(ckpt['ema'] if ckpt.get('ema') is not None
                                                else self.model_raw.state_dict())
            if self.scaler is not None and ckpt.get('scaler'):
                self.scaler.load_state_dict(ckpt['scaler'])
        except (KeyError, ValueError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f'checkpoint {path!r} cannot resume this run ({type(e).__name__}: '
                                  f'{str(e).splitlines()[0]})') from None
        s = self.state
        s.epoch, s.step_in_epoch, s.global_step = ckpt['epoch'], ckpt['step_in_epoch'], ckpt['global_step']
        s.best_metric, s.best_epoch = ckpt['best_metric'], ckpt['best_epoch']
        rngs, meters = ckpt.get('rng_per_rank') or [], ckpt.get('meters_per_rank') or []
        same_layout = len(rngs) == self.info.world_size and ckpt.get('steps_per_epoch') == self.steps
        if same_layout:
            set_rng_state(rngs[self.info.rank])
            s.meters = Meters(**meters[self.info.rank])
        else:
            _logger.warning('resuming with another process count or batch size than the checkpoint: the data order '
                            'of the resumed epoch is not the original one')
            seed_everything(self.cfg.seed + self.info.rank + s.global_step)
            if s.step_in_epoch:
                s.step_in_epoch = min(s.step_in_epoch * ckpt.get('steps_per_epoch', self.steps) // self.steps,
                                      self.steps)
        if self.scheduler is not None:
            self.scheduler.step_update(s.global_step)
        self.last_saved = Path(path)
        if self.info.primary:
            _logger.info('resumed from %s: epoch %d, step %d of %d (global step %d)', path, s.epoch + 1,
                         s.step_in_epoch, self.steps, s.global_step)

    def _nan_message(self, what: str, step_in_epoch: int) -> str:
        where = f'at epoch {self.state.epoch + 1}, step {step_in_epoch}'
        keep = (f'the last good checkpoint is {str(self.last_saved)!r}' if self.last_saved
                else 'no checkpoint had been written yet')
        return (f'{what} {where}; training stopped and {keep}. Lower --lr, set --clip-grad, or use --amp bf16 or '
                f'none instead of fp16')

    # -- the loop -----------------------------------------------------------------------------------------------
    def write_config(self) -> Path:
        cfg, info, dc = self.cfg, self.info, self.data_cfg
        path = self.output / 'config.yaml'
        if info.primary:
            resolved = dict(
                world_size=info.world_size, global_batch_size=self.batch_global, lr=self.lr,
                lr_rule=self.lr_text, steps_per_epoch=self.steps, device=str(info.device),
                model=self.description, model_kwargs=self.model_kwargs, params=self.params,
                num_classes=self.train_info.num_classes, train_images=len(self.train_info.dataset),
                val_images=len(self.val_info.dataset), data_config=dc.to_dict(), command=' '.join(sys.argv),
                versions=dict(mlpvision=__version__, torch=str(torch.__version__), timm=_timm_version()))
            text = yaml.safe_dump(dict(cfg.to_dict(), resolved=resolved), sort_keys=False)
            tmp = path.with_suffix('.yaml.tmp')
            tmp.write_text(text)
            os.replace(tmp, path)
        return path

    def log_start(self) -> None:
        if not self.info.primary:
            return
        cfg, info = self.cfg, self.info
        _logger.info('model: %s, %s params', self.description, f'{self.params:,}')
        if self.head_reset:
            _logger.info('fine-tuning from %s with a new classifier (%s)', cfg.finetune, ', '.join(self.head_reset))
        elif cfg.finetune:
            _logger.info('fine-tuning from %s', cfg.finetune)
        _logger.info('data: %s, %d training / %d validation images, %d classes', cfg.dataset,
                     len(self.train_info.dataset), len(self.val_info.dataset), self.train_info.num_classes)
        _logger.info('device: %s x %d process(es), batch %d per process (global %d), %d steps per epoch, AMP %s',
                     info.device, info.world_size, cfg.batch_size, self.batch_global, self.steps, cfg.amp)
        _logger.info('optimizer: %s, %s', cfg.opt, self.lr_text)
        _logger.info('output: %s', self.output)

    def run(self) -> TrainResult:
        cfg, info, s = self.cfg, self.info, self.state
        t_start = time.perf_counter()
        config_path = self.write_config()
        self.log_start()
        log = MetricsLog(self.output, resume_epoch=s.epoch, tensorboard=cfg.tensorboard) if info.primary else None
        final: EvalResult | None = None
        every = cfg.checkpoint_every_steps

        def on_step(state: TrainState) -> None:
            if every and state.global_step % every == 0:
                self.save_last()
                if info.primary and not self.progress:
                    _logger.info('checkpoint saved at step %d (epoch %d, step %d)', state.global_step,
                                 state.epoch + 1, state.step_in_epoch)

        try:
            while s.epoch < cfg.epochs:
                epoch = s.epoch
                set_loader_epoch(self.train_loader, epoch, cfg.seed, s.step_in_epoch)
                meters = train_one_epoch(
                    self.model, self.train_loader, self.optimizer, self.loss_fn, s, info.device, self.steps,
                    mixup=self.mixup, scheduler=self.scheduler, ema=self.ema, ema_source=self.model_raw,
                    scaler=self.scaler, amp_dtype=self.amp_dtype, clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode,
                    channels_last=cfg.channels_last, info=info, on_step=on_step, progress=self.progress,
                    log_interval=cfg.log_interval, desc=f'epoch {epoch + 1}/{cfg.epochs}')
                sums = torch.tensor([meters.loss_sum, meters.correct, meters.seen, meters.corrupt],
                                    dtype=torch.float64, device=info.device)
                all_reduce_sum(sums, info)
                row: dict[str, Any] = dict(
                    epoch=epoch + 1, step=s.global_step, lr=self.optimizer.param_groups[0]['lr'],
                    train_loss=float(sums[0] / max(sums[2], 1)), train_acc1=float(100 * sums[1] / max(sums[2], 1)),
                    img_per_s=meters.seen * info.world_size / max(meters.time_s, 1e-9),
                    epoch_time_s=meters.time_s, corrupt_skipped=int(sums[3]))
                last_epoch = epoch + 1 == cfg.epochs
                if (epoch + 1) % cfg.eval_every == 0 or last_epoch:
                    res = evaluate(self.model, self.val_loader, self.train_info.num_classes, info.device,
                                   self.amp_dtype, cfg.channels_last, info, self.train_info.classes, self.progress,
                                   desc='eval')
                    row.update(val_loss=res.loss, val_acc1=res.top1, val_acc5=res.top5)
                    final, metric, best_weights, which = res, res.top1, self.model_raw, 'model'
                    if self.ema is not None:
                        ema_res = evaluate(self.ema.module, self.val_loader, self.train_info.num_classes, info.device,
                                           self.amp_dtype, cfg.channels_last, info, self.train_info.classes,
                                           self.progress, desc='eval EMA')
                        row.update(ema_val_acc1=ema_res.top1, ema_val_acc5=ema_res.top5)
                        final, metric, best_weights, which = ema_res, ema_res.top1, self.ema.module, 'ema'
                    if metric > s.best_metric:
                        s.best_metric, s.best_epoch = metric, epoch + 1
                        self.save_best(best_weights, which, metric)
                if log is not None:
                    log.write(row)
                    self._log_epoch(row)
                s.epoch, s.step_in_epoch, s.meters = epoch + 1, 0, Meters()
                self.save_last()
        except CorruptImageError as e:
            raise CorruptImageError(worker_error_message(e)) from None
        except NonFiniteLossError as e:
            raise NonFiniteLossError(self._nan_message(str(e).split(' at epoch')[0], s.step_in_epoch + 1)) from None
        except torch.OutOfMemoryError as e:
            raise BatchSizeError(f'batch size {cfg.batch_size} does not fit in {info.device} memory '
                                 f'({str(e).splitlines()[0][:120]}); lower --batch-size, or use --amp bf16 / '
                                 f'--grad-checkpointing') from None
        finally:
            if log is not None:
                log.close()
        plot = None
        if info.primary and cfg.plot:
            plot = plot_curves(self.output / 'metrics.csv', self.output / 'curves.png', title=self.description)
        best = self.output / 'best.pth'
        return TrainResult(
            output_dir=self.output, last=self.output / 'last.pth', best=best if best.exists() else None,
            metrics_csv=self.output / 'metrics.csv', plot=plot, config_yaml=config_path, best_acc1=s.best_metric,
            best_epoch=s.best_epoch, final=final, description=self.description, params=self.params,
            elapsed_s=time.perf_counter() - t_start, model=self.model_raw)

    def _log_epoch(self, row: dict) -> None:
        parts = [f'epoch {row["epoch"]}/{self.cfg.epochs}', f'train loss {row["train_loss"]:.4f}',
                 f'acc {row["train_acc1"]:.1f}%']
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
        run = _Run(cfg, info, progress)
        try:
            run.setup()
        except torch.OutOfMemoryError as e:
            raise BatchSizeError(f'the model does not fit in {info.device} memory ({str(e).splitlines()[0][:120]})') \
                from None
        return run.run()
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        if started_group:
            destroy_distributed()
