"""Folding BatchNorm and per-channel affine maps into the adjacent linear operators (for deploy forms)."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['bn_scale_shift', 'fuse_conv_bn']


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``bn(x) == x * scale + shift`` per channel, in eval mode."""
    std = (bn.running_var + bn.eps).sqrt()
    weight = bn.weight if bn.affine else torch.ones_like(std)
    bias = bn.bias if bn.affine else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - bn.running_mean * scale


def fuse_conv_bn(
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        bn: nn.modules.batchnorm._BatchNorm,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` as one conv (output channels on dim 0 of ``weight``)."""
    scale, shift = bn_scale_shift(bn)
    fused_w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    fused_b = shift if bias is None else bias * scale + shift
    return fused_w, fused_b
