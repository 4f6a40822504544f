"""``python -m mlpvision.cli.main ARGS`` (the form torchrun runs): the ``mlpvision`` console script without its first
stage. The parser lives in :mod:`_mlpvision_cli` (:func:`_mlpvision_cli.run`); this module only calls it."""
from __future__ import annotations

import sys

from _mlpvision_cli import build_parser, expected_errors
from _mlpvision_cli import run as main

__all__ = ['main', 'build_parser', 'expected_errors']

if __name__ == '__main__':
    sys.exit(main())
