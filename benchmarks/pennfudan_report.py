"""The PennFudanPed figures of docs/dense.md from `mlpvision train --task detect` run folders: held-out box / mask AP
curves, the table of each run's epochs, and a grid of held-out photographs (ground truth, then one column per run's
best.pth predictions drawn with torchvision's drawing utilities).

    python benchmarks/pennfudan_report.py --runs NAME=RUN_DIR ... --data-dir DATA/PennFudanPed --out docs/dense

The held-out images are those of the runs' own split (``pennfudan_split(DATA, seed, train_images)`` with the seed and
size their config.yaml records); ``--images`` picks that many of them, half FudanPed and half PennPed, evenly spaced
in the sorted held-out list.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from mlpvision.data.datasets import load_image
from mlpvision.data.detection import draw_detections, pennfudan_split, pennfudan_to_coco
from mlpvision.engine.loading import open_weights


def _rows(run: Path) -> list[dict]:
    with open(run / 'metrics.csv') as f:
        return list(csv.DictReader(f))


def curves(runs: dict[str, Path], out_png: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, (name, run) in enumerate(runs.items()):
        rows = _rows(run)
        epochs = [int(r['epoch']) for r in rows]
        color = f'C{i}'
        axes[0].plot(epochs, [float(r['train_loss']) for r in rows], color=color, label=name)
        axes[1].plot(epochs, [float(r['bbox_AP']) for r in rows], color=color, marker='o', ms=3, label=f'{name} box')
        axes[1].plot(epochs, [float(r['bbox_AP50']) for r in rows], color=color, ls='--', label=f'{name} box AP50')
        axes[2].plot(epochs, [float(r['segm_AP']) for r in rows], color=color, marker='o', ms=3, label=name)
    axes[0].set(xlabel='epoch', ylabel='training loss (sum of the loss dict)')
    axes[1].set(xlabel='epoch', ylabel='held-out box AP / AP50 (%)')
    axes[2].set(xlabel='epoch', ylabel='held-out mask AP (%)')
    for a in axes:
        a.legend(fontsize=7)
    fig.suptitle('Mask R-CNN on PennFudanPed from scratch: 50 held-out images (seed 0 split)')
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def table(runs: dict[str, Path]) -> str:
    lines = ['| epoch | ' + ' | '.join(f'{n} box AP / AP50 / mask AP' for n in runs) + ' |',
             '|---|' + '---|' * len(runs)]
    rows = {n: {int(r['epoch']): r for r in _rows(run)} for n, run in runs.items()}
    for e in sorted(set().union(*(r.keys() for r in rows.values()))):
        cells = []
        for n in runs:
            r = rows[n].get(e)
            cells.append(f'{float(r["bbox_AP"]):.2f} / {float(r["bbox_AP50"]):.2f} / {float(r["segm_AP"]):.2f}'
                         if r else '')
        lines.append(f'| {e} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _config(run: Path) -> dict:
    import yaml
    return yaml.safe_load((run / 'config.yaml').read_text())


@torch.no_grad()
def grid(runs: dict[str, Path], data_dir: Path, n_images: int, score: float, out_png: Path) -> list[str]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cfg = _config(next(iter(runs.values())))
    _, held = pennfudan_split(data_dir, cfg.get('split_seed', 0), cfg.get('train_images', 120))
    fudan = [s for s in held if s.startswith('FudanPed')]
    penn = [s for s in held if s.startswith('PennPed')]
    half = n_images // 2
    pick = [fudan[int(i)] for i in np.linspace(0, len(fudan) - 1, half)] + \
        [penn[int(i)] for i in np.linspace(0, len(penn) - 1, n_images - half)]
    coco = pennfudan_to_coco(data_dir, pick)
    models = {n: open_weights(run / 'best.pth') for n, run in runs.items()}
    fig, axes = plt.subplots(len(pick), 1 + len(runs), figsize=(3.2 * (1 + len(runs)), 2.6 * len(pick)))
    for row, (stem, img_info) in enumerate(zip(pick, coco['images'], strict=True)):
        img = np.asarray(load_image(str(data_dir / 'PNGImages' / img_info['file_name'])).convert('RGB'))
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)
        anns = [a for a in coco['annotations'] if a['image_id'] == img_info['id']]
        boxes = torch.tensor([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3]]
                              for a in anns], dtype=torch.float32)
        truth = {'boxes': boxes, 'labels': torch.ones(len(anns), dtype=torch.int64)}
        panels = [(f'{stem}: ground truth ({len(anns)})', draw_detections(x, truth, ['person']))]
        for name, loaded in models.items():
            pred = loaded.model([x.float().div(255)])[0]
            found = int((pred['scores'] >= score).sum())
            panels.append((f'{name}: {found} at score >= {score:g}',
                           draw_detections(x, pred, list(loaded.classes), score_thresh=score)))
        for col, (title, drawn) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(drawn.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=7)
            ax.axis('off')
    fig.suptitle('Held-out PennFudanPed photographs: ground truth (boxes), then each run\'s best.pth (boxes, masks, '
                 'scores)', fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return pick


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--runs', nargs='+', required=True, metavar='NAME=RUN_DIR')
    p.add_argument('--data-dir', required=True, type=Path)
    p.add_argument('--out', required=True, type=Path)
    p.add_argument('--images', type=int, default=4)
    p.add_argument('--score', type=float, default=0.5)
    args = p.parse_args()
    runs = {k: Path(v) for k, v in (r.split('=', 1) for r in args.runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    curves(runs, args.out / 'pennfudan_curves.png')
    print(table(runs))
    pick = grid(runs, args.data_dir, args.images, args.score, args.out / 'pennfudan_heldout.png')
    print('images:', ' '.join(pick))
    print(f'wrote {args.out / "pennfudan_curves.png"}, {args.out / "pennfudan_heldout.png"}')


if __name__ == '__main__':
    main()
