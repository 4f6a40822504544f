"""Conv2d + BatchNorm2d (+ activation) that folds into one biased Conv2d for deployment."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from .fast_linear import conv_act
from .fusion import fuse_conv_bn

__all__ = ['ConvBN']


@register_notrace_module  # an FX leaf: the deploy form's conv dispatches on the map's layout (oneDNN fast path)
class ConvBN(nn.Module):
    """``act(bn(conv(x)))`` (conv without bias unless asked); the deploy form is ``act(conv(x))`` with a biased conv.

    State-dict keys are ``conv.*`` and ``bn.*`` (deploy: ``conv.weight``, ``conv.bias``), the names the RepVGG-family
    official code (RepMLP, RepMLPNet) uses for its conv-BN pairs, as timm's ``ConvNormAct`` (Hire-MLP).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int | tuple[int, int],
            stride: int = 1,
            padding: int | tuple[int, int] = 0,
            groups: int = 1,
            act_layer: type[nn.Module] | None = None,
            bias: bool = False,
            deploy: bool = False,
    ) -> None:
        """``bias``: the conv of the training form has a bias too (the deploy form always has one)."""
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=bias or deploy)
        self.bn = nn.Identity() if deploy else nn.BatchNorm2d(out_chs)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    @property
    def deploy(self) -> bool:
        return not isinstance(self.bn, nn.BatchNorm2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:  # one conv: through oneDNN with ReLU / GELU fused on a channels-last map in CPU inference
            return conv_act(x, self.conv, self.act)
        return self.act(self.bn(self.conv(x)))

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias of the conv with the BatchNorm folded in (works before and after reparameterize)."""
        if self.deploy:
            return self.conv.weight, self.conv.bias
        return fuse_conv_bn(self.conv.weight, self.conv.bias, self.bn)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deploy:
            return
        weight, bias = self.fused_kernel_bias()
        c = self.conv
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                          bias=True, device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv = fused
        self.bn = nn.Identity()
