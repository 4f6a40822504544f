"""Inference throughput against input size, mlpvision's models and the official implementations side by side, in one
process: docs/benchmarks.md's figure "Throughput against input size".

    MLPVISION_HOST_ID=epyc-avx512-1207 python benchmarks/throughput_vs_size.py \\
        --out docs/figures/throughput_input_size.png

For each family whose models take any input size that is a multiple of 32 (AS-MLP, CycleMLP, Hire-MLP, Wave-MLP:
``mlpvision.dense.SIZE_POLICY``), its smallest model as side_by_side.py pairs it (as_mlp_tiny, cycle_mlp_b1,
hire_mlp_tiny, wave_mlp_t), at each ``--sizes``: eval mode, ``torch.inference_mode``, fp32, contiguous (NCHW), the
training form (the official code has no other), random weights and one random batch shared by both sides;
``--warmup`` untimed calls, then ``--repeats`` timed calls per entry, the entries of one size interleaved and their
order reversed on odd repeats; the median img/s is plotted. ``--clock cpu`` (the default) times with
``time.process_time``, the CPU time of this process: with one thread (the default) a measure that time spent
descheduled by other work on a shared machine does not inflate (``mlpvision bench --clock cpu``); ``--clock wall``
for an idle host. The official model is built from ``benchmarks/official/`` (never committed;
``benchmarks/export_official.sh``) by side_by_side.py's ``build_official`` and its shims; the official AS-MLP asserts
the input size it was built for, so it is built again for each size (``img_size=``, nothing else changes). A size
the official code refuses is reported and left out. Parity of the two is side_by_side.py's job, not this one's.

Writes the PNG and, beside it, a CSV of every median with the host's lines (``mlpvision.host.host_environment``,
``host_id`` from ``MLPVISION_HOST_ID``, the load before and after) as ``#`` comments.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

import mlpvision
from mlpvision.host import host_environment, loadavg
from mlpvision.plotting import family_colour, place_labels

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ('asmlp', 'cyclemlp', 'hiremlp', 'wavemlp')  # side_by_side.py's names; their models take any 32k size


def _side_by_side():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import side_by_side
    return side_by_side


def official_for_size(sbs, fam: str, official_dir: Path, size: int, built: torch.nn.Module) -> torch.nn.Module:
    """The official model for ``size``: AS-MLP's is built for its input size (it asserts it), the others take any."""
    if fam != 'asmlp' or size == 224:
        return built
    sbs.build_official(fam, official_dir)  # applies the shims (the CUDA shift replaced by the file's torch_shift)
    import asmlp.as_mlp
    return asmlp.as_mlp.AS_MLP(img_size=size, embed_dim=96, depths=[2, 2, 6, 2], shift_size=5).eval()


def time_entries(entries: dict[str, torch.nn.Module], x: torch.Tensor, warmup: int, repeats: int,
                 clock=time.process_time) -> dict:
    """Median img/s of each entry on ``x`` (None for one whose forward raised, with the error), interleaved."""
    out, alive = {}, {}
    with torch.inference_mode():
        for name, model in entries.items():
            try:
                for _ in range(max(warmup, 1)):
                    model(x)
                alive[name] = []
            except Exception as e:  # noqa: BLE001  the official code's own refusal of a size, reported as such
                out[name] = (None, f'{type(e).__name__}: {str(e).splitlines()[0][:120]}')
        for r in range(repeats):
            for name in (list(alive) if r % 2 == 0 else list(alive)[::-1]):
                t = clock()
                entries[name](x)
                alive[name].append(x.shape[0] / (clock() - t))
    out.update({name: (statistics.median(v), '') for name, v in alive.items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[160, 192, 224, 256, 288, 320])
    p.add_argument('--families', nargs='+', default=list(FAMILIES), choices=FAMILIES)
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--clock', choices=('cpu', 'wall'), default='cpu',
                   help='cpu: time.process_time (one thread: robust to a shared machine), wall: time.perf_counter')
    p.add_argument('--official-dir', type=Path, default=ROOT / 'benchmarks' / 'official')
    p.add_argument('--out', type=Path, default=ROOT / 'docs' / 'figures' / 'throughput_input_size.png')
    p.add_argument('--from-csv', type=Path, help='redraw --out from a CSV this script wrote, measuring nothing')
    args = p.parse_args()
    if args.from_csv:
        rows, env = read_csv(args.from_csv)
        args.sizes = sorted({r['size'] for r in rows})
        args.batch, args.threads, args.clock = int(env['batch']), int(env['threads']), env['clock']
        plot(rows, env, args, args.out)
        print(args.out)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sbs = _side_by_side()
    env = host_environment(peaks=False)
    started = time.time()
    rows = []
    for fam in args.families:
        name = sbs.FAMILIES[fam][0]
        ours = mlpvision.create_model(name).eval()
        try:
            official = sbs.build_official(fam, args.official_dir).eval()
        except Exception as e:  # noqa: BLE001  no official file here: ours alone, said so
            official = None
            print(f'{fam}: official model not built ({type(e).__name__}: {e}); ours only', flush=True)
        for size in args.sizes:
            models = {'ours': ours}
            if official is not None:
                models['official'] = official_for_size(sbs, fam, args.official_dir, size, official)
            x = torch.randn(args.batch, 3, size, size)
            clock = time.process_time if args.clock == 'cpu' else time.perf_counter
            for who, (img_s, err) in time_entries(models, x, args.warmup, args.repeats, clock).items():
                rows.append(dict(family=mlpvision.model_family(name), model=name, who=who, size=size,
                                 img_s='' if img_s is None else f'{img_s:.3f}', error=err))
                print(f'{name} {who} {size}px: ' + (f'{img_s:.2f} img/s' if img_s is not None else f'refused: {err}'),
                      flush=True)
    env['loadavg_after'] = loadavg()
    env['wall_s'] = f'{time.time() - started:.0f}'
    settings = (f'fp32, eval, NCHW, training form, batch {args.batch}, {args.threads} thread(s), warm-up '
                f'{args.warmup}, median of {args.repeats} interleaved calls, {args.clock} clock')
    env.update(batch=str(args.batch), clock=args.clock)
    csv_path = args.out.with_suffix('.csv')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, 'w', newline='') as f:
        f.write(f'# {settings}\n' + ''.join(f'# {k}: {v}\n' for k, v in env.items()))
        w = csv.DictWriter(f, ['family', 'model', 'who', 'size', 'img_s', 'error'], lineterminator='\n')
        w.writeheader()
        w.writerows(rows)
    plot(rows, env, args, args.out)
    print(csv_path, args.out, sep='\n')


def read_csv(path: Path) -> tuple[list[dict], dict[str, str]]:
    """The rows and the ``# key: value`` lines of a CSV :func:`main` wrote."""
    lines = Path(path).read_text().splitlines()
    env = dict(line[2:].split(': ', 1) for line in lines if line.startswith('# ') and ': ' in line)
    rows = list(csv.DictReader(line for line in lines if not line.startswith('#')))
    for r in rows:
        r['size'] = int(r['size'])
    return rows, env


def plot(rows: list[dict], env: dict[str, str], args: argparse.Namespace, out: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    ends, labels, colours = [], [], []
    for model in dict.fromkeys(r['model'] for r in rows):
        for who, style in (('ours', dict(ls='-', marker='o')), ('official', dict(ls='--', marker='x'))):
            pts = [(r['size'], float(r['img_s'])) for r in rows if r['model'] == model and r['who'] == who
                   and r['img_s']]
            if not pts:
                continue
            colour = family_colour(next(r['family'] for r in rows if r['model'] == model))
            ax.plot([s for s, _ in pts], [v for _, v in pts], color=colour, ms=5, lw=1.2, **style)
            ends.append(pts[-1])
            labels.append(f'{model} ({"mlpvision" if who == "ours" else "official"})')
            colours.append(colour)
    ax.set_yscale('log')
    ax.set_xticks(args.sizes)
    ax.set_xlabel('input size (px, square)')
    clock = 'CPU-time clock' if args.clock == 'cpu' else 'wall clock'
    ax.set_ylabel(f'inference throughput (img/s, batch {args.batch}, {clock}; log scale)')
    host = env.get('host_id') or env.get('cpu', 'host not recorded')
    before, after = env.get('loadavg_before', '').split(' ')[0], env.get('loadavg_after', '').split(' ')[0]
    ax.set_title(f'host {host}, {args.threads} thread(s), batch {args.batch}, torch {env.get("torch")}\n'
                 f'fp32, eval, training form, {clock}; solid: mlpvision, dashed: official code; '
                 f'load {before} before, {after} after', fontsize=9)
    ax.grid(True, which='both', alpha=0.3)
    span = args.sizes[-1] - args.sizes[0]
    ax.set_xlim(args.sizes[0] - 0.05 * span, args.sizes[-1] + 0.45 * span)  # the labels go right of the last points
    fig.tight_layout()
    place_labels(ax, ends, labels, fontsize=7, colours=colours)
    fig.savefig(out)
    plt.close(fig)


if __name__ == '__main__':
    main()
