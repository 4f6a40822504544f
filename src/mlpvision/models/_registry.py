"""mlpvision's view of the timm registry.

Every mlpvision variant is registered into timm with :func:`register_model`, so ``timm.create_model(name)`` works
after ``import mlpvision``. This module also remembers which names are ours, so :func:`list_models` lists only
mlpvision's models and :func:`create_model` can say which of our names come closest to a misspelt one.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import timm
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model as _timm_register_model

from .._checkpoint import CheckpointError, checkpoint_filter, load_checkpoint, load_weights
from ..errors import UsageError

__all__ = ['register_model', 'build_model', 'list_models', 'is_model', 'create_model', 'model_entrypoint',
           'model_family',
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


def _unknown_model_error(name: str) -> UsageError:
    close = difflib.get_close_matches(name, list(_MODEL_NAMES), n=5, cutoff=0.5)
    hint = f' Closest: {", ".join(close)}.' if close else ''
    return UsageError(
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
        checkpoint_path: str | os.PathLike | None = None,
        deploy: bool = False,
        **kwargs,
) -> nn.Module:
    """Build an mlpvision model by name.

    Checkpoint policy, the same for every family: ``checkpoint_path`` is read without executing code from it
    (safetensors, or ``torch.load(weights_only=True)``), mapped through the key-mapping filter the family registered
    (official and timm names to ours) and loaded strictly. With ``deploy=True`` a deploy-form checkpoint (ours, or
    the official ``convert.py`` output) loads directly, and a train-form checkpoint (every official release) is
    loaded into the train form and folded on load with :func:`mlpvision.reparameterize`: the result is the
    ``deploy=True`` model holding exactly the re-parameterised train weights. Which form a checkpoint has is decided
    from its keys and shapes after the key mapping (:func:`mlpvision._checkpoint.load_weights`). AS-MLP and
    Strip-MLP have no deploy form: for them ``deploy=True`` builds the same model, and any checkpoint of theirs loads
    either way.

    Args:
        name: a registered name (``mlpvision.list_models()``), optionally with a ``.tag``.
        pretrained: load the weights named by the pretrained cfg through timm (downloads; tests point the cfg at
            local files). With ``deploy=True`` the released train-form weights are folded the same way
            (:func:`build_model`).
        checkpoint_path: a local checkpoint, either in the official repository's format (bare state_dict or under
            'model' / 'state_dict' / 'model_ema') or mlpvision's own (.safetensors or .pth). A checkpoint that
            cannot be read, that the family's filter cannot map, or that does not fit (missing, unexpected or
            mis-shaped keys) raises :class:`mlpvision.CheckpointError`.
        deploy: build the inference (re-parameterised) form directly.
        **kwargs: passed to the model constructor (``num_classes``, ``img_size``, ``drop_path_rate``, ...), and
            timm's ``features_only`` / ``out_indices`` / ``feature_cls`` (applied after the checkpoint is loaded).
    """
    if not is_model(name):
        raise _unknown_model_error(name)
    if deploy:
        kwargs['deploy'] = True
    if checkpoint_path is None:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    features = {k: kwargs.pop(k) for k in _FEATURE_ARGS if k in kwargs} if kwargs.get('features_only') else {}
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    train_form = (lambda: timm.create_model(name, **dict(kwargs, deploy=False))) if deploy else None
    load_checkpoint(model, checkpoint_path, train_form=train_form)
    if not features:
        return model
    # timm wraps a model as a feature extractor only in its pretrained path, after loading: hand it the weights
    # just loaded (our names, which every family filter passes through unchanged)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=model.state_dict()),
                             **kwargs, **features)


_FEATURE_ARGS = ('features_only', 'out_indices', 'feature_cls')  # what timm's build_model_with_cfg takes for itself


def build_model(cls: type[nn.Module], variant: str, pretrained: bool = False, feature_cfg: dict | None = None,
                **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for an mlpvision family: what every family's ``_create_*`` calls.

    Pretrained weights go through the key-mapping filter registered for ``cls`` (the one the checkpoint loader
    uses too) and follow the same train-to-deploy policy as ``create_model(checkpoint_path=...)``: into a model
    built with ``deploy=True``, deploy-form weights load directly and the released train-form weights are loaded into
    a train-form twin, re-parameterised and then loaded (``features_only`` included). This holds for
    ``timm.create_model(name, pretrained=True, deploy=True)`` too.
    """
    filter_fn = checkpoint_filter(cls)
    if pretrained and kwargs.get('deploy'):
        twin_kwargs = {k: v for k, v in kwargs.items() if k not in _FEATURE_ARGS + ('pretrained_cfg_overlay',)}

        def train_form() -> nn.Module:
            return build_model_with_cfg(cls, variant, False, feature_cfg=feature_cfg, **dict(twin_kwargs,
                                                                                             deploy=False))

        def fold_filter(state_dict: dict, model: nn.Module) -> dict:
            try:
                load_weights(model, state_dict, 'Pretrained weights', filter_fn, train_form)
            except CheckpointError:  # e.g. a classifier timm is about to drop: timm's own checks take over
                return filter_fn(state_dict, model) if filter_fn is not None else state_dict
            return model.state_dict()

        return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=fold_filter,
                                    feature_cfg=feature_cfg, **kwargs)
    return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=filter_fn, feature_cfg=feature_cfg,
                                **kwargs)


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
