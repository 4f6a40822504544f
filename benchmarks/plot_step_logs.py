"""Draw training runs from their step log lines (``epoch E/N step S/T  loss L  acc A%``: the running means of the
epoch so far that ``mlpvision train`` prints), for runs too short for per-epoch curves (docs/reproductions.md's
one-epoch probe). A run stopped and resumed gives its logs in order, joined by '+'.

    python benchmarks/plot_step_logs.py --out docs/reproductions/repmlp_cifar10_1epoch.png \\
        "full model=/work/runs/probe-full.log" "FC3 as conv9=/work/runs/probe-conv9.log+/work/runs/resume.log"
"""
import argparse
import re

STEP = re.compile(r'epoch (\d+)/\d+ step (\d+)/(\d+)\s+loss ([\d.]+)\s+acc ([\d.]+)%')


def read_steps(paths: list[str]) -> tuple[list[int], list[float], list[float]]:
    """(global step, running loss, running top-1 %) of every step line, in order."""
    steps, loss, acc = [], [], []
    for path in paths:
        with open(path) as f:
            for line in f:
                m = STEP.match(line)
                if m:
                    steps.append((int(m[1]) - 1) * int(m[3]) + int(m[2]))
                    loss.append(float(m[4]))
                    acc.append(float(m[5]))
    return steps, loss, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('runs', nargs='+', metavar='LABEL=LOG[+LOG...]')
    p.add_argument('--out', required=True, help='the PNG to write')
    p.add_argument('--title', default='')
    args = p.parse_args()
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for item in args.runs:
        label, sep, paths = item.rpartition('=')
        if not sep or not label:
            p.error(f'{item!r} is not LABEL=LOG')
        steps, loss, acc = read_steps(paths.split('+'))
        if not steps:
            p.error(f'{paths}: no step lines ("epoch E/N step S/T  loss L  acc A%")')
        ax[0].plot(steps, loss, label=label)
        ax[1].plot(steps, acc, label=label)
    ax[0].set(xlabel='step', ylabel='running train loss (epoch so far)')
    ax[1].set(xlabel='step', ylabel='running train top-1 % (epoch so far)')
    ax[0].legend()
    for a in ax:
        a.grid(alpha=0.3)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == '__main__':
    main()
