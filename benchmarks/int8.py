"""int8 against fp32 and bf16 inference, side by side in one process (docs/benchmarks.md, "int8 post-training
quantization").

For each model the deploy form is run as

* ``fp32``: eager, float32 (mlpvision's oneDNN layer paths, as ``mlpvision bench --reparam``);
* ``bf16``: eager under bf16 autocast (``mlpvision bench --reparam --dtype bf16``: the figure the issue's 1.5x target
  is set against);
* ``bf16 compiled``: ``torch.compile`` (inductor, ``dynamic=False``) under bf16 autocast, the fastest float form
  here, so that int8's gain is not only the compiler's;
* ``int8``: :func:`mlpvision.quantize.quantize` (PT2E, x86 quantizer, inductor with freezing), the float ops between
  the int8 GEMMs in fp32 (``bf16=False``);
* ``int8+bf16``: the same program with those float ops under bf16 autocast (``bf16=True``, the default where the
  CPU has native bf16).

On a CPU where oneDNN has no bf16 (AVX2 only; ``--bf16 auto``, the default, decides) the forms are ``fp32``,
``fp32 compiled`` and ``int8``: bf16 there runs in fallback kernels several times slower than fp32, and int8's
activations are 7-bit (:func:`mlpvision.quantize.int8_dot_products`).

Repeats are interleaved over every (model, form) pair, the order reversing on every other repeat (as
:func:`mlpvision.bench.run_bench` does), and the figures are medians; the environment block (torch and oneDNN
versions, the host's GEMM peaks, load before and after) is :func:`mlpvision.bench.environment`'s. The weights are
random (seeded) and so is the calibration batch: speed does not depend on the values. Accuracy is measured on real
images by ``mlpvision quantize --val-dir``.

    PYTHONPATH=src python benchmarks/int8.py --models resmlp_s12,repmlpnet_t224 --batch-size 8 --threads 1
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable

import torch

import mlpvision
from mlpvision.bench import BenchSettings, environment
from mlpvision.host import loadavg
from mlpvision.quantize import QuantizedModel, quantize

FORMS = ('fp32', 'bf16', 'bf16 compiled', 'int8', 'int8+bf16')
# a CPU where oneDNN has no bf16 (AVX2 only): bf16 runs in fallback kernels several times slower than fp32, so the
# float reference is fp32, eager and compiled, and int8 keeps its float ops in fp32
FORMS_NO_BF16 = ('fp32', 'fp32 compiled', 'int8')


def bf16() -> contextlib.AbstractContextManager:
    return torch.autocast('cpu', dtype=torch.bfloat16)


def int8_gemm_peak(size: int = 2048, repeats: int = 5) -> float:
    """oneDNN's int8 GEMM (``onednn::qlinear_pointwise``, the kernel the int8 program runs: u8 activations, s8
    weights) on a (size x size) @ (size x size) product in G MAC/s, best of ``repeats``: the int8 counterpart of
    :func:`mlpvision.bench.gemm_peaks`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (size, size), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (size, size), dtype=torch.int8, generator=g)
    packed = torch.ops.onednn.qlinear_prepack(w, [size, size])
    scales, zero_points = torch.full((size,), 0.01), torch.zeros(size, dtype=torch.int64)

    def gemm() -> None:
        torch.ops.onednn.qlinear_pointwise(x, 0.02, 128, packed, scales, zero_points, None, 1.0, 0, torch.float32,
                                           'none', [], '')

    for _ in range(2):
        gemm()
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        gemm()
        best = min(best, time.perf_counter() - t)
    return size ** 3 / best / 1e9


def _forms(name: str, batch: int, img_size: int, calib_images: int,
           forms: tuple[str, ...] = FORMS) -> tuple[dict[str, Callable[[], None]], dict]:
    torch.manual_seed(0)
    model = mlpvision.create_model(name, img_size=img_size).eval()
    deploy = mlpvision.reparameterize(model).eval()
    x = torch.randn(batch, 3, img_size, img_size)
    info = {}
    t = time.perf_counter()
    q = quantize(model, torch.randn(calib_images, 3, img_size, img_size), model_kwargs=dict(img_size=img_size),
                 bf16=False)
    info['quantize_s'] = time.perf_counter() - t
    mixed = QuantizedModel(q.program, q.recipe, {}, bf16=True) if 'int8+bf16' in forms else None
    compiled = torch.compile(deploy, dynamic=False)

    def run_fp32() -> None:
        deploy(x)

    def run_bf16() -> None:
        with bf16():
            deploy(x)

    def run_bf16_compiled() -> None:
        with bf16():
            compiled(x)

    def run_fp32_compiled() -> None:
        compiled(x)

    def run_int8() -> None:
        q(x)

    def run_int8_bf16() -> None:
        mixed(x)

    with torch.inference_mode():
        ref = deploy(x)
        t = time.perf_counter()
        out = q(x)
        info['int8_compile_s'] = time.perf_counter() - t
        info['int8_vs_fp32'] = float((out - ref).abs().max() / ref.abs().max())
        if mixed is not None:
            info['int8_bf16_vs_fp32'] = float((mixed(x) - ref).abs().max() / ref.abs().max())
        if 'bf16' in forms:
            with bf16():
                info['bf16_vs_fp32'] = float((deploy(x).float() - ref).abs().max() / ref.abs().max())
    runs = {'fp32': run_fp32, 'fp32 compiled': run_fp32_compiled, 'bf16': run_bf16, 'bf16 compiled': run_bf16_compiled,
            'int8': run_int8, 'int8+bf16': run_int8_bf16}
    return {f: runs[f] for f in forms}, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='resmlp_s12,repmlpnet_t224')
    p.add_argument('--batch-size', type=int, default=8, help='as mlpvision bench (default 8)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--threads', type=int, help="torch threads (default: torch's)")
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--repeat-time', type=float, default=1.0, help='seconds per timed repeat of each form')
    p.add_argument('--calib-images', type=int, default=32, help='random calibration images (speed only)')
    p.add_argument('--bf16', choices=('auto', 'on', 'off'), default='auto',
                   help='the bf16 forms: auto = where oneDNN has bf16 (AVX512 / AMX); without them the forms are '
                        f'{", ".join(FORMS_NO_BF16)}')
    args = p.parse_args(argv)
    from mlpvision.layers.fast_linear import onednn_bf16_supported

    use_bf16 = args.bf16 == 'on' or (args.bf16 == 'auto' and onednn_bf16_supported())
    forms_used = FORMS if use_bf16 else FORMS_NO_BF16
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchSettings(batch_size=args.batch_size, img_size=args.img_size, reparam=True,
                             threads=args.threads, repeats=args.repeats)
    env = environment(settings)
    env['gemm_peak_int8'] = (f'{int8_gemm_peak():.0f} G MAC/s int8 through onednn::qlinear_pointwise (u8 x s8); '
                             f'2048^3 GEMM, {torch.get_num_threads()} threads, best of 5')
    runs: dict[tuple[str, str], Callable[[], None]] = {}
    infos = {}
    for name in args.models.split(','):
        print(f'[build] {name}: deploy form, quantize, compile', file=sys.stderr, flush=True)
        forms, infos[name] = _forms(name, args.batch_size, args.img_size, args.calib_images, forms_used)
        runs.update({(name, f): fn for f, fn in forms.items()})
    iters = {}
    with torch.inference_mode():
        for key, fn in runs.items():  # warm-up (compilation) and the calls per repeat
            fn()
            t = time.perf_counter()
            fn()
            iters[key] = max(1, round(args.repeat_time / (time.perf_counter() - t)))
        samples: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
        order = list(runs)
        for r in range(args.repeats):
            for key in order if r % 2 == 0 else order[::-1]:
                fn, n = runs[key], iters[key]
                t = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[key].append(n * args.batch_size / (time.perf_counter() - t))
            print(f'[repeat {r + 1}/{args.repeats}] load {loadavg()}', file=sys.stderr, flush=True)
    env['loadavg_after'] = loadavg()

    print(f'# int8 against fp32 and bf16 (deploy form, batch {args.batch_size}, {args.img_size}x{args.img_size}, '
          f'{torch.get_num_threads()} threads, {args.repeats} interleaved repeats, medians)\n')
    for k, v in env.items():
        if k != 'memory_method':
            print(f'- {k}: {v}')
    if not use_bf16:
        _print_fp32_table(infos, samples)
        return 0
    print('\n| model | ' + ' | '.join(f'{f} img/s' for f in FORMS) + ' | int8 / bf16 | int8+bf16 / bf16 | '
          'int8+bf16 / bf16 compiled | int8+bf16 / fp32 | spread % (int8, int8+bf16) | max diff / max logit: int8, '
          'int8+bf16, bf16 | quantize s |')
    print('|---|' + '---:|' * (len(FORMS) + 7))
    for name, info in infos.items():
        med = {f: statistics.median(samples[(name, f)]) for f in FORMS}

        def spread(form: str, name: str = name) -> str:
            s = samples[(name, form)]
            return f'{100 * (max(s) - min(s)) / statistics.median(s):.0f}'

        cells = [f'{med[f]:.1f}' for f in FORMS] + [
            f'{med["int8"] / med["bf16"]:.2f}x', f'{med["int8+bf16"] / med["bf16"]:.2f}x',
            f'{med["int8+bf16"] / med["bf16 compiled"]:.2f}x', f'{med["int8+bf16"] / med["fp32"]:.2f}x',
            f'{spread("int8")}, {spread("int8+bf16")}',
            f'{info["int8_vs_fp32"]:.3f}, {info["int8_bf16_vs_fp32"]:.3f}, {info["bf16_vs_fp32"]:.3f}',
            f'{info["quantize_s"]:.0f}']
        print(f'| {name} | ' + ' | '.join(cells) + ' |')
    return 0


def _print_fp32_table(infos: dict, samples: dict) -> None:
    """The table without bf16 forms (a CPU where oneDNN has no bf16): int8 against fp32 eager and compiled."""
    print('\n| model | ' + ' | '.join(f'{f} img/s' for f in FORMS_NO_BF16) + ' | int8 / fp32 | int8 / fp32 compiled | '
          'spread % (int8) | max diff / max logit: int8 | quantize s |')
    print('|---|' + '---:|' * (len(FORMS_NO_BF16) + 5))
    for name, info in infos.items():
        med = {f: statistics.median(samples[(name, f)]) for f in FORMS_NO_BF16}
        s = samples[(name, 'int8')]
        cells = [f'{med[f]:.1f}' for f in FORMS_NO_BF16] + [
            f'{med["int8"] / med["fp32"]:.2f}x', f'{med["int8"] / med["fp32 compiled"]:.2f}x',
            f'{100 * (max(s) - min(s)) / statistics.median(s):.0f}', f'{info["int8_vs_fp32"]:.3f}',
            f'{info["quantize_s"]:.0f}']
        print(f'| {name} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    sys.exit(main())
