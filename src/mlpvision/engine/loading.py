"""The one opener of WEIGHTS: every command and :func:`mlpvision.create_model`'s callers name weights the same way.

WEIGHTS is one of

* a registered model name (``resmlp_s12``; a timm name too): the model with its initial (random) weights;
* ``NAME.TAG`` (``resmlp_s12.fb_in1k``): the released weights, downloaded once into timm's cache and checked
  (:mod:`mlpvision._download`); a release that is not a direct download raises the one line naming the page to
  fetch it from by hand, after which the file is passed instead;
* a checkpoint file: mlpvision's (``best.pth`` / ``last.pth`` of ``mlpvision train`` of any task, or a
  ``.safetensors``), an official repository's or timm's (bare or wrapped state dict; these do not name their model:
  ``model=`` / ``--model`` does), in train or deploy form;
* a folder written by ``mlpvision convert`` (``model.safetensors`` + ``config.json``).

:func:`open_weights` returns the model in eval mode with what the commands need to know about it
(:class:`Loaded`: name, constructor arguments, task, classes, preprocessing, form). :func:`require_task` turns a
checkpoint of another task into one line naming the task and the command that takes it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._checkpoint import CheckpointError, load_weights, unwrap_state_dict
from ..data.transforms import DataConfig, resolve_data_config
from ..errors import UsageError
from ..models import create_any_model, create_model, is_model
from ..models._folder import folder_contents, is_pretrained_dir
from .checkpoint import load_checkpoint_file

__all__ = ['Loaded', 'open_weights', 'weights_kind', 'require_task', 'WEIGHTS_HELP', 'TASK_COMMANDS',
           'checkpoint_task_name', 'default_tag', 'finetune_source']

WEIGHTS_HELP = ('WEIGHTS: a model name (random weights), NAME.TAG (released weights, downloaded once; `mlpvision '
                'models --pretrained` lists the tags), a checkpoint file (best.pth / last.pth of mlpvision train, '
                '.safetensors, or an official / timm state dict with --model NAME) or a folder of mlpvision convert')

# what each task's checkpoints are for, named in the error a command of another task gives
TASK_COMMANDS = {
    'classification': 'validate, predict, export, convert, quantize, viz, train --finetune',
    'segmentation': 'validate, predict -o DIR (and train --task segment --resume)',
    'detection': 'validate, predict -o DIR (and train --task detect --resume)',
}


@dataclass
class Loaded:
    """What :func:`open_weights` opened.

    Attributes:
        model: the model, in eval mode (the UperNet / detector for segmentation / detection checkpoints).
        name: the registered model name (the backbone's for dense tasks).
        kwargs: the constructor arguments it was built with.
        task: 'classification', 'segmentation' or 'detection'.
        classes: class names, index order.
        data_cfg: the eval preprocessing (classification; None for the dense tasks, which resize by their own rule).
        form: 'train', 'deploy' or 'train, re-parameterised'.
        kind: what WEIGHTS was: 'name', 'tag', 'file' or 'folder'.
        source: WEIGHTS as given.
        meta: the ``mlpvision`` block of an mlpvision training checkpoint; None otherwise.
        checkpoint: the checkpoint read (files only), for the dense tasks' own paths.
    """
    model: nn.Module
    name: str
    kwargs: dict
    task: str
    classes: list[str]
    data_cfg: DataConfig | None
    form: str
    kind: str
    source: str
    meta: dict | None = None
    checkpoint: dict | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def weights_kind(weights: str | os.PathLike) -> str:
    """'file', 'folder', 'tag' or 'name'; else :class:`UsageError` naming the closest model names."""
    text = os.fspath(weights)
    p = Path(text)
    if p.is_file():
        return 'file'
    if p.is_dir():
        if is_pretrained_dir(p) or (p / 'best.pth').is_file() or (p / 'last.pth').is_file():
            return 'folder'
        raise UsageError(f'{text!r} is a folder, but neither one of mlpvision convert (config.json) nor a training run '
                         f'(best.pth); pass a checkpoint file or a convert folder')
    if is_model(text):
        return 'tag' if '.' in text else 'name'
    import timm
    if timm.is_model(text.split('.', 1)[0]):
        return 'tag' if '.' in text else 'name'
    looks_like_file = os.sep in text or p.suffix in ('.pth', '.pt', '.safetensors', '.bin', '.ckpt', '.tar')
    if looks_like_file:
        raise UsageError(f'checkpoint {text!r} does not exist (or is not a file)')
    from ..models._registry import close_model_names
    close = close_model_names(text.split('.', 1)[0])
    hint = f'; closest: {", ".join(close)}' if close else ''
    raise UsageError(f'{text!r} is neither a file, a folder nor a model name{hint} ({WEIGHTS_HELP})')


def checkpoint_task_name(meta: dict | None) -> str:
    """The task an mlpvision checkpoint's metadata records ('classification' when it records none)."""
    task = (meta or {}).get('task') or 'classification'
    return {'classify': 'classification', 'segment': 'segmentation', 'detect': 'detection'}.get(task, task)


def require_task(loaded: Loaded, tasks: str | tuple[str, ...], command: str) -> None:
    """:class:`UsageError` unless ``loaded`` is of one of ``tasks``: names the task and the commands that take it."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if loaded.task not in tasks:
        raise UsageError(f'{loaded.source!r} is a {loaded.task} checkpoint ({loaded.name}); `mlpvision {command}` '
                         f'takes {" or ".join(tasks)} weights. {loaded.task.capitalize()} checkpoints go to: '
                         f'{TASK_COMMANDS.get(loaded.task, "train --resume")}')


def _class_names(n: int) -> list[str]:
    if n == 1000:
        try:
            from timm.data import ImageNetInfo
            info = ImageNetInfo()
            return [info.index_to_description(i).split(',')[0] for i in range(n)]
        except Exception:  # noqa: BLE001 - names are a nicety; fall back to indices
            pass
    return [str(i) for i in range(n)]


def _model_classes(net: nn.Module) -> list[str]:
    names = (getattr(net, 'pretrained_cfg', None) or {}).get('label_names')
    return list(names) if names and len(names) == net.num_classes else _class_names(net.num_classes)


def _classifier_rows(model: nn.Module, sd: dict[str, torch.Tensor]) -> int | None:
    """Number of classes of the checkpoint's classifier, judged by the model's classifier key."""
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier', 'head')
    key = f'{classifier}.weight' if isinstance(classifier, str) else None
    return int(sd[key].shape[0]) if key and key in sd and sd[key].ndim >= 1 else None


def _sized(name: str, kwargs: dict, img_size: int | None, build) -> nn.Module:
    """``build(**kwargs)``, at ``img_size`` where the family takes the argument (fixed-size families)."""
    if img_size is not None and 'img_size' not in kwargs:
        try:
            return build(**dict(kwargs, img_size=img_size))
        except TypeError:  # a family that takes any input size has no img_size argument
            pass
    return build(**kwargs)


def _finish(net: nn.Module, deploy: bool, form: str) -> tuple[nn.Module, str]:
    if deploy and form == 'train':
        from .._reparam import is_reparameterized, reparameterize
        if not is_reparameterized(net):
            net = reparameterize(net)
        form = 'train, re-parameterised'
    return net.eval(), form


def open_weights(
        weights: str | os.PathLike,
        *,
        model: str | None = None,
        model_kwargs: dict | None = None,
        use_ema: bool = False,
        deploy: bool = False,
        img_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        task: str | None = None,
        command: str = '',
) -> Loaded:
    """Open WEIGHTS (module docstring) as a model in eval mode, with its metadata.

    Args:
        model: the model name an official checkpoint needs (mlpvision's name theirs; if given it must agree).
        model_kwargs: constructor arguments over the checkpoint's (or the name's defaults).
        use_ema: the EMA weights of an mlpvision training checkpoint (``last.pth`` of a run with EMA).
        deploy: the deploy (re-parameterised) form: a train-form model is folded after loading.
        img_size, crop_pct, interpolation: the eval preprocessing over the weights' own (``img_size`` also builds a
            fixed-size family at that size where the weights do not fix it).
        task, command: the task ``command`` takes ('classification', 'segmentation', 'detection'): weights of another
            task are refused before a model is built (:func:`require_task`'s line).

    Raises:
        UsageError: WEIGHTS names nothing (closest model names given), an official file without ``model``.
        CheckpointError: a file that cannot be read or does not fit (the strict loader's message).
    """
    source = os.fspath(weights)
    kind = weights_kind(source)
    if task is not None and kind != 'file' and task != 'classification':
        raise UsageError(f'{source!r} is a classification {kind}; `mlpvision {command}` takes {task} weights. '
                         f'Classification weights go to: {TASK_COMMANDS["classification"]}')
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    if model is not None and kind in ('name', 'tag') and model.split('.', 1)[0] != source.split('.', 1)[0]:
        raise UsageError(f'WEIGHTS {source!r} is a model name already; --model {model} is for checkpoint files')
    if use_ema and kind != 'file':
        raise UsageError(f'--ema takes the EMA weights of a training checkpoint; {source!r} is a {kind}')
    if kind in ('name', 'tag'):
        pretrained = kind == 'tag'
        net = _sized(source, kwargs, img_size, lambda **kw: create_any_model(
            source, pretrained=pretrained, deploy=deploy, **kw))
        from .._reparam import is_reparameterized
        form = 'deploy' if is_reparameterized(net) else 'train'
        dc = resolve_data_config(net, img_size, None, None, None, interpolation, crop_pct)
        return Loaded(net.eval(), source.split('.', 1)[0], kwargs, 'classification', _model_classes(net), dc, form,
                      kind, source)
    if kind == 'folder':
        path = Path(source)
        if not is_pretrained_dir(path):  # a training run's folder: its best checkpoint
            return open_weights(path / ('best.pth' if (path / 'best.pth').is_file() else 'last.pth'), model=model,
                                model_kwargs=model_kwargs, use_ema=use_ema, deploy=deploy, img_size=img_size,
                                crop_pct=crop_pct, interpolation=interpolation, task=task, command=command)
        cfg, _ = folder_contents(path)
        name = cfg['architecture']
        if model is not None and model.split('.', 1)[0] != name:
            raise UsageError(f'{source!r} holds a {name}, not a {model}; leave --model out for convert folders')
        net = create_model(source, **(dict(kwargs, deploy=True) if deploy else kwargs))
        from .._reparam import is_reparameterized
        form = 'deploy' if is_reparameterized(net) else 'train'
        dc = resolve_data_config(net, img_size, None, None, None, interpolation, crop_pct)
        args = {**(cfg.get('model_args') or {}), **kwargs}
        return Loaded(net.eval(), name, args, 'classification', _model_classes(net), dc, form, kind, source)
    return _open_file(source, model, kwargs, use_ema, deploy, img_size, crop_pct, interpolation, task, command)


def _open_file(path: str, model: str | None, kwargs: dict, use_ema: bool, deploy: bool, img_size: int | None,
               crop_pct: float | None, interpolation: str | None, expected: str | None, command: str) -> Loaded:
    obj = load_checkpoint_file(path)
    meta = obj.get('mlpvision') if isinstance(obj.get('mlpvision'), dict) else None
    task = checkpoint_task_name(meta) if meta is not None else 'classification'
    if expected is not None and task != expected:
        raise UsageError(f'{path!r} is a {task} checkpoint; `mlpvision {command}` takes {expected} weights. '
                         f'{task.capitalize()} checkpoints go to: {TASK_COMMANDS.get(task, "train --resume")}')
    if task == 'segmentation':
        from .segmentation import model_from_checkpoint_dict
        net, meta = model_from_checkpoint_dict(obj, path)
        return Loaded(net, meta['backbone'], dict(meta.get('model_kwargs') or {}), task, list(meta['classes']),
                      None, 'train', 'file', path, meta, obj)
    if task == 'detection':
        from .detection import detector_from_checkpoint
        net, meta = detector_from_checkpoint(obj, path)
        return Loaded(net, meta['backbone'], dict(meta.get('model_kwargs') or {}), task, list(meta['classes']),
                      None, 'train', 'file', path, meta, obj)
    if use_ema:
        if not isinstance(obj.get('ema'), dict):
            raise CheckpointError(f'checkpoint {path!r} has no EMA weights (train with --model-ema; best.pth holds '
                                  f'the better of the two already)')
        sd = dict(obj['ema'])
    else:
        sd = unwrap_state_dict(obj)
    if not sd:
        raise CheckpointError(f'checkpoint {path!r} holds no weights')
    if model is None:
        if meta is None:
            raise UsageError(f'checkpoint {path!r} does not name its model (official checkpoints do not); pass '
                             f'--model NAME (`mlpvision models --names-only` lists them)')
        model = meta['model_name']
    elif meta is not None and model.split('.', 1)[0] != meta['model_name']:
        raise UsageError(f'{path!r} holds a {meta["model_name"]}, not a {model}; leave --model out for mlpvision '
                         f'checkpoints')
    model = model.split('.', 1)[0]
    built: dict[str, Any] = dict(meta['model_kwargs']) if meta else {}
    built.update(kwargs)
    if img_size is not None and meta is None:
        built.setdefault('img_size', img_size)

    def build(deploy_form: bool) -> nn.Module:  # a timm model trained by `mlpvision train` too (no deploy form)
        m = create_any_model(model, deploy=deploy_form, **built)
        rows = _classifier_rows(m, sd)
        if rows is not None and 'num_classes' not in built and rows != m.num_classes:
            built['num_classes'] = rows  # e.g. an official checkpoint fine-tuned on another dataset
            m = create_any_model(model, deploy=deploy_form, **built)
        load_weights(m, sd, f'checkpoint {path!r}')
        return m

    try:
        net, form = build(False), 'train'
    except CheckpointError as first:
        try:
            net, form = build(True), 'deploy'
        except (CheckpointError, TypeError):
            raise first from None
    net, form = _finish(net, deploy, form)
    if meta is not None:
        dc = DataConfig.from_dict(meta['data_config'])
        if img_size or crop_pct or interpolation:
            dc = resolve_data_config(net, img_size or dc.img_size, dc.in_chans, dc.mean, dc.std,
                                     interpolation or dc.interpolation, crop_pct or dc.crop_pct)
        classes = list(meta['classes'])
    else:
        dc = resolve_data_config(net, img_size, None, None, None, interpolation, crop_pct)
        classes = _class_names(net.num_classes)
    return Loaded(net, model, built, 'classification', classes, dc, form, 'file', path, meta, obj)


def default_tag(name: str) -> str:
    """``name.tag`` of the released weights ``pretrained=True`` loads for ``name`` (``train --pretrained``);
    :class:`UsageError` where there are none."""
    from ..models import list_pretrained, pretrained_weights

    base = name.split('.', 1)[0]
    if not is_model(base):
        raise UsageError(f'--pretrained: {base!r} is not an mlpvision model with released weights; pass --finetune '
                         f'WEIGHTS (a file, or a timm NAME.TAG)')
    from timm.models._builder import resolve_pretrained_cfg
    tag = resolve_pretrained_cfg(base).tag
    if pretrained_weights(base) is None or not tag:
        tags = list_pretrained(f'{base}.*')
        raise UsageError(f'--pretrained: {base} has no released weights' + (f' as a default tag (its tags: '
                         f'{", ".join(tags)}; pass --finetune NAME.TAG)' if tags else
                         '; pass --finetune FILE for weights of your own'))
    return f'{base}.{tag}'


def finetune_source(weights: str | os.PathLike) -> tuple[dict, str, dict | None]:
    """The state dict ``train --finetune WEIGHTS`` starts from: (state dict, how errors name it, the mlpvision
    metadata of a training checkpoint or None). A bare model name has nothing to start from."""
    from .._checkpoint import read_state_dict

    source = os.fspath(weights)
    kind = weights_kind(source)
    if kind == 'name':
        raise UsageError(f'--finetune {source}: a model name alone has random weights; give NAME.TAG (released '
                         f'weights, or --pretrained for the default tag), a checkpoint file or a convert folder')
    if kind == 'tag':
        import timm

        from ..models import create_any_model
        base = source.split('.', 1)[0]
        if is_model(base):
            from ..models._registry import pretrained_state_dict
            found = pretrained_state_dict(source)
            if found is not None:
                return found[0], found[1], None
        net = create_any_model(source, pretrained=True) if is_model(base) else timm.create_model(source,
                                                                                                 pretrained=True)
        return net.state_dict(), f'pretrained weights {source}', None
    path = Path(source)
    if kind == 'folder':
        if is_pretrained_dir(path):
            cfg, weights_file = folder_contents(path)
            return read_state_dict(weights_file), f'folder {source!r}', None
        path = path / ('best.pth' if (path / 'best.pth').is_file() else 'last.pth')
    obj = load_checkpoint_file(path)
    meta = obj.get('mlpvision') if isinstance(obj.get('mlpvision'), dict) else None
    if meta is not None and checkpoint_task_name(meta) != 'classification':
        raise UsageError(f'--finetune {source}: a {checkpoint_task_name(meta)} checkpoint; fine-tuning a classifier '
                         f'starts from classification weights (its backbone goes to --task segment / detect through '
                         f'--model-kwargs checkpoint_path=FILE)')
    return unwrap_state_dict(obj), f'checkpoint {str(path)!r}', meta
