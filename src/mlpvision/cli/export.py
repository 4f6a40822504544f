"""Export a model to ONNX, a ``torch.export`` program (``.pt2``) or an AOTInductor package (``--format aoti``).

NAME is a registered model (with ``--checkpoint FILE`` for its weights: an official or mlpvision checkpoint, train or
deploy form; without one the weights are the initial random ones) or a training run's ``best.pth`` (which names its
model). The export is run from the written file and compared with the eager model before it is kept: the largest
difference relative to the largest logit is printed for each batch size and input size checked, and above 1e-4 the
command fails and writes nothing. ONNX uses the torch.export-based exporter by default (``--onnx-exporter legacy``:
the TorchScript-based one); see docs/export.md.
"""
from __future__ import annotations

import argparse

from ._common import add_model_kwargs_arg, parse_model_kwargs

HELP = 'export a model to ONNX or torch.export (.pt2), verified against eager before it is written'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('name', metavar='NAME', help="a model name (`mlpvision models --names-only`) or a run's best.pth")
    p.add_argument('--checkpoint', metavar='FILE',
                   help='weights for NAME (official or mlpvision, train or deploy form)')
    p.add_argument('--format', required=True, choices=('onnx', 'pt2', 'aoti'),
                   help='onnx; pt2 (torch.export program); aoti (AOTInductor package for this CPU; takes minutes)')
    p.add_argument('--out', required=True, metavar='FILE', help='the file to write')
    p.add_argument('--deploy', action='store_true', help='export the re-parameterised inference form')
    p.add_argument('--dynamic-batch', action='store_true', help='any batch size (else batch 1)')
    p.add_argument('--dynamic-size', action='store_true',
                   help='any height and width the model takes (AS-MLP, Hire-MLP; the other families are fixed-size)')
    p.add_argument('--img-size', type=int, nargs='+', metavar='N',
                   help="the example's input size, H [W] (default: the checkpoint's or the model's)")
    p.add_argument('--onnx-exporter', choices=('dynamo', 'legacy'),
                   help="ONNX exporter: dynamo (torch.export based, the default) or legacy (TorchScript based)")
    p.add_argument('--opset', type=int, help='ONNX opset (default 18)')
    add_model_kwargs_arg(p)


def run(args: argparse.Namespace) -> int:
    from mlpvision.errors import UsageError
    from mlpvision.export import ONNX_OPSET, TOLERANCE, export_model, load_model

    size = None
    if args.img_size:
        if len(args.img_size) > 2 or min(args.img_size) < 1:
            raise UsageError(f'--img-size takes H or H W (positive), got {" ".join(map(str, args.img_size))}')
        size = (args.img_size[0], args.img_size[-1])
    model, name, trained_size = load_model(args.name, args.checkpoint, args.deploy,
                                           parse_model_kwargs(args.model_kwargs))
    result = export_model(model, args.out, args.format, args.dynamic_batch, args.dynamic_size, size or trained_size,
                          args.onnx_exporter, args.opset or ONNX_OPSET)
    from mlpvision._reparam import is_reparameterized
    form = 'deploy' if args.deploy or is_reparameterized(model) else 'train'  # a converted folder may hold either
    weights = args.checkpoint or (args.name if name != args.name else 'initial random weights')
    shape = ['batch' if args.dynamic_batch else '1', str(result.example_shape[1])]
    shape += ['height', 'width'] if args.dynamic_size else [str(s) for s in result.example_shape[2:]]
    print(f'{name} ({form} form, {weights}) -> {result.path}: {args.format}, {result.exporter}, input '
          f'({", ".join(shape)}), {result.seconds:.1f} s')
    if result.size_range:
        ranges = [f'{k} {lo}..{"any" if hi is None else hi}' for k, (lo, hi) in result.size_range.items()]
        print(f'the graph serves {", ".join(ranges)} (torch.export; it refuses other sizes)'
              if args.format != 'onnx' else f'torch.export made the graph for {", ".join(ranges)} (ONNX does not '
              f'check: feed sizes in this range)')
    checks = ', '.join(f'batch {c.batch} {c.size[0]}x{c.size[1]}: {c.rel_diff:.1e}' for c in result.checks)
    print(f'verified against eager, max |diff| / max |logit| (tolerance {TOLERANCE:g}): {checks}')
    return 0
