"""Quantize a model to int8 for CPU inference: `mlpvision quantize WEIGHTS --calib-dir DIR -o FILE`.

The deploy (re-parameterised) form is quantized after training (PyTorch 2 export quantization with the x86
quantizer, run through inductor; mlpvision.quantize), calibrated on --calib-images images of --calib-dir (taken
evenly over its sorted files) and written as one .safetensors file that mlpvision.quantize.load_quantized reads
without running code from it. With --val-dir (a folder of class sub-folders, the checkpoint's classes) the top-1 of
the float deploy model and of the int8 model are measured there, printed and stored in the file.
"""
from __future__ import annotations

import argparse
import os
import time

from mlpvision.engine.loading import WEIGHTS_HELP
from mlpvision.errors import UsageError

from ._common import (
    add_img_size,
    add_model_kwargs_arg,
    add_option,
    add_weights_arg,
    apply_threads,
    check_writable,
    open_weights_from_args,
)

HELP = 'quantize a model to int8 for CPU inference (post-training, calibrated on real images)'


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_weights_arg(p, help=WEIGHTS_HELP + ' (a bare model name has random weights: for speed measurements only)')
    add_model_kwargs_arg(p)
    add_option(p, 'ema', 'use the EMA weights of a training checkpoint (last.pth)', action='store_true')
    add_img_size(p, "input size H [W] (default: the checkpoint's or the model's)")
    p.add_argument('--calib-dir', required=True, help='folder of calibration images (searched recursively)')
    p.add_argument('--calib-images', type=int, default=256, help='calibration images to use (default 256)')
    p.add_argument('--val-dir', help='folder of class sub-folders: report top-1 before and after quantization')
    add_option(p, 'output', 'the .safetensors file to write', required=True)
    add_option(p, 'overwrite', 'replace --output if it exists', action='store_true')
    add_option(p, 'batch_size', 'images per batch (default 64)', type=int, default=64)
    add_option(p, 'workers', 'data loading processes for --val-dir (default 2)', type=int, default=2)
    add_option(p, 'threads', "CPU threads for torch (default: torch's, one per core)", type=int)
    p.add_argument('--relabel', action='store_true',
                   help="with --val-dir: read the model's outputs as the folder's classes by position even where "
                        "their names differ (default: the names a checkpoint records must match)")


def _load(args: argparse.Namespace):
    """(model, name, kwargs, data config, classes, what was loaded, whether the classes are names to match a
    --val-dir's folders), from WEIGHTS."""
    from mlpvision.engine.loading import require_task

    lm = open_weights_from_args(args)
    require_task(lm, 'classification', 'quantize')
    kwargs = dict(lm.kwargs)
    kwargs.pop('deploy', None)  # quantize re-parameterises itself
    what = {'name': 'random weights', 'tag': 'released weights', 'folder': 'converted folder'}.get(lm.kind, 'file')
    # class names to compare with --val-dir's folders: those a training checkpoint or a convert folder records
    # (a name's or an official file's are indices or ImageNet descriptions, not folder names)
    named = bool((lm.meta or {}).get('classes')) or (
        lm.kind == 'folder' and bool((getattr(lm.model, 'pretrained_cfg', None) or {}).get('label_names')))
    return lm.model, lm.name, kwargs, lm.data_cfg, lm.classes, f'{lm.source} ({what}, {lm.form} form)', named


def _val_data(val_dir: str, classes: list[str], named: bool, relabel: bool):
    """The class folders of ``--val-dir``, checked before anything is quantized: their count, and their names where
    ``named`` (the checkpoint records names; one line naming the first difference unless ``relabel``)."""
    from mlpvision.data.checks import check_class_names
    from mlpvision.data.datasets import DatasetError, build_dataset

    if not os.path.isdir(val_dir):
        raise UsageError(f'--val-dir {val_dir!r} is not a folder; give a folder of class sub-folders')
    root, split = os.path.split(os.path.normpath(val_dir))
    try:
        info = build_dataset('imagefolder', 'val', root, val_folder=split)
    except DatasetError as e:  # its fix may name --data-dir, which quantize spells --val-dir
        raise DatasetError(f'--val-dir {val_dir!r}: {str(e).replace("--data-dir", "--val-dir")}') from None
    if info.num_classes != len(classes):
        raise UsageError(f'--val-dir {val_dir!r} has {info.num_classes} class folders but the model predicts '
                         f'{len(classes)} classes; give the validation split of the data it was trained on')
    if named:
        check_class_names(classes, info.classes, 'the model', f'--val-dir {val_dir!r}', relabel,
                          fix='give the validation split of the data it was trained on')
    return info


def _top1(model, info, data_cfg, classes: list[str], batch_size: int, workers: int) -> tuple[float, int]:
    import torch

    from mlpvision.data.loader import create_eval_loader
    from mlpvision.data.transforms import build_transform
    from mlpvision.engine.evaluate import evaluate

    info.dataset.transform = build_transform(data_cfg, False)
    loader = create_eval_loader(info.dataset, batch_size, num_workers=workers, pin_memory=False)
    res = evaluate(model, loader, len(classes), torch.device('cpu'), classes=classes)
    return res.top1, res.n


def run(args: argparse.Namespace) -> int:
    from mlpvision._reparam import reparameterize
    from mlpvision.quantize import calibration_batches, quantize

    apply_threads(args.threads)
    if not args.output.endswith('.safetensors'):
        raise UsageError(f'--output must name a .safetensors file; got {args.output!r}')
    check_writable(args.output, args.overwrite, [args.weights])
    model, name, kwargs, dc, classes, what, named = _load(args)
    val = _val_data(args.val_dir, classes, named, args.relabel) if args.val_dir else None
    print(f'model: {name} from {what}; input {"x".join(map(str, dc.input_size))}')
    t = time.perf_counter()
    calib = calibration_batches(args.calib_dir, dc, args.calib_images, args.batch_size)
    n = sum(len(b) for b in calib)
    q = quantize(model, calib, input_size=dc.input_size, classes=classes, data_config=dc.to_dict(),
                 model_name=name, model_kwargs=kwargs)
    q.recipe.calibration = {'images': n, 'folder': os.path.abspath(args.calib_dir)}
    print(f'quantized: int8 with {n} calibration images from {args.calib_dir} in {time.perf_counter() - t:.1f} s')
    if val is not None:
        float_top1, count = _top1(reparameterize(model).eval(), val, dc, classes, args.batch_size, args.workers)
        int8_top1, _ = _top1(q, val, dc, classes, args.batch_size, args.workers)
        q.recipe.accuracy = {'val_dir': os.path.abspath(args.val_dir), 'images': count, 'float_top1': float_top1,
                             'int8_top1': int8_top1}
        print(f'top-1 on {args.val_dir} ({count} images): float {float_top1:.2f}%  int8 {int8_top1:.2f}%  '
              f'change {int8_top1 - float_top1:+.2f} points')
    q.save(args.output)
    print(f'written: {args.output} (load with mlpvision.quantize.load_quantized)')
    return 0
