"""The model table: one row per registered model, from its cfg and ModelMeta (the registry is the only source); and
the weights table: one row per pretrained tag, from its :class:`mlpvision.Weights` (:func:`weights_table`)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ._profile import profile
from .errors import UsageError
from .models._registry import create_model, list_models, list_pretrained, model_meta, pretrained_weights

__all__ = ['ModelRow', 'model_rows', 'format_rows', 'paper_dataset', 'cache_path', 'weights_table']

_logger = logging.getLogger('mlpvision.model_table')

COLUMNS = ('model', 'params (M)', 'GMACs', 'deploy GMACs', 'input', 'paper top-1', 'paper data', 'paper params',
           'paper GMACs', 'source')
# the data set a paper figure is on, by the class count of the variant's default head (its cfg's num_classes)
PAPER_DATASETS = {1000: 'ImageNet-1k', 100: 'CIFAR-100', 10: 'CIFAR-10'}


def paper_dataset(name: str) -> str | None:
    """The data set of model ``name``'s paper figures (top-1), from the class count its cfg is built for: every
    registered variant is the paper's model for one data set (``repmlp_cifar_pure``: CIFAR-10, the others
    ImageNet-1k). None for a class count not in :data:`PAPER_DATASETS`."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    return PAPER_DATASETS.get(pcfg.num_classes) if pcfg is not None else None


@dataclass
class ModelRow:
    model: str
    params: int
    gmacs: float
    deploy_gmacs: float | None
    input_size: tuple[int, int, int]
    top1_paper: float | None
    paper_data: str | None
    params_paper: str | None
    gmacs_paper: float | None
    source: str

    def cells(self) -> list[str]:
        return [self.model, f'{self.params / 1e6:.2f}', f'{self.gmacs:.2f}',
                '' if self.deploy_gmacs is None else f'{self.deploy_gmacs:.3g}',
                'x'.join(str(s) for s in self.input_size[1:]),
                '' if self.top1_paper is None else f'{self.top1_paper:.2f}',
                (self.paper_data or '') if self.top1_paper is not None else '', self.params_paper or '',
                '' if self.gmacs_paper is None else f'{self.gmacs_paper:g}', self.source]


def model_rows(pattern: str = '*', cache: bool = False) -> list[ModelRow]:
    """Build each matching model and measure its params and MACs at its default input size.

    Args:
        cache: reuse (and add to) the rows kept in :func:`cache_path`, a file keyed by the source of the models, the
            layers and the profiler and by the torch and timm versions, so a changed model is measured afresh.
            Profiling all 28 models takes about 18 s on 2 cores; ``mlpvision models`` uses the cache.
    """
    names = list_models(pattern)
    path = cache_path() if cache else None
    kept = _read_cache(path) if path else {}
    rows = [kept.get(name) or _measure(name) for name in names]
    if path and any(name not in kept for name in names):
        _write_cache(path, {**kept, **{r.model: r for r in rows}})
    return rows


def _measure(name: str) -> ModelRow:
    with torch.device('meta'):  # shapes are all that params and MACs need: no memory, no init cost
        model = create_model(name)
    input_size = tuple(model.pretrained_cfg['input_size'])
    prof = profile(model, input_size)
    deploy_gmacs = None
    if any(hasattr(m, 'reparameterize') for m in model.modules()):  # the papers count RepMLP after conversion
        with torch.device('meta'):
            deploy_gmacs = profile(create_model(name, deploy=True), input_size).gmacs
    meta = model_meta(name)
    return ModelRow(name, prof.params, prof.gmacs, deploy_gmacs, input_size, meta.top1_paper, paper_dataset(name),
                    meta.params_paper, meta.gmacs_paper, meta.paper)


def cache_path() -> Path:
    """Where the model table is cached: ``$MLPVISION_CACHE`` (or ``$XDG_CACHE_HOME/mlpvision``, else
    ``~/.cache/mlpvision``) / ``model_table-<key>.json``, the key a hash of everything a row depends on."""
    import timm

    root = Path(__file__).parent
    digest = hashlib.sha256(f'{torch.__version__} {timm.__version__}'.encode())
    for f in sorted([*(root / 'models').glob('*.py'), *(root / 'layers').glob('*.py'), root / '_profile.py',
                     Path(__file__)]):
        digest.update(f.name.encode() + f.read_bytes())
    base = os.environ.get('MLPVISION_CACHE') or Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') \
        / 'mlpvision'
    return Path(base) / f'model_table-{digest.hexdigest()[:16]}.json'


def _read_cache(path: Path) -> dict[str, ModelRow]:
    try:
        data = json.loads(path.read_text())
        return {d['model']: ModelRow(**dict(d, input_size=tuple(d['input_size']))) for d in data}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as e:  # a damaged or older file: measure afresh
        _logger.debug('model table cache %s unreadable (%s); measuring', path, e)
        return {}


def _write_cache(path: Path, rows: dict[str, ModelRow]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f'.{os.getpid()}.tmp')
        tmp.write_text(json.dumps([asdict(r) for r in rows.values()]))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: the table is still printed, only slower next time
        _logger.debug('model table cache %s not written (%s)', path, e)


def format_rows(rows: list[ModelRow], fmt: str = 'table') -> str:
    return format_cells(COLUMNS, [r.cells() for r in rows], fmt)


def format_cells(columns: Sequence[str], cells: list[list[str]], fmt: str = 'table') -> str:
    """``cells`` under ``columns`` as an aligned text table, CSV or markdown (``fmt``: table, csv, md)."""
    if fmt == 'csv':
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator='\n')
        w.writerow(columns)
        w.writerows(cells)
        return buf.getvalue()
    if fmt == 'md':
        lines = ['| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' for _ in columns) + '|']
        lines += ['| ' + ' | '.join(c) + ' |' for c in cells]
        return '\n'.join(lines) + '\n'
    if fmt != 'table':
        raise UsageError(f"format must be one of table, csv, md; got {fmt!r}.")
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(columns)]
    line = lambda c: '  '.join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip()  # noqa: E731
    return '\n'.join([line(columns), line(['-' * w for w in widths])] + [line(c) for c in cells]) + '\n'


def weights_table(pattern: str = '*') -> str:
    """A markdown table of every pretrained tag matching ``pattern``: whether ``pretrained=True`` downloads it or it
    must be fetched by hand (and from where), the top-1 its source gives, the license and the source."""
    lines = ['| tag | weights | top-1 | top-1 from | license | listed in |', '|---|---|---|---|---|---|']
    for tag in list_pretrained(pattern):
        w = pretrained_weights(tag)
        where = (f'`pretrained=True` ([file]({w.page}))' if w.host == 'direct' else
                 f'by hand: [{w.host}]({w.page.split(" ", 1)[0]})')
        top1 = '' if w.top1 is None else f'{w.top1:g}'
        lines.append(f'| `{tag}` | {where} | {top1} | {w.top1_source} | {w.license} | {w.source} |')
    return '\n'.join(lines) + '\n'
