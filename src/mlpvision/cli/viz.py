"""Pictures of a model, each a PNG plus the raw arrays as .npy (see docs/pictures.md):

  erf       effective receptive field of each stage (or of several models side by side) with the 20/50/90% radii
  weights   learned token-mixing weights (ResMLP linear_tokens, RepMLP fc3 after reparameterize, Strip-MLP strips)
  cam       Grad-CAM overlays on images with the top-5 classes
  features  first three principal components of each stage's features as RGB

WEIGHTS is a model name (random weights), NAME.TAG (released weights), a checkpoint file (mlpvision's best.pth /
last.pth name their model; an official file needs --model NAME) or a folder of mlpvision convert.
"""
from __future__ import annotations

import argparse

from mlpvision.errors import UsageError

from ._common import add_img_size, add_model_kwargs_arg, add_option, apply_threads, img_size_arg, parse_model_kwargs

HELP = 'pictures of a model: receptive fields, token-mixing weights, Grad-CAM, feature maps (PNG + .npy)'


def _common(p: argparse.ArgumentParser) -> None:
    add_option(p, 'model', 'the model of an official checkpoint file given as WEIGHTS')
    p.add_argument('--checkpoint', metavar='FILE', help=argparse.SUPPRESS)  # old form: MODEL --checkpoint FILE
    add_model_kwargs_arg(p)
    add_img_size(p, "input size H [W] (default: the checkpoint's or the model's)")
    add_option(p, 'output', 'folder for the PNG and .npy files (default ./viz)', default='viz')
    add_option(p, 'threads', "CPU threads for torch (default: torch's, one per core)", type=int)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest='viz_command', metavar='PICTURE')
    sub.required = True
    e = sub.add_parser('erf', help='effective receptive field per stage, or per model side by side',
                       description='Gradient of the centre output position of a stage w.r.t. the input (absolute, '
                                   'summed over channels, averaged over the images), log-scaled; prints the radii '
                                   'holding 20/50/90% of the mass.')
    e.add_argument('models', nargs='*', metavar='WEIGHTS', help='one model (one panel per stage) or several (one '
                                                                'panel each, at --stage, default the last)')
    e.add_argument('--stage', type=int, help='trunk unit (stage; block for isotropic models), -1 the last')
    src = e.add_mutually_exclusive_group()
    src.add_argument('--images', nargs='+', metavar='PATH', help='image files or folders to average over')
    src.add_argument('--random', type=int, default=8, metavar='N', help='average over N random images (default 8)')
    add_option(e, 'seed', 'seed of the random images (default 0)', type=int, default=0)
    _common(e)
    w = sub.add_parser('weights', help='learned token-mixing weights as maps',
                       description="ResMLP's cross-patch linear_tokens rows as h x w maps per output patch; RepMLP / "
                                   'RepMLPNet fc3 rows after reparameterize; Strip-MLP strip weights.')
    w.add_argument('models', nargs='?', metavar='WEIGHTS', help='the model')
    w.add_argument('--block', type=int, default=0, help='which token-mixing block, in forward order (default 0; '
                                                        'negative counts from the last)')
    w.add_argument('--layer', dest='block', type=int, help=argparse.SUPPRESS)  # the old name of --block
    _common(w)
    c = sub.add_parser('cam', help='Grad-CAM overlays with the top-5 classes',
                       description='Grad-CAM at the last stage for each image, beside its top-k classes.')
    c.add_argument('inputs', nargs='+', metavar='WEIGHTS IMAGE', help='the weights, then image files or folders')
    c.add_argument('--topk', '-k', type=int, default=5, help='classes shown (default 5)')
    _common(c)
    f = sub.add_parser('features', help="each stage's features as RGB (first three principal components)")
    f.add_argument('inputs', nargs='+', metavar='WEIGHTS IMAGE', help='the weights, then one image')
    _common(f)


def _split_inputs(inputs: list[str], checkpoint: str | None) -> tuple[str | None, list[str]]:
    """``WEIGHTS IMAGE...``: the first item is WEIGHTS (with the old ``--checkpoint FILE`` a model name may stand
    there, or nothing)."""
    from mlpvision.models import is_model

    if checkpoint is not None:
        return (inputs[0], inputs[1:]) if inputs and is_model(inputs[0]) else (None, inputs)
    if not inputs:
        return None, inputs
    return inputs[0], inputs[1:]


def _load(args: argparse.Namespace, name: str | None):
    from mlpvision.viz import load_model

    size = img_size_arg(args.img_size)
    size = None if size is None else size[0] if size[0] == size[1] else size
    if args.checkpoint is None and args.model is not None and name is not None:
        return load_model(args.model, name, parse_model_kwargs(args.model_kwargs), size)
    return load_model(name, args.checkpoint, parse_model_kwargs(args.model_kwargs), size)


def run(args: argparse.Namespace) -> int:
    import mlpvision.viz as viz

    apply_threads(args.threads)
    cmd = args.viz_command
    if cmd == 'erf':
        names = args.models or [None]
        if args.checkpoint and len(names) > 1:
            raise UsageError('--checkpoint loads one model; give the files as WEIGHTS instead (viz erf A.pth B.pth)')
        models = [_load(args, n) for n in names]
        res = viz.plot_erf(models, args.output, args.stage, args.images, args.random, args.seed)
        for key, r in res.items():
            if key == 'png':
                continue
            radii = ', '.join(f'{int(100 * f)}%: {r["radii"][f]} px' for f in viz.ERF_FRACTIONS)
            print(f'{key[0]} stage {key[1]}: ERF radius {radii}  ({r["npy"]})')
        print(f'wrote {res["png"]}')
    elif cmd == 'weights':
        res = viz.plot_weights(_load(args, args.models), args.output, args.block)
        print(f'{res["layer"]}: weights {tuple(res["weights"].shape)}  ({res["npy"]})')
        print(f'wrote {res["png"]}')
    elif cmd == 'cam':
        name, images = _split_inputs(args.inputs, args.checkpoint)
        if not images:
            raise UsageError('viz cam needs images: viz cam WEIGHTS IMAGE... (files or folders)')
        if args.topk < 1:
            raise UsageError(f'--topk must be at least 1, got {args.topk}')
        for png, _, top in viz.plot_cam(_load(args, name), images, args.output, args.topk):
            print(f'{png}  ' + '  '.join(f'{lab} ({100 * p:.1f}%)' for lab, p in top))
    else:
        name, images = _split_inputs(args.inputs, args.checkpoint)
        if len(images) != 1:
            raise UsageError(f'viz features takes one image: viz features WEIGHTS IMAGE (got {len(images)})')
        res = viz.plot_features(_load(args, name), images[0], args.output)
        for path, m in zip(res['npy'], res['maps'], strict=True):
            print(f'{path}  {tuple(m.shape)}')
        print(f'wrote {res["png"]}')
    return 0
