"""The training step of one model with mlpvision's oneDNN layer paths on and off, interleaved in one process
(docs/benchmarks.md, "Same setting, every family": what ``_OneDNNLinear`` gains over PyTorch's ``F.linear``).

    python benchmarks/train_step_onednn.py resmlp_s12 [--batch 8] [--repeats 7] [--threads 2]

Train mode, random weights and one random batch: ``zero_grad``, forward, cross-entropy, backward (no optimizer
step), fp32, contiguous. Two untimed steps, then ``--repeats`` timed steps per setting, the order reversed on odd
repeats; prints the median milliseconds a step and their ratio, with the host's lines
(:func:`mlpvision.host.host_environment`).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import mlpvision
from mlpvision.host import host_environment
from mlpvision.layers.fast_linear import set_onednn_linear


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('model')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mlpvision.create_model(args.model).train()
    size = model.pretrained_cfg.get('input_size', (3, 224, 224))
    x = torch.randn(args.batch, *size)
    target = torch.randint(0, model.num_classes, (args.batch,))

    def step() -> float:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        F.cross_entropy(model(x), target).backward()
        return time.perf_counter() - start

    for key, value in host_environment().items():
        print(f'# {key}: {value}')
    times = {'onednn': [], 'plain': []}
    for name in times:
        previous = set_onednn_linear(name == 'onednn')
        try:
            for _ in range(2):
                step()
        finally:
            set_onednn_linear(previous)
    for r in range(args.repeats):
        for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
            previous = set_onednn_linear(name == 'onednn')
            try:
                times[name].append(step())
            finally:
                set_onednn_linear(previous)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f'{args.model}, batch {args.batch}, {args.threads} threads, {args.repeats} repeats: oneDNN paths '
          f'{med["onednn"]:.0f} ms a step, plain {med["plain"]:.0f} ms, ratio {med["plain"] / med["onednn"]:.2f}x')


if __name__ == '__main__':
    main()
