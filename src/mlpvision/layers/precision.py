"""Reduced-precision helpers: what autocast would do, done once or in fewer passes (equal up to bf16 rounding)."""
from __future__ import annotations

import torch

__all__ = ['autocast_input', 'mean_hw']


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype autocast gives the next conv or linear on its device, unchanged outside autocast.

    A module whose branches all start with such a layer casts its input once with this, so that the copies before
    those layers (shifts, paddings, rearrangements; exact in any dtype) move the narrower dtype.
    """
    if x.device.type in ('cpu', 'cuda') and torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


def mean_hw(x: torch.Tensor) -> torch.Tensor:
    """The mean of a (B, C, H, W) map over H and W, (B, C).

    For bf16 a bf16 sum (float accumulation inside) divided by H * W, because torch's bf16 mean first copies the map
    to float32 (docs/benchmarks.md); the result is rounded twice instead of once (a relative error within 2 ** -8).
    """
    if x.dtype == torch.bfloat16:
        return x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    return x.mean((2, 3))
