"""Train and evaluate Mask R-CNN or RetinaNet on an mlpvision backbone, in the style of torchvision's detection
reference (references/detection/train.py + engine.py: a list of images and target dicts per step, the summed loss
dict, linear warm-up, AdamW as the AS-MLP detection configs), on the generated COCO-format shapes data.

    PYTHONPATH=src python examples/train_detection.py --detector maskrcnn --backbone as_mlp_tiny --steps 300

writes ``<out>/losses.csv`` (step, total and every loss term), ``<out>/metrics.json`` (COCO AP before and after) and
``<out>/detector.safetensors``; ``--plot`` draws the loss curve (matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from pathlib import Path

import torch

from mlpvision import save_state_dict
from mlpvision.dense import maskrcnn, param_groups, retinanet
from mlpvision.dense.coco import SHAPES, CocoDetection, collate, evaluate, make_coco_shapes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--detector', choices=('maskrcnn', 'retinanet'), default='maskrcnn')
    p.add_argument('--backbone', default='as_mlp_tiny')
    p.add_argument('--depths', type=int, nargs=4, default=None, help='override the backbone depths (smaller runs)')
    p.add_argument('--data', default='data/coco_shapes', help='made here on first use')
    p.add_argument('--images', type=int, default=128, help='training images to generate (and a quarter for val)')
    p.add_argument('--size', type=int, nargs=2, default=(128, 160), help='image height and width')
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--weight-decay', type=float, default=0.05)
    p.add_argument('--warmup', type=int, default=50)
    p.add_argument('--box-batch', type=int, default=512,
                   help="Mask R-CNN RoIs sampled per image for the box / mask heads (mmdet and torchvision: 512)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='runs/detection')
    p.add_argument('--plot', action='store_true')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    torch.manual_seed(args.seed)

    data = Path(args.data)
    if not (data / 'train' / 'annotations.json').is_file():
        make_coco_shapes(data / 'train', args.images, tuple(args.size), seed=args.seed)
        make_coco_shapes(data / 'val', max(args.images // 4, 8), tuple(args.size), seed=args.seed + 1)
    train, val = CocoDetection(data / 'train', train_flip=True), CocoDetection(data / 'val')

    build = maskrcnn if args.detector == 'maskrcnn' else retinanet
    bk = dict(depths=tuple(args.depths)) if args.depths else {}
    # torchvision resizes to min_size / max_size: keep the generated images at their size
    kw = dict(box_batch_size_per_image=args.box_batch) if args.detector == 'maskrcnn' else {}
    model = build(args.backbone, len(SHAPES), backbone_kwargs=bk, min_size=min(args.size), max_size=max(args.size),
                  **kw)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    # torchvision reference: linear warm-up from lr/1000, then (here) cosine to 0 over the remaining steps
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (
        0.001 + 0.999 * s / args.warmup if s < args.warmup
        else 0.5 * (1 + math.cos(math.pi * (s - args.warmup) / max(args.steps - args.warmup, 1)))))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    before = evaluate(model, val)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                                         drop_last=True)
    rows, step, t0 = [], 0, time.time()
    model.train()
    while step < args.steps:
        for images, targets in loader:
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
            if not math.isfinite(loss.item()):
                raise SystemExit(f'loss is {loss.item()} at step {step}: {loss_dict}')
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sched.step()
            rows.append(dict(step=step, loss=loss.item(), **{k: v.item() for k, v in loss_dict.items()}))
            if step % 25 == 0:
                print(f'step {step:4d}  loss {loss.item():.3f}  ' +
                      '  '.join(f'{k} {v.item():.3f}' for k, v in loss_dict.items()) + f'  {time.time() - t0:.0f}s',
                      flush=True)
            step += 1
            if step == args.steps:
                break
    wall = time.time() - t0
    after = evaluate(model, val)
    with open(out / 'losses.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / 'metrics.json').write_text(json.dumps(dict(vars(args), before=before, after=after, train_wall_s=wall),
                                                 indent=1, default=str))
    save_state_dict(model, out / 'detector.safetensors')
    print(f'COCO AP before {before}\nafter {after}\ntrain {wall:.0f}s')
    if args.plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in rows[0]:
            if key != 'step':
                ax.plot([r['step'] for r in rows], [r[key] for r in rows], label=key, lw=1.5 if key == 'loss' else .8)
        ax.set(xlabel='step', ylabel='loss', yscale='log', title=f'{args.detector} + {args.backbone}')
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / 'losses.png', dpi=110)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
