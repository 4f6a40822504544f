"""Pretrained weights in and out: checked downloads into the cache, and the Hugging Face Hub folder format.

Downloads (:func:`download_weights`, what ``pretrained=True`` uses for a tag whose cfg names a ``url``):

* the file goes to timm's cache folder, ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``; ``cache_dir=``
  overrides it, as in ``timm.create_model(..., cache_dir=...)``), under the URL's file name, so timm's own loader and
  this one share a cache;
* it is written to a temporary file in that folder and renamed into place only after every check passed: the
  received size equals the server's ``Content-Length``, the body is not a web page (an error or sign-in page sent
  with status 200, as file hosts do), its SHA-256 matches where one is known (the registered tag's, or a hash
  prefix in the file name, torch.hub's ``name-<sha256 prefix>.pth`` convention) and it reads as a checkpoint
  without executing code (:func:`mlpvision._checkpoint.read_checkpoint`). A failed check raises
  :class:`mlpvision.CheckpointError` naming the URL and what to do, and leaves nothing in the cache.

The folder format (:func:`save_pretrained`, :func:`convert`, ``mlpvision convert``) is the one timm writes for the
Hugging Face Hub (``timm.models.save_for_hf``): ``model.safetensors`` (the state_dict under mlpvision's key names)
and ``config.json`` (``architecture``, ``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg``). timm
reads it with ``timm.create_model('local-dir:DIR', pretrained=True)`` (timm 1.0.31; ``import mlpvision`` first, so
the architecture is registered) and ``hf-hub:`` once uploaded; ``mlpvision.create_model(DIR)`` reads it with the
strict checkpoint loader (:func:`load_pretrained_dir`). :func:`push_to_hub` is timm's ``push_to_hf_hub`` as it is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._checkpoint import CheckpointError, read_checkpoint, save_state_dict
from .errors import UsageError

__all__ = ['download_weights', 'cache_dir', 'save_pretrained', 'load_pretrained_dir', 'is_pretrained_dir',
           'convert', 'push_to_hub', 'WEIGHTS_NAME', 'CONFIG_NAME']

WEIGHTS_NAME = 'model.safetensors'  # timm's HF_SAFE_WEIGHTS_NAME
CONFIG_NAME = 'config.json'
_HASH_IN_NAME = re.compile(r'-([a-f0-9]{6,64})\.')  # torch.hub.HASH_REGEX, at least 6 hex digits
_CHUNK = 1 << 20
_logger = logging.getLogger('mlpvision.hub')


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where downloaded weights are kept: ``override``, else timm's (``torch.hub.get_dir()/checkpoints``)."""
    path = Path(override) if override else Path(torch.hub.get_dir()) / 'checkpoints'
    path.mkdir(parents=True, exist_ok=True)
    return path


def _expected_sha256(filename: str, sha256: str | None) -> str | None:
    if sha256:
        return sha256.lower()
    m = _HASH_IN_NAME.search(filename)
    return m.group(1) if m else None


def _looks_like_html(head: bytes, content_type: str) -> bool:
    start = head.lstrip()[:15].lower()
    return content_type.split(';')[0].strip().lower() in ('text/html', 'application/xhtml+xml') or \
        start.startswith((b'<!doctype html', b'<html', b'<head', b'<!--'))


def download_weights(
        url: str,
        *,
        sha256: str | None = None,
        cache: str | os.PathLike | None = None,
        page: str | None = None,
        timeout: float = 60.0,
) -> tuple[Path, dict]:
    """The checkpoint at ``url``: from the cache if it is there, else downloaded and checked (module docstring).

    Args:
        sha256: the file's SHA-256 (full or a prefix); default: a hash prefix in the file name, if any.
        cache: the cache folder (default :func:`cache_dir`).
        page: the page to download the file from by hand, named in errors.

    Returns:
        (path of the cached file, the object read from it by :func:`mlpvision._checkpoint.read_checkpoint`).

    Raises:
        CheckpointError: the download failed or a check failed; nothing is left in the cache.
    """
    filename = os.path.basename(urllib.request.urlparse(url).path) or 'weights.pth'
    folder = cache_dir(cache)
    path = folder / filename
    expected = _expected_sha256(filename, sha256)
    by_hand = (f' You can download it by hand (from {page}) and pass checkpoint_path=FILE, or '
               f'pretrained_cfg_overlay=dict(file=FILE) with pretrained=True.') if page else (
        ' Check the connection and the URL, or download the file by hand and pass checkpoint_path=FILE '
        '(or pretrained_cfg_overlay=dict(file=FILE) with pretrained=True).')
    if path.is_file():
        _logger.info('Loading %s from the cache (%s)', url, path)
        try:
            return path, read_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f'{e} It is the cached download of {url}: delete {str(path)!r} to download it '
                                  f'again.') from e
    _logger.info('Downloading %s to %s', url, path)
    suffix = ''.join(Path(filename).suffixes[-1:])  # read_checkpoint tells safetensors by the suffix
    fd, tmp = tempfile.mkstemp(prefix=f'.{filename}.', suffix=f'.part{suffix}', dir=folder)
    try:
        digest, received = hashlib.sha256(), 0
        try:
            request = urllib.request.Request(url, headers={'User-Agent': 'mlpvision'})
            with urllib.request.urlopen(request, timeout=timeout) as response, os.fdopen(fd, 'wb') as f:
                fd = -1
                length = response.headers.get('Content-Length')
                content_type = response.headers.get('Content-Type', '')
                first = True
                while chunk := response.read(_CHUNK):
                    if first and _looks_like_html(chunk[:512], content_type):
                        raise CheckpointError(
                            f'Downloading {url} gave a web page ({content_type or "HTML"}), not a checkpoint: the '
                            f'host answered with an error or sign-in page.{by_hand}')
                    first = False
                    digest.update(chunk)
                    f.write(chunk)
                    received += len(chunk)
        except urllib.error.HTTPError as e:
            raise CheckpointError(f'Downloading {url} failed: HTTP {e.code} {e.reason}.{by_hand}') from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, 'reason', e)
            raise CheckpointError(f'Downloading {url} failed: {reason}.{by_hand}') from None
        if length is not None and received != int(length):
            raise CheckpointError(f'Downloading {url} was cut short: {received:,} of {int(length):,} bytes '
                                  f'arrived. Nothing was kept in the cache; try again.')
        if received == 0:
            raise CheckpointError(f'Downloading {url} gave an empty file.{by_hand}')
        actual = digest.hexdigest()
        if expected and not actual.startswith(expected):
            raise CheckpointError(f'Downloading {url}: SHA-256 {actual[:len(expected)]}... does not match the '
                                  f'expected {expected}; the file is corrupt or another file. Nothing was kept in '
                                  f'the cache.')
        try:
            obj = read_checkpoint(tmp)
        except CheckpointError as e:
            raise CheckpointError(f'Downloading {url} gave a file that is not a readable checkpoint '
                                  f'({str(e).split(": ", 1)[-1]}) Nothing was kept in the cache.') from None
        os.replace(tmp, path)
        return path, obj
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.remove(tmp)


# --- the Hugging Face Hub folder format ---------------------------------------------------------------------------

def is_pretrained_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


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


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / CONFIG_NAME).read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f'{str(path / CONFIG_NAME)!r} could not be read as JSON ({e}).') from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get('architecture'), str):
        raise CheckpointError(f'{str(path / CONFIG_NAME)!r} does not name an architecture; is it a timm / '
                              f'mlpvision model folder?')
    return cfg


def load_pretrained_dir(path: str | os.PathLike, **kwargs) -> nn.Module:
    """The model saved in a Hub-style folder (:func:`save_pretrained`), loaded strictly (train or deploy form, as
    saved). ``kwargs`` go to :func:`mlpvision.create_model` over the saved ``model_args``."""
    from .models import create_model, is_model

    path = Path(path)
    cfg = _read_config(path)
    arch = cfg['architecture']
    if not is_model(arch):
        raise CheckpointError(f'{str(path)!r} holds a {arch!r}, which is not an mlpvision model; load it with '
                              f'timm.create_model("local-dir:{path}", pretrained=True).')
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        found = sorted(p.name for p in path.glob('*.safetensors')) or sorted(p.name for p in path.glob('*.pth'))
        if not found:
            raise CheckpointError(f'{str(path)!r} has a config.json but no weights ({WEIGHTS_NAME}).')
        weights = path / found[0]
    args = dict(cfg.get('model_args') or {})
    args.update(kwargs)
    deploy = bool(args.pop('deploy', False))
    model = create_model(arch, checkpoint_path=weights, deploy=deploy, **args)
    if hasattr(model, 'pretrained_cfg'):  # the saved preprocessing and class names, as timm's loader keeps them
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in (cfg.get('pretrained_cfg') or {}).items()}
        if cfg.get('label_names'):
            saved['label_names'] = tuple(cfg['label_names'])
        model.pretrained_cfg = dict(model.pretrained_cfg, **saved, file=str(weights))
        model.default_cfg = model.pretrained_cfg
    return model


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
    from .engine.inference import load_for_inference
    from .models import create_model, is_model

    src_path = Path(src)
    if not src_path.exists() and is_model(str(src)):  # a pretrained tag: downloaded (or taken from the cache)
        net = create_model(str(src), pretrained=True, **dict(model_kwargs or {}))
        name, args, labels, data = str(src).split('.', 1)[0], dict(model_kwargs or {}), None, None
    elif is_pretrained_dir(src_path):
        net = load_pretrained_dir(src_path, **dict(model_kwargs or {}))
        cfg = _read_config(src_path)
        labels, name = cfg.get('label_names'), cfg['architecture']
        args = dict(cfg.get('model_args') or {})
        data = None
    else:
        loaded = load_for_inference(src_path, model, dict(model_kwargs or {}))
        net, name, args = loaded.model, loaded.name, dict(loaded.kwargs)
        labels = loaded.classes if loaded.meta is not None else None  # official ones: the model's own classes
        data = loaded.data_cfg.to_dict() if loaded.meta is not None else None
        if loaded.meta is not None:  # a training run's weights: the cfg's release (tag, URL, its top-1) is not them
            net.pretrained_cfg = _without_release(net.pretrained_cfg, src_path)
    if model is not None and model.split('.', 1)[0] != name:
        raise UsageError(f'{str(src)!r} holds a {name}, not a {model}; leave --model out for mlpvision checkpoints.')
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
