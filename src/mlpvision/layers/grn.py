"""Global Response Normalization (ConvNeXt-V2, arXiv:2301.00808 Eq. 1-3), with the official parameter shape."""
import contextlib

import torch
import torch.nn as nn

__all__ = ['GRN']


class GRN(nn.Module):
    """Global Response Normalization on channels-last input (B, H, W, C)::

        gx = ||x||_2 over H and W          (B, 1, 1, C)
        nx = gx / (mean_C(gx) + eps)
        out = gamma * (x * nx) + beta + x

    Parameters keep the official (1, 1, 1, C) shape (Strip-MLP, ConvNeXt-V2; timm's ``GlobalResponseNorm`` has
    (C,)): the official optimizers decay every parameter that is not 1-D (nor named ``*.bias``), GRN's included, and
    so does timm's.

    In float32 the L2 norm is the square root of a sum of squares, what the official ``torch.norm`` computes, written
    out because torch's ``vector_norm`` over non-innermost dims is much slower on CPU (docs/benchmarks.md). The sum is
    clamped at the smallest normal float before the root, so that a channel that is all zeros over the map (common
    on a 1x1 map, e.g. Strip-MLP's last stage at 32x32, where GELU gives exact zeros below about -5.5) gets the zero
    gradient ``torch.norm``'s backward gives there, not sqrt's 0 * inf = NaN; the forward values are unchanged (the
    root of the clamp, 1.1e-19, multiplies a zero map and moves the channel mean far below float resolution). Under
    reduced precision (autocast) the output keeps ``x``'s dtype and no float32 copy of the map is made (see
    :meth:`forward`).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or x.dtype not in (torch.bfloat16, torch.float16):
            gx = x.square().sum((1, 2), keepdim=True).clamp_min(1.1754943508222875e-38).sqrt()  # B,1,1,C; float32 tiny
            nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
            # gamma * (x * nx) + beta + x in one pass over x: the factor 1 + gamma * nx is only (B, 1, 1, C)
            return torch.addcmul(self.beta, x, 1 + self.gamma * nx)
        # reduced precision: autocast would copy x to float32 for the norm and return a float32 map that the next
        # linear casts back. Instead the squares are summed in x's dtype (float accumulation inside the reduction;
        # the norm's relative error stays within bf16's resolution) and the output is in x's dtype
        # (no autocast on a device without it, e.g. the meta device of a shape-only pass)
        no_autocast = (torch.autocast(device_type=x.device.type, enabled=False)
                       if torch.amp.is_autocast_available(x.device.type) else contextlib.nullcontext())
        with no_autocast:
            gx = x.pow(2).sum((1, 2), keepdim=True).float().clamp_min(1.1754943508222875e-38).sqrt()  # as above
            nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
            factor = 1 + self.gamma.float() * nx
            return torch.addcmul(self.beta.to(x.dtype), x, factor.to(x.dtype))
