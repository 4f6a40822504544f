"""The ``mlpvision`` console script: one subcommand per module in this package, each with
``add_arguments(parser)`` and ``run(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module in mlpvision.cli
SUBCOMMANDS = {
    'models': 'models',
    'demo': 'demo',
    'train': 'train',
    'validate': 'validate',
    'predict': 'predict',
    'bench': 'bench',
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='mlpvision',
                                     description='Vision-MLP backbones: models, training, benchmarks.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {_version()}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        mod = importlib.import_module(f'mlpvision.cli.{module}')
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _version() -> str:
    from mlpvision import __version__
    return __version__


def expected_errors() -> tuple[type[Exception], ...]:
    """The errors mlpvision raises on purpose (bad options, data, checkpoints, a NaN loss), each with a message
    naming the problem and its fix: the CLI prints them as one line and exits with status 2. Anything else (a
    ``RuntimeError`` from torch, a ``ValueError`` mlpvision did not raise itself, a bug) keeps its traceback."""
    from mlpvision.errors import MlpvisionError  # CheckpointError and UsageError included

    return (MlpvisionError,)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except expected_errors() as e:
        print(f'mlpvision {args.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'mlpvision {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
