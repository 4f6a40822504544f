"""The CamVid figures of docs/dense.md from train-seg run folders: validation mIoU curves, the per-class IoU table and
a grid of test-split predictions (image, ground truth, one column per run), with a header naming the columns and a
legend of the class colours under it (void pixels of the ground truth are black).

    python benchmarks/camvid_report.py --runs NAME=RUN_DIR ... --data-dir /path/to/CamVid --out docs/dense

Each RUN_DIR is a ``mlpvision train-seg`` output folder (metrics.csv, best.pth); the test split is evaluated with
best.pth (whole images at the run's scale) and the table printed as Markdown.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import mlpvision
from mlpvision.data.loader import create_eval_loader
from mlpvision.data.segmentation import CAMVID_PALETTE, SegEvalTransform, build_seg_dataset, overlay
from mlpvision.engine.metrics import run_config
from mlpvision.engine.segmentation import evaluate_seg, model_from_checkpoint, predict_logits
from mlpvision.plotting import family_colour


def _colour(run: Path) -> str:
    """The run's backbone family's colour (mlpvision.plotting), the baselines' grey for a timm backbone."""
    backbone = (run_config(run) or {}).get('backbone') or ''
    return family_colour(mlpvision.model_family(backbone) if mlpvision.is_model(backbone) else None)


def curves(runs: dict[str, Path], out_png: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run in runs.items():
        rows = list(csv.DictReader(open(run / 'metrics.csv')))
        colour = _colour(run)
        a.plot([int(r['epoch']) for r in rows], [float(r['train_loss']) for r in rows], label=name, color=colour)
        ev = [(int(r['epoch']), float(r['val_miou'])) for r in rows if r['val_miou']]
        b.plot([e for e, _ in ev], [v for _, v in ev], marker='o', ms=3, label=name, color=colour)
    a.set(xlabel='epoch', ylabel='train loss (decode + 0.4 aux)')
    b.set(xlabel='epoch', ylabel='CamVid val mIoU (%)')
    b.legend()
    fig.suptitle('UperNet on CamVid from scratch (short CPU schedule)')
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def header(titles: list[str], cell_w: int, height: int = 22) -> np.ndarray:
    """A white strip with each column's title centred over its cell."""
    img = Image.new('RGB', (cell_w * len(titles), height), 'white')
    draw, font = ImageDraw.Draw(img), _font(13)
    for i, title in enumerate(titles):
        w = draw.textlength(title, font=font)
        draw.text((i * cell_w + (cell_w - w) / 2, 4), title, fill='black', font=font)
    return np.asarray(img)


def legend(classes: list[str], palette: list[tuple[int, int, int]], width: int, swatch: int = 14) -> np.ndarray:
    """A white strip, ``width`` wide, with a colour swatch and the name of each class, left to right, wrapped."""
    font = _font(12)
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    places, x, y = [], 8, 6
    for name in classes:
        w = swatch + 5 + int(probe.textlength(name, font=font)) + 16
        if x > 8 and x + w > width:
            x, y = 8, y + swatch + 8
        places.append((x, y))
        x += w
    img = Image.new('RGB', (width, y + swatch + 8), 'white')
    draw = ImageDraw.Draw(img)
    for (x, y), name, colour in zip(places, classes, palette, strict=True):
        draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(colour), outline='black')
        draw.text((x + swatch + 5, y), name, fill='black', font=font)
    return np.asarray(img)


def grid(models: dict[str, tuple], data_dir: str, out_png: Path, picks: list[int], thumb: tuple[int, int]) -> None:
    data = build_seg_dataset('camvid', data_dir, 'test')
    rows = []
    for i in picks:
        img, mask = data.dataset.load(i)
        arr = np.asarray(img)
        gt = np.where(mask == 255, 0, mask)
        cells = [arr, overlay(arr, gt, CAMVID_PALETTE, 0.6) * (mask[..., None] != 255)]
        for model, meta in models.values():
            x, _ = SegEvalTransform(meta['base_size'])(img)
            with torch.no_grad():
                pred = predict_logits(model, x[None], meta['num_classes'], size=mask.shape).argmax(1)[0].numpy()
            cells.append(overlay(arr, pred, CAMVID_PALETTE, 0.6))
        rows.append(np.concatenate([np.asarray(Image.fromarray(c.astype(np.uint8)).resize(thumb, Image.BILINEAR))
                                    for c in cells], axis=1))
    titles = ['image', 'ground truth', *models]
    width = thumb[0] * len(titles)
    key = legend([*data.classes, 'void (ground truth, not scored)'], [*CAMVID_PALETTE, (0, 0, 0)], width)
    strips = [header(titles, thumb[0]), *rows, key]
    Image.fromarray(np.concatenate(strips, axis=0)).save(out_png, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--runs', nargs='+', required=True, help='NAME=RUN_DIR pairs')
    p.add_argument('--data-dir', required=True)
    p.add_argument('--out', default='docs/dense')
    p.add_argument('--prefix', default='camvid', help='file name prefix of the figures (PREFIX_curves.png, ...)')
    p.add_argument('--picks', type=int, nargs='+', default=[0, 60, 120, 200], help='test image indices for the grid')
    args = p.parse_args()
    torch.set_num_threads(1)
    runs = {k: Path(v) for k, v in (r.split('=', 1) for r in args.runs)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves(runs, out / f'{args.prefix}_curves.png')
    models, results = {}, {}
    for name, run in runs.items():
        model, meta = model_from_checkpoint(run / 'best.pth')
        models[name] = (model, meta)
        test = build_seg_dataset('camvid', args.data_dir, 'test', transform=SegEvalTransform(meta['base_size']))
        results[name] = evaluate_seg(model, create_eval_loader(test.dataset, 1), meta['num_classes'],
                                     meta['ignore_index'], torch.device('cpu'), classes=meta['classes'])
    grid(models, args.data_dir, out / f'{args.prefix}_test_overlays.png', args.picks, (240, 180))
    names = list(runs)
    print('| class | ' + ' | '.join(names) + ' |')
    print('|---|' + '---:|' * len(names))
    classes = next(iter(results.values())).classes
    for i, c in enumerate(classes):
        print(f'| {c} | ' + ' | '.join(f'{results[n].iou[i]:.1f}' for n in names) + ' |')
    print('| **mIoU** | ' + ' | '.join(f'**{results[n].miou:.1f}**' for n in names) + ' |')
    print('| pixel acc | ' + ' | '.join(f'{results[n].pixel_acc:.1f}' for n in names) + ' |')


if __name__ == '__main__':
    main()
