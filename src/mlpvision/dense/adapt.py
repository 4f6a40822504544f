"""Adapting classification weights to another canvas, for the families whose weights are sized by the input
(docs/dense.md, "Backbones"). A detection or segmentation canvas (e.g. 448x672) gives every token-mixing layer another
number of tokens; the trained matrices are resampled onto the new token grid, as ViT position embeddings are
(timm's ``resample_abs_pos_embed``), and scaled so that a smooth input keeps its response:

* ResMLP: each block's cross-patch ``linear_tokens`` (N x N over an h x w patch grid) is viewed as (h, w, h, w),
  resized bilinearly on the output grid and on the input grid to (h', w'), and multiplied by hw / h'w' (an output
  token sums over h'w' inputs instead of hw); its bias is resized on the output grid.
* Strip-MLP: each row (column) strip's grouped conv holds, per channel slot and strip offset, a W x W (H x H) token
  matrix: resized bilinearly to W' x W' and multiplied by W / W'; its bias per slot resized to W'. The relative
  position tables (row ``d + H`` for the diagonal offset d = w - h in [-H, W]) are read at the offsets scaled by
  H / H' below zero and W / W' above it, linearly interpolated.

The mapping is the assumption that a token-mixing weight is a smooth function of (relative) position; it gives a
starting point for fine-tuning on the new canvas, not the trained model's outputs (none exists at that size).
Not covered: RepMLP-Res50, whose Global Perceptron FCs are sized by the number of 7x7 partitions (no grid to
resample), and any key this module does not name: those still raise the strict loader's CheckpointError.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _resize_2d(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two dims of ``t`` (computed in fp32, ``align_corners=False`` as timm)."""
    lead = t.shape[:-2]
    out = F.interpolate(t.reshape(-1, 1, *t.shape[-2:]).float(), size=size, mode='bilinear', align_corners=False)
    return out.reshape(*lead, *size).to(t.dtype)


def resize_token_matrix(weight: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """An (h w x h w) token-mixing matrix on an ``old`` = (h, w) grid to the ``new`` (h', w') grid (see module doc)."""
    (h, w), (h2, w2) = old, new
    m = _resize_2d(weight.reshape(h * w, h, w), new)  # inputs resized: (hw, h', w')
    m = _resize_2d(m.reshape(h, w, h2 * w2).permute(2, 0, 1), new)  # outputs resized: (h'w', h', w')
    return (m.permute(1, 2, 0).reshape(h2 * w2, h2 * w2) * (h * w / (h2 * w2))).contiguous()


def resize_relative_table(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Strip-MLP's (H + W + 1, C) diagonal table to (H' + W' + 1, C): offsets scaled per side, linear in between."""
    (h, w), (h2, w2) = old, new
    d = torch.arange(-h2, w2 + 1, dtype=torch.float64)
    src = torch.where(d < 0, d * (h / h2), d * (w / w2)) + h  # fractional row of the old table
    lo = src.floor().clamp(0, h + w - 1).long()
    frac = (src - lo).clamp(0, 1).to(torch.float32)[:, None]
    t = table.float()
    return (t[lo] * (1 - frac) + t[lo + 1] * frac).to(table.dtype)


def _isqrt_grid(n: int, key: str) -> tuple[int, int]:
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f'{key}: {n} tokens are not a square grid; a checkpoint of a non-square model cannot be '
                         f'resampled here (build the model with the checkpoint\'s img_size).')
    return g, g


def adapt_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` (mlpvision's key names) with every token-mixing weight whose shape differs from ``model``'s
    resampled to the model's grid (module doc); other keys are returned unchanged for the strict loader to judge."""
    target = model.state_dict()
    out = dict(state_dict)
    modules = dict(model.named_modules())
    for key, t in state_dict.items():
        want = target.get(key)
        if want is None or tuple(t.shape) == tuple(want.shape):
            continue
        owner, _, leaf = key.rpartition('.')
        if owner.endswith('linear_tokens'):  # ResMLP
            grid = tuple(model.grid_size)
            old = _isqrt_grid(t.shape[0], key)
            if leaf == 'weight':
                out[key] = resize_token_matrix(t, old, grid)
            elif leaf == 'bias':
                out[key] = _resize_2d(t.reshape(*old), grid).reshape(-1)
        elif owner.endswith(('.row', '.col')) and hasattr(modules.get(owner.rpartition('.')[0]), 'size'):  # Strip
            size = modules[owner.rpartition('.')[0]].size
            n_new = size[1] if owner.endswith('.row') else size[0]
            slots = want.shape[0] // n_new  # channel slots C2: shared by the grouped conv's groups
            n_old = t.shape[0] // slots
            if leaf == 'weight':  # (slots * n, n, 1, k) -> per slot and offset an (n x n) token matrix
                k = t.shape[-1]
                m = t.reshape(slots, n_old, n_old, k).permute(0, 3, 1, 2)
                m = _resize_2d(m, (n_new, n_new)) * (n_old / n_new)
                out[key] = m.permute(0, 2, 3, 1).reshape(slots * n_new, n_new, 1, k).contiguous()
            elif leaf == 'bias':
                b = F.interpolate(t.reshape(slots, 1, n_old).float(), size=n_new, mode='linear', align_corners=False)
                out[key] = b.reshape(-1).to(t.dtype)
        elif leaf == 'table' and hasattr(modules.get(owner.rpartition('.')[0]), 'size'):  # Strip-MLP position table
            parent = owner.rpartition('.')[0]
            new = modules[parent].size
            # the checkpoint's (H, W): its column strip mixes H tokens, its row strip W
            old = (state_dict[f'{parent}.col.weight'].shape[1], state_dict[f'{parent}.row.weight'].shape[1])
            if sum(old) + 1 != t.shape[0]:
                raise ValueError(f'{key}: {t.shape[0]} rows do not match the strips\' {old[0]}x{old[1]} map.')
            out[key] = resize_relative_table(t, old, tuple(new))
    return out
