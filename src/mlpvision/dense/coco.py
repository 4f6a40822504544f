"""A small generated COCO-format data set (shapes with boxes and masks), its loader and COCO mAP evaluation.

:func:`make_coco_shapes` draws rectangles, ellipses and triangles of random colours on noisy backgrounds and writes a
COCO-format folder (``images/*.png`` and ``annotations.json`` with run-length segmentations, ``bbox`` as
``[x, y, w, h]``, ``area``, ``iscrowd``): the test and example data for the detectors in
:mod:`mlpvision.dense.detection`. :class:`CocoDetection` reads any COCO-format folder of that kind into torchvision's
detection targets (``boxes`` xyxy, ``labels`` = category ids, ``masks``), and :func:`evaluate` runs a detector over it
and scores it with pycocotools' ``COCOeval`` (box and mask AP; the ``detection`` extra installs pycocotools).
"""
from __future__ import annotations

import contextlib
import io
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


def _decode_rle(rle: dict) -> np.ndarray:
    h, w = rle['size']
    flat = np.zeros(h * w, bool)
    pos, value = 0, False
    for c in rle['counts']:
        if value:
            flat[pos:pos + c] = True
        pos += c
        value = not value
    return flat.reshape(w, h).T


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format folder as torchvision detection samples: ``(image (3, H, W) float in [0, 1], target)`` with
    ``boxes`` (N, 4) xyxy, ``labels`` (N,) category ids, ``masks`` (N, H, W) uint8, ``image_id``.

    Segmentations must be uncompressed RLE (as :func:`make_coco_shapes` writes); other COCO data sets go through
    pycocotools' ``annToMask`` instead (``torchvision.datasets.CocoDetection``).
    """

    def __init__(self, root: str | os.PathLike, ann_file: str | os.PathLike | None = None,
                 train_flip: bool = False) -> None:
        self.root = Path(root)
        self.ann_file = Path(ann_file) if ann_file is not None else self.root / 'annotations.json'
        if not self.ann_file.is_file():
            raise UsageError(f'no COCO annotation file at {self.ann_file}; make one with '
                             f'mlpvision.dense.coco.make_coco_shapes({str(self.root)!r}).')
        data = json.loads(self.ann_file.read_text())
        self.images = data['images']
        self.categories = data['categories']
        self.by_image: dict[int, list[dict]] = {im['id']: [] for im in self.images}
        for a in data['annotations']:
            self.by_image[a['image_id']].append(a)
        self.train_flip = train_flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[idx]
        img = np.asarray(Image.open(self.root / 'images' / info['file_name']).convert('RGB'))
        image = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255  # H, W, 3 -> 3, H, W
        anns = [a for a in self.by_image[info['id']] if not a.get('iscrowd', 0)]
        h, w = info['height'], info['width']
        boxes = torch.tensor([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = torch.from_numpy(np.stack([_decode_rle(a['segmentation']) for a in anns])
                                 if anns else np.zeros((0, h, w), bool)).to(torch.uint8)
        target = dict(boxes=boxes, labels=torch.tensor([a['category_id'] for a in anns], dtype=torch.int64),
                      masks=masks, image_id=torch.tensor(info['id']))
        if self.train_flip and torch.rand(()) < 0.5:  # horizontal flip of image, boxes and masks
            image, target['masks'] = image.flip(-1), target['masks'].flip(-1)
            target['boxes'] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        return image, target


def collate(batch: list) -> tuple[list, list]:
    """Lists of images and targets, as torchvision's detection models take them."""
    return tuple(list(x) for x in zip(*batch, strict=True))


def _coco_api():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise UsageError('COCO evaluation needs pycocotools: pip install "mlpvision[detection]".') from e
    return COCO, COCOeval, mask_utils


@torch.no_grad()
def evaluate(model: nn.Module, dataset: CocoDetection, batch_size: int = 2) -> dict[str, float]:
    """COCO AP of ``model`` (a torchvision detector in eval mode) on ``dataset``: ``bbox_AP``, ``bbox_AP50``,
    ``bbox_AP75`` and, when the model predicts masks, ``segm_AP`` / ``segm_AP50`` / ``segm_AP75`` (pycocotools'
    ``COCOeval``, masks thresholded at 0.5 as torchvision's reference ``coco_eval.py``)."""
    COCO, COCOeval, mask_utils = _coco_api()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    results = {'bbox': [], 'segm': []}
    try:
        for images, targets in loader:
            outputs = model([im.to(device) for im in images])
            for out, t in zip(outputs, targets, strict=True):
                boxes = out['boxes'].cpu()
                xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
                scores, labels = out['scores'].tolist(), out['labels'].tolist()
                base = [dict(image_id=int(t['image_id']), category_id=int(c), score=float(s))
                        for c, s in zip(labels, scores, strict=True)]
                results['bbox'] += [dict(r, bbox=b) for r, b in zip(base, xywh, strict=True)]
                if 'masks' in out:
                    masks = (out['masks'][:, 0] > 0.5).cpu().numpy()
                    for r, m in zip(base, masks, strict=True):
                        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                        rle['counts'] = rle['counts'].decode('ascii')
                        results['segm'].append(dict(r, segmentation=rle))
    finally:
        model.train(was_training)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
    gt.dataset = json.loads(dataset.ann_file.read_text())
    for a in gt.dataset['annotations']:  # pycocotools wants compressed RLE for uncompressed-RLE ground truth
        if isinstance(a['segmentation'], dict) and isinstance(a['segmentation']['counts'], list):
            h, w = a['segmentation']['size']
            rle = mask_utils.frPyObjects(a['segmentation'], h, w)
            rle['counts'] = rle['counts'].decode('ascii')
            a['segmentation'] = rle
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    metrics = {}
    for iou_type in ('bbox', 'segm'):
        if iou_type == 'segm' and not results['segm']:
            continue
        if not results[iou_type]:  # nothing detected: every AP is 0 (COCO's loadRes refuses an empty list)
            metrics.update({f'{iou_type}_AP': 0., f'{iou_type}_AP50': 0., f'{iou_type}_AP75': 0.})
            continue
        report = io.StringIO()
        with contextlib.redirect_stdout(report):  # pycocotools prints its progress and table: to the log instead
            ev = COCOeval(gt, gt.loadRes(results[iou_type]), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        _logger.info('%s\n%s', iou_type, report.getvalue())
        metrics.update({f'{iou_type}_AP': float(ev.stats[0]), f'{iou_type}_AP50': float(ev.stats[1]),
                        f'{iou_type}_AP75': float(ev.stats[2])})
    return metrics
