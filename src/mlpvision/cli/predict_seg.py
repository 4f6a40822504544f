"""Segment images with a train-seg checkpoint: `mlpvision predict-seg CHECKPOINT IMAGE_OR_FOLDER... -o OUT`.

For each image OUT receives ``<name>_overlay.png`` (the image blended with the class colours, CamVid's for a CamVid
run) and ``<name>_mask.png`` (the predicted class ids, mode L). The image is resized to the run's --base-size (or
--base-size here) for the model and the prediction upsampled back to the image's size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import apply_threads

HELP = ('segment images with a segmentation checkpoint: the same as predict -o DIR (kept for old '
        'commands)')


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('checkpoint', help="a train-seg checkpoint (the run folder's best.pth or last.pth)")
    p.add_argument('inputs', nargs='+', help='image files or folders of images')
    p.add_argument('--output', '-o', required=True, help='folder for the overlays and masks')
    p.add_argument('--base-size', type=int, help="short side the model sees (default: the checkpoint's)")
    p.add_argument('--eval-mode', choices=('whole', 'slide'), default='whole', help='whole image or sliding window')
    p.add_argument('--slide-crop', type=int, nargs=2, default=[512, 512], help='sliding-window size H W')
    p.add_argument('--slide-stride', type=int, nargs=2, default=[341, 341], help='sliding-window stride H W')
    p.add_argument('--alpha', type=float, default=0.5, help='weight of the class colours in the overlay')
    p.add_argument('--device', default='auto', help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--threads', type=int, help="CPU threads for torch (default: torch's)")


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


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from mlpvision.data.datasets import load_image
    from mlpvision.data.segmentation import SegEvalTransform, overlay
    from mlpvision.engine.distributed import resolve_device
    from mlpvision.engine.segmentation import model_from_checkpoint, predict_logits

    apply_threads(args.threads)
    files = _images(args.inputs)
    device = resolve_device(args.device)
    model, meta = model_from_checkpoint(args.checkpoint)
    model.to(device)
    tf = SegEvalTransform(args.base_size or meta['base_size'])
    palette = [tuple(c) for c in meta['palette']]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for f in files:
            img = load_image(str(f)).convert('RGB')
            x, _ = tf(img)
            logits = predict_logits(model, x[None].to(device), meta['num_classes'], args.eval_mode, args.slide_crop,
                                    args.slide_stride, size=(img.height, img.width))
            pred = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            Image.fromarray(pred, mode='L').save(out / f'{f.stem}_mask.png')
            Image.fromarray(overlay(np.asarray(img), pred, palette, args.alpha)).save(out / f'{f.stem}_overlay.png')
            counts = np.bincount(pred.ravel(), minlength=meta['num_classes'])
            top = ', '.join(f'{meta["classes"][i]} {100 * counts[i] / pred.size:.0f}%'
                            for i in np.argsort(-counts)[:3] if counts[i])
            print(f'{f}: {top} -> {out / (f.stem + "_overlay.png")}')
    return 0
