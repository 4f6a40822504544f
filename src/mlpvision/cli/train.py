"""Train a model: `mlpvision train [--task classify|segment|detect] --recipe <name> [--option value ...]`.

One command and one run loop for the three tasks: image classification (the default), semantic segmentation
(UperNet on a backbone: `--task segment --backbone NAME`) and detection / instance segmentation (Mask R-CNN or
RetinaNet on a backbone: `--task detect --model maskrcnn --backbone NAME`). The task is read from the recipe
(`task:`) or the resumed checkpoint when --task is not given. Options come from, in increasing precedence: the task's
defaults, the checkpoint being resumed (--resume), a recipe (--recipe: a YAML file under recipes/, by name or path)
and the flags given here; an option of another task is refused. Multi-GPU:
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

from mlpvision.errors import UsageError

from ._common import CONCEPTS, MODEL_KWARGS_HELP, parse_model_kwargs

HELP = 'train a classifier, segmenter or detector (--task) with a paper recipe or your options'


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mlpvision.engine.config import config_fields

    p.add_argument('--recipe', help='a recipe name (see --list-recipes) or a YAML file (default: none, the defaults '
                                    'shown here)')
    p.add_argument('--list-recipes', action='store_true', help='list the recipes and exit')
    p.add_argument('--task', choices=tuple(TASK_CONFIGS), help="what to train: classify, segment or detect (default: "
                   "the recipe's or the resumed checkpoint's task, else classify)")
    p.add_argument('--pretrained', action='store_true', help="fine-tune from the model's default released weights "
                                                             '(the short form of --finetune NAME.TAG)')
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
            choices = CONCEPTS[f.name].choices if f.name in CONCEPTS else None
            if f.name == 'dataset':
                from ._datasets import DATASET_CHOICES
                choices = DATASET_CHOICES
            g.add_argument(*flags, dest=f.name, type=origin, default=None, help=help_, choices=choices)
    _add_task_flags(p, {f.name for f, _ in config_fields()})


# the configuration class of each task, by module and name (imported when needed: the parser is built without torch
# models being created)
TASK_CONFIGS = {'classify': ('mlpvision.engine.config', 'TrainConfig'),
                'segment': ('mlpvision.engine.segmentation', 'SegConfig'),
                'detect': ('mlpvision.engine.detection', 'DetConfig')}
_TASK_HELP = {
    'backbone': 'segment / detect: the backbone, an mlpvision model (as_mlp_tiny, ...) or a timm model (resnet18, ...)',
    'pyramid': "segment / detect: 'auto' (mlpvision.dense.backbone for mlpvision models, timm features_only for "
               "others) or 'timm' (features_only for every backbone)",
    'channels': 'segment: UPerHead channels', 'aux_channels': 'segment: FCN auxiliary head channels',
    'aux_weight': 'segment: auxiliary loss weight; 0 drops the auxiliary head',
    'num_classes': "segment: class ids in the masks (needed for --dataset folder)",
    'ignore_index': 'segment: mask value left out of the loss and metrics (CamVid void becomes it)',
    'base_size': 'segment: short side the images are resized to (evaluation) and scaled around (training)',
    'crop': 'segment: training crop H W', 'ratio_range': 'segment: random scale range around --base-size',
    'photometric': "segment: mmseg's photometric distortion",
    'warmup_steps': 'segment / detect: linear warm-up steps',
    'warmup_ratio': 'segment / detect: warm-up start as a fraction of --lr',
    'poly_power': 'segment: poly decay power', 'eval_mode': "segment: 'whole' image or 'slide' window evaluation",
    'slide_crop': 'segment: sliding-window size H W', 'slide_stride': 'segment: sliding-window stride H W',
    'train_images': 'detect, pennfudan: images drawn for training (the rest are held out)',
    'split_seed': 'detect, pennfudan: seed of the one permutation that splits the images',
    'drop_degenerate': 'detect: leave out boxes of zero width or height (COCO train2017 has two: annotation ids 918 '
                       'and 2206849) instead of stopping at them',
    'min_size': 'detect: training short sides (one drawn per image; multi-scale training)',
    'max_size': 'detect: longest side after resizing', 'eval_min_size': 'detect: evaluation short side',
    'box_batch_size_per_image': 'detect, Mask R-CNN: RoIs sampled per image for the box / mask heads',
    'box_score_thresh': 'detect: lowest score a detection is kept with (for AP; drawings use predict --score)',
    'detections_per_img': 'detect: most detections kept per image',
    'lr_steps': 'detect: epochs after which the rate is multiplied by --lr-gamma',
    'lr_gamma': 'detect: rate factor at each --lr-steps epoch',
}
_INT_LISTS = {'crop': 2, 'slide_crop': 2, 'slide_stride': 2, 'min_size': '+', 'lr_steps': '+'}


def task_config_class(task: str) -> type:
    import importlib

    module, name = TASK_CONFIGS[task]
    return getattr(importlib.import_module(module), name)


def task_fields(task: str) -> set[str]:
    return {f.name for f in dataclasses.fields(task_config_class(task))}


def _add_task_flags(p: argparse.ArgumentParser, seen: set[str]) -> None:
    """The segmentation and detection options that classification does not have (their shared options use the
    same flags)."""
    g = p.add_argument_group('segment / detect')
    for task in ('segment', 'detect'):
        for f in dataclasses.fields(task_config_class(task)):
            if f.name in seen:
                continue
            seen.add(f.name)
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            text = ' '.join(map(str, default)) if isinstance(default, list) else default
            help_ = f'{_TASK_HELP.get(f.name, f"{task}: " + f.name.replace("_", " "))} (default: {text})'
            help_ = help_.replace('%', '%%')
            flag = _flag(f.name)
            if isinstance(default, bool):
                g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
            elif f.name in _INT_LISTS:
                g.add_argument(flag, dest=f.name, type=int, nargs=_INT_LISTS[f.name], default=None, help=help_)
            elif isinstance(default, list):
                g.add_argument(flag, dest=f.name, type=float, nargs=2, default=None, help=help_)
            else:
                tp = float if isinstance(default, float) else int if isinstance(default, int) or f.name in (
                    'num_classes',) else str
                g.add_argument(flag, dest=f.name, type=tp, default=None, help=help_)


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
         'allow_empty_classes',
         'img_size', 'in_chans', 'mean', 'std', 'interpolation', 'crop_pct', 'train_crop', 'scale', 'ratio', 'hflip',
         'color_jitter', 'aa', 'reprob', 'remode', 'recount', 'aug_repeats', 'batch_size', 'val_batch_size',
         'workers', 'data_in_memory', 'data_cache', 'pin_memory'}
_MODEL = {'model', 'model_kwargs', 'drop_rate', 'drop_path_rate', 'finetune', 'relabel', 'sync_bn', 'channels_last',
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


def given_options(args: argparse.Namespace) -> dict:
    """Every task option given on the command line (None: not given), model kwargs parsed."""
    names = set().union(*(task_fields(t) for t in TASK_CONFIGS)) - {'recipe'}  # --recipe is the recipe itself
    out = {}
    for name in sorted(names):
        v = getattr(args, name, None)
        if v is not None:
            out[name] = parse_model_kwargs(v) if name == 'model_kwargs' else v
    return out


def choose_task(args: argparse.Namespace) -> str:
    """--task, else the recipe's ``task:``, else the resumed checkpoint's task, else classify; a --task that
    contradicts the recipe or the checkpoint is refused."""
    from mlpvision.engine.config import recipe_task
    from mlpvision.engine.run import resume_path, task_of_checkpoint
    from mlpvision.errors import UsageError

    found = {}
    if args.recipe:
        found['the recipe'] = recipe_task(args.recipe)
    if args.resume:
        path = resume_path(args.resume, args.output) if args.resume != 'auto' or args.output else None
        if path is not None:
            from mlpvision.engine.checkpoint import load_checkpoint_file
            found['the checkpoint'] = task_of_checkpoint(load_checkpoint_file(path).get('mlpvision') or {})
    found = {k: v for k, v in found.items() if v}
    task = args.task or next(iter(found.values()), None) or 'classify'
    for where, t in found.items():
        if t != task:
            raise UsageError(f'--task {task}, but {where} is a {t} run; drop --task or pass --task {t}')
    return task


def _check_options(task: str, given: dict) -> None:
    from mlpvision.errors import UsageError

    allowed = task_fields(task)
    foreign = [k for k in given if k not in allowed]
    if foreign:
        owners = {k: [t for t in TASK_CONFIGS if k in task_fields(t)] for k in foreign}
        k = foreign[0]
        raise UsageError(f'{_flag(k)} is an option of --task {" / ".join(owners[k])}, not of --task {task}; drop it '
                         f'or pass --task {owners[k][0]}')


def run(args: argparse.Namespace) -> int:
    from mlpvision.engine.config import list_recipes, recipe_dir

    if args.list_recipes:
        for name in list_recipes():
            print(name)
        if not list_recipes():
            print(f'(no recipes found in {recipe_dir()})')
        return 0
    task = choose_task(args)
    given = given_options(args)
    _check_options(task, given)
    if task != 'classify':
        return run_dense(task, args.recipe, given)
    from mlpvision.engine.train import fit, resolve_config

    overrides = overrides_from_args(args)
    cfg = resolve_config(args.recipe, overrides)
    if args.pretrained:
        if cfg.finetune:
            raise UsageError('--pretrained is the short form of --finetune NAME.TAG; give one of the two')
        from mlpvision.engine.loading import default_tag
        cfg = dataclasses.replace(cfg, finetune=default_tag(cfg.model))
    if args.recipe is None and not overrides:
        print(bare_train_notice(cfg), file=sys.stderr)
    result = fit(cfg)
    if int(os.environ.get('RANK', '0')) == 0:  # under torchrun only the primary process reports
        print_summary(result, cfg.plot)
    return 0


def run_dense(task: str, recipe: str | None, given: dict) -> int:
    """Train a segmentation or detection task: recipe options under the flags given (the resumed checkpoint's under
    both)."""
    from mlpvision.engine.config import load_recipe

    options = dict(load_recipe(recipe, task_config_class(task)) if recipe else {})
    options.pop('recipe', None)
    options.update(given)
    if task == 'segment':
        from mlpvision.engine.segmentation import fit_seg, resolve_seg_config
        result = fit_seg(resolve_seg_config(options))
        final = (f'validation: mIoU {result.final.miou:.2f}%  pixel acc {result.final.pixel_acc:.2f}%  (best mIoU '
                 f'{result.best_miou:.2f}% at epoch {result.best_epoch})' if result.final is not None else '')
        files = 'best.pth, last.pth, metrics.csv, per_class.csv, confusion.csv, curves.png'
    else:
        from mlpvision.engine.detection import fit_det, resolve_det_config
        result = fit_det(resolve_det_config(options))
        f = result.final or {}
        mask = f'  mask AP {f["segm_AP"]:.2f}' if 'segm_AP' in f else ''
        final = (f'held-out: box AP {f["bbox_AP"]:.2f}  AP50 {f["bbox_AP50"]:.2f}{mask}  (best box AP '
                 f'{result.best_ap:.2f} at epoch {result.best_epoch})' if f else '')
        files = 'best.pth, last.pth, metrics.csv, per_class.csv, curves.png'
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'\ntrained {task}: {result.params:,} params, {result.elapsed_s:.0f} s')
        if final:
            print(final)
        print(f'run folder: {result.output} ({files})')
    return 0
