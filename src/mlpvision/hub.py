"""Pretrained weights in and out: checked downloads into the cache, and the Hugging Face Hub folder format.

Downloads (:func:`download_weights`, :func:`cache_dir`) live in :mod:`mlpvision._download`, the folder reader in
:mod:`mlpvision.models._folder` (so that :mod:`mlpvision.models` imports nothing above it); both are re-exported
here.

The folder format (:func:`save_pretrained`, :func:`convert`, ``mlpvision convert``) is the one timm writes for the
Hugging Face Hub (``timm.models.save_for_hf``): ``model.safetensors`` (the state_dict under mlpvision's key names)
and ``config.json`` (``architecture``, ``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg``). timm
reads it with ``timm.create_model('local-dir:DIR', pretrained=True)`` (timm 1.0.31; ``import mlpvision`` first, so
the architecture is registered) and ``hf-hub:`` once uploaded; ``mlpvision.create_model(DIR)`` reads it with the
strict checkpoint loader (:func:`load_pretrained_dir`). :func:`push_to_hub` is timm's ``push_to_hf_hub`` as it is.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

from ._checkpoint import save_state_dict
from ._download import cache_dir, download_weights
from .errors import UsageError
from .models._folder import CONFIG_NAME, WEIGHTS_NAME, is_pretrained_dir
from .models._registry import load_pretrained_dir

__all__ = ['download_weights', 'cache_dir', 'save_pretrained', 'load_pretrained_dir', 'is_pretrained_dir',
           'convert', 'push_to_hub', 'WEIGHTS_NAME', 'CONFIG_NAME']


# --- the Hugging Face Hub folder format (reading it: mlpvision.models._folder) -------------------------------

def _json_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    return v


def save_pretrained(
        model: nn.Module,
        out_dir: str | os.PathLike,
        *,
        label_names: list[str] | None = None,
        model_args: Mapping[str, Any] | None = None,
        data_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a Hub-style folder: ``model.safetensors`` + ``config.json`` (timm's ``save_for_hf``
    layout and config, written by timm's own ``save_config_for_hf``).

    Args:
        label_names: class names, index order (written as ``label_names``, as timm does).
        model_args: constructor arguments needed to rebuild the model (e.g. ``deploy=True``, a training run's
            ``embed_dim``); those timm recorded when the model was built (``timm.create_model``) are included.
        data_config: preprocessing (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``) where it
            differs from the model's pretrained cfg, e.g. a training run's.

    Returns:
        ``out_dir``. Both files are written atomically; other files in the folder are left alone.
    """
    from timm.models._hub import save_config_for_hf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_config: dict[str, Any] = {}
    if label_names is not None:
        if len(label_names) != model.num_classes:
            raise UsageError(f'{len(label_names)} label names for a model with {model.num_classes} classes.')
        model_config['label_names'] = list(label_names)
    args = {k: _json_value(v) for k, v in (model_args or {}).items()}
    data = {k: _json_value(v) for k, v in (data_config or {}).items()}
    if data:  # timm's resolve_input_data_config takes 'input_size'; the rest are cfg fields it reads as given
        model_config['pretrained_cfg'] = {k: v for k, v in data.items() if k != 'input_size'}
    fd, tmp = tempfile.mkstemp(prefix=f'.{CONFIG_NAME}.', suffix='.tmp', dir=out)
    os.close(fd)
    try:
        save_config_for_hf(model, tmp, model_config=model_config, model_args=args,
                           data_config={'input_size': tuple(data['input_size'])} if 'input_size' in data else None)
        save_state_dict(model, out / WEIGHTS_NAME)
        os.replace(tmp, out / CONFIG_NAME)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


_RELEASE_KEYS = ('tag', 'url', 'file', 'hf_hub_id', 'hf_hub_filename', 'state_dict', 'license', 'origin_url',
                 'notes', 'paper_name', 'paper_ids', 'top1', 'top1_paper')


def _without_release(cfg: Mapping[str, Any], src: Path) -> dict[str, Any]:
    """``cfg`` less what describes the registered release (its tag, download, license and notes): for weights
    that are not that release, e.g. an ``mlpvision train`` run's, which the notes name instead."""
    out = {k: v for k, v in cfg.items() if k not in _RELEASE_KEYS}
    out['notes'] = (f'weights: an mlpvision train checkpoint ({src.name}), not a released tag',)
    return out


def convert(
        src: str | os.PathLike,
        out_dir: str | os.PathLike,
        model: str | None = None,
        *,
        deploy: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Any checkpoint mlpvision reads (official, timm's, ``mlpvision train``'s ``best.pth`` / ``last.pth``, or a
    folder of this format) to a Hub-style folder; ``deploy=True`` writes the deploy (re-parameterised) form.

    A training checkpoint keeps its model name, constructor arguments, class names and preprocessing; an official
    one needs ``model``. The weights are loaded strictly first (so the folder holds only weights that fit). ``src``
    may also be a pretrained tag (``'resmlp_s12.fb_in1k'``), downloaded as ``pretrained=True`` does.
    """
    from ._reparam import is_reparameterized, reparameterize
    from .engine.loading import open_weights, require_task

    loaded = open_weights(src, model=model, model_kwargs=dict(model_kwargs or {}))
    require_task(loaded, 'classification', 'convert')
    net, args = loaded.model, dict(loaded.kwargs)
    labels, data = None, None
    if loaded.kind == 'folder':
        saved = (getattr(net, 'pretrained_cfg', None) or {}).get('label_names')
        labels = list(saved) if saved else None
    elif loaded.meta is not None:  # a training run's weights: the cfg's release (tag, URL, its top-1) is not them
        labels, data = loaded.classes, loaded.data_cfg.to_dict()
        net.pretrained_cfg = _without_release(net.pretrained_cfg, Path(src))
    args.pop('deploy', None)
    if deploy and not is_reparameterized(net):
        net = reparameterize(net)
    if is_reparameterized(net):
        args['deploy'] = True
    return save_pretrained(net.eval(), out_dir, label_names=labels, model_args=args, data_config=data)


def push_to_hub(model: nn.Module, repo_id: str, **kwargs) -> Any:
    """Upload ``model`` to the Hugging Face Hub with timm's ``push_to_hf_hub`` as it is (safetensors only by
    default); ``kwargs`` are timm's (``token``, ``private``, ``model_config``, ``model_args``, ...). Loading it back:
    ``timm.create_model('hf-hub:' + repo_id, pretrained=True)`` after ``import mlpvision``."""
    from timm.models import push_to_hf_hub

    kwargs.setdefault('safe_serialization', True)
    return push_to_hf_hub(model, repo_id, **kwargs)
