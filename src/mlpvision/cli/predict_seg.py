"""Segment images with a segmentation checkpoint: `mlpvision predict-seg WEIGHTS IMAGE_OR_FOLDER... -o OUT` (the same
as `mlpvision predict WEIGHTS IMAGE... -o OUT`, which reads the task from the checkpoint).

For each image OUT receives ``<name>_overlay.png`` (the image blended with the class colours, CamVid's for a CamVid
run) and ``<name>_mask.png`` (the predicted class ids, mode L). The image is resized to the run's --base-size (or
--base-size here) for the model and the prediction upsampled back to the image's size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_device_args, add_option, apply_threads

HELP = ('segment images with a segmentation checkpoint: the same as predict -o DIR (kept for old '
        'commands)')


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('weights', metavar='WEIGHTS', help="a segmentation checkpoint (the run folder's best.pth or "
                                                     "last.pth, or the run folder)")
    p.add_argument('inputs', nargs='+', help='image files or folders of images')
    add_option(p, 'output', 'folder for the overlays and masks', required=True)
    add_option(p, 'overwrite', 'write over overlays and masks already in --output', action='store_true')
    p.add_argument('--base-size', type=int, help="short side the model sees (default: the checkpoint's)")
    p.add_argument('--eval-mode', choices=('whole', 'slide'), default='whole', help='whole image or sliding window')
    p.add_argument('--slide-crop', type=int, nargs=2, default=[512, 512], help='sliding-window size H W')
    p.add_argument('--slide-stride', type=int, nargs=2, default=[341, 341], help='sliding-window stride H W')
    p.add_argument('--alpha', type=float, default=0.5, help='weight of the class colours in the overlay')
    add_device_args(p, batch_size=1)


def _images(inputs: list[str]) -> list[Path]:
    from mlpvision.data.segmentation import image_files
    from mlpvision.errors import UsageError

    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += image_files(path)
        elif path.is_file():
            out.append(path)
        else:
            raise UsageError(f'{item!r} is neither an image file nor a folder')
    if not out:
        raise UsageError(f'no images found in {", ".join(inputs)}')
    return out


def output_names(files: list[Path], out: Path, suffixes: tuple[str, ...], overwrite: bool) -> None:
    """Refuse before anything is written: two inputs of one name (their outputs would collide), an output that is
    one of the inputs, or an output that exists (without ``overwrite``)."""
    from mlpvision.errors import UsageError

    from ._common import check_writable

    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise UsageError(f'{str(seen[f.stem])!r} and {str(f)!r} would write the same {f.stem}{suffixes[0]}; give '
                             f'them in separate runs with different --output folders (or rename one)')
        seen[f.stem] = f
        for suffix in suffixes:
            check_writable(out / f'{f.stem}{suffix}', overwrite, files)


def run(args: argparse.Namespace, loaded=None) -> int:
    """``loaded``: the weights already opened (``predict`` hands them over), else opened from ``args.weights``."""
    import numpy as np
    import torch
    from PIL import Image

    from mlpvision.data.datasets import load_image
    from mlpvision.data.segmentation import SegEvalTransform, overlay
    from mlpvision.engine.distributed import resolve_device
    from mlpvision.engine.loading import open_weights
    from mlpvision.engine.run import amp_dtype
    from mlpvision.engine.segmentation import predict_logits

    apply_threads(args.threads)
    files = _images(args.inputs)
    device = resolve_device(args.device)
    if loaded is None:
        loaded = open_weights(args.weights, task='segmentation', command='predict-seg')
    model, meta = loaded.model, loaded.meta
    model.to(device)
    dtype = amp_dtype(getattr(args, 'amp', 'none'), device)
    tf = SegEvalTransform(args.base_size or meta['base_size'])
    palette = [tuple(c) for c in meta['palette']]
    out = Path(args.output)
    output_names(files, out, ('_mask.png', '_overlay.png'), getattr(args, 'overwrite', False))
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for f in files:
            img = load_image(str(f), skip_flag=False).convert('RGB')
            x, _ = tf(img)
            logits = predict_logits(model, x[None].to(device), meta['num_classes'], args.eval_mode, args.slide_crop,
                                    args.slide_stride, size=(img.height, img.width))
            pred = logits.float().argmax(1)[0].to(torch.uint8).cpu().numpy()
            Image.fromarray(pred, mode='L').save(out / f'{f.stem}_mask.png')
            Image.fromarray(overlay(np.asarray(img), pred, palette, args.alpha)).save(out / f'{f.stem}_overlay.png')
            counts = np.bincount(pred.ravel(), minlength=meta['num_classes'])
            top = ', '.join(f'{meta["classes"][i]} {100 * counts[i] / pred.size:.0f}%'
                            for i in np.argsort(-counts)[:3] if counts[i])
            print(f'{f}: {top} -> {out / (f.stem + "_overlay.png")}')
    return 0
