"""The one run loop: every task (classification, segmentation, detection) trains through :func:`fit`.

A task (:class:`Task`) supplies only what is its own: its data and model (:meth:`Task.setup`), the optimizer and
learning-rate schedule (:meth:`Task.optimizer`), the loss of one batch (:meth:`Task.loss`), its evaluation and score
(:meth:`Task.evaluate`, :attr:`Task.score`), what a checkpoint records to rebuild the model (:meth:`Task.meta`) and
its curves (:meth:`Task.plot`). Everything else is here, written once:

* the run folder and its ``config.yaml`` (the resolved options and what was derived at run time; each resume adds its
  command), ``metrics.csv`` (one row per epoch, TensorBoard beside it when installed) and ``curves.png``;
* threads (:func:`thread_split`), determinism, AMP (bf16 / fp16 with a gradient scaler), EMA (timm ``ModelEmaV3``),
  gradient clipping (timm ``dispatch_clip_grad``), channels-last, SyncBatchNorm, ``torch.compile``, torchrun DDP;
* exact resumption (:class:`TrainState`: weights, optimizer, schedule, EMA, scaler, position in the epoch, the best
  score, the epoch's running sums and every process's RNGs), mid-epoch included; ``last.pth`` is written after the
  last training step of an epoch *before* that epoch is evaluated, and again after, so a failure in evaluation loses
  no training; SIGINT / SIGTERM save at the next step boundary and print the command that resumes;
* the non-finite loss check, on the loss averaged over processes so that every process stops at the same step;
* ``best.pth`` kept by the task's own score (the EMA's when EMA is on);
* a check before the first step of what would otherwise fail only at the first evaluation (:meth:`Task.preflight`);
* the task's counters of skipped, replaced or dropped items (:attr:`Task.counters`: metrics.csv columns), shown in
  each epoch's line and summed over the run in one line at its end.

Where the classification and segmentation loops used to differ, the behaviour kept is (issue 25): ``--resume auto``
with nothing to resume warns and starts the run the options describe (the printed resume command can be rerun
blindly); another process count or batch size on resume re-seeds and rescales the position with a warning instead of
refusing; the NaN check is all-reduced; a run folder defaults to ``runs/<dataset>-<model>`` (a ``-N`` suffix when
taken); BatchNorm buffers are broadcast from rank 0 at every epoch end under DDP (what segmentation did), so
evaluation and checkpoints use one set of statistics.
"""
from __future__ import annotations

import contextlib
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
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from timm.utils import random_seed

from .._checkpoint import CheckpointError, load_weights
from .._version import __version__
from ..data.datasets import CorruptImageError, worker_error_message
from ..data.loader import set_loader_epoch
from ..errors import UsageError
from .checkpoint import get_rng_state, load_checkpoint_file, save_checkpoint, set_rng_state
from .distributed import DistInfo, all_reduce_sum, barrier, destroy_distributed, init_distributed
from .evaluate import autocast_context
from .metrics import MetricsLog, progress_bar, read_metrics

__all__ = ['Task', 'Run', 'RunResult', 'TrainState', 'Meters', 'fit', 'train_one_epoch', 'NonFiniteLossError',
           'BatchSizeError', 'TrainingInterrupted', 'thread_split', 'available_cores', 'amp_dtype', 'resume_path',
           'output_dir', 'resume_command', 'SHARED_OPTIONS', 'TASKS', 'task_of_checkpoint']

_logger = logging.getLogger('mlpvision.train')

# the options the loop reads from every task's configuration (tests/test_run.py holds each config to them)
SHARED_OPTIONS = ('epochs', 'batch_size', 'workers', 'amp', 'clip_grad', 'clip_mode', 'model_ema', 'model_ema_decay',
                  'model_ema_warmup', 'eval_every', 'checkpoint_every_steps', 'log_interval', 'log_seconds',
                  'progress', 'plot', 'tensorboard', 'output', 'overwrite', 'resume', 'seed', 'deterministic',
                  'device', 'threads', 'compile', 'channels_last', 'sync_bn', 'dataset', 'model')

# command-line word -> what a checkpoint's metadata calls the task
TASKS = {'classify': 'classification', 'segment': 'segmentation', 'detect': 'detection'}


def task_of_checkpoint(meta: dict) -> str:
    """The command-line task word of a checkpoint's ``mlpvision`` metadata (classification when it names none: the
    checkpoints written before tasks were recorded)."""
    kind = (meta or {}).get('task', 'classification')
    for word, name in TASKS.items():
        if kind in (word, name):
            return word
    raise CheckpointError(f'the checkpoint records an unknown task {kind!r} (known: {", ".join(TASKS.values())})')


class NonFiniteLossError(UsageError):
    """The loss (or the weights) stopped being finite; training stopped without overwriting the last checkpoint."""


class BatchSizeError(UsageError):
    """The batch does not fit the dataset or the device memory."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at a step boundary after ``last.pth`` was saved; the message holds the
    command that resumes. A ``KeyboardInterrupt``, so the CLI exits with 128 + the signal number (130 for Ctrl-C)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


# -- what a run holds ---------------------------------------------------------------------------------------------
@dataclass
class Meters:
    """Running sums of the epoch in progress (this process): the loss summed over samples, samples seen, steps,
    seconds, and the task's own additive counts (``sums``: correct predictions, skipped corrupt images, loss terms).

    Summed over processes at the epoch end and saved per process in ``last.pth``, so an epoch resumed mid-way reports
    the same figures as an uninterrupted one.
    """
    loss_sum: float = 0.0
    seen: int = 0
    steps: int = 0
    time_s: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    @classmethod
    def from_dict(cls, d: dict) -> Meters:
        """From :func:`dataclasses.asdict` (also the flat form of checkpoints before tasks: ``correct``,
        ``corrupt`` as fields)."""
        d = dict(d)
        sums = dict(d.pop('sums', None) or {})
        for old in ('correct', 'corrupt'):
            if old in d:
                sums[old] = d.pop(old)
        return cls(**d, sums=sums)


@dataclass
class TrainState:
    """What ``last.pth`` holds and a resumed run restores: the model (un-wrapped), optimizer, scheduler (anything
    with ``step_update(global_step)``; ``state_dict`` / ``load_state_dict`` when it has state), EMA, gradient
    scaler, where training is (epoch, step), the best score so far, the epoch's meters and every RNG."""
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
        primary writes, atomically).

        Raises:
            NonFiniteLossError: the weights are no longer finite (the last good checkpoint is left as it is).
        """
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise NonFiniteLossError(_nan_message(f'the weights are no longer finite after step {self.global_step}',
                                                 self.last_saved))
        per_rank = _gather(dict(rng=get_rng_state(), meters=asdict(self.meters)), info)
        if info.primary:
            sched = getattr(self.scheduler, 'state_dict', None)
            save_checkpoint(dict(
                model=self.model.state_dict(), ema=self.ema.module.state_dict() if self.ema else None,
                optimizer=self.optimizer.state_dict(), scheduler=sched() if sched else None,
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
            if ckpt.get('scheduler') and hasattr(self.scheduler, 'load_state_dict'):
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
            self.meters = Meters.from_dict(meters[info.rank])
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
class StepOutput:
    """One batch's training loss and what the loop adds to the epoch's meters."""
    loss: torch.Tensor  # the scalar to back-propagate
    n: int  # samples in the batch (the loss is averaged over them)
    sums: dict[str, float] = field(default_factory=dict)  # additive counts for Meters.sums
    outputs: Any = None


class Task:
    """What one kind of training brings to the loop. Subclasses set the class attributes and implement the methods
    marked 'required'; the others have defaults.

    Attributes (set by :meth:`setup`): ``train_loader``, ``val_loader``, ``model`` (the bare model, before the loop
    moves and wraps it), ``description`` (a one-line name of the model), ``train_size`` / ``val_size`` (images).
    """
    name: ClassVar[str] = ''  # the command-line word: classify | segment | detect
    columns: ClassVar[tuple[str, ...]] = ()  # metrics.csv columns
    score: ClassVar[str] = ''  # the row key best.pth is kept by (higher is better)
    score_label: ClassVar[str] = ''  # e.g. 'top-1', 'mIoU', 'box AP'
    # metrics.csv columns that count items skipped, replaced or dropped in an epoch, and what each counts
    counters: ClassVar[dict[str, str]] = {}

    train_loader: Any
    val_loader: Any
    model: nn.Module
    description: str = ''
    train_size: int = 0
    val_size: int = 0

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    # required
    def setup(self, run: Run) -> None:
        """Build the data (loaders) and the model; set the attributes above."""
        raise NotImplementedError

    def optimizer(self, run: Run, model: nn.Module) -> tuple[torch.optim.Optimizer, Any, str]:
        """(optimizer, scheduler with ``step_update(global_step)`` or None, a start-up line describing both)."""
        raise NotImplementedError

    def loss(self, run: Run, batch: Any) -> StepOutput:
        """Forward one training batch (under the loop's autocast) and return its loss."""
        raise NotImplementedError

    def evaluate(self, run: Run, model: nn.Module, desc: str) -> dict[str, Any]:
        """Evaluate ``model`` on the validation split: metrics.csv values, ``self.score`` among them."""
        raise NotImplementedError

    def meta(self) -> dict:
        """What a checkpoint records to rebuild the model and its preprocessing (``task`` is added by the loop)."""
        raise NotImplementedError

    # optional
    def preflight(self, run: Run) -> None:
        """Check before the first step what would otherwise fail at the first evaluation."""

    def resolved(self) -> dict:
        """What was derived at run time, for config.yaml's ``resolved`` section."""
        return {}

    def start_lines(self, run: Run) -> list[str]:
        """Start-up log lines of the task (data, model, augmentation)."""
        return []

    def train_row(self, sums: dict[str, float], seen: float) -> dict[str, Any]:
        """The epoch's training figures beyond the loss, from the meters' sums over all processes."""
        return {}

    def postfix(self, meters: Meters) -> str:
        """The progress bar's / log line's figures beyond the loss."""
        return ''

    def after_evaluate(self, run: Run, row: dict[str, Any], best: bool) -> None:
        """Write the evaluation's files (per-class tables) on the primary process."""

    def epoch_line(self, row: dict[str, Any]) -> str:
        """The validation part of the epoch's log line."""
        return ''

    def plot(self, metrics_csv: Path, out_png: Path, title: str) -> Path | None:
        """Draw curves.png from metrics.csv (None: no matplotlib)."""
        return None

    def result(self, run: Run) -> dict:
        """Extra fields of :class:`RunResult` (``final`` evaluation and such)."""
        return {}


@dataclass
class Run:
    """Everything a run holds while it trains: the configuration, the task, where it writes, the state."""
    cfg: Any
    task: Task
    info: DistInfo
    progress: bool
    output: Path
    amp_dtype: torch.dtype | None
    threads: str
    state: TrainState = None  # type: ignore[assignment]
    model: nn.Module = None  # type: ignore[assignment]  # what the loop calls: state.model in DDP and/or compiled
    steps: int = 0
    batch_global: int = 0
    opt_text: str = ''
    params: int = 0
    last_eval: dict | None = None

    def meta(self) -> dict:
        return dict(self.task.meta(), task=TASKS[self.task.name], version=__version__,
                    config=self.cfg.to_dict(), dataset=self.cfg.dataset, description=self.task.description)

    def save_last(self) -> None:
        self.state.save(self.output / 'last.pth', self.info, self.steps, self.meta())

    def save_best(self, weights: nn.Module, which: str, metric: float) -> None:
        if self.info.primary:
            save_checkpoint(dict(model=weights.state_dict(), weights=which, epoch=self.state.epoch + 1,
                                 metric=metric, score=self.task.score, mlpvision=self.meta()),
                            self.output / 'best.pth')

    def resume_command(self) -> str:
        return resume_command(self.output, self.info)


@dataclass
class RunResult:
    output_dir: Path
    last: Path
    best: Path | None
    metrics_csv: Path
    plot: Path | None
    config_yaml: Path
    best_metric: float
    best_epoch: int
    last_eval: dict | None
    description: str
    params: int
    elapsed_s: float
    model: nn.Module = field(repr=False)
    extra: dict = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # the task's counters summed over metrics.csv's epochs


# -- threads, devices, folders ------------------------------------------------------------------------------------
def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_split(cfg: Any, cores: int | None = None, env: dict | None = None) -> tuple[int, int, int, str]:
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
    loaders = 0 if getattr(cfg, 'data_in_memory', False) else cfg.workers
    if cfg.threads:
        return cfg.threads, loaders, cores, '--threads'
    if env.get('OMP_NUM_THREADS'):
        return torch.get_num_threads(), loaders, cores, 'OMP_NUM_THREADS'
    share = max(1, cores // max(1, int(env.get('LOCAL_WORLD_SIZE', '1') or 1)))
    return max(1, share - loaders), loaders, cores, 'default'


def configure_torch(cfg: Any, info: DistInfo) -> str:
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


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (none | bf16 | fp16) on ``device``."""
    if amp == 'none':
        return None
    if amp not in ('bf16', 'fp16'):
        raise UsageError(f"--amp {amp!r}: use 'none', 'bf16' or 'fp16'")
    if amp == 'fp16' and device.type != 'cuda':
        raise UsageError('--amp fp16 needs a CUDA device; use --amp bf16 (or none) on the CPU')
    if amp == 'bf16' and device.type == 'cpu':
        from ..layers.fast_linear import onednn_bf16_supported

        if not onednn_bf16_supported():
            _logger.warning('--amp bf16: this CPU has no bf16 GEMMs (oneDNN needs AVX512 or AMX; torch reports %s), so '
                            'bf16 runs in slow fallback kernels, several times slower than fp32 here; --amp none is '
                            'faster on this machine', torch.backends.cpu.get_cpu_capability())
    return torch.bfloat16 if amp == 'bf16' else torch.float16


def resume_path(resume: str | None, output: str | None) -> Path | None:
    """The checkpoint ``--resume`` names: a file, or ``auto`` for ``<output>/last.pth`` (None, with a warning, when
    that does not exist yet: the run the other options describe starts)."""
    if not resume:
        return None
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


def resumed_options(overrides: dict) -> tuple[dict | None, dict]:
    """The configuration saved in the checkpoint ``overrides['resume']`` names (None when there is none) and that
    checkpoint's metadata; ``overrides`` gets the checkpoint's path as ``resume`` and its folder as ``output`` (unless
    given), and loses ``resume`` when ``auto`` finds nothing to resume.

    Raises:
        CheckpointError: the checkpoint is not an mlpvision training checkpoint.
    """
    if not overrides.get('resume'):
        return None, {}
    path = resume_path(overrides['resume'], overrides.get('output'))
    if path is None:
        overrides.pop('resume')
        return None, {}
    ckpt = load_checkpoint_file(path)
    meta = ckpt.get('mlpvision') or {}
    if 'config' in meta and 'optimizer' not in ckpt:  # best.pth: the best epoch's weights, no training state
        last = path.parent / 'last.pth'
        raise UsageError(f'{str(path)!r} holds weights only (best.pth keeps the best epoch, not the optimizer, '
                         f'schedule and position), so it cannot resume a run; resume from '
                         + (f'{str(last)!r} (--resume auto --output {path.parent})' if last.is_file() else
                            "the run's last.pth") + f', or start a new run from its weights with --finetune {path}')
    if 'config' not in meta:
        raise CheckpointError(f'checkpoint {str(path)!r} is not an mlpvision training checkpoint (no '
                              f'configuration in it); use --finetune to start from its weights')
    overrides['resume'] = str(path)
    overrides.setdefault('output', str(path.parent))
    return {k: v for k, v in meta['config'].items() if k not in ('resume', 'overwrite')}, meta


def resolve_task_config(config: type, kind: str, overrides: dict) -> dict:
    """The values of a task's ``config`` dataclass: its defaults < the resumed checkpoint's configuration (which must
    be a ``kind`` run) < ``overrides`` (the options given; None and '' mean not given)."""
    import dataclasses

    overrides = {k: v for k, v in overrides.items() if v is not None and v != ''}
    base, meta = resumed_options(overrides)
    if base is not None and meta.get('task') != kind:
        raise UsageError(f'{overrides["resume"]!r} is not a {kind} run; resume it with mlpvision train '
                         f'--resume auto --output {overrides["output"]} (the task is read from the checkpoint)')
    names = {f.name for f in dataclasses.fields(config)}
    unknown = set(overrides) - names
    if unknown:
        raise UsageError(f'unknown {kind} options {sorted(unknown)}')
    return {**{k: v for k, v in (base or {}).items() if k in names}, **overrides}


def default_output(dataset: str, model: str) -> Path:
    """``runs/<dataset>-<model>``, with a ``-N`` suffix when that folder already holds a run."""
    base = Path('runs') / f'{dataset}-{model}'
    out, n = base, 1
    while (out / 'last.pth').exists() or (out / 'config.yaml').exists():
        n += 1
        out = base.with_name(f'{base.name}-{n}')
    return out


def output_dir(cfg: Any, info: DistInfo, default: Callable[[], Path]) -> Path:
    """The run folder: the resumed checkpoint's, ``--output`` (refused when it holds a run, unless --overwrite), or
    ``default()``; created by the primary process."""
    if cfg.resume:
        out = Path(cfg.output) if cfg.output else Path(cfg.resume).parent
    elif cfg.output:
        out = Path(cfg.output)
        if (out / 'last.pth').exists() and not cfg.overwrite:
            raise UsageError(f'{str(out)!r} already holds a run (last.pth); pass --resume auto to continue it, '
                             f'--overwrite to start it again, or another --output')
    else:
        out = default()
    barrier(info)  # every process has chosen the folder before the primary creates it
    if info.primary:
        out.mkdir(parents=True, exist_ok=True)
    return out


def resume_command(output: Path, info: DistInfo) -> str:
    """The command that resumes a run from its ``last.pth`` (the checkpoint holds the task and configuration)."""
    launcher = (f'torchrun --nproc_per_node={info.world_size} -m mlpvision.cli.main'
                if info.distributed else 'mlpvision')
    return f'{launcher} train --resume auto --output {shlex.quote(str(output))}'


# -- signals ------------------------------------------------------------------------------------------------------
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


# -- set-up -------------------------------------------------------------------------------------------------------
def _prepare_model(run: Run, model: nn.Module) -> tuple[nn.Module, nn.Module, Any]:
    """(the model on its device, the model as the loop calls it: DDP and/or compiled, its EMA or None)."""
    from timm.utils import ModelEmaV3

    cfg, info = run.cfg, run.info
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if getattr(cfg, 'grad_checkpointing', False):
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


def build_run(task: Task, info: DistInfo, progress: bool) -> Run:
    """Data, model, optimisation and (with ``cfg.resume``) the resumed state: everything :func:`train` needs."""
    from ..data.loader import steps_per_epoch

    cfg = task.cfg
    threads = configure_torch(cfg, info)
    dtype = amp_dtype(cfg.amp, info.device)
    output = output_dir(cfg, info, lambda: default_output(cfg.dataset, _model_label(cfg)))
    run = Run(cfg=cfg, task=task, info=info, progress=progress, output=output, amp_dtype=dtype, threads=threads)
    task.setup(run)
    steps = steps_per_epoch(task.train_loader)
    batch_global = cfg.batch_size * info.world_size
    if steps == 0:
        n = task.train_size
        raise BatchSizeError(
            f'batch size {cfg.batch_size} x {info.world_size} process(es) = {batch_global} does not fit the '
            f'{n} training images (full batches only); use --batch-size {max(n // info.world_size, 1)} or less')
    run.steps, run.batch_global = steps, batch_global
    model, wrapped, ema = _prepare_model(run, task.model)
    task.model = model
    optimizer, scheduler, run.opt_text = task.optimizer(run, model)
    scaler = torch.amp.GradScaler('cuda') if dtype == torch.float16 else None
    run.state = TrainState(model, optimizer, scheduler, ema, scaler)
    run.model, run.params = wrapped, sum(p.numel() for p in model.parameters())
    if cfg.resume:
        run.state.load(cfg.resume, info, steps, cfg.seed)
        if info.primary:
            _logger.info('resumed from %s: epoch %d, step %d of %d (global step %d)', cfg.resume, run.state.epoch + 1,
                         run.state.step_in_epoch, steps, run.state.global_step)
    elif scheduler is not None:
        scheduler.step_update(0)
    return run


def _model_label(cfg: Any) -> str:
    backbone = getattr(cfg, 'backbone', None)
    return f'{cfg.model}-{backbone}' if backbone and cfg.model != backbone else str(backbone or cfg.model)


# -- the inner loop -----------------------------------------------------------------------------------------------
def train_one_epoch(run: Run, on_step: Callable[[TrainState], None] | None = None) -> Meters:
    """Train over the task's loader once (the rest of the epoch when resumed mid-way), updating ``run.state``.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite (checked on the value averaged over processes, so every
            process stops at the same step).
    """
    from timm.utils import dispatch_clip_grad

    cfg, info, state, task = run.cfg, run.info, run.state, run.task
    optimizer, meters = state.optimizer, state.meters
    run.model.train()
    params = [p for p in run.model.parameters() if p.requires_grad]
    desc = f'epoch {state.epoch + 1}/{cfg.epochs}'
    bar = progress_bar(range(run.steps - state.step_in_epoch), run.progress and info.primary, desc=desc,
                       total=run.steps, initial=state.step_in_epoch)
    bar_update = getattr(bar, 'update', None)
    t0 = t_logged = time.perf_counter()
    for batch in task.train_loader:
        with autocast_context(info.device, run.amp_dtype):
            out = task.loss(run, batch)
        loss = out.loss
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

        meters.loss_sum += lv * out.n
        meters.seen += out.n
        meters.steps += 1
        meters.add(out.sums)
        now = time.perf_counter()
        meters.time_s += now - t0
        t0 = now
        lr = optimizer.param_groups[0]['lr']
        ips = meters.seen * info.world_size / max(meters.time_s, 1e-9)
        extra = task.postfix(meters)
        figures = f'loss {meters.loss:.4f}{" " + extra if extra else ""} lr {lr:.2e} {ips:.1f} img/s'
        if bar_update is not None:
            bar_update(1)
            bar.set_postfix_str(figures, refresh=False)
        elif info.primary and ((cfg.log_interval and state.step_in_epoch % cfg.log_interval == 0)
                               or (cfg.log_seconds and now - t_logged >= cfg.log_seconds)):
            t_logged = now
            _logger.info('%s step %d/%d  %s', desc, state.step_in_epoch, run.steps, figures.replace(' lr', '  lr'))
        if on_step is not None:
            on_step(state)
    if hasattr(bar, 'close'):
        bar.close()
    return meters


# -- the epoch loop -----------------------------------------------------------------------------------------------
def train(run: Run) -> RunResult:
    """Train from ``run.state`` to the last epoch: after each epoch save last.pth, evaluate, keep best.pth, log
    metrics.csv, redraw curves.png, save last.pth again.

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM arrived; ``last.pth`` was saved at the next step boundary.
    """
    cfg, info, state, task = run.cfg, run.info, run.state, run.task
    t_start = time.perf_counter()
    config_path = write_config(run)
    log_start(run)
    log = (MetricsLog(run.output, resume_epoch=state.epoch, tensorboard=cfg.tensorboard, columns=task.columns)
           if info.primary else None)
    plot = None
    stop = _StopRequest()

    def stop_if_asked() -> None:
        signum = stop.requested(info)
        if not signum:
            return
        run.save_last()
        raise TrainingInterrupted(
            f'stopped by {signal.Signals(signum).name} at epoch {state.epoch + 1}, step {state.step_in_epoch}/'
            f'{run.steps}; saved {run.output / "last.pth"}. Resume with: {run.resume_command()}', signum)

    def on_step(s: TrainState) -> None:
        if cfg.checkpoint_every_steps and s.global_step % cfg.checkpoint_every_steps == 0:
            run.save_last()
            if info.primary and not run.progress:
                _logger.info('checkpoint saved at step %d (epoch %d, step %d)', s.global_step, s.epoch + 1,
                             s.step_in_epoch)
        stop_if_asked()

    try:
        with _one_line_errors(run), stop:
            if state.global_step == 0:
                task.preflight(run)
            while state.epoch < cfg.epochs:
                stop_if_asked()  # a signal during evaluation: the epoch end's checkpoint is the step boundary
                epoch = state.epoch
                if state.step_in_epoch < run.steps:
                    set_loader_epoch(task.train_loader, epoch, cfg.seed, state.step_in_epoch)
                    train_one_epoch(run, on_step)
                    _sync_buffers(state.model, info)
                    run.save_last()  # the epoch's training is kept whatever its evaluation does
                row = _epoch_row(run)
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    _evaluate_and_keep_best(run, row)
                row['wall_s'] = time.perf_counter() - t_start
                if log is not None:
                    log.write(row)
                    _log_epoch(run, row)
                    if cfg.plot:  # every epoch, so an interrupted run has its plot
                        plot = task.plot(run.output / 'metrics.csv', run.output / 'curves.png', task.description)
                state.next_epoch()
                run.save_last()
    finally:
        if log is not None:
            log.close()
    if info.primary and cfg.plot and plot is None:  # resumed after its last epoch: the plot of the rows there are
        plot = task.plot(run.output / 'metrics.csv', run.output / 'curves.png', task.description)
    counts = count_totals(task, read_metrics(run.output / 'metrics.csv')) if info.primary else {}
    if any(counts.values()):
        _logger.info('%s', counts_line(task, counts, 'over the run'))
    best = run.output / 'best.pth'
    return RunResult(
        output_dir=run.output, last=run.output / 'last.pth', best=best if best.exists() else None,
        metrics_csv=run.output / 'metrics.csv', plot=plot, config_yaml=config_path, best_metric=state.best_metric,
        best_epoch=state.best_epoch, last_eval=run.last_eval, description=task.description, params=run.params,
        elapsed_s=time.perf_counter() - t_start, model=state.model, extra=task.result(run), counts=counts)


def _sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every process. DDP broadcasts buffers before each forward, so after
    the last step of an epoch each process holds the statistics of its own last batch; evaluation and the checkpoint
    use rank 0's (as DDP would at the next step)."""
    if info.distributed:
        for b in model.buffers():
            dist.broadcast(b, 0)


@contextlib.contextmanager
def _one_line_errors(run: Run) -> Iterator[None]:
    """Errors met in the loop, restated for the user: a worker's corrupt image without the worker traceback, and
    running out of device memory as a batch-size problem."""
    try:
        yield
    except CorruptImageError as e:
        raise CorruptImageError(worker_error_message(e)) from None
    except torch.OutOfMemoryError as e:
        raise BatchSizeError(f'batch size {run.cfg.batch_size} does not fit in {run.info.device} memory '
                             f'({str(e).splitlines()[0][:120]}); lower --batch-size, or use --amp bf16 / '
                             f'--grad-checkpointing') from None


def _epoch_row(run: Run) -> dict[str, Any]:
    """The epoch's metrics.csv row so far (training figures summed over processes)."""
    info, meters, task = run.info, run.state.meters, run.task
    keys = sorted(meters.sums)
    if info.distributed:  # every process must sum the same keys: agree on their union first
        names = _gather(dict(keys=keys), info)
        keys = sorted({k for n in names for k in n['keys']})
    sums = torch.tensor([meters.loss_sum, meters.seen, *[meters.sums.get(k, 0.0) for k in keys]],
                        dtype=torch.float64, device=info.device)
    all_reduce_sum(sums, info)
    seen = float(sums[1])
    totals = {k: float(v) for k, v in zip(keys, sums[2:].tolist(), strict=True)}
    return dict(
        epoch=run.state.epoch + 1, step=run.state.global_step, lr=run.state.optimizer.param_groups[0]['lr'],
        train_loss=float(sums[0]) / max(seen, 1), **task.train_row(totals, seen),
        img_per_s=meters.seen * info.world_size / max(meters.time_s, 1e-9), epoch_time_s=meters.time_s)


def _evaluate_and_keep_best(run: Run, row: dict[str, Any]) -> None:
    """Evaluate the model (and its EMA) into ``row``; write best.pth when the score (the EMA's when there is one)
    beats the best so far."""
    state, task = run.state, run.task
    res = task.evaluate(run, run.model, 'eval')
    row.update(res)
    weights, which, score = state.model, 'model', res[task.score]
    if state.ema is not None:
        ema_res = task.evaluate(run, state.ema.module, 'eval EMA')
        row.update({f'ema_{k}': v for k, v in ema_res.items()})
        weights, which, score, res = state.ema.module, 'ema', ema_res[task.score], ema_res
    run.last_eval = res
    best = not math.isnan(score) and score > state.best_metric
    if best:
        state.best_metric, state.best_epoch = score, state.epoch + 1
        run.save_best(weights, which, score)
    if run.info.primary:
        task.after_evaluate(run, res, best)


def write_config(run: Run) -> Path:
    """config.yaml: the resolved configuration and what was derived at run time. ``command`` stays the command
    that started the run; each resume adds its own to ``resume_commands``."""
    cfg, info = run.cfg, run.info
    path = run.output / 'config.yaml'
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
            task=run.task.name, world_size=info.world_size, global_batch_size=run.batch_global,
            steps_per_epoch=run.steps, device=str(info.device), model=run.task.description, params=run.params,
            train_images=run.task.train_size, val_images=run.task.val_size, **run.task.resolved(), command=command,
            **(dict(resume_commands=resumes) if resumes else {}),
            versions=dict(mlpvision=__version__, torch=str(torch.__version__), timm=_timm_version()))
        text = yaml.safe_dump(dict(cfg.to_dict(), resolved=resolved), sort_keys=False)
        tmp = path.with_suffix('.yaml.tmp')
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def log_start(run: Run) -> None:
    if not run.info.primary:
        return
    cfg, info = run.cfg, run.info
    _logger.info('model: %s, %s params', run.task.description, f'{run.params:,}')
    for line in run.task.start_lines(run):
        _logger.info(line)
    _logger.info('device: %s x %d process(es), batch %d per process (global %d), %d steps per epoch, AMP %s',
                 info.device, info.world_size, cfg.batch_size, run.batch_global, run.steps, cfg.amp)
    if run.threads:
        _logger.info(run.threads)
    if run.opt_text:
        _logger.info(run.opt_text)
    _logger.info('output: %s', run.output)


def _log_epoch(run: Run, row: dict) -> None:
    parts = [f'epoch {row["epoch"]}/{run.cfg.epochs}', f'train loss {row["train_loss"]:.4f}']
    if 'train_acc1' in row:
        parts.append(f'acc {row["train_acc1"]:.1f}%')
    val = run.task.epoch_line(row)
    if val:
        parts.append(val)
    parts.append(f'lr {row["lr"]:.2e}  {row["img_per_s"]:.1f} img/s  {row["epoch_time_s"]:.1f}s')
    counts = {k: row.get(k) or 0 for k in run.task.counters}
    if any(counts.values()):
        parts.append(counts_line(run.task, counts))
    _logger.info('  '.join(parts))


def count_totals(task: Task, rows: list[dict[str, str]]) -> dict[str, int]:
    """Each of the task's counters summed over ``rows`` (metrics.csv's: every epoch, resumed ones included)."""
    return {k: sum(int(float(r[k])) for r in rows if r.get(k)) for k in task.counters}


def counts_line(task: Task, counts: dict[str, int], when: str = '') -> str:
    """e.g. ``skipped over the run: 3 corrupt training images replaced by a readable one (corrupt_skipped)``."""
    shown = [f'{int(n)} {task.counters[k]} ({k})' for k, n in counts.items() if n]
    return f'skipped{" " + when if when else ""}: ' + ', '.join(shown)


def _timm_version() -> str:
    import timm
    return timm.__version__


# -- the whole run ------------------------------------------------------------------------------------------------
def fit(task: Task, progress: bool | None = None) -> RunResult:
    """Train ``task`` (its ``cfg``) in this process (one of ``WORLD_SIZE`` processes under torchrun) and return where
    the results are. Only the primary process (rank 0) writes files and logs."""
    cfg = task.cfg
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
            run = build_run(task, info, progress)
        except torch.OutOfMemoryError as e:
            raise BatchSizeError(f'the model does not fit in {info.device} memory ({str(e).splitlines()[0][:120]})') \
                from None
        return train(run)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        if started_group:
            destroy_distributed()
