"""Quantize a model to int8 for CPU inference: `mlpvision quantize CHECKPOINT|MODEL --calib-dir DIR --out FILE`.

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
from pathlib import Path

from mlpvision.errors import UsageError

from ._common import add_model_kwargs_arg, apply_threads, check_model_arg, parse_model_kwargs

HELP = 'quantize a model to int8 for CPU inference (post-training, calibrated on real images)'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('source', metavar='CHECKPOINT|MODEL',
                   help="a checkpoint (mlpvision's best.pth / last.pth, or an official one with --model) or a model "
                        'name (random weights: for speed measurements only)')
    p.add_argument('--model', help='model name; needed for official checkpoints (ours record it)')
    add_model_kwargs_arg(p)
    p.add_argument('--ema', action='store_true', help='use the EMA weights of a training checkpoint (last.pth)')
    p.add_argument('--img-size', type=int, help="input size (default: the checkpoint's or the model's)")
    p.add_argument('--calib-dir', required=True, help='folder of calibration images (searched recursively)')
    p.add_argument('--calib-images', type=int, default=256, help='calibration images to use (default 256)')
    p.add_argument('--val-dir', help='folder of class sub-folders: report top-1 before and after quantization')
    p.add_argument('--out', '-o', required=True, help='the .safetensors file to write')
    p.add_argument('--batch-size', '-b', type=int, default=64, help='images per batch (default 64)')
    p.add_argument('--workers', '-j', type=int, default=2, help='data loading processes for --val-dir (default 2)')
    p.add_argument('--threads', type=int, help="CPU threads for torch (default: torch's)")


def _load(args: argparse.Namespace):
    """(model, name, kwargs, data config, classes, what was loaded)."""
    from mlpvision.data.transforms import resolve_data_config
    from mlpvision.engine.inference import load_for_inference
    from mlpvision.models import create_model, is_model

    kwargs = parse_model_kwargs(args.model_kwargs)
    if os.path.isfile(args.source):
        lm = load_for_inference(args.source, args.model, kwargs, args.ema, False, args.img_size)
        return lm.model, lm.name, lm.kwargs, lm.data_cfg, lm.classes, f'{args.source} ({lm.form} form)'
    if os.path.isdir(args.source):  # a folder written by `mlpvision convert`
        from mlpvision.hub import _read_config, is_pretrained_dir
        if is_pretrained_dir(args.source):
            model = create_model(args.source, **kwargs).eval()
            cfg = _read_config(Path(args.source))
            kwargs = {**(cfg.get('model_args') or {}), **kwargs}
            kwargs.pop('deploy', None)  # quantize re-parameterises itself
            classes = list(model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)])
            return (model, cfg['architecture'], kwargs, resolve_data_config(model), classes,
                    f'{args.source} (converted folder)')
    if is_model(args.source):
        if args.img_size:
            kwargs.setdefault('img_size', args.img_size)
        model = create_model(args.source, **kwargs).eval()
        classes = [str(i) for i in range(model.num_classes)]
        return model, args.source, kwargs, resolve_data_config(model), classes, f'{args.source} (random weights)'
    raise UsageError(f'{args.source!r} is neither a checkpoint file, a folder of `mlpvision convert` nor a '
                     f'registered model name (`mlpvision models --names-only` lists them)')


def _top1(model, val_dir: str, data_cfg, classes: list[str], batch_size: int, workers: int) -> tuple[float, int]:
    import torch

    from mlpvision.data.datasets import build_dataset
    from mlpvision.data.loader import create_eval_loader
    from mlpvision.data.transforms import build_transform
    from mlpvision.engine.evaluate import evaluate

    root, split = os.path.split(os.path.normpath(val_dir))
    info = build_dataset('imagefolder', 'val', root, val_folder=split)
    if info.num_classes != len(classes):
        raise UsageError(f'--val-dir {val_dir!r} has {info.num_classes} class folders but the model predicts '
                         f'{len(classes)} classes; give the validation split of the data it was trained on')
    info.dataset.transform = build_transform(data_cfg, False)
    loader = create_eval_loader(info.dataset, batch_size, num_workers=workers, pin_memory=False)
    res = evaluate(model, loader, len(classes), torch.device('cpu'), classes=classes)
    return res.top1, res.n


def run(args: argparse.Namespace) -> int:
    from mlpvision._reparam import reparameterize
    from mlpvision.quantize import calibration_batches, quantize

    apply_threads(args.threads)
    check_model_arg(args.model)
    if not args.out.endswith('.safetensors'):
        raise UsageError(f'--out must name a .safetensors file; got {args.out!r}')
    model, name, kwargs, dc, classes, what = _load(args)
    print(f'model: {name} from {what}; input {"x".join(map(str, dc.input_size))}')
    t = time.perf_counter()
    calib = calibration_batches(args.calib_dir, dc, args.calib_images, args.batch_size)
    n = sum(len(b) for b in calib)
    q = quantize(model, calib, input_size=dc.input_size, classes=classes, data_config=dc.to_dict(),
                 model_name=name, model_kwargs=kwargs)
    q.recipe.calibration = {'images': n, 'folder': os.path.abspath(args.calib_dir)}
    print(f'quantized: int8 with {n} calibration images from {args.calib_dir} in {time.perf_counter() - t:.1f} s')
    if args.val_dir:
        float_top1, count = _top1(reparameterize(model).eval(), args.val_dir, dc, classes, args.batch_size,
                                  args.workers)
        int8_top1, _ = _top1(q, args.val_dir, dc, classes, args.batch_size, args.workers)
        q.recipe.accuracy = {'val_dir': os.path.abspath(args.val_dir), 'images': count, 'float_top1': float_top1,
                             'int8_top1': int8_top1}
        print(f'top-1 on {args.val_dir} ({count} images): float {float_top1:.2f}%  int8 {int8_top1:.2f}%  '
              f'change {int8_top1 - float_top1:+.2f} points')
    q.save(args.out)
    print(f'written: {args.out} (load with mlpvision.quantize.load_quantized)')
    return 0
