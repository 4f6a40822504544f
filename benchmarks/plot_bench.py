"""Redraw the ``bench.png`` of ``mlpvision bench`` output folders from their ``bench.csv`` and ``bench.md``, without
measuring again (docs/bench/fp32 and docs/bench/bf16_deploy were drawn so after the plot gained its conditions).

    python benchmarks/plot_bench.py docs/bench/fp32 docs/bench/bf16_deploy --host-id epyc-avx512-1122

``--host-id`` names the host of docs/hosts.md the figures were measured on, for folders written before
``MLPVISION_HOST_ID`` put it into ``bench.md``; the figures themselves are the CSV's.
"""
import argparse
from pathlib import Path

from mlpvision.bench import read_outputs, write_plot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('folders', nargs='+', help='mlpvision bench output folders (bench.csv, bench.md)')
    p.add_argument('--host-id', help="the host's id in docs/hosts.md (default: bench.md's host_id, else its cpu)")
    args = p.parse_args()
    for folder in args.folders:
        results, settings, env = read_outputs(folder)
        if args.host_id:
            env['host_id'] = args.host_id
        out = Path(folder) / 'bench.png'
        write_plot(results, settings, out, env)
        print(out)


if __name__ == '__main__':
    main()
