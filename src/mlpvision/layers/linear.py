"""Linear layers, 1x1 convolutions and MLPs that run through :mod:`mlpvision.layers.fast_linear`.

Each module holds the parameters (and state-dict keys) of the PyTorch / timm module it subclasses, computes the same
function up to float rounding, and in CPU inference runs as oneDNN's matmul or convolution with the activation or
the residual sum fused into it (everywhere else: the plain op). A model file writes the maths with them and leaves
the dispatch here:

* :class:`Linear` (``nn.Linear``) and :class:`PointwiseConv` (a 1x1 ``nn.Conv2d``) take the activation that follows
  them (``act=``) and the shortcut added after them (``shortcut=``), to fuse both;
* :class:`Mlp` is timm's ``Mlp`` whose forward takes the block's ``shortcut``;
* :class:`ProjectedMixer` is the base of a token mixer that ends in a 1x1 projection: it adds a pre-norm block's
  shortcut inside that projection, so the mixer's own code does not carry it;
* :class:`GroupedLinear` is a grouped fully connected layer stored as the grouped 1x1 conv of the official RepMLP
  code, run as batched matrix products.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp as _TimmMlp

from .fast_linear import dispatch_mode_active, grouped_linear, linear, mlp_forward, pointwise_conv
from .precision import mean_hw

__all__ = ['Linear', 'PointwiseConv', 'GroupedLinear', 'Mlp', 'ProjectedMixer', 'pointwise_conv_mean']


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters) whose forward can apply the activation after it and add a shortcut:
    ``shortcut + act(linear(x))``, fused on the oneDNN path (:func:`mlpvision.layers.fast_linear.linear`).

    TorchScript cannot type the activation argument: a scripted caller computes ``F.linear`` with this layer's
    ``weight`` and ``bias`` itself (as Strip-MLP's channel mixing does), and the forward here stays Python.
    """

    @torch.jit.ignore
    def forward(self, x: torch.Tensor, act: nn.Module | None = None,
                shortcut: torch.Tensor | None = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, act, shortcut)


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution (stride 1, no padding, one group; the parameters of that ``nn.Conv2d``) whose forward can
    apply the activation after it and add a shortcut: ``shortcut + act(conv(x))``.

    On a channels-last (B, C, H, W) map in CPU inference it runs as oneDNN's convolution with the activation (GELU,
    ReLU) or, without one, the shortcut fused, and stores its output channels-last. A (B, C) input is read as a 1x1
    map and runs as a linear layer (oneDNN's convolution is slow on 1x1 maps); the output is then (B, out).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, act: nn.Module | None = None,
                shortcut: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 2:
            return linear(x, self.weight.flatten(1), self.bias, act, shortcut)
        return pointwise_conv(x, self.weight, self.bias, act, shortcut)


class GroupedLinear(nn.Conv2d):
    """One fully connected layer per group, ``y[n, g] = W[g] x[n, g] + b[g]``, kept as the grouped 1x1 conv the
    official RepMLP code applies to a (N, in, 1, 1) map (weight (out, in / groups, 1, 1), so its checkpoints load).

    Input (N, groups, in / groups), output (N, groups, out / groups); it runs as ``groups`` batched matrix products
    (one linear layer for one group) instead of that convolution, which oneDNN runs slowly on a 1x1 map with many
    channels.
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(in_features, out_features, 1, groups=groups, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        weight = self.weight.reshape(g, self.out_channels // g, self.in_channels // g)  # G, M, K
        bias = None if self.bias is None else self.bias.reshape(g, -1)  # G, M
        return grouped_linear(x, weight, bias)  # N, G, M


class Mlp(_TimmMlp):
    """timm's ``Mlp`` (same constructor, parameters and state-dict keys: fc1, act, drop1, norm, fc2, drop2) whose
    forward adds the block's shortcut, ``shortcut + mlp(x)``, inside fc2 (fused on the oneDNN path), and applies
    fc1's activation in the same pass (:func:`mlpvision.layers.fast_linear.mlp_forward`).

    The linear form takes (..., C); the 1x1-conv form (``use_conv=True``) takes a (B, C, H, W) map or a (B, C)
    vector, read as a 1x1 map (the output is then (B, out)).
    """

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
        return mlp_forward(self, x, shortcut)


class ProjectedMixer(nn.Module):
    """Base of a token mixer whose last layer is a 1x1 projection (:class:`PointwiseConv`): the output is
    ``proj_drop(proj(mix(x)))``.

    Subclasses write their maths in :meth:`mix`, keep the projection under the attribute named ``proj_name`` and may
    have a dropout ``proj_drop`` after it. ``forward(x, shortcut)`` returns ``shortcut + output``, the sum done inside
    the projection: how a pre-norm block adds its residual without a separate pass over the map.
    """

    proj_name: str = 'proj'

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the projection."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
        x = self.mix(x)
        proj = getattr(self, self.proj_name)
        drop = getattr(self, 'proj_drop', None)
        if drop is not None and drop.p > 0 and self.training:
            x = drop(proj(x))
            return x if shortcut is None else shortcut + x
        return proj(x, shortcut=shortcut)


def pointwise_conv_mean(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The mean over H and W of a 1x1 conv's output on the (B, C, H, W) map ``x``, (B, out): the conv is affine, so
    it is the conv of ``x``'s mean, which costs a vector instead of a pass over the output.

    None while a Python dispatch mode runs (``mlpvision.profile``'s FLOP counter): the papers count the plain mean
    of the output, so the caller takes that.
    """
    if dispatch_mode_active():
        return None
    return F.linear(mean_hw(x), weight.flatten(1), bias)
