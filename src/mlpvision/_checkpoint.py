"""Reading, mapping and writing checkpoints without executing code from them.

* :func:`read_state_dict` reads ``.safetensors`` (safetensors) or anything else with ``torch.load(weights_only=True)``,
  unwraps ``{'model': ...}`` / ``{'state_dict': ...}`` / ``{'model_ema': ...}`` and strips DDP's ``module.`` prefix.
* :func:`load_checkpoint` maps the state_dict through the model family's ``checkpoint_filter_fn`` (official key names
  to ours) and loads it strictly; any mismatch raises :class:`CheckpointError` naming the missing, unexpected and
  mis-shaped keys.
* :func:`save_state_dict` writes atomically (temporary file in the same folder, then ``os.replace``), so an
  interrupted save never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ['CheckpointError', 'read_state_dict', 'load_checkpoint', 'save_state_dict', 'atomic_save',
           'unwrap_state_dict', 'family_filter_fn']

_WRAPPER_KEYS = ('model', 'state_dict', 'model_ema', 'state_dict_ema', 'module')


class CheckpointError(ValueError):
    """A checkpoint file could not be read, or does not fit the model."""


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
_SAFE_GLOBALS = [argparse.Namespace]


def _allow_training_metadata() -> contextlib.AbstractContextManager:
    safe_globals = getattr(torch.serialization, 'safe_globals', None)  # torch >= 2.5
    return safe_globals(_SAFE_GLOBALS) if safe_globals is not None else contextlib.nullcontext()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
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
        raise CheckpointError(
            f'Checkpoint {str(path)!r} could not be read: it is truncated, corrupt, or not a weights file '
            f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}). Only tensors, dicts and plain values '
            f'are loaded (weights_only=True); re-download or re-save the file.') from e
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f'Checkpoint {str(path)!r} could not be read: {type(e).__name__}: {e}.') from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'Checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict.')
    sd = unwrap_state_dict(obj)
    if not sd:
        raise CheckpointError(f'Checkpoint {str(path)!r} holds no tensors (keys: {list(obj)[:10]}).')
    return sd


def family_filter_fn(model: nn.Module) -> Callable[[dict, nn.Module], dict] | None:
    """The ``checkpoint_filter_fn`` of the module that defines ``type(model)``, if any."""
    return getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)


def _model_name(model: nn.Module) -> str:
    from .models._base import model_name  # imported here: the model files import this module
    return model_name(model)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` fits ``model`` key for key and shape for shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return

    def _few(items: list[str]) -> str:
        return ', '.join(items[:8]) + (f', ... ({len(items)} in all)' if len(items) > 8 else '')

    lines = [f'{source} does not fit {_model_name(model)} ({len(own)} tensors in the model, {len(state_dict)} in the '
             f'checkpoint after key mapping).']
    if missing:
        lines.append(f'  missing keys: {_few(missing)}')
    if unexpected:
        lines.append(f'  unexpected keys: {_few(unexpected)}')
    if shapes:
        lines.append(f'  mis-shaped: {_few(shapes)}')
    lines.append('  Is it a checkpoint of another model or variant (or of the deploy form: use deploy=True)?')
    raise CheckpointError('\n'.join(lines))


def load_checkpoint(
        model: nn.Module,
        path: str | os.PathLike,
        filter_fn: Callable[[dict, nn.Module], dict] | None = None,
) -> nn.Module:
    """Load a checkpoint (official or mlpvision format) into ``model`` strictly, in place."""
    sd = read_state_dict(path)
    filter_fn = filter_fn or family_filter_fn(model)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except (KeyError, RuntimeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(
                f'Checkpoint {str(path)!r} could not be mapped onto {_model_name(model)}: {type(e).__name__}: {e}. '
                f'Is it a checkpoint of another model?') from e
    check_state_dict(model, sd, source=f'Checkpoint {str(path)!r}')
    model.load_state_dict(sd, strict=True)
    return model


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
