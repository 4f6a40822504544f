"""Helpers shared by the subcommands: the one ``--model-kwargs`` syntax, and the device and checkpoint options."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from mlpvision.errors import UsageError

MODEL_KWARGS_HELP = ('extra constructor arguments: KEY=VALUE pairs, as separate arguments or joined by commas '
                     '(embed_dim=128 depth=4, or embed_dim=128,depth=4); values are Python literals '
                     '(4, 0.1, True, [32, 32], 2,2,6,2 as a tuple), anything else a string')

_KEY = re.compile(r'[A-Za-z_][\w-]*')
_NEXT_PAIR = re.compile(r'\s*[A-Za-z_][\w-]*\s*=')  # what must follow a comma for it to start a new pair
_WORDS = {'true': True, 'false': False, 'null': None}  # YAML's spellings, which the train flag used to read


def parse_model_kwargs(items: str | Sequence[str] | None, flag: str = '--model-kwargs') -> dict[str, Any]:
    """``--model-kwargs`` as a dict: the one syntax of every subcommand (train, validate, predict, bench, demo).

    Each argument holds one or more ``KEY=VALUE`` pairs joined by commas, so ``embed_dim=128 depth=4`` (train's
    old form) and ``embed_dim=128,depth=4`` (bench's) give the same dict. A comma starts a new pair only where
    ``KEY=`` follows it outside brackets and quotes, which keeps this unambiguous for values holding commas:
    ``layers=2,2,6,2`` is one pair with the tuple ``(2, 2, 6, 2)``, ``img_size=[32, 32]`` a list. A value is read as
    a Python literal (``4``, ``0.1``, ``1e-3``, ``True``, ``None``, ``'gelu'``, ``(4, 4)``), or ``true`` /
    ``false`` / ``null`` in any case, else kept as the string given (``act_layer=gelu``). Dashes in keys become
    underscores. An argument that is a JSON object (``{"img_size": [32, 32]}``) is merged in as it is.

    Raises:
        UsageError: a pair without ``=``, an empty key or value, a key given twice, or a bad JSON object.
    """
    if isinstance(items, str):
        items = [items]
    out: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if key in out:
            raise UsageError(f'{flag} gives {key!r} twice')
        out[key] = value

    for item in items or []:
        item = item.strip()
        if not item:
            continue
        if item.startswith('{'):
            try:
                obj = json.loads(item)
            except json.JSONDecodeError as e:
                raise UsageError(f'{flag} {item!r} is not a valid JSON object ({e})') from None
            if not isinstance(obj, dict):
                raise UsageError(f'{flag} {item!r} is not a JSON object')
            for k, v in obj.items():
                put(str(k), v)
            continue
        for pair in _split_pairs(item):
            key, sep, value = (s.strip() for s in pair.partition('='))
            if not sep or not _KEY.fullmatch(key) or not value:
                raise UsageError(f'{flag} takes key=value pairs (e.g. embed_dim=128 depth=4); got {pair.strip()!r}'
                                 + (f' in {item!r}' if pair.strip() != item else ''))
            put(key.replace('-', '_'), _literal(value))
    return out


def _split_pairs(text: str) -> list[str]:
    """``text`` cut at the commas that start a new ``KEY=`` pair (outside brackets and quotes)."""
    parts, depth, quote, start = [], 0, '', 0
    for i, ch in enumerate(text):
        if quote:
            quote = '' if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif ch == ',' and depth == 0 and _NEXT_PAIR.match(text, i + 1):
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _WORDS.get(text.lower(), text)


def add_model_kwargs_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, **kwargs: Any) -> None:
    p.add_argument('--model-kwargs', nargs='*', metavar='KEY=VALUE', help=MODEL_KWARGS_HELP, **kwargs)


def check_model_arg(name: str | None) -> None:
    """A ``--model`` given on the command line must be a registered model (one line naming the closest ones)."""
    if name is not None:
        from mlpvision.engine.config import check_model_name
        check_model_name(name)


def add_device_args(p: argparse.ArgumentParser, batch_size: int = 64, amp: bool = True) -> None:
    """``--device``, ``-b/--batch-size``, ``--threads`` and (``amp``) ``--amp`` of the commands that run a model."""
    add_option(p, 'device', "'auto' (CUDA if available; the default), 'cpu', 'cuda' or 'cuda:N'", default='auto')
    add_option(p, 'batch_size', f'images per batch (default {batch_size})', type=int, default=batch_size)
    add_option(p, 'threads', "CPU threads for torch (default: torch's, one per core)", type=int)
    if amp:
        add_option(p, 'amp', 'autocast precision: none (default), bf16 (CPU or CUDA; the fastest on CPUs with '
                             'AVX512-BF16 or AMX) or fp16 (CUDA)', default='none')


def apply_threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """WEIGHTS and what changes how it is opened: the options of ``validate`` and ``predict``."""
    add_weights_arg(p)
    add_model_kwargs_arg(p)
    add_option(p, 'ema', 'use the EMA weights of a training checkpoint (last.pth)', action='store_true')
    add_option(p, 'deploy', 'run the deploy (re-parameterised) form: a train-form model is folded after loading',
               action='store_true')
    add_img_size(p, "input size H [W] (default: the checkpoint's or the model's)")
    p.add_argument('--crop-pct', type=float, help="eval centre-crop fraction (default: the checkpoint's or model's)")
    p.add_argument('--interpolation', choices=('bilinear', 'bicubic', 'nearest'),
                   help="resize interpolation (default: the checkpoint's or the model's)")


def open_weights_from_args(args: argparse.Namespace):
    """:func:`mlpvision.engine.loading.open_weights` with the options of :func:`add_model_args`."""
    from mlpvision.engine.loading import open_weights

    check_model_arg(args.model)
    size = img_size_arg(getattr(args, 'img_size', None))
    return open_weights(args.weights, model=args.model, model_kwargs=parse_model_kwargs(args.model_kwargs),
                        use_ema=getattr(args, 'ema', False), deploy=getattr(args, 'deploy', False),
                        img_size=None if size is None else size[0] if size[0] == size[1] else size,
                        crop_pct=getattr(args, 'crop_pct', None), interpolation=getattr(args, 'interpolation', None))


# --- one spelling per concept ------------------------------------------------------------------------------------
# Every subcommand names these things the same way (issue 26); tests/test_cli_grammar.py walks every parser and fails
# on a flag that spells a concept otherwise (an alias not listed here, another set of choices or default).

@dataclasses.dataclass(frozen=True)
class Concept:
    """One option's spelling everywhere: its flags, old spellings still accepted (each says what replaces it),
    its choices and its default where every command shares one (None: the command's own, said in its help)."""
    flags: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    default: Any = None
    metavar: str | tuple[str, ...] | None = None
    alias_values: tuple[tuple[str, str], ...] = ()  # old values of an old spelling -> the new values


CONCEPTS: dict[str, Concept] = {
    'output': Concept(('-o', '--output'), aliases=('--out',)),
    'overwrite': Concept(('--overwrite',)),
    'deploy': Concept(('--deploy',), aliases=('--reparam',)),
    'amp': Concept(('--amp',), aliases=('--dtype',), choices=('none', 'bf16', 'fp16'),
                   alias_values=(('fp32', 'none'),)),
    'batch_size': Concept(('-b', '--batch-size')),
    'workers': Concept(('-j', '--workers')),
    'img_size': Concept(('--img-size',), metavar=('H', 'W')),
    'threads': Concept(('--threads',)),
    'device': Concept(('--device',)),
    'seed': Concept(('--seed',)),
    'model': Concept(('--model',)),
    'model_kwargs': Concept(('--model-kwargs',)),
    'data_dir': Concept(('--data-dir',)),
    'dataset': Concept(('--dataset',)),
    'ema': Concept(('--ema',)),
}

_ALIAS_NOTE = '(old spelling {alias}: use {flag})'


class Alias(argparse.Action):
    """An old spelling: stores like the new one, and says once on stderr what replaces it."""

    def __init__(self, option_strings, dest, new: str = '', values_map: tuple = (), nargs=None, **kwargs):
        self.new, self.values_map = new, dict(values_map)
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys
        print(f'mlpvision: {option_string} is the old spelling of {self.new}; it still works', file=sys.stderr)
        if isinstance(values, str):
            values = self.values_map.get(values, values)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_option(p: argparse.ArgumentParser | argparse._ArgumentGroup, concept: str, help: str, **kwargs: Any) -> None:
    """Add the option for ``concept`` with its one spelling (:data:`CONCEPTS`); old spellings are added as hidden
    aliases that store into the same place and say what replaces them."""
    c = CONCEPTS[concept]
    required = kwargs.pop('required', False)
    if required and c.aliases:  # argparse would not count the old spelling as given: checked after parsing
        listed = list(p._defaults.get('_required_options', ()))
        p.set_defaults(_required_options=[*listed, (concept, '/'.join(c.flags))])
        help = f'{help} (required)'
    elif required:
        kwargs['required'] = True
    if c.choices is not None:
        kwargs.setdefault('choices', c.choices)
    if c.default is not None:
        kwargs.setdefault('default', c.default)
    if c.metavar is not None and kwargs.get('action') is None:
        kwargs.setdefault('metavar', c.metavar)
    p.add_argument(*c.flags, dest=concept, help=help, **kwargs)
    for alias in c.aliases:
        flag = c.flags[-1]
        if kwargs.get('action') == 'store_true':
            p.add_argument(alias, dest=concept, action=Alias, new=flag, nargs=0, help=argparse.SUPPRESS)
        else:
            extra = {k: v for k, v in kwargs.items() if k in ('type', 'nargs', 'choices', 'metavar')}
            if c.alias_values and 'choices' in extra:
                extra['choices'] = (*dict(c.alias_values), *extra['choices'])
            p.add_argument(alias, dest=concept, action=Alias, new=flag, values_map=c.alias_values,
                           help=argparse.SUPPRESS, **extra)


def missing_required(args: argparse.Namespace) -> list[str]:
    """The required options (:func:`add_option` with ``required=True``) not given in either spelling."""
    return [flag for dest, flag in getattr(args, '_required_options', ()) if getattr(args, dest, None) is None]


def img_size_arg(values: Sequence[int] | None) -> tuple[int, int] | None:
    """``--img-size H [W]`` as (H, W); one value is a square."""
    if not values:
        return None
    if len(values) > 2 or min(values) < 1:
        raise UsageError(f'--img-size takes H or H W (positive), got {" ".join(map(str, values))}')
    return int(values[0]), int(values[-1])


def add_img_size(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    add_option(p, 'img_size', help, type=int, nargs='+')


def add_weights_arg(p: argparse.ArgumentParser, help: str | None = None, nargs: str | None = None) -> None:
    """The positional WEIGHTS (:func:`mlpvision.engine.loading.open_weights`) and ``--model`` for official files."""
    from mlpvision.engine.loading import WEIGHTS_HELP
    p.add_argument('weights', metavar='WEIGHTS', nargs=nargs, help=help or WEIGHTS_HELP)
    add_option(p, 'model', 'the model of an official checkpoint file (mlpvision checkpoints and folders name theirs)')


def check_writable(path: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike] = (),
                   flag: str = '--overwrite') -> None:
    """Refuse to write ``path`` over an existing file (unless ``overwrite``) or over one of ``inputs`` (never)."""
    from pathlib import Path
    target = Path(path)
    for src in inputs:
        if src and Path(src).exists() and target.exists() and target.resolve() == Path(src).resolve():
            raise UsageError(f'{str(target)!r} is this command\'s input; write the output elsewhere (-o)')
    if target.exists() and not overwrite:
        raise UsageError(f'{str(target)!r} exists; pass {flag} to replace it, or choose another -o/--output')
