"""Time pycocotools' ``COCOeval`` against faster-coco-eval's ``COCOeval_faster`` on a generated set (the figures in
the docstring of :mod:`mlpvision.data.detection`, which chose between them).

    python benchmarks/coco_eval_speed.py --images 200 --objects 10 --repeats 3

Ground truth: ``--images`` images of 480 x 640 with ``--objects`` ellipses each (5 sparse category ids, compressed
RLE masks). Predictions: every object shifted by a few pixels (mask and box) plus half as many random false
positives per image, random scores. Each backend scores bbox and segm from the same dicts (the segm results without
``bbox``, as :func:`mlpvision.data.detection.coco_evaluate` passes them); the time is the best of ``--repeats`` of
loadRes + evaluate + accumulate + summarize, in this process, one thread. The 12 summary figures of the two
backends are printed side by side and must be equal.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import io
import os
import platform
import time

import numpy as np

CAT_IDS = (1, 3, 7, 12, 90)


def _cpu() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        return f'{names[0]} ({len(names)} logical CPUs)'
    except (OSError, IndexError):
        return platform.processor() or 'unknown CPU'


def _ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def generate(num_images: int, objects: int, seed: int = 0) -> tuple[dict, list[dict]]:
    from pycocotools import mask as mask_utils
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    images, anns, preds = [], [], []

    def encode(m: np.ndarray) -> dict:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle['counts'] = rle['counts'].decode('ascii')
        return rle

    def box(m: np.ndarray) -> list[float]:
        ys, xs = np.nonzero(m)
        return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]

    for i in range(1, num_images + 1):
        images.append(dict(id=i, file_name=f'{i:06d}.jpg', height=h, width=w))
        for _ in range(objects):
            r = rng.uniform(4, 120, 2)  # small, medium and large objects
            c = rng.uniform(r, [w - r[0], h - r[1]])
            m = _ellipse(h, w, c[0], c[1], r[0], r[1])
            cat = int(rng.choice(CAT_IDS))
            anns.append(dict(id=len(anns) + 1, image_id=i, category_id=cat, iscrowd=0, bbox=box(m),
                             area=float(m.sum()), segmentation=encode(m)))
            dx, dy = rng.integers(-3, 4, 2)
            pm = np.roll(m, (int(dy), int(dx)), (0, 1))
            preds.append(dict(image_id=i, category_id=cat, score=float(rng.uniform(0.3, 1)), bbox=box(pm),
                              segmentation=encode(pm)))
        for _ in range(objects // 2):
            r = rng.uniform(4, 120, 2)
            c = rng.uniform(r, [w - r[0], h - r[1]])
            m = _ellipse(h, w, c[0], c[1], r[0], r[1])
            preds.append(dict(image_id=i, category_id=int(rng.choice(CAT_IDS)), score=float(rng.uniform(0, 0.8)),
                              bbox=box(m), segmentation=encode(m)))
    cats = [dict(id=c, name=f'class{c}') for c in CAT_IDS]
    return dict(images=images, annotations=anns, categories=cats), preds


def run(backend: str, gt: dict, preds: list[dict], iou_type: str) -> tuple[float, list[float]]:
    if backend == 'pycocotools':
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Eval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Eval
    results = copy.deepcopy(preds)
    if iou_type == 'segm':
        for r in results:
            r.pop('bbox')
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        t = time.perf_counter()
        ev = Eval(coco, coco.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        seconds = time.perf_counter() - t
    return seconds, [float(s) for s in ev.stats[:12]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--objects', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args(argv)
    gt, preds = generate(args.images, args.objects)
    print(f'host: {_cpu()}; OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS")}')
    print(f'{args.images} images, {len(gt["annotations"])} objects, {len(preds)} predictions')
    stats = {}
    for backend, dist in (('pycocotools', 'pycocotools'), ('faster_coco_eval', 'faster-coco-eval')):
        version = importlib.metadata.version(dist)
        for iou_type in ('bbox', 'segm'):
            runs = [run(backend, gt, preds, iou_type) for _ in range(args.repeats)]
            stats[backend, iou_type] = runs[0][1]
            print(f'{dist} {version} {iou_type}: best {min(s for s, _ in runs):.2f} s of {args.repeats} '
                  f'({", ".join(f"{s:.2f}" for s, _ in runs)})')
    for iou_type in ('bbox', 'segm'):
        a, b = stats['pycocotools', iou_type], stats['faster_coco_eval', iou_type]
        print(f'{iou_type} stats equal: {a == b}; max |diff| {max(abs(x - y) for x, y in zip(a, b, strict=True)):.2e}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
