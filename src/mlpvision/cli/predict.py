"""Predict labels for images: the top-k classes of each image with their probabilities. Takes image files and
folders (searched recursively). ``--cam OUTDIR`` also writes a Grad-CAM overlay per image there (as ``mlpvision viz
cam``: ``cam_<image>.png`` with the top-k classes, and the map as ``.npy``)."""
from __future__ import annotations

import argparse

from mlpvision.errors import UsageError

from ._common import add_device_args, add_model_args, add_option, apply_threads, open_weights_from_args

HELP = ('predict with a checkpoint: top-k labels, or segmentation / detection drawings with '
        '--output')


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument('images', nargs='+', help='image files or folders')
    p.add_argument('--topk', '-k', type=int, default=5, help='labels per image (default 5)')
    p.add_argument('--skip-corrupt', action='store_true', help='skip (and count) images that cannot be decoded')
    p.add_argument('--cam', metavar='OUTDIR', help='also write a Grad-CAM overlay (PNG + .npy) per image into OUTDIR')
    add_option(p, 'output', 'segmentation / detection weights: the folder for the drawn images (default: none)')
    p.add_argument('--score', type=float, default=0.5, help='detection: lowest score drawn (default 0.5)')
    add_option(p, 'overwrite', 'write over drawn images already in --output', action='store_true')
    add_device_args(p)


def run(args: argparse.Namespace) -> int:
    from mlpvision.engine.inference import predict_images

    from ._tasks import predict_task

    apply_threads(args.threads)
    if args.topk < 1:
        raise UsageError(f'--topk must be at least 1, got {args.topk}')
    loaded = open_weights_from_args(args)
    if loaded.task != 'classification':
        return predict_task(loaded, args)
    preds, skipped = predict_images(loaded, args.images, args.topk, args.batch_size, args.device, args.skip_corrupt,
                                    amp=args.amp)
    width = max(len(p.path) for p in preds) if preds else 0
    for p in preds:
        labels = '  '.join(f'{lab} ({100 * pr:.1f}%)' for lab, pr in zip(p.labels, p.probs, strict=True))
        print(f'{p.path:<{width}}  {labels}')
    if args.cam and preds:
        from mlpvision.viz import VizModel, plot_cam

        vm = VizModel(loaded.model, loaded.name, loaded.data_cfg, list(loaded.classes))
        cams = plot_cam(vm, [p.path for p in preds], args.cam, args.topk)
        print(f'{len(cams)} Grad-CAM overlays written to {args.cam}')
    if skipped:
        print(f'{len(skipped)} corrupt images skipped: {", ".join(skipped)}')
    return 0
