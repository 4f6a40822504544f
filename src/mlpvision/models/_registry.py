"""mlpvision's view of the timm registry.

Every mlpvision variant is registered into timm with :func:`register_model`, so ``timm.create_model(name)`` works
after ``import mlpvision``. This module also remembers which names are ours, so :func:`list_models` lists only
mlpvision's models and :func:`create_model` can say which of our names come closest to a misspelt one.

Pretrained weights: every released official checkpoint is a tag of its variant (timm's ``name.tag``), described by
a :class:`Weights` entry in the family's cfgs (source, host, the source's top-1, license). ``pretrained=True``
(through :func:`create_model` or ``timm.create_model``) goes through :func:`build_model`: a direct download is
fetched by :func:`mlpvision._download.download_weights` (cached, size / web page / hash checked, read without executing
code), a local ``file`` is read the same way, and both are mapped by the family's checkpoint filter and loaded
strictly through timm's own loader (which still adapts the classifier and input channels, and wraps
``features_only``). A tag whose release is on Google Drive, OneDrive or Baidu raises one error naming the page and
the ``checkpoint_path=`` / ``pretrained_cfg_overlay=dict(file=...)`` routes.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model as _timm_register_model
from timm.models._builder import resolve_pretrained_cfg

from .._checkpoint import (
    CheckpointError,
    check_state_dict,
    checkpoint_filter,
    load_checkpoint,
    load_weights,
    read_state_dict,
    unwrap_state_dict,
)
from ..errors import UsageError

__all__ = ['register_model', 'build_model', 'list_models', 'is_model', 'create_model', 'create_any_model',
           'model_entrypoint', 'model_family', 'ModelMeta', 'generate_cfgs', 'model_meta', 'Weights',
           'pretrained_weights', 'list_pretrained', 'load_pretrained_dir', 'pretrained_state_dict']

_MODEL_NAMES: dict[str, str] = {}  # name -> family (module file name)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` in timm's registry and record it as an mlpvision model."""
    _MODEL_NAMES[fn.__name__] = fn.__module__.rsplit('.', 1)[-1]
    return _timm_register_model(fn)


def list_models(pattern: str | Iterable[str] = '*', family: str | None = None, pretrained: bool = False,
                include_tags: bool | None = None) -> list[str]:
    """Sorted names of mlpvision's registered models matching a glob ``pattern`` (or any of several).

    As ``timm.list_models``: ``pretrained=True`` keeps the models with weights ``pretrained=True`` can download
    (every tag that names a ``url``, ``file`` or ``hf_hub_id``; the releases to download by hand are in
    :func:`list_pretrained`), and ``include_tags`` (default: ``pretrained``) lists ``name.tag`` entries, the pattern
    then matching those.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = [n for n, fam in _MODEL_NAMES.items() if family is None or fam == family]
    if include_tags is None:
        include_tags = pretrained
    if include_tags:
        names = [t for n in names for t in timm.list_models(n, pretrained=pretrained, include_tags=True)]
        patterns = [q for p in patterns for q in ([p] if '.' in p else [p, p + '.*'])]  # timm's _expand_filter
    elif pretrained:
        names = [n for n in names if timm.list_models(n, pretrained=True)]
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def is_model(name: str) -> bool:
    return name.split('.', 1)[0] in _MODEL_NAMES


def model_family(name: str) -> str:
    return _MODEL_NAMES[name.split('.', 1)[0]]


def close_model_names(name: str, n: int = 5) -> list[str]:
    """The registered names closest to ``name`` (difflib, cutoff 0.5): what an unknown-name error suggests."""
    return difflib.get_close_matches(name, list(_MODEL_NAMES), n=n, cutoff=0.5)


def _unknown_model_error(name: str) -> UsageError:
    close = close_model_names(name)
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
        name: str | os.PathLike,
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
        name: a registered name (``mlpvision.list_models()``), optionally with a ``.tag``
            (``mlpvision.list_models(pretrained=True)`` lists the tags that download); or a folder written by
            ``mlpvision convert`` / :func:`mlpvision.hub.save_pretrained` (also as ``'local-dir:DIR'``), loaded
            with its saved arguments.
        pretrained: download (once, into timm's cache) and load the tag's released weights (:func:`build_model`);
            with ``deploy=True`` they are folded into the deploy form. A release that is not a direct download
            raises :class:`mlpvision.CheckpointError` naming the page to fetch it from.
        checkpoint_path: a local checkpoint, either in the official repository's format (bare state_dict or under
            'model' / 'state_dict' / 'model_ema') or mlpvision's own (.safetensors or .pth). A checkpoint that
            cannot be read, that the family's filter cannot map, or that does not fit (missing, unexpected or
            mis-shaped keys) raises :class:`mlpvision.CheckpointError`.
        deploy: build the inference (re-parameterised) form directly.
        **kwargs: passed to the model constructor (``num_classes``, ``img_size``, ``drop_path_rate``, ...), and
            timm's ``features_only`` / ``out_indices`` / ``feature_cls`` (applied after the checkpoint is loaded).
    """
    name = os.fspath(name)
    source, _, rest = name.partition(':')
    if source == 'local-dir' or (not is_model(name) and os.path.isdir(name)):
        path = rest if source == 'local-dir' else name
        if not os.path.isdir(path):
            raise UsageError(f'{path!r} is not a folder; `mlpvision convert` writes one (model.safetensors + '
                             f'config.json).')
        return load_pretrained_dir(path, **(dict(kwargs, deploy=True) if deploy else kwargs))
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


def load_pretrained_dir(path: str | os.PathLike, **kwargs) -> nn.Module:
    """The model saved in a Hub-style folder (:func:`mlpvision.hub.save_pretrained`), loaded strictly (train or
    deploy form, as saved). ``kwargs`` go to :func:`create_model` over the saved ``model_args``."""
    from ._folder import apply_saved_cfg, folder_contents

    cfg, weights = folder_contents(path)
    arch = cfg['architecture']
    if not is_model(arch):
        raise CheckpointError(f'{str(path)!r} holds a {arch!r}, which is not an mlpvision model; load it with '
                              f'timm.create_model("local-dir:{path}", pretrained=True).')
    args = dict(cfg.get('model_args') or {})
    args.update(kwargs)
    deploy = bool(args.pop('deploy', False))
    return apply_saved_cfg(create_model(arch, checkpoint_path=weights, deploy=deploy, **args), cfg, weights)


def create_any_model(name: str | os.PathLike, **kwargs) -> nn.Module:
    """An mlpvision model through :func:`create_model`, or else a timm model through ``timm.create_model``.

    For the commands that take either registry's names: ``mlpvision train --model`` and ``--teacher``, ``validate``
    and ``predict`` of a checkpoint such a run wrote, ``bench --baseline``. Our names (and folders written by
    ``mlpvision convert``) go to :func:`create_model`, as does a name neither registry knows, so that its error
    lists our closest names. timm's models have no deploy form: ``deploy`` is dropped for them.
    """
    name = os.fspath(name)
    if is_model(name) or not timm.is_model(name.split('.', 1)[0]):
        return create_model(name, **kwargs)
    kwargs.pop('deploy', None)
    return timm.create_model(name, **kwargs)


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
    loaded = _pretrained_source(variant, kwargs) if pretrained else None
    if loaded is not None:  # weights read here (safely, checked); timm's loader gets them through the filter
        state_dict, source = loaded
        map_fn = filter_fn

        def mapped(_placeholder: dict, model: nn.Module) -> dict:
            return map_fn(state_dict, model) if map_fn is not None else dict(state_dict)

        def checked(_placeholder: dict, model: nn.Module) -> dict:
            sd = mapped(_placeholder, model)
            pcfg = getattr(model, 'pretrained_cfg', None) or {}
            released_chans = (pcfg.get('input_size') or (3,))[0]
            if model.num_classes == pcfg.get('num_classes') and kwargs.get('in_chans', released_chans) == \
                    released_chans:  # else timm adapts the classifier / first conv, then loads what fits
                check_state_dict(model, sd, source)  # one clear line instead of load_state_dict's traceback
            return sd

        filter_fn = mapped if kwargs.get('deploy') else checked  # the deploy path checks both forms itself
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {},
                                                state_dict={'': torch.zeros(())})
        model = _build(cls, variant, pretrained, feature_cfg, filter_fn, **kwargs)
        for m in (model, getattr(model, 'model', None)):  # the cfg keeps no weights (nor does a features wrapper's)
            if isinstance(getattr(m, 'pretrained_cfg', None), dict):
                m.pretrained_cfg.pop('state_dict', None)
        return model
    return _build(cls, variant, pretrained, feature_cfg, filter_fn, **kwargs)


def _build(cls: type[nn.Module], variant: str, pretrained: bool, feature_cfg: dict | None,
           filter_fn: Callable | None, **kwargs) -> nn.Module:
    if pretrained and kwargs.get('deploy'):
        twin_kwargs = {k: v for k, v in kwargs.items() if k not in _FEATURE_ARGS + ('pretrained_cfg_overlay',)}

        def twin(deploy: bool, **overrides) -> nn.Module:
            return build_model_with_cfg(cls, variant, False, feature_cfg=feature_cfg,
                                        **dict(twin_kwargs, deploy=deploy, **overrides))

        def fold_filter(state_dict: dict, model: nn.Module) -> dict:
            released = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes')
            if released is not None and model.num_classes != released:
                # a new classifier of another size: fold at the released size, then timm drops that classifier
                target = twin(True, num_classes=released)
                load_weights(target, state_dict, 'Pretrained weights', filter_fn,
                             lambda: twin(False, num_classes=released))
                return target.state_dict()
            load_weights(model, state_dict, 'Pretrained weights', filter_fn, lambda: twin(False))
            return model.state_dict()

        return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=fold_filter,
                                    feature_cfg=feature_cfg, **kwargs)
    return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=filter_fn, feature_cfg=feature_cfg,
                                **kwargs)


def _pretrained_source(variant: str, kwargs: dict) -> tuple[dict, str] | None:
    """The weights ``pretrained=True`` asks for, read here: (state_dict, how errors name it); None where timm
    loads them itself (a ``state_dict`` given, the Hugging Face Hub, a ``local-dir:`` folder)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    if cfg.state_dict or cfg.source in ('hf-hub', 'local-dir') or cfg.hf_hub_id:
        return None
    if cfg.file:
        return read_state_dict(cfg.file), f'Checkpoint {str(cfg.file)!r}'
    weights = _WEIGHTS.get(name)
    if cfg.url:
        from .._download import download_weights
        url = cfg.url if isinstance(cfg.url, str) else cfg.url[0]
        registered = weights if weights is not None and weights.url == url else None  # not for another URL
        _, obj = download_weights(url, sha256=registered and registered.sha256, cache=kwargs.get('cache_dir'),
                                  page=registered and registered.page)
        sd = unwrap_state_dict(obj)
        if not sd:
            raise CheckpointError(f'The download {url} holds no tensors (keys: {list(obj)[:10]}).')
        return sd, f'Pretrained weights {url}'
    if weights is not None and weights.host != 'direct':
        raise CheckpointError(
            f'{name} is not a direct download: the official weights are on {weights.host} ({weights.page}, listed '
            f'in {weights.source}). Download the file by hand, then load it with mlpvision.create_model('
            f'{variant!r}, checkpoint_path=FILE) or timm.create_model({name!r}, pretrained=True, '
            f'pretrained_cfg_overlay=dict(file=FILE)).')
    tags = [t for t in timm.list_models(variant, include_tags=True) if t in _WEIGHTS]
    raise CheckpointError(
        f'{name} has no released weights' + (f' (the tags with weights: {", ".join(tags)})' if tags else
                                              ' (no official checkpoint of this variant was released)') +
        '. Use pretrained=False, or checkpoint_path=FILE for weights of your own.')


def pretrained_state_dict(name: str, cache_dir: str | os.PathLike | None = None) -> tuple[dict, str] | None:
    """The released weights of ``name.tag`` as ``pretrained=True`` reads them (downloaded once into the cache and
    checked): (state dict, how errors name it), or None where timm loads them itself (the Hugging Face Hub)."""
    base, _, tag = name.partition('.')
    if not is_model(base):
        raise _unknown_model_error(base)
    return _pretrained_source(base, {'pretrained_cfg': tag or None, 'cache_dir': cache_dir})


@dataclass(frozen=True)
class Weights:
    """One released official checkpoint, a pretrained tag of its variant (``name.tag``).

    Attributes:
        source: where the release is listed, as 'owner/repo@commit:file' (a README table or the factory code).
        host: 'direct' where ``pretrained=True`` downloads it (the cfg's ``url``), else where to fetch it by hand:
            'Google Drive', 'OneDrive' or 'Baidu'.
        page: the address to download from (the file itself for direct downloads, else the share page).
        top1: ImageNet-1k top-1 (%) that ``top1_source`` gives for these weights.
        top1_source: where ``top1`` is printed, and what it is where it is not plain top-1 (e.g. DINO's k-NN).
        sha256: the file's SHA-256 (or a prefix), only where the source publishes one.
        license: the license of the repository that releases the weights (SPDX-style, as timm's cfgs).
    """
    source: str
    host: str
    page: str
    top1: float | None
    top1_source: str
    license: str
    sha256: str | None = None

    @property
    def url(self) -> str:
        return self.page if self.host == 'direct' else ''


_WEIGHTS: dict[str, Weights] = {}  # 'name.tag' -> release


def pretrained_weights(name: str) -> Weights | None:
    """The release behind ``name.tag`` (the variant's default tag if no tag is given), or None (no weights)."""
    if not is_model(name):
        raise _unknown_model_error(name)
    if '.' not in name:
        tag = resolve_pretrained_cfg(name).tag
        name = f'{name}.{tag}' if tag else name
    return _WEIGHTS.get(name)


def list_pretrained(pattern: str = '*', direct: bool | None = None) -> list[str]:
    """Every ``name.tag`` with an official release (``direct``: only those ``pretrained=True`` downloads (True)
    or only those to download by hand (False))."""
    return sorted(k for k, w in _WEIGHTS.items() if fnmatch.fnmatchcase(k, pattern)
                  and (direct is None or (w.host == 'direct') == direct))


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
        weights: Weights | None = cfg.pop('weights', None)
        _MODEL_META[key.split('.', 1)[0]] = meta
        cfg.setdefault('paper_ids', meta.paper)
        cfg.setdefault('origin_url', 'https://github.com/' + meta.official.split('@', 1)[0])
        notes = [f'official: {meta.official}; params {meta.params}'] if meta.params else []
        if weights is not None:
            _WEIGHTS[key] = weights
            if weights.host == 'direct':
                cfg['url'] = weights.url
            cfg['license'] = weights.license
            notes.append(f'weights: {weights.source}; ' + (f'top-1 {weights.top1} ({weights.top1_source})'
                                                            if weights.top1 is not None else weights.top1_source))
            if weights.host != 'direct':
                notes.append(f'manual download ({weights.host}): {weights.page}')
        cfg.setdefault('notes', tuple(notes))
        out[key] = cfg
    return generate_default_cfgs(out)


def model_meta(name: str) -> ModelMeta:
    if not is_model(name):
        raise _unknown_model_error(name)
    return _MODEL_META[name.split('.', 1)[0]]
