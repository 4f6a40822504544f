"""The main job of `make demo`: train a small model from scratch on scikit-learn's bundled 8x8 digits images (no
download), evaluate it on the held-out 20%, and show the model table.

The recipe is recipes/digits.yaml; every `mlpvision train` flag can be given here too (e.g. --epochs 5).
"""
from __future__ import annotations

import argparse
import time

HELP = 'train and evaluate a model on the bundled digits images, then show the model table'


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .train import add_arguments as add_train_arguments

    add_train_arguments(p)
    p.set_defaults(recipe='digits', output='runs/demo', overwrite=True)
    p.add_argument('--no-table', action='store_true', help='skip the model table')


def run(args: argparse.Namespace) -> int:
    from mlpvision.engine.train import fit, resolve_config
    from mlpvision.model_table import format_rows, model_rows

    from .train import overrides_from_args
    from .validate import print_validation

    t0 = time.perf_counter()
    cfg = resolve_config(args.recipe, overrides_from_args(args))
    print(f'mlpvision demo: training {cfg.model} from scratch on {cfg.dataset} '
          f'(scikit-learn\'s 1797 8x8 handwritten digits, 80/20 split), {cfg.epochs} epochs on the CPU\n', flush=True)
    result = fit(cfg)

    from mlpvision.engine.inference import validate_checkpoint
    v = validate_checkpoint(result.best or result.last, split='val', workers=0, device=cfg.device,
                            output_dir=result.output_dir)
    elapsed = time.perf_counter() - t0
    print(f'\nmodel:      {result.description}, {result.params:,} parameters')
    print(f'training:   {cfg.epochs} epochs in {result.elapsed_s:.0f} s (training and evaluation: {elapsed:.0f} s)')
    print('test set:   ', end='')
    print_validation(v, indent='')
    print(f'checkpoint: {result.best} (best), {result.last} (last)')
    print(f'metrics:    {result.metrics_csv}')
    print(f'plot:       {result.plot or "- (matplotlib not installed)"}')
    print(f'config:     {result.config_yaml}')
    print(f'next:       mlpvision validate {result.best}   |   mlpvision predict {result.best} <images>')
    if not args.no_table:
        print('\nmodels (params and GMACs measured at each default input size):\n', flush=True)
        print(format_rows(model_rows()), end='')
    return 0
