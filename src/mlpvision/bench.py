"""Benchmarks: params, MACs, inference throughput, batch-1 latency, training-step throughput and peak memory.

:func:`run_bench` measures a set of models (mlpvision's, and timm models as baselines) in one process under one
setting (device, autocast dtype, memory format, ``torch.compile``, deploy form, threads, input size). Repeats are
interleaved across models (repeat r of every model runs before repeat r+1 of any, the model order reversing on
every other repeat), so drift on a shared machine (other jobs, thermal or frequency changes) spreads over all models
instead of favouring the one measured first; every figure reported is the median over repeats.

What is measured, per model:

* ``params``: parameters of the benchmarked form (the deploy form with ``reparam``); ``gmacs``: multiply-adds per
  image at the benchmark input size, from :func:`mlpvision.profile` (the papers' "FLOPs" convention).
* inference throughput: eval mode, ``torch.inference_mode``, batches of ``batch_size``; img/s per repeat.
* latency: eval mode, batch 1, every call timed on its own; p50 and p90 over all calls of all repeats.
* training-step throughput: train mode, zero_grad + forward + cross-entropy + backward + AdamW step on batches of
  ``batch_size``, always on the training form (``reparam`` only changes the inference measurements); AdamW runs
  with lr 0 so the weights the inference figures use stay fixed while the update does its usual arithmetic.
* peak memory (one extra, untimed call of each kind): the bytes this model holds (parameters, buffers, for
  training the optimizer state, and the input batch) plus the highest amount of memory allocated on top of that
  during the call (activations, gradients, workspaces). On CUDA the extra comes from the caching allocator
  (``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the call); on CPU from the allocation and
  free events of PyTorch's CPU allocator recorded by ``torch.profiler`` (``profile_memory=True``), whose running
  sum is tensor memory, the CPU analogue of CUDA's allocated bytes. It is not process RSS, which also counts
  allocator caches, libraries and the other models of the run.

Autocast (``bf16``/``fp16``) wraps forward and loss; the weights stay fp32. ``fp16`` training runs without a
GradScaler (timing only).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UsageError
from .host import cpu_name, gemm_peaks, host_environment, loadavg, quiet_stderr
from .model_table import paper_dataset
from .plotting import BASELINE_COLOUR, family_colour, place_labels

_logger = logging.getLogger(__name__)

__all__ = ['BenchSettings', 'BenchResult', 'run_bench', 'resolve_models', 'environment', 'gemm_peaks', 'write_csv',
           'format_markdown', 'describe_settings', 'write_plot', 'write_outputs', 'DTYPES', 'MEMORY_METHOD']

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}

MEMORY_METHOD = {
    'cuda': 'bytes the model holds (params, buffers, optimizer state, input batch) + peak extra allocation during '
            'one call (activations, gradients, workspaces: torch.cuda.max_memory_allocated - memory_allocated '
            'before the call)',
    'cpu': 'bytes the model holds (params, buffers, optimizer state, input batch) + peak extra allocation during '
           "one call (activations, gradients, workspaces: running sum of the CPU allocator's events recorded by "
           'torch.profiler with profile_memory=True); tensor memory, not process RSS',
}


@dataclass
class BenchSettings:
    """One benchmark setting, applied to every model of a run.

    Attributes:
        device: 'cpu' or 'cuda' (or 'cuda:N').
        dtype: autocast dtype, one of ``DTYPES`` ('fp32' = no autocast).
        batch_size: batch of the inference- and training-throughput measurements (latency uses batch 1).
        img_size: square input size; None = each model's default (its cfg input size).
        channels_last: model and input in channels-last memory format.
        compile: ``torch.compile(model, dynamic=False)`` (one specialised graph per batch size and mode).
        compile_mode: ``torch.compile`` mode (None = default).
        reparam: measure inference on the deploy (re-parameterised) form.
        threads: ``torch.set_num_threads`` for the run (None = leave as is).
        warmup: untimed calls of each kind per model before the first repeat (compilation happens here).
        repeats: interleaved timed repeats.
        iters: timed calls per repeat; 0 = chosen per model and kind so one repeat lasts about ``repeat_time`` s.
        repeat_time: target seconds per repeat when ``iters`` is 0.
        clock: 'wall' (``time.perf_counter``) or 'cpu' (``time.process_time``, the CPU time of this process: with
            one thread a load-robust proxy on a shared machine, since time spent descheduled is not counted; with
            several threads it adds up their times, so it is not a throughput).
        latency / train / memory: whether to measure batch-1 latency, training throughput, peak memory.
        model_kwargs: extra constructor kwargs for the mlpvision models (not the baselines); paper figures are left
            out when given, since they no longer describe the model.
        gemm_peaks: measure the host's GEMM peaks (:func:`gemm_peaks`, about a second, once per process and thread
            count) and report them with the figures (CPU runs).
    """
    device: str = 'cpu'
    dtype: str = 'fp32'
    batch_size: int = 8
    img_size: int | None = None
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None
    reparam: bool = False
    threads: int | None = None
    warmup: int = 2
    repeats: int = 5
    iters: int = 0
    repeat_time: float = 0.5
    clock: str = 'wall'
    latency: bool = True
    train: bool = True
    memory: bool = True
    model_kwargs: dict = field(default_factory=dict)
    gemm_peaks: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f'dtype must be one of {", ".join(DTYPES)}; got {self.dtype!r}.')
        if torch.device(self.device).type not in ('cpu', 'cuda'):
            raise UsageError(f"device must be 'cpu' or 'cuda[:N]'; got {self.device!r}.")
        if torch.device(self.device).type == 'cuda' and not torch.cuda.is_available():
            raise UsageError("device 'cuda' asked for but torch.cuda.is_available() is False; use --device cpu.")
        for name in ('batch_size', 'repeats'):
            if getattr(self, name) < 1:
                raise UsageError(f'{name} must be at least 1; got {getattr(self, name)}.')
        for name in ('warmup', 'iters'):
            if getattr(self, name) < 0:
                raise UsageError(f'{name} must be 0 or more; got {getattr(self, name)}.')
        if self.img_size is not None and self.img_size < 1:
            raise UsageError(f'img_size must be positive; got {self.img_size}.')
        if self.clock not in ('wall', 'cpu'):
            raise UsageError(f"clock must be 'wall' or 'cpu'; got {self.clock!r}.")
        if self.clock == 'cpu' and torch.device(self.device).type == 'cuda':
            raise UsageError("clock 'cpu' measures host CPU time and cannot time CUDA work; use clock 'wall'.")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f'threads must be at least 1; got {self.threads}.')


@dataclass
class BenchResult:
    """Measured figures for one model (medians over repeats; None where not measured)."""
    model: str
    source: str  # 'mlpvision' or 'timm'
    family: str
    form: str  # 'train' or 'deploy' (the form the inference figures use)
    input_size: str  # 'HxW'
    params: int
    gmacs: float
    infer_img_s: float | None = None
    infer_spread_pct: float | None = None  # (max - min) / median over repeats
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    train_img_s: float | None = None
    train_spread_pct: float | None = None
    peak_mem_infer_mib: float | None = None
    peak_mem_train_mib: float | None = None
    paper_params: str | None = None
    paper_gmacs: float | None = None
    paper_top1: float | None = None
    paper_dataset: str | None = None  # the data set of paper_top1 (model_table.paper_dataset)


def resolve_models(patterns: str | Sequence[str] | None, baselines: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(name, source)`` pairs: mlpvision models matching any glob in ``patterns`` (comma-separated or a list),
    then the timm ``baselines`` in the order given."""
    from .models import is_model, list_models
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(',') if p.strip()]
    out: list[tuple[str, str]] = []
    for p in patterns or ():
        names = list_models(p.strip())
        if not names:
            raise UsageError(f'no mlpvision model matches {p.strip()!r}; `mlpvision models` lists them all.')
        out += [(n, 'mlpvision') for n in names if (n, 'mlpvision') not in out]
    import timm
    for b in baselines:
        b = b.strip()
        if not b:
            continue
        if is_model(b):
            out.append((b, 'mlpvision'))
        elif timm.is_model(b.split('.', 1)[0]):
            out.append((b, 'timm'))
        else:
            raise UsageError(f'unknown timm model {b!r} given as a baseline; `timm.list_models("{b[:4]}*")` lists '
                             f'the names it knows.')
    if not out:
        raise UsageError('nothing to benchmark: give a glob of mlpvision models and/or --baseline timm names.')
    return out


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.device.type == 'meta':
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _optimizer_tensors(opt: torch.optim.Optimizer | None) -> Iterator[torch.Tensor]:
    if opt is None:
        return
    for state in opt.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def _cpu_peak_extra_bytes(fn: Callable[[], object]) -> int | None:
    """Highest running sum of the CPU allocator's events recorded by torch.profiler while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with quiet_stderr():
        prof.__enter__()
    try:
        fn()
    finally:
        with quiet_stderr():
            prof.__exit__(None, None, None)
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # a torch whose profiler no longer exposes the raw events
        return None
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU)
    run = peak = 0
    for _, nbytes in mem:
        run += nbytes
        peak = max(peak, run)
    return peak


class _Bench:
    """One model under one setting: built, moved, optionally re-parameterised and compiled; times calls."""

    def __init__(self, name: str, source: str, s: BenchSettings) -> None:
        import timm

        from ._profile import profile
        from ._reparam import reparameterize
        from .models import create_any_model, model_family, model_meta

        self.name, self.source, self.s = name, source, s
        self.device = torch.device(s.device)
        self.amp = DTYPES[s.dtype] if s.dtype != 'fp32' else None
        self.clock = time.perf_counter if s.clock == 'wall' else time.process_time
        cfg = timm.models.get_pretrained_cfg(name.split('.', 1)[0])
        default_size = tuple(cfg.input_size) if cfg is not None else (3, 224, 224)
        self.input_size = (default_size[0], s.img_size, s.img_size) if s.img_size else default_size
        kwargs = dict(s.model_kwargs) if source == 'mlpvision' else {}
        if self.input_size != default_size and cfg is not None and cfg.fixed_input_size:
            kwargs.setdefault('img_size', self.input_size[1:])  # fixed-size models are built for their input
        model = create_any_model(name, **kwargs)  # source: ours if the name is ours, else timm's
        self.num_classes = getattr(model, 'num_classes', 0)
        self.family = model_family(name) if source == 'mlpvision' else 'timm'
        self.meta = model_meta(name) if source == 'mlpvision' and not s.model_kwargs else None

        fmt = torch.channels_last if s.channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=fmt)
        self.train_model = model if s.train else None
        self.eval_model = model
        # 'deploy' only where re-parameterising changes something (AS-MLP, Strip-MLP or a ResNet have no such form)
        fusable = ('fuse', 'reparameterize', 'switch_to_deploy')
        has_deploy_form = any(hasattr(m, a) for m in model.modules() for a in fusable)
        if s.reparam:
            # the training figures keep the training form: a copy is re-parameterised for inference
            base = copy.deepcopy(model) if s.train else model
            if source == 'mlpvision':
                self.eval_model = reparameterize(base, inplace=True)
            else:
                self.eval_model = timm.utils.reparameterize_model(base, inplace=True)
        self.eval_model.eval()
        self.form = 'deploy' if s.reparam and has_deploy_form else 'train'
        prof = profile(self.eval_model, self.input_size)
        self.params, self.gmacs = prof.params, prof.gmacs
        if s.compile:
            # dynamic=False: one graph per batch size and mode, each specialised like the eager kernels are
            self.eval_fn = torch.compile(self.eval_model, dynamic=False, mode=s.compile_mode)
            self.train_fn = (self.eval_fn if self.train_model is self.eval_model else
                             torch.compile(self.train_model, dynamic=False, mode=s.compile_mode)
                             if self.train_model is not None else None)
        else:
            self.eval_fn, self.train_fn = self.eval_model, self.train_model
        self.opt = (torch.optim.AdamW(self.train_model.parameters(), lr=0.0, weight_decay=0.05)
                    if self.train_model is not None else None)

        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(s.batch_size, *self.input_size, generator=gen).to(self.device, memory_format=fmt)
        self.x1 = self.x[:1].clone(memory_format=fmt)
        self.y = torch.randint(0, max(self.num_classes, 1), (s.batch_size,), generator=gen).to(self.device)
        self.iters: dict[str, int] = {}
        self.samples: dict[str, list[float]] = {'infer': [], 'latency': [], 'train': []}
        self.peak_mem: dict[str, float | None] = {'infer': None, 'train': None}

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _infer(self, x: torch.Tensor) -> None:
        if self.eval_model.training:  # train and eval may share one model; .eval() walks every module
            self.eval_model.eval()
        with torch.inference_mode(), self._autocast():
            self.eval_fn(x)

    def _train_step(self) -> None:
        if not self.train_model.training:
            self.train_model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.train_fn(self.x)
            out = out if isinstance(out, torch.Tensor) else out[0]
            if out.ndim == 2 and out.shape[1] == self.num_classes and self.num_classes > 0:
                loss = F.cross_entropy(out.float(), self.y)
            else:  # a model without a classifier (num_classes=0): any scalar exercises backward
                loss = out.float().mean()
        loss.backward()
        self.opt.step()

    def kinds(self) -> list[str]:
        return ['infer'] + (['latency'] if self.s.latency else []) + (['train'] if self.s.train else [])

    def _call(self, kind: str) -> Callable[[], None]:
        if kind == 'infer':
            return lambda: self._infer(self.x)
        if kind == 'latency':
            return lambda: self._infer(self.x1)
        return self._train_step

    def _timed(self, fn: Callable[[], None]) -> float:
        self._sync()
        t = self.clock()
        fn()
        self._sync()
        return self.clock() - t

    def warmup(self) -> None:
        for kind in self.kinds():
            fn = self._call(kind)
            t = self._timed(fn)  # at least one call: compilation and lazy initialisation
            for _ in range(self.s.warmup - 1):
                t = self._timed(fn)
            self.iters[kind] = self.s.iters or max(1, math.ceil(self.s.repeat_time / max(t, 1e-6)))

    def measure_memory(self) -> None:
        cuda = self.device.type == 'cuda'
        models = {'infer': self.eval_model, 'train': self.train_model}
        for kind in ('infer', 'train') if self.s.train else ('infer',):
            m = models[kind]
            if kind == 'train':
                # gradients are freed and re-made inside the step; free them now so the allocator events recorded
                # below see both ends of every allocation
                self.opt.zero_grad(set_to_none=True)
            held = _tensor_bytes(
                [*m.parameters(), *m.buffers(), *_optimizer_tensors(
                    self.opt if kind == 'train' else None), self.x, self.y])
            fn = self._call(kind)
            if cuda:
                self._sync()
                torch.cuda.reset_peak_memory_stats(self.device)
                before = torch.cuda.memory_allocated(self.device)
                fn()
                self._sync()
                extra = torch.cuda.max_memory_allocated(self.device) - before
            else:
                extra = _cpu_peak_extra_bytes(fn)
            self.peak_mem[kind] = None if extra is None else (held + extra) / 2 ** 20

    def repeat(self) -> dict[str, float]:
        """One timed repeat of every kind; returns img/s (infer, train) and median ms (latency) of this repeat."""
        out = {}
        for kind in self.kinds():
            fn, n = self._call(kind), self.iters[kind]
            if kind == 'latency':
                times = [self._timed(fn) for _ in range(n)]
                self.samples[kind] += times
                out[kind] = statistics.median(times) * 1e3
            else:
                self._sync()
                t = self.clock()
                for _ in range(n):
                    fn()
                self._sync()
                rate = n * self.s.batch_size / max(self.clock() - t, 1e-9)
                self.samples[kind].append(rate)
                out[kind] = rate
        return out

    def result(self) -> BenchResult:
        def med_spread(v: list[float]) -> tuple[float | None, float | None]:
            if not v:
                return None, None
            m = statistics.median(v)
            return m, 100 * (max(v) - min(v)) / m

        infer, infer_sp = med_spread(self.samples['infer'])
        train, train_sp = med_spread(self.samples['train'])
        lat = sorted(self.samples['latency'])
        p50 = p90 = None
        if lat:
            p50 = statistics.median(lat) * 1e3
            p90 = _percentile(lat, 90) * 1e3
        meta = self.meta
        return BenchResult(
            model=self.name, source=self.source, family=self.family, form=self.form,
            input_size=f'{self.input_size[1]}x{self.input_size[2]}', params=self.params, gmacs=self.gmacs,
            infer_img_s=infer, infer_spread_pct=infer_sp, latency_p50_ms=p50, latency_p90_ms=p90,
            train_img_s=train, train_spread_pct=train_sp, peak_mem_infer_mib=self.peak_mem['infer'],
            peak_mem_train_mib=self.peak_mem['train'],
            paper_params=meta.params_paper if meta else None, paper_gmacs=meta.gmacs_paper if meta else None,
            paper_top1=meta.top1_paper if meta else None,
            paper_dataset=paper_dataset(self.name) if meta and meta.top1_paper is not None else None)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default method)."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _fmt(v: float | None, spec: str) -> str:
    return '' if v is None else format(v, spec)


def run_bench(
        models: Sequence[tuple[str, str]],
        settings: BenchSettings,
        progress: Callable[[str], None] | None = None,
) -> tuple[list[BenchResult], dict[str, str]]:
    """Benchmark ``models`` (``(name, 'mlpvision' | 'timm')`` pairs, see :func:`resolve_models`) in this process.

    Returns the results (one per model, in the given order) and :func:`environment` taken before and after.
    """
    say = progress or _logger.info
    old_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        env = environment(settings)
        benches = []
        for i, (name, source) in enumerate(models):
            say(f'[build {i + 1}/{len(models)}] {name} ({source})')
            benches.append(_Bench(name, source, settings))
        for b in benches:
            say(f'[warm-up] {b.name}' + (' (compiling)' if settings.compile else ''))
            b.warmup()
            if settings.memory:
                b.measure_memory()
        for r in range(settings.repeats):
            # reverse the order on odd repeats: a linear drift then weighs on every model alike
            order = benches if r % 2 == 0 else benches[::-1]
            for b in order:
                got = b.repeat()
                parts = [f'{got["infer"]:.1f} img/s b{settings.batch_size}']
                if 'latency' in got:
                    parts.append(f'{got["latency"]:.1f} ms b1')
                if 'train' in got:
                    parts.append(f'train {got["train"]:.1f} img/s')
                say(f'[repeat {r + 1}/{settings.repeats}] {b.name}: ' + ', '.join(parts))
        env['loadavg_after'] = loadavg()
        return [b.result() for b in benches], env
    finally:
        torch.set_num_threads(old_threads)


def environment(settings: BenchSettings) -> dict[str, str]:
    """What the figures depend on besides the models (:func:`mlpvision.host.host_environment`), and how memory was
    measured."""
    env = host_environment(settings.device, settings.gemm_peaks)
    env['memory_method'] = MEMORY_METHOD[torch.device(settings.device).type]
    return env


CSV_SETTINGS = ('batch_size', 'device', 'dtype', 'channels_last', 'compile', 'threads', 'repeats', 'clock')


def write_csv(results: Sequence[BenchResult], settings: BenchSettings, env: dict[str, str], path: str | Path) -> None:
    """One row per model: the measured figures, then the setting (so CSVs of several runs concatenate)."""
    names = [f.name for f in fields(BenchResult)]
    with open(path, 'w', newline='') as f:
        w = csv.writer(f, lineterminator='\n')
        w.writerow(names + list(CSV_SETTINGS))
        for r in results:
            row = asdict(r)
            cells = [_csv_cell(row[n]) for n in names]
            setting = {**asdict(settings), 'threads': env.get('threads', '')}
            w.writerow(cells + [_csv_cell(setting[k]) for k in CSV_SETTINGS])


def _csv_cell(v: object) -> str:
    if v is None:
        return ''
    if isinstance(v, float):
        return f'{v:.6g}'
    return str(v)


def describe_settings(s: BenchSettings) -> str:
    parts = [f'device {s.device}', f'dtype {s.dtype}' + (' (autocast)' if s.dtype != 'fp32' else ''),
             f'batch {s.batch_size}', f'input {s.img_size}' if s.img_size else 'input: each model\'s default',
             'channels-last' if s.channels_last else 'contiguous (NCHW)',
             f'torch.compile{f" mode={s.compile_mode}" if s.compile_mode else ""}' if s.compile else 'eager',
             'deploy form' if s.reparam else 'training form', f'warm-up {s.warmup}', f'repeats {s.repeats}',
             f'iters/repeat {s.iters}' if s.iters else f'iters/repeat: auto (~{s.repeat_time:g} s)',
             'wall clock' if s.clock == 'wall' else 'CPU-time clock (time.process_time)']
    if s.model_kwargs:
        parts.append(f'model kwargs {s.model_kwargs}')
    return ', '.join(parts)


MD_COLUMNS = ('model', 'params (M)', 'GMACs', 'paper params', 'paper GMACs', 'paper top-1', 'paper data', 'input',
              'img/s (b{b})', 'spread %', 'b1 p50 ms', 'b1 p90 ms', 'train img/s', 'peak MiB infer', 'peak MiB train')


def format_markdown(results: Sequence[BenchResult], settings: BenchSettings, env: dict[str, str]) -> str:
    """A Markdown report: the setting and machine, then one row per model with the paper's figures beside ours."""
    lines = ['# mlpvision bench', '', f'Setting: {describe_settings(settings)}.', '']
    lines += [f'- {k}: {v}' for k, v in env.items()]
    lines += ['', 'Throughput and latency are medians over interleaved repeats; spread = (max - min) / median of '
                  'the per-repeat throughputs. Paper columns are empty for timm baselines.', '']
    cols = [c.format(b=settings.batch_size) for c in MD_COLUMNS]
    lines += ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join('---' if i == 0 else '---:' for i in range(len(cols)))
              + '|']
    for r in results:
        name = r.model + ('' if r.source == 'mlpvision' else ' (timm)') + (' [deploy]' if r.form == 'deploy' else '')
        cells = [name, f'{r.params / 1e6:.2f}', f'{r.gmacs:.2f}', r.paper_params or '', _fmt(r.paper_gmacs, 'g'),
                 _fmt(r.paper_top1, '.1f'), r.paper_dataset or '', r.input_size, _fmt(r.infer_img_s, '.1f'),
                 _fmt(r.infer_spread_pct, '.0f'),
                 _fmt(r.latency_p50_ms, '.1f'), _fmt(r.latency_p90_ms, '.1f'), _fmt(r.train_img_s, '.1f'),
                 _fmt(r.peak_mem_infer_mib, '.0f'), _fmt(r.peak_mem_train_mib, '.0f')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot_points(results: Sequence[BenchResult]) -> tuple[str | None, list[BenchResult], list[BenchResult]]:
    """(data set, results plotted, results left out) for :func:`write_plot`: paper top-1 figures are plotted only
    against others on the same data set, the one most of the run's models have (ImageNet-1k on a tie)."""
    rated = [r for r in results if r.paper_top1 is not None and r.infer_img_s]
    counts = {d: sum(r.paper_dataset == d for r in rated) for d in {r.paper_dataset for r in rated}}
    if not counts:
        return None, [], []
    dataset = max(counts, key=lambda d: (counts[d], d == 'ImageNet-1k'))
    return dataset, [r for r in rated if r.paper_dataset == dataset], [r for r in rated if r.paper_dataset != dataset]


def plot_title(settings: BenchSettings, env: dict[str, str] | None = None) -> str:
    """``bench.png``'s title: the host (its id, ``MLPVISION_HOST_ID`` as :func:`mlpvision.host.host_environment`
    records it, else the CPU), threads, batch and torch version; then the setting and the 1-minute load before and
    after the run."""
    env = env if env is not None else {'cpu': cpu_name(), 'torch': torch.__version__,
                                       'threads': str(settings.threads or torch.get_num_threads())}
    host = env.get('host_id') or env.get('cpu') or 'host not recorded'
    threads = env.get('threads') or (str(settings.threads) if settings.threads else 'threads not recorded')
    first = f'host {host}, {threads} threads, batch {settings.batch_size}, torch {env.get("torch", "?")}'
    second = [settings.device, settings.dtype + (' autocast' if settings.dtype != 'fp32' else '')]
    if settings.channels_last:
        second.append('channels-last')
    if settings.compile:
        second.append('compiled')
    if settings.reparam:
        second.append('deploy form where there is one')
    before, after = (env.get(k, '').split(' ')[0] for k in ('loadavg_before', 'loadavg_after'))
    if before:
        second.append(f'load {before} before' + (f', {after} after' if after else ''))
    return first + '\n' + ', '.join(second)


def write_plot(results: Sequence[BenchResult], settings: BenchSettings, path: str | Path,
               env: dict[str, str] | None = None) -> list:
    """Paper top-1 against measured inference throughput, one point per model (the papers' accuracy/speed figure).

    Only figures on one data set share the axis (:func:`plot_points`); models with a figure on another are named
    under the plot. timm baselines have no paper top-1 here: they are drawn as grey vertical lines at their
    throughput. Each family has its colour (:data:`mlpvision.plotting.FAMILY_COLOURS`); the title is
    :func:`plot_title`; no two labels overlap (:func:`mlpvision.plotting.place_labels`).

    Returns the label artists (the figure is closed), so a test can check them.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    dataset, points, left_out = plot_points(results)
    families = sorted({r.family for r in points})
    for fam in families:
        pts = [r for r in points if r.family == fam]
        ax.scatter([r.infer_img_s for r in pts], [r.paper_top1 for r in pts], label=fam, s=30, zorder=3,
                   color=family_colour(fam))
    baselines = [r for r in results if r.paper_top1 is None and r.infer_img_s]
    for r in baselines:
        ax.axvline(r.infer_img_s, color=BASELINE_COLOUR, linestyle=':', linewidth=1)
    if not points:
        ax.text(0.5, 0.5, 'no model with a paper top-1 in this run', transform=ax.transAxes, ha='center',
                color='grey')
    if left_out:
        fig.text(0.01, 0.01, 'not plotted (paper top-1 on another data set): ' + ', '.join(
            f'{r.model} ({r.paper_dataset or "unknown data set"} {r.paper_top1:.1f}%)' for r in left_out),
            fontsize=7, color='grey')
    ax.set_xlabel(f'measured inference throughput (img/s, batch {settings.batch_size}; timm baselines dotted)')
    ax.set_ylabel(f'paper {dataset or ""} top-1 (%)'.replace('  ', ' '))
    ax.set_title(plot_title(settings, env), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.15)  # room for the labels of the outermost points
    if families:
        ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout(rect=(0, 0.04, 1, 1) if left_out else None)
    ymin, ymax = ax.get_ylim()
    # each baseline's name hangs from a grey triangle on its line, at one of three heights in turn along x
    baselines.sort(key=lambda r: r.infer_img_s)
    anchors = [(r.infer_img_s, ymin + (0.04 + 0.08 * (i % 3)) * (ymax - ymin)) for i, r in enumerate(baselines)]
    if anchors:
        ax.scatter(*zip(*anchors, strict=True), marker='^', s=14, color=BASELINE_COLOUR, zorder=3)
        ax.set_ylim(ymin, ymax)
    xy = [(r.infer_img_s, r.paper_top1) for r in points] + anchors
    colours = [family_colour(r.family) for r in points] + [BASELINE_COLOUR] * len(baselines)
    texts = place_labels(ax, xy, [r.model for r in points] + [r.model for r in baselines], colours=colours,
                         vlines=[r.infer_img_s for r in baselines])
    fig.savefig(path)
    plt.close(fig)
    return texts


def read_outputs(out_dir: str | Path) -> tuple[list[BenchResult], BenchSettings, dict[str, str]]:
    """The results, setting and environment of a ``mlpvision bench`` output folder (its ``bench.csv`` and
    ``bench.md``), so that ``bench.png`` can be redrawn without measuring again (``benchmarks/plot_bench.py``).

    The setting is what the CSV records (batch, device, dtype, channels-last, compile, threads, repeats, clock) and
    the deploy form (from ``bench.md``'s setting line); the environment is ``bench.md``'s ``- key: value`` lines.
    A CSV of a version without ``paper_dataset`` gets it from the registry.
    """
    out = Path(out_dir)
    if not (out / 'bench.csv').is_file():
        raise UsageError(f'{out} has no bench.csv: give a folder `mlpvision bench -o DIR` wrote')
    with open(out / 'bench.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UsageError(f'{out / "bench.csv"} has no rows')
    kinds = {f.name: f.type for f in fields(BenchResult)}
    results = []
    for row in rows:
        kw = {}
        for name, kind in kinds.items():
            v = row.get(name, '')
            if v == '':
                kw[name] = None
            elif 'int' in str(kind):
                kw[name] = int(v)
            elif 'float' in str(kind):
                kw[name] = float(v)
            else:
                kw[name] = v
        if kw['paper_top1'] is not None and kw['paper_dataset'] is None:
            kw['paper_dataset'] = paper_dataset(kw['model'])
        results.append(BenchResult(**kw))
    first = rows[0]
    md = (out / 'bench.md').read_text() if (out / 'bench.md').exists() else ''
    setting_line = next((line for line in md.splitlines() if line.startswith('Setting:')), '')
    settings = BenchSettings(
        device=first['device'], dtype=first['dtype'], batch_size=int(first['batch_size']),
        channels_last=first['channels_last'] == 'True', compile=first['compile'] == 'True',
        reparam='deploy form' in setting_line or any(r.form == 'deploy' for r in results),
        threads=int(first['threads']) if first.get('threads') else None, repeats=int(first['repeats']),
        clock=first['clock'])
    env = {}
    for line in md.splitlines():
        if line.startswith('- ') and ': ' in line:
            key, value = line[2:].split(': ', 1)
            env[key] = value
    return results, settings, env


def write_outputs(results: Sequence[BenchResult], settings: BenchSettings, env: dict[str, str],
                  out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench.csv``, ``bench.md`` and ``bench.png`` into ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {'csv': out / 'bench.csv', 'md': out / 'bench.md', 'png': out / 'bench.png'}
    write_csv(results, settings, env, paths['csv'])
    paths['md'].write_text(format_markdown(results, settings, env))
    write_plot(results, settings, paths['png'], env)
    return paths
