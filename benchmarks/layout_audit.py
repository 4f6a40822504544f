"""The operators of one training step whose 4-D operands mix memory layouts (docs/benchmarks.md, "Training step
after the layout fixes").

    python benchmarks/layout_audit.py MODEL [--batch 8] [--size 224] [--min-numel 50000] [--all]

Runs one forward and backward of ``mlpvision.create_model(MODEL)`` in train mode (fp32, random weights and input)
under a ``TorchDispatchMode`` and counts, per operator and layout pattern, the aten calls whose 4-D tensor operands or
results (at least ``--min-numel`` elements, more than one channel and pixel) are not all of one memory layout:
``nchw`` (contiguous), ``cl`` (channels-last) or ``strided`` (neither: a slice or a permutation). A channels-last
model should show few: an op that meets an NCHW gradient against a channels-last input (autograd's gradient of a
slice, of a pad, of a channel slice of a stacked conv) takes a slower path or copies, which is what this found in
AS-MLP's shift and Wave-MLP's phase BatchNorm. View ops (slices, permutations, splits) are left out unless ``--all``.
Prints the count, the operator, the operand and result layouts and the first operand's shape, most frequent first.
"""
from __future__ import annotations

import argparse
import collections

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import mlpvision

VIEWS = ('slice', 'split', 'view', 'permute', 'transpose', 'as_strided', 'unsqueeze', 'expand', 'alias', 'select',
         'unbind', 'detach', 'narrow', 'aten.t.')


def layout(t: object, min_numel: int) -> str | None:
    """'nchw', 'cl' or 'strided' for a 4-D map worth counting, else None."""
    if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.numel() < min_numel:
        return None
    if t.shape[1] == 1 or t.shape[2] * t.shape[3] == 1:
        return None  # one channel or one pixel: both layouts at once
    if t.is_contiguous():
        return 'nchw'
    return 'cl' if t.is_contiguous(memory_format=torch.channels_last) else 'strided'


def _flat(values) -> list:
    out = []
    for v in values:
        out.extend(v if isinstance(v, (list, tuple)) else [v])
    return out


class LayoutAudit(TorchDispatchMode):
    """Counts the aten calls whose 4-D operands and results are not all of one layout."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel = min_numel
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        operands = [t for t in _flat(list(args) + list(kwargs.values())) if layout(t, self.min_numel)]
        out = func(*args, **kwargs)
        results = [t for t in _flat(out if isinstance(out, (list, tuple)) else [out]) if layout(t, self.min_numel)]
        ins = tuple(layout(t, self.min_numel) for t in operands)
        outs = tuple(layout(t, self.min_numel) for t in results)
        if len(set(ins + outs)) > 1 or 'strided' in ins + outs:
            shape = tuple(operands[0].shape) if operands else tuple(results[0].shape)
            self.counts[(str(func), ins, outs, shape)] += 1
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('model')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--min-numel', type=int, default=50_000)
    p.add_argument('--all', action='store_true', help='count view operators too')
    args = p.parse_args()
    torch.manual_seed(0)
    model = mlpvision.create_model(args.model).train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    audit = LayoutAudit(args.min_numel)
    with audit:
        F.cross_entropy(model(x), torch.zeros(args.batch, dtype=torch.long)).backward()
    rows = [(n, k) for k, n in audit.counts.most_common() if args.all or not any(v in k[0] for v in VIEWS)]
    print(f'# {args.model}, batch {args.batch}, {args.size}x{args.size}, one fp32 training step: '
          f'{len(rows)} operator / layout patterns')
    for n, (op, ins, outs, shape) in rows:
        print(f'{n:5d}  {op:42s} in {",".join(ins) or "-":24s} out {",".join(outs) or "-":18s} {shape}')


if __name__ == '__main__':
    main()
