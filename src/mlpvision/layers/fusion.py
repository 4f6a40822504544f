"""Folding BatchNorm and per-channel affine maps into the adjacent linear operators, and merging convolutions into
fully-connected layers (for deploy forms)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['bn_scale_shift', 'fuse_conv_bn', 'fold_affine_into_next_linear', 'pad_kernel', 'conv_to_fc']


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


def fold_affine_into_next_linear(
        weight: torch.Tensor,
        bias: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` with ``W' x + b' == W (scale * x + shift) + b``: an affine map on the *input* of a linear layer.

    ``weight`` is (out, in) and ``scale`` / ``shift`` have ``in`` entries (expand a per-channel affine to the
    flattened input first).
    """
    return weight * scale[None, :], bias + weight @ shift


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a centred k x k kernel (O, I, k, k) to size x size (same output under 'same' padding)."""
    p = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [p, p, p, p])  # O, I, size, size


def conv_to_fc(kernel: torch.Tensor, groups: int, h: int, w: int) -> torch.Tensor:
    """The fully-connected layer equal to a stride-1, zero-'same'-padded conv applied to one h x w map.

    Both act on a map (C, h, w) flattened channel-major (index ``c * h * w + y * w + x``); the conv has
    ``kernel`` (O, C / groups, k, k) and ``groups``, and the FC is grouped the same way (group i maps the i-th
    block of C * h * w / groups inputs to the i-th block of O * h * w / groups outputs).

    The conv is linear, so its FC matrix is the conv of the identity: feed each of the C / groups * h * w one-hot
    maps of one group (the same one-hot in every group) and read the outputs as columns.

    Returns:
        The grouped FC weight (O * h * w, C / groups * h * w), as a 1x1 grouped Conv2d would hold it (without the
        trailing 1 x 1).
    """
    out_chs, in_per_group, kh, kw = kernel.shape
    n = in_per_group * h * w
    eye = torch.eye(n, dtype=kernel.dtype, device=kernel.device).reshape(n, in_per_group, h, w)
    eye = eye.repeat(1, groups, 1, 1)  # n, C, h, w: the same one-hot map in every group
    out = F.conv2d(eye, kernel, padding=(kh // 2, kw // 2), groups=groups)  # n, O, h, w
    return out.reshape(n, out_chs * h * w).t()  # O*h*w, C/groups*h*w
