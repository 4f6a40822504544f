"""mlpvision's view of the timm registry.

Every mlpvision variant is registered into timm with :func:`register_model`, so ``timm.create_model(name)`` works
after ``import mlpvision``. This module also remembers which names are ours, so :func:`list_models` lists only
mlpvision's models and :func:`create_model` can say which of our names come closest to a misspelt one.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import timm
import torch.nn as nn
from timm.models import generate_default_cfgs
from timm.models import register_model as _timm_register_model

__all__ = ['register_model', 'list_models', 'is_model', 'create_model', 'model_entrypoint', 'model_family',
           'ModelMeta', 'generate_cfgs', 'model_meta']

_MODEL_NAMES: dict[str, str] = {}  # name -> family (module file name)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` in timm's registry and record it as an mlpvision model."""
    _MODEL_NAMES[fn.__name__] = fn.__module__.rsplit('.', 1)[-1]
    return _timm_register_model(fn)


def list_models(pattern: str | Iterable[str] = '*', family: str | None = None) -> list[str]:
    """Sorted names of mlpvision's registered models matching a glob ``pattern`` (or any of several)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = (n for n, fam in _MODEL_NAMES.items() if family is None or fam == family)
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def is_model(name: str) -> bool:
    return name.split('.', 1)[0] in _MODEL_NAMES


def model_family(name: str) -> str:
    return _MODEL_NAMES[name.split('.', 1)[0]]


def _unknown_model_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_MODEL_NAMES), n=5, cutoff=0.5)
    hint = f' Closest: {", ".join(close)}.' if close else ''
    return ValueError(
        f'Unknown mlpvision model {name!r}.{hint} '
        f'`mlpvision.list_models()` or `mlpvision models` lists all {len(_MODEL_NAMES)}.'
    )


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if not is_model(name):
        raise _unknown_model_error(name)
    return timm.models.model_entrypoint(name.split('.', 1)[0])


def create_model(
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        deploy: bool = False,
        **kwargs,
) -> nn.Module:
    """Build an mlpvision model by name.

    Args:
        name: a registered name (``mlpvision.list_models()``), optionally with a ``.tag``.
        pretrained: load the weights named by the pretrained cfg (downloads; not used by tests).
        checkpoint_path: a local checkpoint, either in the official repository's format (bare state_dict or under
            'model' / 'state_dict' / 'model_ema') or mlpvision's own (.safetensors or .pth). It is mapped through
            the family's ``checkpoint_filter_fn`` and loaded strictly; a mismatch raises
            :class:`mlpvision.CheckpointError`.
        deploy: build the inference (re-parameterised) form directly.
        **kwargs: passed to the model constructor (``num_classes``, ``img_size``, ``drop_path_rate``, ...).
    """
    if not is_model(name):
        raise _unknown_model_error(name)
    if deploy:
        kwargs['deploy'] = True
    if checkpoint_path is not None and kwargs.get('features_only'):
        # the weights must go in before timm wraps the model as a feature extractor: hand timm the state_dict
        # (read here, safely) as a pretrained source, so it passes through the family's checkpoint_filter_fn
        from .._checkpoint import CheckpointError, read_state_dict
        sd = read_state_dict(checkpoint_path)
        try:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd), **kwargs)
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f'Checkpoint {str(checkpoint_path)!r} does not fit {name}: {e}') from e
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        from .._checkpoint import load_checkpoint
        load_checkpoint(model, checkpoint_path)
    return model


@dataclass(frozen=True)
class ModelMeta:
    """Where a variant comes from and what its sources say about it.

    Attributes:
        paper: paper and table, e.g. 'arXiv:2105.03404 Table 1'.
        official: official implementation as 'owner/repo@commit:file'.
        params: exact parameter count of the official implementation (``sum(p.numel())``), train form; None only
            for a model with no official code (``notes`` then says how its size was checked).
        gmacs: the official implementation's MACs at the default input size (fvcore; shared reference
            official.json), in G; None where no official code exists.
        params_paper / gmacs_paper / top1_paper: the figures as the paper (or official README) prints them.
        deploy_params: exact parameter count of the official deploy form, where there is one.
    """
    paper: str
    official: str
    params: int | None
    gmacs: float | None
    params_paper: str | None = None
    gmacs_paper: float | None = None
    top1_paper: float | None = None
    deploy_params: int | None = None
    notes: str = ''


_MODEL_META: dict[str, ModelMeta] = {}


def generate_cfgs(cfgs: dict[str, dict]) -> dict:
    """``timm.models.generate_default_cfgs`` for cfgs that also carry a ``meta=ModelMeta(...)`` entry.

    The meta is kept in mlpvision's registry (:func:`model_meta`) and its paper and source go into the timm cfg's
    ``paper_ids`` / ``origin_url`` / ``notes`` so timm users see them too.
    """
    out = {}
    for key, cfg in cfgs.items():
        cfg = dict(cfg)
        meta = cfg.pop('meta')
        _MODEL_META[key.split('.', 1)[0]] = meta
        cfg.setdefault('paper_ids', meta.paper)
        cfg.setdefault('origin_url', 'https://github.com/' + meta.official.split('@', 1)[0])
        cfg.setdefault('notes', (f'official: {meta.official}; params {meta.params}',) if meta.params else ())
        out[key] = cfg
    return generate_default_cfgs(out)


def model_meta(name: str) -> ModelMeta:
    if not is_model(name):
        raise _unknown_model_error(name)
    return _MODEL_META[name.split('.', 1)[0]]
