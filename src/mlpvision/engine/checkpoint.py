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

Weights themselves are read, mapped and loaded by :mod:`mlpvision._checkpoint` (``load_weights``,
``load_finetune_weights``); this module adds the training state around them.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checkpoint import atomic_save, read_checkpoint

__all__ = ['get_rng_state', 'set_rng_state', 'save_checkpoint', 'load_checkpoint_file']


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
    """A training checkpoint as a dict, read by :func:`mlpvision._checkpoint.read_checkpoint` (weights_only).

    A ``.safetensors`` file holds weights only; it comes back as ``{'model': weights}``, the training checkpoint's
    layout, so callers find the weights in one place.
    """
    obj = read_checkpoint(path)
    return {'model': obj} if Path(path).suffix == '.safetensors' else obj
