"""The main job of `make demo`: show the model table and profile one model."""
from __future__ import annotations

import argparse

HELP = 'the demo: print the model table and profile a model'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--model', default='resmlp_s12', help='the model to profile (default resmlp_s12)')


def run(args: argparse.Namespace) -> int:
    import mlpvision
    from mlpvision.model_table import format_rows, model_rows

    print(format_rows(model_rows()), end='')
    prof = mlpvision.profile(args.model)
    meta = mlpvision.model_meta(args.model)
    print(f'\n{args.model}: {prof.params:,} params (official {meta.params:,}), {prof.gmacs:.3f} GMACs at '
          f'{"x".join(map(str, prof.input_size))} (paper {meta.gmacs_paper}; source {meta.paper})')
    return 0
