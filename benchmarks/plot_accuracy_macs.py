"""ImageNet-1k top-1 against GMACs for every registered variant with a paper top-1, and a few CNN / ViT baselines as
points: docs/models.md's figure.

    python benchmarks/plot_accuracy_macs.py --out docs/figures/top1_gmacs.png

Top-1: each variant's ``mlpvision.model_meta(name).top1_paper``, the figure its metadata cites (paper table or
official README; the "source" column of docs/models.md names which). GMACs: measured by ``mlpvision.profile`` at the
variant's default input size (224, 256 or 320), the deploy form where there is one (the RepMLP papers count after
re-parameterisation); docs/models.md's "GMACs" / "deploy GMACs" columns. A variant whose metadata has no top-1, or
whose top-1 is on another data set (``repmlp_cifar_pure``: CIFAR-10), is named under the plot instead. No model is
run: nothing here is a speed, and no host is involved.

Baselines, top-1 from the source named beside each figure; their GMACs are measured by the same ``mlpvision.profile``
on timm's model at 224 (the published figure, where the source gives one, is kept beside it and checked to agree).
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import timm
import torch

import mlpvision
from mlpvision.model_table import model_rows
from mlpvision.plotting import BASELINE_COLOUR, family_colour, place_labels

# (label, timm name, top-1 %, published GMACs or None, kind, source of the top-1 and the published GMACs)
BASELINES = (
    ('ResNet-50', 'resnet50', 76.13, 4.09, 'CNN',
     'torchvision docs, models.resnet50, ResNet50_Weights.IMAGENET1K_V1: acc@1 76.13, GFLOPS 4.09 '
     '(https://pytorch.org/vision/stable/models/generated/torchvision.models.resnet50.html)'),
    ('DeiT-S', 'deit_small_patch16_224', 79.9, None, 'ViT',
     'facebookresearch/deit@4da66916c72caaeaeb5da788390244524fa993c6 README_deit.md, Model Zoo: DeiT-small acc@1 '
     '79.9 (no FLOPs given)'),
    ('DeiT-B', 'deit_base_patch16_224', 81.8, None, 'ViT',
     'facebookresearch/deit@4da66916c72caaeaeb5da788390244524fa993c6 README_deit.md, Model Zoo: DeiT-base acc@1 '
     '81.8 (no FLOPs given)'),
    ('Swin-T', 'swin_tiny_patch4_window7_224', 81.2, 4.5, 'ViT',
     'microsoft/Swin-Transformer@005e8efa45795c351eb85b8107e49caf055a84c0 README.md, ImageNet-1K models: Swin-T '
     '224x224 acc@1 81.2, FLOPs 4.5G'),
    ('Swin-S', 'swin_small_patch4_window7_224', 83.2, 8.7, 'ViT',
     'microsoft/Swin-Transformer@005e8efa45795c351eb85b8107e49caf055a84c0 README.md: Swin-S 224x224 acc@1 83.2, '
     'FLOPs 8.7G'),
    ('Swin-B', 'swin_base_patch4_window7_224', 83.5, 15.4, 'ViT',
     'microsoft/Swin-Transformer@005e8efa45795c351eb85b8107e49caf055a84c0 README.md: Swin-B 224x224 acc@1 83.5, '
     'FLOPs 15.4G'),
)
MARKERS = {'CNN': 's', 'ViT': 'D'}


def baseline_gmacs(timm_name: str, published: float | None) -> float:
    """GMACs of timm's model at 224, counted as ours are; within 3% of the published figure where there is one."""
    with torch.device('meta'):
        model = timm.create_model(timm_name)
    gmacs = mlpvision.profile(model, (3, 224, 224)).gmacs
    if published is not None and abs(gmacs / published - 1) > 0.03:
        raise SystemExit(f'{timm_name}: measured {gmacs:.2f} GMACs, the source has {published}')
    return gmacs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='docs/figures/top1_gmacs.png')
    args = p.parse_args()
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = model_rows(cache=True)
    shown = [r for r in rows if r.top1_paper is not None and r.paper_data == 'ImageNet-1k']
    left_out = [r for r in rows if r not in shown]
    fig, ax = plt.subplots(figsize=(10, 7), dpi=100)
    xy, labels, colours = [], [], []
    for fam in sorted({mlpvision.model_family(r.model) for r in shown}):
        pts = sorted((r.deploy_gmacs or r.gmacs, r.top1_paper, r.model, r.input_size[1]) for r in shown
                      if mlpvision.model_family(r.model) == fam)
        ax.plot([x for x, *_ in pts], [y for _, y, *_ in pts], '-', lw=0.8, alpha=0.45, color=family_colour(fam),
                zorder=2)
        ax.scatter([x for x, *_ in pts], [y for _, y, *_ in pts], s=26, color=family_colour(fam), label=fam, zorder=3)
        for x, y, name, size in pts:
            xy.append((x, y))
            labels.append(name if size == 224 or str(size) in name else f'{name} ({size} px)')
            colours.append(family_colour(fam))
    for kind, marker in MARKERS.items():
        pts = [(baseline_gmacs(t, pub), top1, label) for label, t, top1, pub, k, _ in BASELINES if k == kind]
        ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], marker=marker, s=36, color=BASELINE_COLOUR,
                   label=f'{kind} baselines (grey)', zorder=3)
        for x, y, label in pts:
            xy.append((x, y))
            labels.append(label)
            colours.append(BASELINE_COLOUR)
    ax.set_xscale('log')
    ticks = [2, 3, 4, 6, 8, 10, 15, 20, 30, 50, 100]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel('GMACs at the default input size (measured by mlpvision.profile; deploy form where there is one)')
    ax.set_ylabel('ImageNet-1k top-1 (%), as the paper / official README reports it')
    ax.set_title('Top-1 against multiply-adds: every registered variant with a paper top-1 (224 px unless named), '
                 'and CNN / ViT baselines', fontsize=9)
    ax.grid(True, which='major', alpha=0.3)
    ax.margins(x=0.06, y=0.06)
    ax.legend(fontsize=8, loc='lower right', ncol=2)
    other = [f'{r.model} ({r.paper_data} {r.top1_paper:g}%)' for r in left_out if r.top1_paper is not None]
    none = [r.model for r in left_out if r.top1_paper is None]
    note = 'not plotted: ' + '; '.join(filter(None, [', '.join(other) + ' (another data set)' if other else '',
                                                   'no paper top-1: ' + ', '.join(none) if none else '']))
    fig.text(0.01, 0.01, '\n'.join(textwrap.wrap(note, 170)), fontsize=7, color='grey')
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    place_labels(ax, xy, labels, fontsize=6.5, colours=colours)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(out)


if __name__ == '__main__':
    main()
