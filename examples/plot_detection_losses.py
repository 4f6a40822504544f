"""Draw docs/pictures/dense_detection_losses.png from two runs of examples/train_detection.py (their losses.csv).

    python examples/plot_detection_losses.py RUN_DIR[=TITLE] ... --out docs/pictures/dense_detection_losses.png
"""
import argparse
import csv

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('runs', nargs='+', help='run folders, each optionally =TITLE')
    p.add_argument('--suptitle', default='')
    p.add_argument('--out', required=True)
    args = p.parse_args()
    fig, axes = plt.subplots(1, len(args.runs), figsize=(5 * len(args.runs), 3.6), squeeze=False)
    for ax, spec in zip(axes[0], args.runs, strict=True):
        run, _, title = spec.partition('=')
        with open(f'{run}/losses.csv') as f:
            rows = list(csv.DictReader(f))
        for key in rows[0]:
            if key == 'step':
                continue
            y = [float(r[key]) for r in rows]
            mean = [sum(y[max(0, i - 9):i + 1]) / len(y[max(0, i - 9):i + 1]) for i in range(len(y))]
            ax.plot([int(r['step']) for r in rows], mean, label=key, lw=2 if key == 'loss' else 1)
        ax.set(title=title or run, xlabel='step', ylabel='loss (10-step mean)', yscale='log')
        ax.legend(fontsize=7)
    fig.suptitle(args.suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


if __name__ == '__main__':
    main()
