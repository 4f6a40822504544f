"""Checked downloads of pretrained weights into timm's cache (what ``pretrained=True`` uses for a tag whose cfg
names a ``url``).

* the file goes to timm's cache folder, ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``; ``cache_dir=``
  overrides it, as in ``timm.create_model(..., cache_dir=...)``), under the URL's file name, so timm's own loader and
  this one share a cache;
* it is written to a temporary file in that folder and renamed into place only after every check passed: the
  received size equals the server's ``Content-Length``, the body is not a web page (an error or sign-in page sent
  with status 200, as file hosts do), its SHA-256 matches where one is known (the registered tag's, or a hash
  prefix in the file name, torch.hub's ``name-<sha256 prefix>.pth`` convention) and it reads as a checkpoint
  without executing code (:func:`mlpvision._checkpoint.read_checkpoint`). A failed check raises
  :class:`mlpvision.CheckpointError` naming the URL and what to do, and leaves nothing in the cache.

A ground-floor module (it imports only :mod:`mlpvision._checkpoint`), so that :mod:`mlpvision.models` can download
without importing anything above it; :mod:`mlpvision.hub` re-exports it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

from ._checkpoint import CheckpointError, read_checkpoint

__all__ = ['download_weights', 'cache_dir']

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
