"""The host a figure was measured on: CPU model and ISA flags, the oneDNN / MKL builds inside torch, the GEMM peaks
its cores reach through mlpvision's layers, the load, and the library versions.

Used by :mod:`mlpvision.bench` and the ``benchmarks/`` scripts, so that every printed figure carries its host
(figures of one host do not carry to another of the same kind: issue 18 measured 2-3x apart).
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ._version import __version__

__all__ = ['quiet_stderr', 'loadavg', 'cpu_name', 'cpu_isa', 'library_versions', 'gemm_peaks', 'host_environment',
           'time_once']


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ start/stop messages would mix with the progress."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def loadavg() -> str:
    try:
        return ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return ''


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field : value`` line of /proc/cpuinfo; None without one (or off Linux)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith(field):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo('model name') or platform.processor() or platform.machine()


_ISA_ENV = ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS', 'ATEN_CPU_CAPABILITY')


def cpu_isa() -> str:
    """The instruction sets CPU timings hinge on: torch's kernel level, and which hardware the bf16 / int8 GEMMs
    get (AMX tiles, AVX-512 BF16 / VNNI dot products, or neither), plus any environment variable capping them.

    Issue 18: with oneDNN capped below AMX (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``) on the AMX host of
    docs/benchmarks.md, the bf16 GEMM peak falls from 448 to 51 G MAC/s (1 thread) while fp32 stays at 77, and
    AS-MLP-T's bf16 lead over the official fp32 falls from 4.4x to 1.5x: the bf16 figures belong to AMX hosts.
    """
    flags = set((_cpuinfo('flags') or '').split())
    bf16 = 'AMX' if 'amx_bf16' in flags else 'AVX512-BF16' if 'avx512_bf16' in flags else 'no native bf16'
    int8 = 'AMX' if 'amx_int8' in flags else 'AVX512-VNNI' if 'avx512_vnni' in flags else (
        'AVX-VNNI' if 'avx_vnni' in flags else 'no VNNI')
    out = f'torch {torch.backends.cpu.get_cpu_capability()}, bf16 GEMM: {bf16}, int8 GEMM: {int8}'
    if not flags:
        return out + ' (no /proc/cpuinfo flags)'
    capped = [f'{k}={os.environ[k]}' for k in _ISA_ENV if os.environ.get(k)]
    return out + (f" ({', '.join(capped)})" if capped else '')


def library_versions() -> dict[str, str]:
    """The oneDNN and BLAS builds inside torch (their kernels, not torch's version, decide most CPU timings)."""
    config = torch.__config__.show()
    out = {}
    onednn = re.search(r'(?:Intel\(R\) )?MKL-DNN v([\d.]+)', config) or re.search(r'oneDNN v([\d.]+)', config)
    if onednn:
        out['onednn'] = onednn.group(1)
    mkl = re.search(r'Intel\(R\) (?:oneAPI )?Math Kernel Library Version ([\d.]+)', config)
    if mkl:
        out['mkl'] = mkl.group(1)
    return out


@functools.lru_cache(maxsize=8)
def _gemm_peaks_cached(threads: int) -> tuple[tuple[str, float], ...]:
    return tuple(gemm_peaks(threads).items())


def gemm_peaks(threads: int | None = None, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """The host's GEMM throughput in G MAC/s: a (size x size) @ (size x size) product, best of ``repeats``.

    Measured through the paths mlpvision's layers take on the CPU (:func:`mlpvision.layers.fast_linear.linear`:
    oneDNN in fp32 and under bf16 autocast where available) and through ``torch.mm`` (MKL's sgemm in fp32), so a
    model's throughput can be judged against what the host's cores can do (figures of one host do not carry to
    another of the same kind: issue 18 measured 2-3x apart).
    """
    from .layers.fast_linear import linear, onednn_bf16_supported

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen)
        w = torch.randn(size, size, generator=gen)
        macs = size ** 3

        def best(fn: Callable[[], object]) -> float:
            for _ in range(2):
                fn()
            t = min(time_once(fn) for _ in range(repeats))
            return macs / t / 1e9

        with torch.inference_mode():
            peaks = {'gemm_fp32_mm': best(lambda: torch.mm(a, w)),
                     'gemm_fp32_layers': best(lambda: linear(a, w))}
            with torch.autocast('cpu', dtype=torch.bfloat16):
                if onednn_bf16_supported():
                    peaks['gemm_bf16_layers'] = best(lambda: linear(a, w))
                else:  # autocast's fallback kernels, ~7x slower than fp32 (AVX2 host): one timed call tells that
                    linear(a, w)
                    peaks['gemm_bf16_layers'] = macs / time_once(lambda: linear(a, w)) / 1e9
        return peaks
    finally:
        torch.set_num_threads(old)


def time_once(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def host_environment(device: str = 'cpu', peaks: bool = True) -> dict[str, str]:
    """What figures depend on besides the models: the host's id (``host_id``, when the environment variable
    ``MLPVISION_HOST_ID`` names one of docs/hosts.md), date, versions (mlpvision, torch, timm, oneDNN, MKL, Python),
    CPU model and ISA flags, threads, load and (CPU, ``peaks``) the GEMM peaks of :func:`gemm_peaks`."""
    import timm

    dev = torch.device(device)
    host_id = os.environ.get('MLPVISION_HOST_ID')  # the id of docs/hosts.md, for figures to carry
    env = {
        **({'host_id': host_id} if host_id else {}),
        'date': time.strftime('%Y-%m-%d %H:%M:%S %z'),
        'mlpvision': __version__, 'torch': torch.__version__, 'timm': timm.__version__,
        **library_versions(),
        'python': platform.python_version(), 'platform': platform.platform(),
        'cpu': f'{cpu_name()}, {os.cpu_count()} logical CPUs',
        'cpu_isa': cpu_isa(),
        'threads': str(torch.get_num_threads()),
        'loadavg_before': loadavg(),
    }
    if dev.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(dev)
    elif peaks:
        found = dict(_gemm_peaks_cached(torch.get_num_threads()))
        from .layers.fast_linear import onednn_bf16_supported

        bf16_path = 'oneDNN' if onednn_bf16_supported() else "autocast's fallback: oneDNN has no bf16 on this CPU"
        env['gemm_peaks'] = (f"{found['gemm_fp32_layers']:.0f} G MAC/s fp32 (oneDNN) and "
                             f"{found['gemm_bf16_layers']:.0f} G MAC/s bf16 ({bf16_path}) through mlpvision's "
                             f"layers, {found['gemm_fp32_mm']:.0f} G MAC/s fp32 torch.mm; 2048^3 GEMM, "
                             f"{env['threads']} threads, best of 5")
    return env
