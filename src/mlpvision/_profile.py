"""Parameter and MAC counts.

MACs follow the papers' convention (their "FLOPs"): one multiply-add of a conv, linear or matmul is one MAC, and
element-wise ops count zero (fvcore's convention; see shared reference ecosystem.md §4). They are measured with
``torch.utils.flop_counter.FlopCounterMode``, which counts 2 per multiply-add, and halved. Modules whose work the
papers count as free (AS-MLP's axial shift, implemented here as a one-hot depthwise conv) set
``count_macs = False`` and are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['profile', 'Profile', 'count_params']


@dataclass(frozen=True)
class Profile:
    params: int
    macs: int
    input_size: tuple[int, int, int]

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _exempt_modules(model: nn.Module) -> list[str]:
    """Names of the outermost modules with ``count_macs = False``."""
    names: list[str] = []
    for name, m in model.named_modules():
        if getattr(m, 'count_macs', True) is False and not any(name.startswith(n + '.') for n in names):
            names.append(name)
    return names


@torch.no_grad()
def profile(model_or_name: nn.Module | str, input_size: tuple[int, int, int] | None = None, **kwargs) -> Profile:
    """Params and MACs of a model (or a registered name, built with ``kwargs``) for one image of ``input_size``.

    ``input_size`` defaults to the model's pretrained cfg input size, else (3, 224, 224).
    """
    if isinstance(model_or_name, str):
        from .models._registry import create_model
        model = create_model(model_or_name, **kwargs)
    else:
        model = model_or_name
    if input_size is None:
        input_size = tuple((getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3, 224, 224)))
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_size, device=next(model.parameters()).device)
        with FlopCounterMode(display=False, depth=None) as counter:
            model(x)
    finally:
        model.train(was_training)
    flops = counter.get_total_flops()
    exempt = _exempt_modules(model)
    if exempt:
        per_module = counter.get_flop_counts()
        root = type(model).__name__
        for name in exempt:
            flops -= sum(per_module.get(f'{root}.{name}', {}).values())
    return Profile(params=count_params(model), macs=int(flops) // 2, input_size=tuple(input_size))
