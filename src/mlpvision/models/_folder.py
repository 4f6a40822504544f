"""The Hugging Face Hub folder format, read side: ``model.safetensors`` (the state_dict under mlpvision's key names)
and ``config.json`` (``architecture``, ``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg``), the
layout timm writes with ``timm.models.save_for_hf`` and :func:`mlpvision.hub.save_pretrained` writes.

It lives in :mod:`mlpvision.models` so that :func:`mlpvision.create_model` reaches it without importing upwards
(:func:`mlpvision.models.load_pretrained_dir` builds the model); :mod:`mlpvision.hub` (writing, ``convert``,
``push_to_hub``) re-exports both.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn

from .._checkpoint import CheckpointError

__all__ = ['WEIGHTS_NAME', 'CONFIG_NAME', 'is_pretrained_dir', 'read_config', 'folder_contents', 'apply_saved_cfg']

WEIGHTS_NAME = 'model.safetensors'  # timm's HF_SAFE_WEIGHTS_NAME
CONFIG_NAME = 'config.json'


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def read_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / CONFIG_NAME).read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f'{str(path / CONFIG_NAME)!r} could not be read as JSON ({e}).') from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get('architecture'), str):
        raise CheckpointError(f'{str(path / CONFIG_NAME)!r} does not name an architecture; is it a timm / '
                              f'mlpvision model folder?')
    return cfg


def folder_contents(path: str | os.PathLike) -> tuple[dict, Path]:
    """(``config.json`` read, the weights file) of a Hub-style folder; :class:`CheckpointError` naming what is
    missing."""
    path = Path(path)
    cfg = read_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        found = sorted(p.name for p in path.glob('*.safetensors')) or sorted(p.name for p in path.glob('*.pth'))
        if not found:
            raise CheckpointError(f'{str(path)!r} has a config.json but no weights ({WEIGHTS_NAME}).')
        weights = path / found[0]
    return cfg, weights


def apply_saved_cfg(model: nn.Module, cfg: dict, weights: Path) -> nn.Module:
    """Set the folder's saved preprocessing and class names on ``model.pretrained_cfg``, as timm's loader keeps
    them."""
    if hasattr(model, 'pretrained_cfg'):
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in (cfg.get('pretrained_cfg') or {}).items()}
        if cfg.get('label_names'):
            saved['label_names'] = tuple(cfg['label_names'])
        model.pretrained_cfg = dict(model.pretrained_cfg, **saved, file=str(weights))
        model.default_cfg = model.pretrained_cfg
    return model
