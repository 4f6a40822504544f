"""Training checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, state dicts and plain values only:

* ``model`` (the weights; what ``mlpvision.create_model(checkpoint_path=...)`` and ``mlpvision validate`` read),
  ``ema`` (EMA weights or None), ``optimizer``, ``scheduler``, ``scaler``;
* ``epoch`` (the epoch in progress), ``step_in_epoch`` (optimizer steps done in it), ``global_step``;
* ``rng``: torch (CPU and CUDA), numpy and Python RNG states as tensors;
* ``meters`` (the running sums of the epoch in progress), ``best``;
* ``mlpvision``: what is needed to rebuild the model and its preprocessing without the training command
  (model name, constructor kwargs, class names, data config, the resolved training config).

``last.pth`` is the full state (rewritten at every epoch end and every ``checkpoint_every_steps`` steps);
``best.pth`` holds the weights that scored best on the validation split (no optimizer state).
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._checkpoint import CheckpointError, atomic_save, check_state_dict, family_filter_fn, unwrap_state_dict

__all__ = ['get_rng_state', 'set_rng_state', 'save_checkpoint', 'load_checkpoint_file', 'load_weights',
           'load_finetune_weights', 'CheckpointError']


def get_rng_state() -> dict[str, Any]:
    """Every RNG that training consumes, as tensors (so ``weights_only`` loading accepts them)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'python': torch.tensor(py_state, dtype=torch.int64),
        'python_version': py_version,
        'python_gauss': py_gauss,
        'numpy_keys': torch.from_numpy(np_keys.astype(np.int64)),
        'numpy_pos': int(np_pos),
        'numpy_has_gauss': int(np_has_gauss),
        'numpy_gauss': float(np_gauss),
        'numpy_name': str(np_name),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    random.setstate((state['python_version'], tuple(state['python'].tolist()), state['python_gauss']))
    np.random.set_state((state['numpy_name'], state['numpy_keys'].numpy().astype(np.uint32), state['numpy_pos'],
                         state['numpy_has_gauss'], state['numpy_gauss']))
    if 'cuda' in state and torch.cuda.is_available():
        cuda = state['cuda']
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another GPU count: every device gets the first device's state
            for i in range(torch.cuda.device_count()):
                torch.cuda.set_rng_state(cuda[0], i)


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` (tensors moved to CPU) through a temporary file and a rename."""
    return atomic_save(_cpu(dict(state)), path)


def load_checkpoint_file(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` with one clear error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {str(path)!r} does not exist')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            return {'model': load_file(str(path), device='cpu')}
        except Exception as e:
            raise CheckpointError(f'checkpoint {str(path)!r} could not be read ({type(e).__name__}: {e})') from None
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise CheckpointError(f'checkpoint {str(path)!r} could not be read: truncated, corrupt or not a weights file '
                              f'({type(e).__name__}: {first[:200]})') from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict')
    return dict(obj)


def _check(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """mlpvision's strict key and shape check, reported in one line: counts and one example of each mismatch."""
    try:
        check_state_dict(model, sd, source)
    except CheckpointError:
        own = model.state_dict()
        missing = sorted(own.keys() - sd.keys())
        unexpected = sorted(sd.keys() - own.keys())
        shaped = [f'{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}'
                  for k, v in own.items() if k in sd and sd[k].shape != v.shape]
        parts = [f'{len(keys)} {kind} (e.g. {keys[0]})' for kind, keys in
                 (('missing keys', missing), ('unexpected keys', unexpected), ('mis-shaped', shaped)) if keys]
        name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
        raise CheckpointError(f'{source} does not fit {name}: {", ".join(parts)}; is it a checkpoint of another '
                              f'model or configuration?') from None


def _mapped(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` mapped through the model family's checkpoint_filter_fn (official key names to ours)."""
    fn = family_filter_fn(model)
    if fn is None:
        return sd
    try:
        return fn(sd, model)
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        if isinstance(e, CheckpointError):
            raise
        return sd  # the filter could not map it; the strict check below reports the mismatch


def load_weights(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = 'Checkpoint') -> None:
    """Load ``sd`` (ours or official format) into ``model`` strictly, with a one-line error on mismatch."""
    sd = _mapped(model, dict(unwrap_state_dict(sd)))
    _check(model, sd, source)
    model.load_state_dict(sd, strict=True)


def load_finetune_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Initialise ``model`` from a checkpoint, leaving the classifier new when its size differs.

    Returns:
        the classifier keys that were not loaded (empty when the head fitted).
    """
    obj = load_checkpoint_file(path)
    sd = _mapped(model, dict(unwrap_state_dict(obj)))
    if not sd:
        raise CheckpointError(f'checkpoint {str(path)!r} holds no weights')
    own = model.state_dict()
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier', 'head')
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    is_head = lambda k: any(k == c or k.startswith(c + '.') for c in prefixes)  # noqa: E731
    new_head = [k for k in own if is_head(k) and (k not in sd or tuple(sd[k].shape) != tuple(own[k].shape))]
    if new_head:  # the whole classifier is replaced, not a part of it
        new_head = [k for k in own if is_head(k)]
        sd = {k: v for k, v in sd.items() if not is_head(k)}
    # the new classifier's own tensors stand in for the checkpoint's, so the check covers everything else
    _check(model, {**sd, **{k: own[k] for k in new_head}}, f'Checkpoint {str(path)!r}')
    model.load_state_dict(sd, strict=False)
    return new_head
