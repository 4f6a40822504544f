"""The ``mlpvision`` console script: one subcommand per module in this package, each with
``add_arguments(parser)`` and ``run(args) -> int``. The script's first stage, :mod:`_mlpvision_cli`, answers
``--help`` / ``--version`` without torch and sets ``OMP_WAIT_POLICY`` before torch loads, then calls :func:`main`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from _mlpvision_cli import SUBCOMMANDS, top_parser


def build_parser() -> argparse.ArgumentParser:
    from mlpvision import __version__

    parser, sub = top_parser(__version__)
    for name, (module, _) in SUBCOMMANDS.items():
        mod = importlib.import_module(f'mlpvision.cli.{module}')
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


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
    except KeyboardInterrupt as e:  # mlpvision.engine.train.TrainingInterrupted: saved, its message says how to resume
        print(f'mlpvision {args.command}: interrupted' + (f': {e}' if str(e) else ''), file=sys.stderr)
        return 128 + getattr(e, 'signum', 2)  # the shell's status for death by that signal (SIGINT: 130)


if __name__ == '__main__':
    sys.exit(main())
