"""A small generated COCO-format data set (shapes with boxes and masks), its loader and COCO mAP evaluation.

:func:`make_coco_shapes` draws rectangles, ellipses and triangles of random colours on noisy backgrounds and writes a
COCO-format folder (``images/*.png`` and ``annotations.json`` with run-length segmentations, ``bbox`` as
``[x, y, w, h]``, ``area``, ``iscrowd``): the test and example data for the detectors in
:mod:`mlpvision.dense.detection`. :class:`CocoDetection` reads a folder of that kind into torchvision's detection
targets (``boxes`` xyxy, ``labels``, ``masks``), and :func:`evaluate` runs a detector over it and scores it (box and
mask AP; the ``detection`` extra installs the evaluator). Both are thin uses of :mod:`mlpvision.data.detection`,
which reads any COCO-format data set and has the full COCO metrics.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

from .._checkpoint import atomic_save
from ..data.detection import CocoDetectionDataset, RandomHorizontalFlip, collate, predictions_from_outputs, run_cocoeval
from ..errors import UsageError

_logger = logging.getLogger(__name__)

__all__ = ['SHAPES', 'make_coco_shapes', 'CocoDetection', 'collate', 'evaluate']

SHAPES = ('rectangle', 'ellipse', 'triangle')  # category ids 1, 2, 3


def _polygon(kind: str, cx: float, cy: float, rx: float, ry: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape centred at (cx, cy) with half-extents (rx, ry), rotated by ``angle`` (radians)."""
    if kind == 'rectangle':
        pts = [(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)]
    elif kind == 'ellipse':
        pts = [(rx * math.cos(t), ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    else:
        pts = [(0., -ry), (rx, ry), (-rx, ry)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def make_coco_shapes(
        root: str | os.PathLike,
        num_images: int = 64,
        size: tuple[int, int] = (160, 224),
        max_objects: int = 4,
        seed: int = 0,
) -> Path:
    """Write ``num_images`` H x W images (``size``) of 1..``max_objects`` shapes each, and their COCO annotations.

    Shapes may overlap; each annotation's mask, box and area are those of the shape's visible part (a shape drawn
    over is clipped to what is left of it; one left with under 20 pixels is dropped).

    Returns:
        the path of ``annotations.json`` (images in ``root/images``).
    """
    root = Path(root)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    images, annotations = [], []
    for i in range(num_images):
        bg = rng.integers(0, 90, 3)
        img = np.clip(bg + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        canvas = Image.fromarray(img)
        draw = ImageDraw.Draw(canvas)
        owner = np.zeros((h, w), np.int32)  # which object each pixel shows (0: background)
        objects = []
        for k in range(1, int(rng.integers(1, max_objects + 1)) + 1):
            kind = SHAPES[int(rng.integers(len(SHAPES)))]
            rx, ry = rng.uniform(0.08, 0.22) * min(h, w), rng.uniform(0.08, 0.22) * min(h, w)
            cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
            poly = _polygon(kind, cx, cy, rx, ry, float(rng.uniform(0, math.pi)) if kind != 'ellipse' else 0.)
            draw.polygon(poly, fill=tuple(int(v) for v in rng.integers(110, 256, 3)))
            mask = Image.new('L', (w, h))
            ImageDraw.Draw(mask).polygon(poly, fill=1)
            owner[np.asarray(mask, bool)] = k
            objects.append((k, kind))
        canvas.save(root / 'images' / f'{i:05d}.png')
        images.append(dict(id=i + 1, file_name=f'{i:05d}.png', height=h, width=w))
        for k, kind in objects:
            visible = owner == k
            if visible.sum() < 20:
                continue
            ys, xs = np.nonzero(visible)
            x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=i + 1, category_id=SHAPES.index(kind) + 1, iscrowd=0,
                bbox=[x0, y0, x1 - x0, y1 - y0], area=float(visible.sum()),
                segmentation=_rle(visible)))  # the visible mask, uncompressed RLE (COCO's iscrowd=0 allows it)
    ann = dict(images=images, annotations=annotations,
               categories=[dict(id=j + 1, name=n, supercategory='shape') for j, n in enumerate(SHAPES)])
    path = root / 'annotations.json'
    atomic_save(ann, path, writer=lambda obj, p: Path(p).write_text(json.dumps(obj)))
    return path


def _rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a boolean H x W mask (column-major runs, starting with a background run)."""
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major, as COCO
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return dict(size=list(mask.shape), counts=[int(c) for c in counts])


class CocoDetection(CocoDetectionDataset):
    """A folder as :func:`make_coco_shapes` writes it (``images/`` and ``annotations.json``) as torchvision detection
    samples: :class:`mlpvision.data.detection.CocoDetectionDataset` (checked annotations, contiguous labels 1..K,
    which are the category ids 1, 2, 3 of the shapes) with masks, and a random horizontal flip when ``train_flip``.
    """

    def __init__(self, root: str | os.PathLike, ann_file: str | os.PathLike | None = None,
                 train_flip: bool = False) -> None:
        self.root = Path(root)
        ann_file = Path(ann_file) if ann_file is not None else self.root / 'annotations.json'
        if not ann_file.is_file():
            raise UsageError(f'no COCO annotation file at {ann_file}; make one with '
                             f'mlpvision.dense.coco.make_coco_shapes({str(self.root)!r}).')
        super().__init__(self.root / 'images', ann_file, transform=RandomHorizontalFlip(0.5) if train_flip else None)
        self.train_flip = train_flip


@torch.no_grad()
def evaluate(model: nn.Module, dataset: CocoDetectionDataset, batch_size: int = 2) -> dict[str, float]:
    """COCO AP of ``model`` (a torchvision detector) on ``dataset``, as fractions: ``bbox_AP``, ``bbox_AP50``,
    ``bbox_AP75`` and, when the model predicts masks, ``segm_AP`` / ``segm_AP50`` / ``segm_AP75``
    (:func:`mlpvision.data.detection.coco_evaluate`, which has the percentages, per-size and per-category APs too;
    masks thresholded at 0.5 as torchvision's reference ``coco_eval.py``). The model is run in eval mode and left
    in the mode it came in."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    predictions, masks = [], False
    try:
        for images, targets in loader:
            outputs = model([im.to(device) for im in images])
            masks = masks or any('masks' in out for out in outputs)
            predictions += predictions_from_outputs(outputs, [t['image_id'] for t in targets], dataset.cat_ids)
    finally:
        model.train(was_training)
    evals, report = run_cocoeval(dataset.coco, predictions, ('bbox', 'segm') if masks else ('bbox',))
    _logger.info('%s', report)
    return {f'{t}_{m}': float(ev.stats[i]) for t, ev in evals.items() for i, m in enumerate(('AP', 'AP50', 'AP75'))}
