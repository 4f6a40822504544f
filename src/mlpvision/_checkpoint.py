"""Weights in and out: reading, key mapping, strict loading and atomic writing, without executing code from a file.

This is the one place mlpvision reads weights (``create_model(checkpoint_path=...)``, ``mlpvision validate`` /
``predict``, ``train --resume`` / ``--finetune``); ``engine/checkpoint.py`` adds only the training state around it.

* :func:`read_checkpoint` reads ``.safetensors`` (safetensors) or anything else with ``torch.load(weights_only=True)``
  (plus ``argparse.Namespace`` and yacs' ``CfgNode``, which official training scripts pickle next to the weights);
  :func:`read_state_dict` then unwraps ``{'model': ...}`` / ``{'state_dict': ...}`` / ``{'model_ema': ...}`` and
  strips DDP's ``module.``.
* Each model family registers its key-mapping filter (official or timm key names to ours) for its model class with
  :func:`register_checkpoint_filter`; a class without one loads the keys as they are.
* :func:`load_weights` / :func:`load_checkpoint` map a state_dict through that filter and load it strictly. A filter
  that fails, or any mismatch, raises :class:`CheckpointError` naming the file and the model; a mismatch lists the
  missing, unexpected and mis-shaped keys on one line (the CLI prints it as its one-line error).
* Train form into deploy form: given ``train_form`` (a builder of the same model with ``deploy=False``, which
  ``create_model(..., deploy=True)`` passes), a state_dict that does not fit the deploy model but fits the train form
  is loaded there and folded by :func:`mlpvision.reparameterize`. This decision is made here, from the keys after the
  family filter, for every family alike.
* :func:`save_state_dict` writes atomically (temporary file in the same folder, then ``os.replace``), so an
  interrupted save never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from ._reparam import reparameterize
from .errors import MlpvisionError

__all__ = ['CheckpointError', 'model_name', 'read_checkpoint', 'read_state_dict', 'unwrap_state_dict',
           'register_checkpoint_filter', 'checkpoint_filter', 'check_state_dict', 'load_weights', 'load_checkpoint',
           'load_finetune_weights', 'save_state_dict', 'atomic_save']

FilterFn = Callable[[dict, nn.Module], dict]

_WRAPPER_KEYS = ('model', 'state_dict', 'model_ema', 'state_dict_ema', 'module')


class CheckpointError(MlpvisionError, ValueError):
    """A checkpoint file could not be read, or does not fit the model."""


def model_name(model: nn.Module) -> str:
    """The registered name (from the pretrained cfg) for error messages, else the class name."""
    return (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__


# --- reading -----------------------------------------------------------------------------------------------------

def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The tensor dict inside a training checkpoint, without DDP's ``module.`` prefix."""
    for _ in range(3):  # e.g. {'model': {'state_dict': ...}} has been seen in the wild
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


# Training scripts built on DeiT / timm's train.py pickle their argparse options next to the weights ('args'), as in
# the official Hire-MLP checkpoints; a Namespace holds only plain values, so it is safe to allow under weights_only.
# Those built on Swin-Transformer's (AS-MLP, Strip-MLP, RepMLPNet: utils.save_checkpoint) pickle their yacs config
# ('config'), a dict subclass of plain values: it is read as an OrderedDict, without importing yacs or running its code
# (torch's weights_only unpickler fills an OrderedDict by key and value, as it would the CfgNode).
_SAFE_GLOBALS = [argparse.Namespace, (collections.OrderedDict, 'yacs.config.CfgNode')]


def _allow_training_metadata() -> contextlib.AbstractContextManager:
    safe_globals = getattr(torch.serialization, 'safe_globals', None)  # torch >= 2.5
    return safe_globals(_SAFE_GLOBALS) if safe_globals is not None else contextlib.nullcontext()


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The whole object in a checkpoint file (a dict), read without executing code from it.

    A ``.safetensors`` file gives its flat tensor dict; anything else is read with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, holds pickled code, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'Checkpoint {str(path)!r} does not exist (or is not a file).')
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            obj = load_file(str(path), device='cpu')
        else:
            with _allow_training_metadata():
                obj = torch.load(path, map_location='cpu', weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise CheckpointError(
            f'Checkpoint {str(path)!r} could not be read: it is truncated, corrupt, or not a weights file '
            f'({type(e).__name__}: {first}). Only tensors, dicts and plain values are loaded (weights_only=True); '
            f're-download or re-save the file.') from e
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f'Checkpoint {str(path)!r} could not be read: {type(e).__name__}: {e}.') from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'Checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict.')
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file: :func:`read_checkpoint`, then :func:`unwrap_state_dict`."""
    obj = read_checkpoint(path)
    sd = unwrap_state_dict(obj)
    if not sd:
        raise CheckpointError(f'Checkpoint {str(path)!r} holds no tensors (keys: {list(obj)[:10]}).')
    return sd


# --- key mapping -------------------------------------------------------------------------------------------------

_FILTERS: dict[type, FilterFn] = {}


def register_checkpoint_filter(cls: type[nn.Module] | tuple[type[nn.Module], ...], fn: FilterFn) -> FilterFn:
    """Make ``fn(state_dict, model)`` the key mapping of checkpoints loaded into models of exactly ``cls``.

    Each family file calls this next to its ``checkpoint_filter_fn``. The lookup is by the model's exact class, so a
    subclass (which may change the structure) maps nothing until it registers a filter of its own.
    """
    for c in cls if isinstance(cls, tuple) else (cls,):
        _FILTERS[c] = fn
    return fn


def checkpoint_filter(model: nn.Module | type[nn.Module]) -> FilterFn | None:
    """The key-mapping filter registered for ``type(model)`` (or the class given), or None (keys load as they are)."""
    return _FILTERS.get(model if isinstance(model, type) else type(model))


def _mapped(model: nn.Module, sd: dict[str, torch.Tensor], source: str, filter_fn: FilterFn | None) -> dict:
    fn = filter_fn or checkpoint_filter(model)
    if fn is None:
        return sd
    try:
        return fn(sd, model)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError, IndexError) as e:  # what a foreign key layout makes a filter raise
        raise CheckpointError(
            f'{source} could not be mapped onto {model_name(model)} by {fn.__module__}.{fn.__qualname__} '
            f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); is it a checkpoint of another '
            f'model?') from e


# --- strict checking and loading ---------------------------------------------------------------------------------

def _mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> tuple[int, str] | None:
    """None when ``sd`` fits ``model`` key for key and shape for shape, else (number of missing and unexpected keys,
    description). The key count tells the forms apart; shapes differ between variants rather than forms."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f'{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}'
              for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return None

    def _few(items: list[str]) -> str:
        return ', '.join(items[:5]) + (f', ... ({len(items)} in all)' if len(items) > 5 else '')

    parts = [f'{kind}: {_few(keys)}' for kind, keys in
             (('missing keys', missing), ('unexpected keys', unexpected), ('mis-shaped', shapes)) if keys]
    text = (f'{len(own)} tensors in the model, {len(sd)} in the checkpoint after key mapping; ' + '; '.join(parts))
    return len(missing) + len(unexpected), text


def _mismatch_error(model: nn.Module, description: str, source: str, form: str = '',
                    hint: str | None = None) -> CheckpointError:
    """The one mismatch message; ``hint`` (default: how to load the other form) ends its question."""
    if hint is None and getattr(model, 'deploy', False):
        hint = (f'; a train-form checkpoint loads into deploy=True through mlpvision.create_model('
                f'{model_name(model)!r}, deploy=True, checkpoint_path=...), which folds it on load')
    elif hint is None:
        hint = ' (or of the deploy form: use deploy=True)'
    return CheckpointError(f'{source} does not fit {model_name(model)}{form} ({description}). Is it a checkpoint of '
                           f'another model or variant{hint}?')


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = 'Checkpoint') -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` fits ``model`` key for key and shape for shape.

    The message is one line: ``<source> does not fit <model> (<counts>; missing keys: ...; unexpected keys: ...;
    mis-shaped: <key>: checkpoint <shape> vs model <shape>). Is it ...?``, with up to five keys of each kind.
    """
    bad = _mismatch(model, state_dict)
    if bad is not None:
        raise _mismatch_error(model, bad[1], source)


def load_weights(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        source: str = 'Checkpoint',
        filter_fn: FilterFn | None = None,
        train_form: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Load ``state_dict`` (ours, official or timm format) into ``model`` strictly, in place.

    Args:
        source: how error messages name the state_dict, e.g. ``"Checkpoint 'w.pth'"``.
        filter_fn: the key mapping; default the one registered for ``type(model)``.
        train_form: for a model built with ``deploy=True``, a builder of the same model with ``deploy=False``: a
            state_dict that does not fit ``model`` but fits the train form is loaded into the train form,
            re-parameterised and then loaded into ``model``.

    Returns:
        ``model``.

    Raises:
        CheckpointError: the filter failed, or the state_dict fits neither form.
    """
    raw = dict(unwrap_state_dict(state_dict))
    sd = _mapped(model, raw, source, filter_fn)
    bad = _mismatch(model, sd)
    if bad is None:
        model.load_state_dict(sd, strict=True)
        return model
    if train_form is not None:
        train = train_form()
        sd_train = _mapped(train, raw, source, filter_fn)
        bad_train = _mismatch(train, sd_train)
        if bad_train is None:
            train.load_state_dict(sd_train, strict=True)
            folded = reparameterize(train, inplace=True).state_dict()
            check_state_dict(model, folded, f'The re-parameterised train form of {source}')
            model.load_state_dict(folded, strict=True)
            return model
        if bad_train[0] < bad[0]:  # its keys are nearer the train form's: say what is wrong for that one
            raise _mismatch_error(train, bad_train[1], source, ' in its train form (nor in its deploy form)', hint='')
        raise _mismatch_error(model, bad[1], source, ' in its deploy form (nor in its train form)', hint='')
    raise _mismatch_error(model, bad[1], source)


def load_checkpoint(
        model: nn.Module,
        path: str | os.PathLike,
        filter_fn: FilterFn | None = None,
        train_form: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Load a checkpoint file (official or mlpvision format) into ``model`` strictly, in place; see
    :func:`load_weights`."""
    return load_weights(model, read_state_dict(path), f'Checkpoint {str(path)!r}', filter_fn, train_form)


def load_finetune_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Initialise ``model`` from a checkpoint file, leaving the classifier new when its size differs.

    Everything but the classifier must fit strictly (after the family's key mapping).

    Returns:
        the classifier keys that were not loaded (empty when the head fitted).
    """
    return load_finetune_state_dict(model, read_state_dict(path), f'Checkpoint {str(path)!r}')


def load_finetune_state_dict(model: nn.Module, state_dict: dict, source: str) -> list[str]:
    """:func:`load_finetune_weights` of a state dict already read (``source`` names it in errors)."""
    sd = _mapped(model, state_dict, source, None)
    own = model.state_dict()
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier', 'head')
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    is_head = lambda k: any(k == c or k.startswith(c + '.') for c in prefixes)  # noqa: E731
    new_head = [k for k in own if is_head(k) and (k not in sd or tuple(sd[k].shape) != tuple(own[k].shape))]
    if new_head:  # the whole classifier is replaced, not a part of it
        new_head = [k for k in own if is_head(k)]
        sd = {k: v for k, v in sd.items() if not is_head(k)}
    # the new classifier's own tensors stand in for the checkpoint's, so the check covers everything else
    check_state_dict(model, {**sd, **{k: own[k] for k in new_head}}, source)
    model.load_state_dict(sd, strict=False)
    return new_head


# --- writing -----------------------------------------------------------------------------------------------------

def atomic_save(obj: object, path: str | os.PathLike, writer: Callable[[object, str], None] | None = None) -> Path:
    """Write ``obj`` to ``path`` through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        (writer or (lambda o, p: torch.save(o, p)))(obj, tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_state_dict(model_or_sd: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, str] | None = None) -> Path:
    """Save weights atomically as ``.safetensors`` (by suffix) or a ``.pth`` state_dict."""
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else dict(model_or_sd)
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    if str(path).endswith('.safetensors'):
        from safetensors.torch import save_file
        return atomic_save(sd, path, lambda o, p: save_file(o, p, metadata=metadata))
    return atomic_save(sd, path)
