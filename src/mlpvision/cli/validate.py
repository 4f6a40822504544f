"""Evaluate a checkpoint: top-1 / top-5 and per-class accuracy on a dataset split, with a confusion-matrix PNG (up to
100 classes) and a per-class CSV. Works with mlpvision's checkpoints (which record their model, preprocessing and
dataset) and official ones (pass --model and --dataset), in train or deploy form; --deploy evaluates a train-form
checkpoint after re-parameterising it."""
from __future__ import annotations

import argparse
import math

from ._common import add_device_args, add_model_args, add_option, apply_threads, open_weights_from_args
from ._datasets import DATASET_CHOICES

HELP = ('evaluate a checkpoint: top-1 / per-class accuracy, mIoU or COCO box / mask AP (task from the '
        'checkpoint)')


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_option(p, 'dataset', "dataset (default: the one the checkpoint was trained on)",
               choices=DATASET_CHOICES)
    add_option(p, 'data_dir', "dataset folder (default: the checkpoint's, for the same dataset)")
    p.add_argument('--split', default='val', help="'val' (default), 'train', or another split folder's name")
    p.add_argument('--download', action='store_true', help='download CIFAR / Caltech-101 when missing')
    p.add_argument('--skip-corrupt', action='store_true', help='leave out (and count) images that cannot be decoded')
    add_option(p, 'workers', 'data loading processes (default 2)', type=int, default=2)
    add_option(p, 'output', 'folder for the confusion matrix and per-class CSV (default: beside the checkpoint; '
                            'the current folder for names and tags)')
    p.add_argument('--per-class', action='store_true', help='print every class, not only the five worst')
    p.add_argument('--relabel', action='store_true',
                   help="read the model's outputs as the data set's classes by position even where their names "
                        "differ (default: the names must match)")
    add_device_args(p)


def print_validation(v, per_class: bool = False, indent: str = '') -> None:
    r, lm = v.result, v.loaded
    print(f'{indent}{lm.name} ({lm.form} form) on {v.dataset} ({v.split}, {r.n} images): top-1 {r.top1:.2f}%  '
          f'top-5 {r.top5:.2f}%  loss {r.loss:.4f}')
    if r.skipped:
        print(f'{indent}{r.skipped} corrupt images skipped')
    accs = [(a, c) for a, c in zip(r.per_class, lm.classes, strict=True) if not math.isnan(a)]
    shown = accs if per_class or len(accs) <= 10 else sorted(accs)[:5]
    label = 'per-class accuracy' if shown is accs else 'worst classes'
    print(f'{indent}{label}: ' + ', '.join(f'{c} {a:.1f}%' for a, c in shown))
    print(f'{indent}confusion matrix: {v.confusion_png or "- (more than 100 classes, or no matplotlib)"}')
    print(f'{indent}per-class CSV:    {v.per_class_csv}')


def run(args: argparse.Namespace) -> int:
    import sys

    from mlpvision.engine.inference import validate_checkpoint

    from ._tasks import validate_task

    apply_threads(args.threads)
    loaded = open_weights_from_args(args)
    if loaded.task != 'classification':
        return validate_task(loaded, args)
    v = validate_checkpoint(
        loaded, dataset=args.dataset, split=args.split, data_dir=args.data_dir, batch_size=args.batch_size,
        workers=args.workers, device=args.device, output_dir=args.output, skip_corrupt=args.skip_corrupt,
        download=args.download, progress=sys.stderr.isatty(), relabel=args.relabel, amp=args.amp)
    print_validation(v, args.per_class)
    return 0
