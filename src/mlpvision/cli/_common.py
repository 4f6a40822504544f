"""Helpers shared by the training, validation and prediction subcommands."""
from __future__ import annotations

import argparse
from typing import Any


def parse_kwargs(items: list[str] | None, flag: str = '--model-kwargs') -> dict[str, Any]:
    """``['embed_dim=128', 'depth=4']`` -> ``{'embed_dim': 128, 'depth': 4}`` (values read as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ValueError(f'{flag} takes KEY=VALUE pairs, got {item!r}')
        try:
            out[key.replace('-', '_')] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.replace('-', '_')] = value
    return out


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--device', default='auto', help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--batch-size', '-b', type=int, default=64, help='images per batch (default 64)')
    p.add_argument('--threads', type=int, help="CPU threads for torch (default: torch's)")


def apply_threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('checkpoint', help='a checkpoint: mlpvision\'s (best.pth / last.pth) or an official one')
    p.add_argument('--model', help='model name; needed for official checkpoints (ours record it)')
    p.add_argument('--model-kwargs', nargs='*', metavar='KEY=VALUE', help='extra constructor arguments')
    p.add_argument('--ema', action='store_true', help='use the EMA weights of a training checkpoint (last.pth)')
    p.add_argument('--reparam', action='store_true',
                   help='re-parameterise a train-form model into its deploy form before running it')
    p.add_argument('--img-size', type=int, help="input size (default: the checkpoint's or the model's)")
    p.add_argument('--crop-pct', type=float, help="eval centre-crop fraction (default: the checkpoint's or model's)")
    p.add_argument('--interpolation', help="resize interpolation (default: the checkpoint's or the model's)")
