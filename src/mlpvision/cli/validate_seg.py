"""Evaluate a segmentation checkpoint: `mlpvision validate-seg WEIGHTS --data-dir DIR [--split test]` (the same as
`mlpvision validate WEIGHTS`, which reads the task from the checkpoint).

Prints mIoU, pixel accuracy and the per-class IoU / accuracy table; --output writes per_class.csv and confusion.csv
there. The dataset, classes and image scale default to the checkpoint's run; --eval-mode slide evaluates by sliding
windows (mmseg's ``slide`` test) instead of whole images.
"""
from __future__ import annotations

import argparse

from mlpvision.data.segmentation import SEG_DATASETS

from ._common import add_device_args, add_option, apply_threads

HELP = 'evaluate a segmentation checkpoint: the same as validate (kept for old commands)'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('weights', metavar='WEIGHTS', help="a segmentation checkpoint (the run folder's best.pth or "
                                                     "last.pth, or the run folder)")
    add_option(p, 'data_dir', "the dataset folder (default: the run's)")
    add_option(p, 'dataset', "the dataset (default: the run's)", choices=SEG_DATASETS)
    p.add_argument('--split', default='val', help='the split to evaluate (default: val)')
    p.add_argument('--base-size', type=int, help="short side the model sees (default: the run's)")
    p.add_argument('--eval-mode', choices=('whole', 'slide'), default='whole', help='whole image or sliding window')
    p.add_argument('--slide-crop', type=int, nargs=2, default=[512, 512], help='sliding-window size H W')
    p.add_argument('--slide-stride', type=int, nargs=2, default=[341, 341], help='sliding-window stride H W')
    add_option(p, 'output', 'folder for per_class.csv and confusion.csv (default: none)')
    add_device_args(p, batch_size=1)
    p.add_argument('--relabel', action='store_true',
                   help="read the model's outputs as the data set's classes by position even where their names "
                        "differ (default: the names must match)")


def run(args: argparse.Namespace, loaded=None) -> int:
    """``loaded``: the weights already opened (:func:`mlpvision.engine.loading.open_weights`; ``validate`` hands
    them over), else opened from ``args.weights``."""
    from pathlib import Path

    import torch

    from mlpvision.data.checks import check_class_names
    from mlpvision.data.loader import create_eval_loader
    from mlpvision.data.segmentation import SegEvalTransform, build_seg_dataset
    from mlpvision.engine.distributed import resolve_device
    from mlpvision.engine.loading import open_weights
    from mlpvision.engine.run import amp_dtype
    from mlpvision.engine.segmentation import evaluate_seg, write_per_class

    apply_threads(args.threads)
    device = resolve_device(args.device)
    if loaded is None:
        loaded = open_weights(args.weights, task='segmentation', command='validate-seg')
    model, meta = loaded.model, loaded.meta
    run_cfg = meta['config']
    data = build_seg_dataset(args.dataset or run_cfg['dataset'], args.data_dir or run_cfg['data_dir'], args.split,
                             meta['num_classes'], meta['ignore_index'],
                             SegEvalTransform(args.base_size or meta['base_size']))
    check_class_names(meta['classes'], data.classes, f'checkpoint {loaded.source!r}', f'{data.name} ({args.split})',
                      getattr(args, 'relabel', False), fix='evaluate it on data of its classes')
    loader = create_eval_loader(data.dataset, 1)
    dtype = amp_dtype(getattr(args, 'amp', 'none'), device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        m = evaluate_seg(model.to(device), loader, meta['num_classes'], meta['ignore_index'], device, args.eval_mode,
                         args.slide_crop, args.slide_stride, classes=meta['classes'])
    print(f'{loaded.source} on {data.name} {args.split} ({len(data.dataset)} images, {args.eval_mode}): '
          f'mIoU {m.miou:.2f}%  pixel acc {m.pixel_acc:.2f}%')
    width = max(len(c) for c in m.classes)
    print(f'{"class":<{width}}   IoU %   acc %')
    for r in m.table():
        print(f'{r["cls"]:<{width}}  {r["iou"]:6.2f}  {r["acc"]:6.2f}')
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_per_class(out, m)
        print(f'wrote {out / "per_class.csv"} and {out / "confusion.csv"}')
    return 0
