"""Export a model to ONNX, a ``torch.export`` program (``.pt2``) or an AOTInductor package (``--format aoti``).

WEIGHTS is a model name (initial random weights), ``NAME.TAG`` (released weights), a checkpoint file (a training
run's ``best.pth`` names its model; an official file needs ``--model NAME``), train or deploy form, or a convert
folder. The export is run from the written file and compared with the eager model before it is kept: the largest
difference relative to the largest logit is printed for each batch size and input size checked, and above 1e-4 the
command fails and writes nothing. ONNX uses the torch.export-based exporter by default (``--onnx-exporter legacy``:
the TorchScript-based one); see docs/export.md.
"""
from __future__ import annotations

import argparse

from ._common import (
    add_img_size,
    add_model_kwargs_arg,
    add_option,
    add_weights_arg,
    check_writable,
    img_size_arg,
    parse_model_kwargs,
)

HELP = 'export a model to ONNX or torch.export (.pt2), verified against eager before it is written'


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_weights_arg(p)
    p.add_argument('--checkpoint', metavar='FILE', help=argparse.SUPPRESS)  # old form: NAME --checkpoint FILE
    p.add_argument('--format', required=True, choices=('onnx', 'pt2', 'aoti'),
                   help='onnx; pt2 (torch.export program); aoti (AOTInductor package for this CPU; takes minutes)')
    add_option(p, 'output', 'the file to write', required=True, metavar='FILE')
    add_option(p, 'overwrite', 'replace --output if it exists', action='store_true')
    add_option(p, 'deploy', 'export the re-parameterised inference form', action='store_true')
    p.add_argument('--dynamic-batch', action='store_true', help='any batch size (else batch 1)')
    p.add_argument('--dynamic-size', action='store_true',
                   help='any height and width the model takes (AS-MLP, Hire-MLP; the other families are fixed-size)')
    add_img_size(p, "the example's input size, H [W] (default: the checkpoint's or the model's)")
    p.add_argument('--onnx-exporter', choices=('dynamo', 'legacy'),
                   help="ONNX exporter: dynamo (torch.export based, the default) or legacy (TorchScript based)")
    p.add_argument('--opset', type=int, help='ONNX opset (default 18)')
    add_model_kwargs_arg(p)


def run(args: argparse.Namespace) -> int:
    from mlpvision.errors import UsageError
    from mlpvision.export import ONNX_OPSET, TOLERANCE, export_model, load_model

    size = img_size_arg(args.img_size)
    if args.checkpoint and args.model:
        raise UsageError('give the model once: WEIGHTS FILE --model NAME (the old form NAME --checkpoint FILE also '
                         'works)')
    if args.checkpoint:  # the old form: NAME --checkpoint FILE
        model_name, source = args.weights, args.checkpoint
    elif args.model:  # an official file: FILE --model NAME
        model_name, source = args.model, args.weights
    else:  # a name, a tag, an mlpvision checkpoint or a convert folder
        model_name, source = args.weights, None
    check_writable(args.output, args.overwrite, [args.weights, source or ''])
    model, name, trained_size = load_model(model_name, source, args.deploy, parse_model_kwargs(args.model_kwargs))
    result = export_model(model, args.output, args.format, args.dynamic_batch, args.dynamic_size, size or trained_size,
                          args.onnx_exporter, args.opset or ONNX_OPSET)
    from mlpvision._reparam import is_reparameterized
    form = 'deploy' if args.deploy or is_reparameterized(model) else 'train'  # a converted folder may hold either
    weights = source or ('initial random weights' if args.weights == name else args.weights)
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
