"""Any timm model with ``features_only`` as a dense backbone: the stride 4 / 8 / 16 / 32 maps as a list, with
``out_channels`` and ``strides`` (the contract of :func:`mlpvision.dense.backbone`).

This is how the CNN baselines (``resnet18``, ``convnext_atto``, ...) go under :func:`mlpvision.dense.upernet`
(mlpvision's own models go through :func:`mlpvision.dense.backbone` unless ``pyramid='timm'`` is asked for). The
input is zero-padded at the bottom and right to a multiple of 32 and each map cropped back to ``ceil(side / stride)``,
so any H x W runs (a CNN's features at the padded border see the zeros, as a detector's padded batch does).
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError

__all__ = ['TimmPyramid', 'build_backbone']

STRIDES = (4, 8, 16, 32)


class TimmPyramid(nn.Module):
    """``timm.create_model(name, features_only=True)`` keeping the stride 4 / 8 / 16 / 32 outputs."""

    def __init__(self, name: str, **model_kwargs) -> None:
        super().__init__()
        self.body = timm.create_model(name, features_only=True, **model_kwargs)
        reductions = self.body.feature_info.reduction()
        missing = [s for s in STRIDES if s not in reductions]
        if missing:
            raise ValueError(f'{name} has no feature maps at stride {missing} (it has {reductions}); UperNet needs '
                             f'strides {list(STRIDES)}')
        self.keep = [reductions.index(s) for s in STRIDES]
        channels = self.body.feature_info.channels()
        self.out_channels = [channels[i] for i in self.keep]
        self.strides = list(STRIDES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[2:]
        m = self.strides[-1]
        x = F.pad(x, (0, -w % m, 0, -h % m))  # B, C, ceil(H/32)*32, ceil(W/32)*32
        feats = self.body(x)
        return [feats[i][..., :math.ceil(h / s), :math.ceil(w / s)] for i, s in zip(self.keep, self.strides,
                                                                                   strict=True)]


def build_backbone(name: str, pyramid: str = 'auto', **model_kwargs) -> nn.Module:
    """The pyramid backbone for ``name``.

    ``pyramid='auto'``: an mlpvision model through :func:`mlpvision.dense.backbone` (the official dense backbone:
    AS-MLP with its per-output GroupNorms), any other timm model through :class:`TimmPyramid`. ``'timm'``:
    :class:`TimmPyramid` for every model (an mlpvision model's plain ``features_only`` stage outputs).
    """
    from ..models import is_model
    if pyramid not in ('auto', 'timm'):
        raise UsageError(f"pyramid={pyramid!r}: use 'auto' (mlpvision.dense.backbone for mlpvision models) or 'timm' "
                         f"(timm features_only for every model)")
    if pyramid == 'auto' and is_model(name):
        from .backbone import backbone
        return backbone(name, **model_kwargs)
    return TimmPyramid(name, **model_kwargs)
