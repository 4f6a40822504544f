"""The ``mlpvision`` console script's first stage, outside the ``mlpvision`` package on purpose.

``import mlpvision`` imports torch and timm (it registers the models in timm's registry), which takes seconds and
starts torch's OpenMP runtime. Two things must happen before that, so they live here:

- ``mlpvision``, ``mlpvision --help`` and ``mlpvision --version`` answer without importing torch at all.
- ``OMP_WAIT_POLICY`` defaults to ``PASSIVE``. With OpenMP's default policy, idle intra-op threads spin; between
  the many small operations of a vision MLP on few cores the spinning threads take the cores from the thread that
  has work (and from data-loader processes). Measured on a 2-vCPU host, ``repmlp_cifar_pure`` inference at batch
  128: 1 thread 319 img/s, 2 threads 59 img/s with the default policy and 258 img/s with ``PASSIVE`` (README,
  "Threads"). OpenMP reads the variable once, when torch's runtime is loaded, so setting it later (in
  :mod:`mlpvision.cli.main`) would do nothing. A value already in the environment is kept.

Every other command goes to :func:`run`, which builds the full parser (one module per subcommand in
:mod:`mlpvision.cli`, each with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``) and runs the command.
This module owns the parser; :mod:`mlpvision.cli.main` only calls :func:`run`, so the two do not import each other.
``python -m mlpvision.cli.main`` (the form torchrun runs) skips the first stage: set ``OMP_WAIT_POLICY`` yourself
there if you give each process more than one thread (torchrun gives one by default).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# subcommand -> (module in mlpvision.cli, one-line help); each module's HELP is the same text (tests/test_cli_run.py)
SUBCOMMANDS = {
    'models': ('models', 'list the registered models with params, GMACs and paper figures'),
    'demo': ('demo', 'train and evaluate a model on the bundled digits images, then show the model table'),
    'train': ('train', 'train a classifier, segmenter or detector (--task) with a paper recipe or your options'),
    'validate': ('validate', 'evaluate a checkpoint: top-1 / per-class accuracy, mIoU or COCO box / mask AP (task '
                             'from the checkpoint)'),
    'predict': ('predict', 'predict with a checkpoint: top-k labels, or segmentation / detection drawings with '
                           '--output'),
    'viz': ('viz', 'pictures of a model: receptive fields, token-mixing weights, Grad-CAM, feature maps (PNG + .npy)'),
    'bench': ('bench', 'benchmark models: params, GMACs, throughput, latency, training speed, peak memory'),
    'convert': ('convert', 'convert a checkpoint to a Hugging Face Hub-style folder (model.safetensors + config.json) '
                           'timm loads'),
    'export': ('export', 'export a model to ONNX or torch.export (.pt2), verified against eager before it is written'),
    'quantize': ('quantize', 'quantize a model to int8 for CPU inference (post-training, calibrated on real images)'),
    'train-seg': ('train_seg', 'train UperNet segmentation: the same as train --task segment (kept for old commands)'),
    'validate-seg': ('validate_seg', 'evaluate a segmentation checkpoint: the same as validate (kept for old '
                                     'commands)'),
    'predict-seg': ('predict_seg', 'segment images with a segmentation checkpoint: the same as predict -o DIR (kept '
                                   'for old commands)'),
}
DESCRIPTION = ('Vision-MLP backbones: models, training, benchmarks. Commands that run a model take WEIGHTS: a model '
               'name (random weights), NAME.TAG (released weights), a checkpoint file or a folder of mlpvision '
               'convert.')
EPILOG = ('OMP_WAIT_POLICY is PASSIVE unless set in the environment: spinning idle OpenMP threads made two threads '
          '8x slower than one on a 2-core machine (README, "Threads").')


def top_parser(version: str | None) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The top-level parser (subcommands without their options); ``version`` None: ``--version`` is looked up
    when asked for."""
    parser = argparse.ArgumentParser(prog='mlpvision', description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument('--version', action='version', version=f'%(prog)s {version or _version()}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    return parser, sub


def _version() -> str:
    """The installed distribution's version (no torch import); the package's own when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version('mlpvision')
    except PackageNotFoundError:
        from mlpvision import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every subcommand with its options (imports mlpvision, hence torch)."""
    from mlpvision._version import __version__

    parser, sub = top_parser(__version__)
    for name, (module, _) in SUBCOMMANDS.items():
        mod = importlib.import_module(f'mlpvision.cli.{module}')
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def expected_errors() -> tuple[type[Exception], ...]:
    """The errors mlpvision raises on purpose (bad options, data, checkpoints, a NaN loss), each with a message
    naming the problem and its fix: the CLI prints them as one line and exits with status 2. Anything else (a
    ``RuntimeError`` from torch, a ``ValueError`` mlpvision did not raise itself, a bug) keeps its traceback."""
    from mlpvision.errors import MlpvisionError  # CheckpointError and UsageError included

    return (MlpvisionError,)


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` with the full parser and run the subcommand: its status, 2 for an expected error (printed as
    one line), 128 + the signal's number for an interrupted run (saved; the message says how to resume)."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    parser = build_parser()
    args = parser.parse_args(argv)
    from mlpvision.cli._common import missing_required

    missing = missing_required(args)
    if missing:
        print(f'mlpvision {args.command}: error: the following arguments are required: {", ".join(missing)}',
              file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except expected_errors() as e:
        print(f'mlpvision {args.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # mlpvision.engine.run.TrainingInterrupted: saved, its message says how to resume
        print(f'mlpvision {args.command}: interrupted' + (f': {e}' if str(e) else ''), file=sys.stderr)
        return 128 + getattr(e, 'signum', 2)  # the shell's status for death by that signal (SIGINT: 130)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help', '--version'):
        parser, sub = top_parser(None)
        for name, (_, help_) in SUBCOMMANDS.items():
            sub.add_parser(name, help=help_)
        parser.parse_args(argv)  # prints the help or the version and exits; no arguments: the usage error
        return 0
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    return run(argv)


if __name__ == '__main__':
    sys.exit(main())
