"""``validate`` and ``predict`` read the task from the weights (:func:`mlpvision.engine.loading.open_weights`): the
segmentation and detection paths they hand segmentation or detection weights to (classification weights take the
commands' own)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ['validate_task', 'predict_task']


def validate_task(loaded, args: argparse.Namespace) -> int:
    """``mlpvision validate`` of segmentation or detection weights (``loaded``, opened)."""
    if loaded.task == 'segmentation':
        from . import validate_seg
        cfg = loaded.meta.get('config') or {}
        return validate_seg.run(argparse.Namespace(
            weights=loaded.source, data_dir=args.data_dir, dataset=args.dataset, split=args.split,
            base_size=None, eval_mode=cfg.get('eval_mode', 'whole'), slide_crop=cfg.get('slide_crop', [512, 512]),
            slide_stride=cfg.get('slide_stride', [341, 341]), output=args.output, device=args.device,
            threads=args.threads, relabel=getattr(args, 'relabel', False), amp=args.amp), loaded)
    return _validate_detection(loaded, args)


def _validate_detection(loaded, args: argparse.Namespace) -> int:
    from mlpvision.data.checks import check_class_names
    from mlpvision.data.loader import create_eval_loader
    from mlpvision.engine.detection import (
        _collate,
        build_detection_data,
        evaluate_detector,
        resolve_det_config,
        write_per_category,
    )
    from mlpvision.engine.distributed import resolve_device

    from ._common import apply_threads

    apply_threads(args.threads)
    device = resolve_device(args.device)
    model, meta = loaded.model, loaded.meta
    options = {k: v for k, v in (meta.get('config') or {}).items() if k not in ('resume', 'output')}
    if args.dataset:
        options['dataset'] = args.dataset
    if args.data_dir:
        options['data_dir'] = args.data_dir
    cfg = resolve_det_config(options)
    split = cfg.val_split if args.split == 'val' else cfg.train_split if args.split == 'train' else args.split
    data = build_detection_data(cfg, split, train=False)
    check_class_names(list(meta['classes']), data.classes, f'checkpoint {loaded.source!r}',
                      f'{cfg.dataset} {split}', getattr(args, 'relabel', False),
                      fix='evaluate it on data of its categories')
    loader = create_eval_loader(data, 1)
    loader.collate_fn = _collate
    res = evaluate_detector(model.to(device), loader, data, device)
    mask = f'  mask AP {res["segm_AP"]:.2f}  AP50 {res["segm_AP50"]:.2f}' if 'segm_AP' in res else ''
    print(f'{loaded.source} on {cfg.dataset} {split} ({len(data)} images): box AP {res["bbox_AP"]:.2f}  AP50 '
          f'{res["bbox_AP50"]:.2f}  AP75 {res["bbox_AP75"]:.2f}{mask}')
    per = res.get('per_category') or {}
    if per:
        width = max(len(c) for c in data.classes)
        types = [t for t in ('bbox', 'segm') if t in per]
        print(f'{"category":<{width}}  ' + '  '.join(f'{t + " AP":>8}' for t in types))
        for c in data.classes:
            print(f'{c:<{width}}  ' + '  '.join(f'{per[t].get(c, float("nan")):8.2f}' for t in types))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_per_category(out / 'per_class.csv', res)
        print(f'wrote {out / "per_class.csv"}')
    return 0


def predict_task(loaded, args: argparse.Namespace) -> int:
    """``mlpvision predict`` of segmentation or detection weights (``loaded``, opened): drawn images into
    ``--output``."""
    from mlpvision.errors import UsageError

    if not args.output:
        raise UsageError(f'{loaded.source!r} holds a {loaded.task} model, which draws its predictions: pass '
                         f'-o/--output FOLDER for the images')
    if loaded.task == 'segmentation':
        from . import predict_seg
        cfg = loaded.meta.get('config') or {}
        return predict_seg.run(argparse.Namespace(
            weights=loaded.source, inputs=args.images, output=args.output, base_size=None,
            eval_mode=cfg.get('eval_mode', 'whole'), slide_crop=cfg.get('slide_crop', [512, 512]),
            slide_stride=cfg.get('slide_stride', [341, 341]), alpha=0.5, device=args.device, threads=args.threads,
            overwrite=args.overwrite, amp=args.amp), loaded)
    return _predict_detection(loaded, args)


def _predict_detection(loaded, args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mlpvision.data.datasets import load_image
    from mlpvision.data.detection import draw_detections, save_image
    from mlpvision.engine.distributed import resolve_device

    from ._common import apply_threads
    from .predict_seg import _images, output_names

    apply_threads(args.threads)
    files = _images(args.images)
    device = resolve_device(args.device)
    model = loaded.model.to(device)
    classes = list(loaded.classes)
    out = Path(args.output)
    output_names(files, out, ('_detections.png',), args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for f in files:
            img = np.asarray(load_image(str(f), skip_flag=False).convert('RGB'))
            x = torch.from_numpy(img.copy()).permute(2, 0, 1)
            pred = {k: v.cpu() for k, v in model([x.float().div(255).to(device)])[0].items()}
            keep = pred['scores'] >= args.score
            drawn = draw_detections(x, pred, classes, score_thresh=args.score)
            target = out / f'{f.stem}_detections.png'
            save_image(drawn, target, overwrite=args.overwrite)
            found = [classes[int(lab) - 1] for lab in pred['labels'][keep]]
            counts = ', '.join(f'{found.count(c)} {c}' for c in dict.fromkeys(found)) or 'nothing'
            print(f'{f}: {counts} at score >= {args.score:g} -> {target}')
    return 0
