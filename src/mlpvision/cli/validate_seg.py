"""Evaluate a train-seg checkpoint: `mlpvision validate-seg CHECKPOINT --data-dir DIR [--split test]`.

Prints mIoU, pixel accuracy and the per-class IoU / accuracy table; --output writes per_class.csv and confusion.csv
there. The dataset, classes and image scale default to the checkpoint's run; --eval-mode slide evaluates by sliding
windows (mmseg's ``slide`` test) instead of whole images.
"""
from __future__ import annotations

import argparse

from ._common import apply_threads

HELP = 'evaluate a segmentation checkpoint: the same as validate (kept for old commands)'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('checkpoint', help="a train-seg checkpoint (the run folder's best.pth or last.pth)")
    p.add_argument('--data-dir', help="the dataset folder (default: the run's)")
    p.add_argument('--dataset', help="'camvid' or 'folder' (default: the run's)")
    p.add_argument('--split', default='val', help='the split to evaluate (default: val)')
    p.add_argument('--base-size', type=int, help="short side the model sees (default: the run's)")
    p.add_argument('--eval-mode', choices=('whole', 'slide'), default='whole', help='whole image or sliding window')
    p.add_argument('--slide-crop', type=int, nargs=2, default=[512, 512], help='sliding-window size H W')
    p.add_argument('--slide-stride', type=int, nargs=2, default=[341, 341], help='sliding-window stride H W')
    p.add_argument('--output', '-o', help='folder for per_class.csv and confusion.csv (default: none)')
    p.add_argument('--device', default='auto', help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--threads', type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument('--relabel', action='store_true',
                   help="read the model's outputs as the data set's classes by position even where their names "
                        "differ (default: the names must match)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlpvision.data.checks import check_class_names
    from mlpvision.data.loader import create_eval_loader
    from mlpvision.data.segmentation import SegEvalTransform, build_seg_dataset
    from mlpvision.engine.distributed import resolve_device
    from mlpvision.engine.segmentation import evaluate_seg, model_from_checkpoint, write_per_class

    apply_threads(args.threads)
    device = resolve_device(args.device)
    model, meta = model_from_checkpoint(args.checkpoint)
    run_cfg = meta['config']
    data = build_seg_dataset(args.dataset or run_cfg['dataset'], args.data_dir or run_cfg['data_dir'], args.split,
                             meta['num_classes'], meta['ignore_index'],
                             SegEvalTransform(args.base_size or meta['base_size']))
    check_class_names(meta['classes'], data.classes, f'checkpoint {args.checkpoint!r}', f'{data.name} ({args.split})',
                      getattr(args, 'relabel', False), fix='evaluate it on data of its classes')
    loader = create_eval_loader(data.dataset, 1)
    m = evaluate_seg(model.to(device), loader, meta['num_classes'], meta['ignore_index'], device, args.eval_mode,
                     args.slide_crop, args.slide_stride, classes=meta['classes'])
    print(f'{args.checkpoint} on {data.name} {args.split} ({len(data.dataset)} images, {args.eval_mode}): '
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
