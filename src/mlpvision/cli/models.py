"""List mlpvision's models: parameters, GMACs at the default input size (one multiply-add = one MAC, the papers'
"FLOPs"), input size, the paper's top-1 (with its data set) and figures, and the source. The measured columns are
cached after the first run (see ``mlpvision.model_table.cache_path``; a changed model is measured afresh)."""
from __future__ import annotations

import argparse

HELP = 'list the registered models with params, GMACs and paper figures'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('pattern', nargs='?', default='*', help="glob over model names (default '*')")
    p.add_argument('--format', choices=('table', 'csv', 'md'), default='table')
    p.add_argument('--names-only', action='store_true', help='print only the names')
    p.add_argument('--dense', action='store_true',
                   help="the dense models instead (UperNet, Mask R-CNN, RetinaNet on mlpvision backbones: params, "
                        "UperNet's GMACs, the official dense configs' figures); PATTERN globs 'head:backbone'")


def run(args: argparse.Namespace) -> int:
    from mlpvision.errors import UsageError
    from mlpvision.model_table import format_rows, model_rows
    from mlpvision.models import list_models

    if args.dense:
        from mlpvision.dense.table import COLUMNS, dense_rows
        from mlpvision.model_table import format_cells

        rows = dense_rows(args.pattern)
        if not rows:
            raise UsageError(f"no dense model matches {args.pattern!r} (a glob over 'head:backbone', e.g. "
                             f"'upernet:*'); `mlpvision models --dense` lists them all.")
        print(format_cells(COLUMNS, rows, args.format), end='')
        return 0
    names = list_models(args.pattern)
    if not names:
        raise UsageError(f'no mlpvision model matches {args.pattern!r}; `mlpvision models` lists them all.')
    if args.names_only:
        print('\n'.join(names))
        return 0
    print(format_rows(model_rows(args.pattern, cache=True), args.format), end='')
    return 0
