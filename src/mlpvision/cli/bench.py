"""Benchmark models in one process: params, GMACs, inference throughput, batch-1 latency (p50/p90), training-step
throughput and peak memory, with repeats interleaved across models and medians reported. Prints a Markdown table;
with -o DIR also writes bench.csv, bench.md and bench.png (paper top-1 against measured throughput). Progress goes
to stderr. Example: mlpvision bench 'resmlp_s*' --baseline resnet50,mixer_b16_224 --threads 2 -o runs/bench"""
from __future__ import annotations

import argparse
import sys

# parse_kwargs: the shared --model-kwargs parser, under the name tests/test_bench.py and earlier callers import
from ._common import add_model_kwargs_arg, add_option, check_writable
from ._common import parse_model_kwargs as parse_kwargs

HELP = 'benchmark models: params, GMACs, throughput, latency, training speed, peak memory'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('pattern', nargs='?', default=None,
                   help="glob(s) over mlpvision model names, comma-separated (e.g. 'resmlp_s*,hire_mlp_tiny')")
    p.add_argument('--baseline', action='append', default=[], metavar='NAMES',
                   help='timm models to measure alongside, comma-separated (e.g. resnet50,convnext_tiny); repeatable')
    add_option(p, 'device', 'cpu or cuda[:N] (default cpu: a benchmark names its device)', default='cpu')
    add_option(p, 'amp', 'autocast precision: none (default; fp32), bf16 or fp16 (weights stay fp32)', default='none')
    add_option(p, 'batch_size', 'batch for throughput (default 8)', type=int, default=8)
    add_option(p, 'img_size', "square input size (default: each model's cfg input size; fixed-size models are built "
                              'for it)', type=int, metavar='N')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory format for model and input')
    p.add_argument('--compile', action='store_true', help='torch.compile each model (dynamic=False)')
    p.add_argument('--compile-mode', default=None, help='torch.compile mode, e.g. max-autotune')
    add_option(p, 'deploy', 'measure inference on the deploy (re-parameterised) form', action='store_true')
    add_option(p, 'threads', "torch intra-op threads (default: torch's, one per core)", type=int)
    p.add_argument('--warmup', type=int, default=2, help='untimed calls of each kind per model (default 2)')
    p.add_argument('--repeats', type=int, default=5, help='interleaved timed repeats (default 5)')
    p.add_argument('--iters', type=int, default=0,
                   help='timed calls per repeat (default 0: auto, about --repeat-time seconds per repeat)')
    p.add_argument('--repeat-time', type=float, default=0.5, help='target seconds per repeat with --iters 0')
    p.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                   help='wall (default) or cpu: process CPU time, a load-robust proxy on a shared machine with '
                        '--threads 1 (not a throughput with more threads)')
    p.add_argument('--no-latency', action='store_true', help='skip the batch-1 latency measurement')
    p.add_argument('--no-train', action='store_true', help='skip the training-step measurement')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory probe')
    p.add_argument('--no-gemm-peaks', action='store_true',
                   help="don't measure the host's GEMM peaks (about a second; reported with the figures otherwise)")
    add_model_kwargs_arg(p)  # for the mlpvision models only, not the baselines
    add_option(p, 'output', 'write bench.csv, bench.md and bench.png into this folder', metavar='DIR')
    add_option(p, 'overwrite', 'replace bench.csv / bench.md / bench.png already in --output', action='store_true')


def run(args: argparse.Namespace) -> int:
    from mlpvision.bench import BenchSettings, format_markdown, resolve_models, run_bench, write_outputs

    model_kwargs = parse_kwargs(args.model_kwargs)
    baselines = [b for group in args.baseline for b in group.split(',')]
    settings = BenchSettings(
        device=args.device, dtype={'none': 'fp32'}.get(args.amp, args.amp), batch_size=args.batch_size,
        img_size=args.img_size,
        channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode,
        reparam=args.deploy, threads=args.threads, warmup=args.warmup, repeats=args.repeats, iters=args.iters,
        repeat_time=args.repeat_time, clock=args.clock, latency=not args.no_latency, train=not args.no_train,
        memory=not args.no_memory, model_kwargs=model_kwargs, gemm_peaks=not args.no_gemm_peaks)
    models = resolve_models(args.pattern, baselines)
    if args.output:
        from pathlib import Path
        for name in ('bench.csv', 'bench.md', 'bench.png'):
            check_writable(Path(args.output) / name, args.overwrite)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results, env = run_bench(models, settings, progress)
    print(format_markdown(results, settings, env), end='')
    if args.output:
        paths = write_outputs(results, settings, env, args.output)
        progress('wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0
