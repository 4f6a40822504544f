"""The tables in README.md and docs/ that are generated from the registry, between markers such as
``<!-- models:start pattern=as_mlp_* -->`` ... ``<!-- models:end -->`` (``mlpvision.model_table.format_rows`` of
the matching models) and ``<!-- weights:start pattern=resmlp* -->`` ... ``<!-- weights:end -->``
(``mlpvision.model_table.weights_table``); without ``pattern=`` a block holds every model.

``python tests/doc_tables.py`` rewrites every block in place; tests/test_docs.py checks they are current.
"""
from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r'(<!-- (models|weights):start(?: pattern=(\S+))?[^\n]*-->\n)(.*?)(<!-- \2:end -->)', re.S)


def doc_files() -> list[Path]:
    return [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]


def render(text: str, rows=None) -> str:
    """``text`` with every generated block rewritten (``rows``: the model rows, measured once if None)."""
    from mlpvision.model_table import format_rows, model_rows, weights_table

    def table(m: re.Match) -> str:
        nonlocal rows
        kind, pattern = m.group(2), m.group(3) or '*'
        if kind == 'weights':
            body = weights_table(pattern)
        else:
            rows = model_rows() if rows is None else rows
            body = format_rows([r for r in rows if fnmatch.fnmatch(r.model, pattern)], 'md')
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(table, text)


def blocks(text: str) -> list[tuple[str, str | None, str]]:
    """(kind, pattern, content) of every generated block in ``text``."""
    return [(m.group(2), m.group(3), m.group(4)) for m in BLOCK.finditer(text)]


def main() -> int:
    from mlpvision.model_table import model_rows

    rows = model_rows()
    for path in doc_files():
        text = path.read_text()
        new = render(text, rows)
        if new != text:
            path.write_text(new)
            print(f'rewrote {path.relative_to(ROOT)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
