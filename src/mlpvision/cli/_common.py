"""Helpers shared by the subcommands: the one ``--model-kwargs`` syntax, and the device and checkpoint options."""
from __future__ import annotations

import argparse
import ast
import json
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


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--device', default='auto', help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--batch-size', '-b', type=int, default=64, help='images per batch (default 64)')
    p.add_argument('--threads', type=int, help="CPU threads for torch (default: torch's)")


def apply_threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('checkpoint', help='a checkpoint: mlpvision\'s (best.pth / last.pth) or an official one')
    p.add_argument('--model', help='model name; needed for official checkpoints (ours record it)')
    add_model_kwargs_arg(p)
    p.add_argument('--ema', action='store_true', help='use the EMA weights of a training checkpoint (last.pth)')
    p.add_argument('--reparam', action='store_true',
                   help='re-parameterise a train-form model into its deploy form before running it')
    p.add_argument('--img-size', type=int, help="input size (default: the checkpoint's or the model's)")
    p.add_argument('--crop-pct', type=float, help="eval centre-crop fraction (default: the checkpoint's or model's)")
    p.add_argument('--interpolation', help="resize interpolation (default: the checkpoint's or the model's)")
