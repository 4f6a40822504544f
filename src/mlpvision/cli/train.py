"""Train a model: `mlpvision train --recipe <name> [--option value ...]`.

Options come from, in increasing precedence: the defaults, the checkpoint being resumed (--resume), a recipe
(--recipe: a YAML file under recipes/, by name or path) and the flags given here. Multi-GPU:
`torchrun --nproc_per_node=N -m mlpvision.cli.main train ...` (one process per GPU; LOCAL_RANK, RANK and
WORLD_SIZE come from the environment). The run folder receives config.yaml, last.pth, best.pth, metrics.csv,
curves.png and, when tensorboard is installed, tensorboard/.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from ._common import MODEL_KWARGS_HELP, parse_model_kwargs

HELP = 'train a model on a dataset with a paper recipe (or your options)'


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mlpvision.engine.config import config_fields

    p.add_argument('--recipe', help='a recipe name (see --list-recipes) or a YAML file (default: none, the defaults '
                                    'shown here)')
    p.add_argument('--list-recipes', action='store_true', help='list the recipes and exit')
    short = {'batch_size': ['-b'], 'workers': ['-j'], 'output': ['-o']}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, tp in config_fields():
        if not f.metadata.get('cli', True):
            continue
        group_name = 'data' if f.name in _DATA else 'model' if f.name in _MODEL else \
            'run' if f.name in _RUN else 'optimisation'
        g = groups.setdefault(group_name, p.add_argument_group(group_name))
        flags = [*short.get(f.name, []), _flag(f.name)]
        help_ = _with_default(f.metadata.get('help', ''), f)
        args = typing.get_args(tp)
        base = next((a for a in args if a is not type(None)), tp) if args else tp
        origin = typing.get_origin(base) or base
        if origin is bool:
            g.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif origin is list:
            g.add_argument(*flags, dest=f.name, type=float, nargs='+', default=None, help=help_)
        elif origin is dict:  # model_kwargs, the only mapping option: the syntax every subcommand shares
            g.add_argument(*flags, dest=f.name, nargs='*', metavar='KEY=VALUE', default=None,
                           help=f'{MODEL_KWARGS_HELP} (default: none)')
        else:
            g.add_argument(*flags, dest=f.name, type=origin, default=None, help=help_)


def _with_default(help_: str, f: dataclasses.Field) -> str:
    """``help_`` ending in the option's default unless it already says it (argparse's defaults here are None, so
    that only the flags given override a recipe)."""
    if 'default' in help_:
        return help_
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    if isinstance(value, bool):
        text = _flag(f.name) if value else '--no-' + _flag(f.name)[2:]
    elif value is None or value == {}:
        text = 'none'
    else:
        text = ' '.join(map(str, value)) if isinstance(value, list) else str(value)
    return f'{help_} (default: {text})'.replace('%', '%%')


_DATA = {'dataset', 'data_dir', 'download', 'train_split', 'val_split', 'fake_size', 'fake_classes', 'skip_corrupt',
         'img_size', 'in_chans', 'mean', 'std', 'interpolation', 'crop_pct', 'train_crop', 'scale', 'ratio', 'hflip',
         'color_jitter', 'aa', 'reprob', 'remode', 'recount', 'aug_repeats', 'batch_size', 'val_batch_size',
         'workers', 'data_in_memory', 'data_cache', 'pin_memory'}
_MODEL = {'model', 'model_kwargs', 'drop_rate', 'drop_path_rate', 'finetune', 'sync_bn', 'channels_last',
          'grad_checkpointing', 'compile'}
_RUN = {'output', 'overwrite', 'resume', 'seed', 'deterministic', 'device', 'threads', 'checkpoint_every_steps',
        'eval_every', 'log_interval', 'log_seconds', 'progress', 'tensorboard', 'plot'}


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The options given on the command line (None: not given)."""
    from mlpvision.engine.config import config_fields

    out = {}
    for f, _ in config_fields():
        v = getattr(args, f.name, None)
        if v is None:
            continue
        out[f.name] = parse_model_kwargs(v) if f.name == 'model_kwargs' else v
    return out


def print_summary(result: typing.Any, plot: bool = True) -> None:
    """Where the results are; ``plot``: whether curves.png was asked for (--plot, the default)."""
    final = result.final
    print(f'\ntrained {result.description}: {result.params:,} params, {result.elapsed_s:.0f} s')
    if final is not None:
        print(f'validation ({final.n} images): top-1 {final.top1:.2f}%  top-5 {final.top5:.2f}%  loss {final.loss:.4f}'
              f'  (best top-1 {result.best_acc1:.2f}% at epoch {result.best_epoch})')
    print(f'checkpoints: {result.best or "-"} (best), {result.last} (last)')
    print(f'metrics:     {result.metrics_csv}')
    print(f'plot:        {result.plot or ("- (matplotlib not installed)" if plot else "- (--no-plot)")}')
    print(f'config:      {result.config_yaml}')


def bare_train_notice(cfg: typing.Any) -> str:
    """What a ``train`` without a recipe or options is about to do, and how to choose instead."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(cfg.model)
    size = cfg.img_size or (pcfg.input_size[-1] if pcfg is not None else '?')
    return (f'no --recipe and no options given: training the defaults, {cfg.model} on {cfg.dataset} for '
            f'{cfg.epochs} epochs at {size} px (a paper-length run). Pick a recipe with --recipe NAME (names: '
            f'mlpvision train --list-recipes; a quick one: --recipe digits) or set --dataset, --model and --epochs; '
            f'Ctrl-C saves a checkpoint and stops.')


def run(args: argparse.Namespace) -> int:
    from mlpvision.engine.config import list_recipes, recipe_dir

    if args.list_recipes:
        for name in list_recipes():
            print(name)
        if not list_recipes():
            print(f'(no recipes found in {recipe_dir()})')
        return 0
    from mlpvision.engine.train import fit, resolve_config

    overrides = overrides_from_args(args)
    cfg = resolve_config(args.recipe, overrides)
    if args.recipe is None and not overrides:
        print(bare_train_notice(cfg), file=sys.stderr)
    result = fit(cfg)
    if int(os.environ.get('RANK', '0')) == 0:  # under torchrun only the primary process reports
        print_summary(result, cfg.plot)
    return 0
