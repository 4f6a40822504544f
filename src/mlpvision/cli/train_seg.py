"""Train UperNet semantic segmentation: `mlpvision train-seg --backbone NAME --dataset camvid --data-dir DIR ...`.

The defaults are the AS-MLP ADE20K UperNet config (AdamW 6e-5, poly with 1500 warm-up steps, crop 512, batch 16);
see :mod:`mlpvision.engine.segmentation`. The run folder (--output) receives last.pth (resumable: --resume auto),
best.pth (best validation mIoU), metrics.csv, per_class.csv, confusion.csv and curves.png. Options not given on a
resumed run come from its checkpoint. Multi-GPU: `torchrun --nproc_per_node=N -m mlpvision.cli.main train-seg ...`.
Ctrl-C saves last.pth at the next step and prints the command that resumes.
"""
from __future__ import annotations

import argparse

HELP = 'train UperNet segmentation: the same as train --task segment (kept for old commands)'


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``mlpvision train``'s parser, with the task set to segmentation (one grammar: the same flags)."""
    from .train import add_arguments as add_train_arguments

    add_train_arguments(p)
    p.set_defaults(task='segment')


def run(args: argparse.Namespace) -> int:
    from .train import run as run_train

    return run_train(args)
