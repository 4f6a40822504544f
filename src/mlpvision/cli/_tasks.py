"""``validate`` and ``predict`` read the task from the checkpoint: the segmentation and detection paths they hand a
segmentation or detection checkpoint to (classification checkpoints, and official ones, take the commands' own)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ['checkpoint_task', 'validate_task', 'predict_task']


def checkpoint_task(path: str) -> tuple[str | None, dict | None]:
    """(the task word of an mlpvision training checkpoint that records one, the loaded checkpoint), or (None, None)
    for anything else (a classification or official checkpoint, a folder, a name: the caller's own loader reports
    what is wrong with it)."""
    from mlpvision.engine.checkpoint import load_checkpoint_file
    from mlpvision.engine.run import task_of_checkpoint

    p = Path(path)
    if not p.is_file() or p.suffix not in ('.pth', '.pt', '.ckpt', '.bin'):
        return None, None
    try:
        ckpt = load_checkpoint_file(p)
    except Exception:  # noqa: BLE001 - not ours to report here: the command's loader says what is wrong
        return None, None
    meta = ckpt.get('mlpvision') if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or not meta.get('task'):
        return None, None
    task = task_of_checkpoint(meta)
    return (task, ckpt) if task != 'classify' else (None, None)


def validate_task(task: str, ckpt: dict, args: argparse.Namespace) -> int:
    """``mlpvision validate`` of a segmentation or detection checkpoint."""
    if task == 'segment':
        from . import validate_seg
        cfg = ckpt['mlpvision'].get('config') or {}
        return validate_seg.run(argparse.Namespace(
            checkpoint=args.checkpoint, data_dir=args.data_dir, dataset=args.dataset, split=args.split,
            base_size=None, eval_mode=cfg.get('eval_mode', 'whole'), slide_crop=cfg.get('slide_crop', [512, 512]),
            slide_stride=cfg.get('slide_stride', [341, 341]), output=args.output, device=args.device,
            threads=args.threads, relabel=getattr(args, 'relabel', False)))
    return _validate_detection(ckpt, args)


def _validate_detection(ckpt: dict, args: argparse.Namespace) -> int:
    from mlpvision.data.checks import check_class_names
    from mlpvision.data.loader import create_eval_loader
    from mlpvision.engine.detection import (
        _collate,
        build_detection_data,
        detector_from_checkpoint,
        evaluate_detector,
        resolve_det_config,
        write_per_category,
    )
    from mlpvision.engine.distributed import resolve_device

    from ._common import apply_threads

    apply_threads(args.threads)
    device = resolve_device(args.device)
    model, meta = detector_from_checkpoint(ckpt, args.checkpoint)
    options = {k: v for k, v in (meta.get('config') or {}).items() if k not in ('resume', 'output')}
    if args.dataset:
        options['dataset'] = args.dataset
    if args.data_dir:
        options['data_dir'] = args.data_dir
    cfg = resolve_det_config(options)
    split = cfg.val_split if args.split == 'val' else cfg.train_split if args.split == 'train' else args.split
    data = build_detection_data(cfg, split, train=False)
    check_class_names(list(meta['classes']), data.classes, f'checkpoint {args.checkpoint!r}',
                      f'{cfg.dataset} {split}', getattr(args, 'relabel', False),
                      fix='evaluate it on data of its categories')
    loader = create_eval_loader(data, 1)
    loader.collate_fn = _collate
    res = evaluate_detector(model.to(device), loader, data, device)
    mask = f'  mask AP {res["segm_AP"]:.2f}  AP50 {res["segm_AP50"]:.2f}' if 'segm_AP' in res else ''
    print(f'{args.checkpoint} on {cfg.dataset} {split} ({len(data)} images): box AP {res["bbox_AP"]:.2f}  AP50 '
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


def predict_task(task: str, ckpt: dict, args: argparse.Namespace) -> int:
    """``mlpvision predict`` of a segmentation or detection checkpoint: drawn images into ``--output``."""
    from mlpvision.errors import UsageError

    if not args.output:
        raise UsageError(f'a {task} checkpoint draws its predictions: pass --output FOLDER for the images')
    if task == 'segment':
        from . import predict_seg
        cfg = ckpt['mlpvision'].get('config') or {}
        return predict_seg.run(argparse.Namespace(
            checkpoint=args.checkpoint, inputs=args.images, output=args.output, base_size=None,
            eval_mode=cfg.get('eval_mode', 'whole'), slide_crop=cfg.get('slide_crop', [512, 512]),
            slide_stride=cfg.get('slide_stride', [341, 341]), alpha=0.5, device=args.device, threads=args.threads))
    return _predict_detection(ckpt, args)


def _predict_detection(ckpt: dict, args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mlpvision.data.datasets import load_image
    from mlpvision.data.detection import draw_detections, save_image
    from mlpvision.engine.detection import detector_from_checkpoint
    from mlpvision.engine.distributed import resolve_device

    from ._common import apply_threads
    from .predict_seg import _images

    apply_threads(args.threads)
    files = _images(args.images)
    device = resolve_device(args.device)
    model, meta = detector_from_checkpoint(ckpt, args.checkpoint)
    model.to(device)
    classes = list(meta['classes'])
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for f in files:
            img = np.asarray(load_image(str(f)).convert('RGB'))
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
