"""Draw finished (or running) training runs side by side: top-1 and loss on the split they were evaluated on, and
training loss, per epoch, read from each run's ``metrics.csv`` (docs/reproductions.md's curves). The split's name
comes from each run's ``config.yaml`` ("test" for CIFAR-10, or an image folder evaluated on ``test/``; "validation"
where the runs say nothing or disagree); ``--eval-split`` names it for runs without one.

    python benchmarks/plot_runs.py --out docs/reproductions/strip_cifar10.png --title "..." \\
        "width 1=/work/runs/i13/strip-w1" "width 3=/work/runs/i13/strip-w3"
"""
import argparse

from mlpvision.engine.metrics import plot_runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('runs', nargs='+', metavar='LABEL=RUN_DIR', help='legend label and run folder (or metrics.csv)')
    p.add_argument('--out', required=True, help='the PNG to write')
    p.add_argument('--title', default='')
    p.add_argument('--eval-split', help="what the runs were evaluated on, e.g. 'test' (default: their config.yaml)")
    args = p.parse_args()
    runs = {}
    for item in args.runs:
        label, sep, path = item.rpartition('=')
        if not sep or not label:
            p.error(f'{item!r} is not LABEL=RUN_DIR')
        runs[label] = path
    try:
        out = plot_runs(runs, args.out, args.title, args.eval_split)
    except ValueError as e:
        p.error(str(e))
    print(out or 'matplotlib is not installed: nothing drawn')


if __name__ == '__main__':
    main()
