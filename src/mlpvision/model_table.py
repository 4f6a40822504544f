"""The model table: one row per registered model, from its cfg and ModelMeta (the registry is the only source)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import torch

from ._profile import profile
from .errors import UsageError
from .models._registry import create_model, list_models, model_meta

__all__ = ['ModelRow', 'model_rows', 'format_rows']

COLUMNS = ('model', 'params (M)', 'GMACs', 'deploy GMACs', 'input', 'paper top-1', 'paper params', 'paper GMACs',
           'source')


@dataclass
class ModelRow:
    model: str
    params: int
    gmacs: float
    deploy_gmacs: float | None
    input_size: tuple[int, int, int]
    top1_paper: float | None
    params_paper: str | None
    gmacs_paper: float | None
    source: str

    def cells(self) -> list[str]:
        return [self.model, f'{self.params / 1e6:.2f}', f'{self.gmacs:.2f}',
                '' if self.deploy_gmacs is None else f'{self.deploy_gmacs:.3g}',
                'x'.join(str(s) for s in self.input_size[1:]),
                '' if self.top1_paper is None else f'{self.top1_paper:.2f}', self.params_paper or '',
                '' if self.gmacs_paper is None else f'{self.gmacs_paper:g}', self.source]


def model_rows(pattern: str = '*') -> list[ModelRow]:
    """Build each matching model and measure its params and MACs at its default input size."""
    rows = []
    for name in list_models(pattern):
        with torch.device('meta'):  # shapes are all that params and MACs need: no memory, no init cost
            model = create_model(name)
        input_size = tuple(model.pretrained_cfg['input_size'])
        prof = profile(model, input_size)
        deploy_gmacs = None
        if any(hasattr(m, 'reparameterize') for m in model.modules()):  # the papers count RepMLP after conversion
            with torch.device('meta'):
                deploy_gmacs = profile(create_model(name, deploy=True), input_size).gmacs
        meta = model_meta(name)
        rows.append(ModelRow(name, prof.params, prof.gmacs, deploy_gmacs, input_size, meta.top1_paper,
                             meta.params_paper, meta.gmacs_paper, meta.paper))
        del model
    return rows


def format_rows(rows: list[ModelRow], fmt: str = 'table') -> str:
    cells = [r.cells() for r in rows]
    if fmt == 'csv':
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator='\n')
        w.writerow(COLUMNS)
        w.writerows(cells)
        return buf.getvalue()
    if fmt == 'md':
        lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '|'.join('---' for _ in COLUMNS) + '|']
        lines += ['| ' + ' | '.join(c) + ' |' for c in cells]
        return '\n'.join(lines) + '\n'
    if fmt != 'table':
        raise UsageError(f"format must be one of table, csv, md; got {fmt!r}.")
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(COLUMNS)]
    line = lambda c: '  '.join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip()  # noqa: E731
    return '\n'.join([line(COLUMNS), line(['-' * w for w in widths])] + [line(c) for c in cells]) + '\n'
