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


def conv_to_fc(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The fully-connected layer equal to a stride-1, zero-'same'-padded conv applied to one h x w map.

    Both act on a map (C, h, w) flattened channel-major (index ``c * h * w + y * w + x``); the conv has
    ``kernel`` (O, C / groups, kh, kw), and the FC is grouped the same way (group i maps the i-th block of
    C * h * w / groups inputs to the i-th block of O * h * w / groups outputs), which the kernel's shape implies.

    The paper (RepMLP, arXiv:2105.01883 §3.3) obtains this matrix by convolving an identity; it is the same matrix as
    reading the kernel directly: output (y, x) sees input (y', x') through tap (y' - y + kh // 2, x' - x + kw // 2)
    when that tap exists, else zero. The direct read costs one gather instead of a convolution of
    C / groups * h * w one-hot maps (billions of MACs for a 128-channel 7 x 7 partition).

    Returns:
        The grouped FC weight (O * h * w, C / groups * h * w), as a 1x1 grouped Conv2d would hold it (without the
        trailing 1 x 1).
    """
    out_chs, in_per_group, kh, kw = kernel.shape
    dev = kernel.device
    dy = torch.arange(h, device=dev)[None, :] - torch.arange(h, device=dev)[:, None] + kh // 2  # h_out, h_in
    dx = torch.arange(w, device=dev)[None, :] - torch.arange(w, device=dev)[:, None] + kw // 2  # w_out, w_in
    valid = ((dy >= 0) & (dy < kh))[:, None, :, None] & ((dx >= 0) & (dx < kw))[None, :, None, :]  # h, w, h, w
    taps = kernel[:, :, dy.clamp(0, kh - 1)[:, None, :, None], dx.clamp(0, kw - 1)[None, :, None, :]]
    fc = taps * valid  # O, C/g, h_out, w_out, h_in, w_in
    return fc.permute(0, 2, 3, 1, 4, 5).reshape(out_chs * h * w, in_per_group * h * w)  # O*h*w, C/g*h*w
