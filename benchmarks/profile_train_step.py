"""Where a training step's time goes: torch.profiler over a few steps of one model, operators by self time.

    python benchmarks/profile_train_step.py repmlp_cifar_pure --img-size 32 -b 128 --threads 1
    python benchmarks/profile_train_step.py resmlp_s12 --img-size 32 --model-kwargs patch_size=4 --num-classes 10

The step is the one ``mlpvision train`` runs in fp32 without mixing: zero_grad, forward, cross-entropy, backward,
SGD with momentum (the RepMLP CIFAR recipe's optimizer) on random inputs and labels, after warm-up steps. Printed:
the host's GEMM peaks at the same thread count (``mlpvision.bench.gemm_peaks``), the step's img/s, its MAC/s
(3 x forward MACs x img/s: the backward costs twice the forward) as a fraction of the fp32 peak, and the operators
that take the most self CPU time, each as a share of the profiled total, the figure docs/benchmarks.md's profiles
are given in. Figures hold for the host that printed them: say which, with its peaks and torch version.
"""
import argparse
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    ap.add_argument('model')
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('-b', '--batch-size', type=int, default=128)
    ap.add_argument('--num-classes', type=int, default=10)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--steps', type=int, default=3, help='profiled steps (after --warmup steps)')
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--top', type=int, default=15, help='operators listed')
    ap.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from torch.profiler import ProfilerActivity, profile

    import mlpvision
    from mlpvision.cli._common import parse_model_kwargs
    from mlpvision.engine.train import takes_img_size
    from mlpvision.host import gemm_peaks, quiet_stderr

    kwargs = dict(parse_model_kwargs(args.model_kwargs), num_classes=args.num_classes)
    if takes_img_size(args.model):
        kwargs.setdefault('img_size', args.img_size)
    model = mlpvision.models.create_any_model(args.model, **kwargs).train()
    in_chans = getattr(model, 'in_chans', 3)
    x = torch.randn(args.batch_size, in_chans, args.img_size, args.img_size)
    y = torch.randint(0, args.num_classes, (args.batch_size,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    macs = mlpvision.profile(model, (in_chans, args.img_size, args.img_size)).macs

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    peaks = gemm_peaks(args.threads)
    for _ in range(args.warmup):
        step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - t) / args.steps
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:  # kineto's C++ start-up messages
        for _ in range(args.steps):
            step()
    ips = args.batch_size / wall
    rate = 3 * macs * ips / 1e9
    fp32 = max(peaks['gemm_fp32_mm'], peaks['gemm_fp32_layers'])
    print(f'# {args.model} {kwargs}: batch {args.batch_size} at {args.img_size}x{args.img_size}, {args.threads} '
          f'thread(s), torch {torch.__version__}')
    print('# GEMM peaks (G MAC/s): ' + ', '.join(f'{k} {v:.1f}' for k, v in peaks.items()))
    print(f'# forward {macs / 1e6:.1f} M MACs an image; step {wall * 1e3:.0f} ms = {ips:.1f} img/s = '
          f'{rate:.1f} G MAC/s ({rate / fp32:.0%} of the fp32 peak)')
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    print(f'# profiled: {total / 1e3 / args.steps:.0f} ms of operator self time a step')
    print('| operator | self ms a step | share | calls a step |')
    print('|---|---:|---:|---:|')
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f'| {e.key} | {e.self_cpu_time_total / 1e3 / args.steps:.1f} | {e.self_cpu_time_total / total:.1%} | '
              f'{e.count // args.steps} |')


if __name__ == '__main__':
    main()
