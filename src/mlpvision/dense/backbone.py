"""Dense-prediction backbones: the stride 4/8/16/32 pyramid of an mlpvision model, at any input size.

:func:`backbone` builds a registered model without its classifier and wraps it in :class:`DenseBackbone`, whose
``forward(x)`` returns a list of NCHW maps (one per ``out_indices`` entry) and which carries ``out_channels`` and
``strides`` (what torchvision's ``BackboneWithFPN`` / ``FeaturePyramidNetwork`` and smp's encoders read).

Input sizes (per family; docs/dense.md has the table):

* any-size families (AS-MLP, Hire-MLP): the input is zero-padded at the bottom / right to the multiple of 32 the
  trunk needs (AS-MLP's patch mergings halve the map four times; Hire-MLP's strided convs would otherwise round
  odd sizes) and every output is cropped back to ``ceil(H / stride) x ceil(W / stride)``, the sizes mmdet's padded
  AS-MLP produces for an input padded to ``size_divisor=32``.

Official dense code followed: svip-lab/AS-MLP-Object-Detection@f80ff38ff2e5c42d8b10a56d57d60e3377f81ba3,
``mmdet/models/backbones/asmlp.py``: one ``GroupNorm(1, C)`` per output (``norm{i}``), ``frozen_stages`` freezing
the stem (0) and then stages ``0 .. frozen_stages - 1`` (>= 1).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GroupNorm1

from ..errors import UsageError
from ..models._registry import create_model, is_model, model_family

__all__ = ['DenseBackbone', 'backbone']

# family -> (size multiple the trunk needs, per-output norm). AS-MLP's official detection backbone norms each
# output with GroupNorm(1, C) (its ``norm{i}``); Hire-MLP has no released dense code: its stage outputs go as they are.
_PYRAMID_ANY_SIZE = {'as_mlp': (32, GroupNorm1), 'hire_mlp': (32, None)}


class DenseBackbone(nn.Module):
    """The pyramid of ``model`` (a PyramidNet with ``forward_intermediates``) at strides ``4 * 2**i``.

    Args:
        model: the classification model (its head is dropped, its trunk pruned after the last index).
        out_indices: stages to return (0..3: strides 4, 8, 16, 32).
        pad_multiple: inputs are zero-padded at the bottom / right to this multiple, outputs cropped back.
        out_norm: a norm layer class applied to each output (``norm_layer(C)``), or None.
        frozen_stages: -1 trains everything; 0 freezes the stem; k >= 1 the stem and stages 0..k-1 (mmdet's rule).
        norm_eval: keep every BatchNorm / GroupNorm of the trunk in eval mode (running statistics frozen) while the
            wrapper trains, as mmdet's ``norm_eval=True``.
    """

    def __init__(
            self,
            model: nn.Module,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            pad_multiple: int = 32,
            out_norm: type[nn.Module] | None = None,
            frozen_stages: int = -1,
            norm_eval: bool = False,
            name: str = '',
    ) -> None:
        super().__init__()
        num_stages = len(model.feature_info)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i < 0 or i >= num_stages for i in out_indices) or list(out_indices) != sorted(
                set(out_indices)):
            raise UsageError(f'out_indices must be increasing stage indices in 0..{num_stages - 1}, got {out_indices}.')
        if not -1 <= frozen_stages <= num_stages:
            raise UsageError(f'frozen_stages must be in -1..{num_stages} (-1: none, 0: the stem, k: the stem and '
                             f'stages 0..k-1), got {frozen_stages}.')
        self.name = name or type(model).__name__
        model.prune_intermediate_layers(list(out_indices), prune_norm=True, prune_head=True)
        self.model = model
        self.out_indices = out_indices
        self.pad_multiple = pad_multiple
        self.out_channels = [model.feature_info[i]['num_chs'] for i in out_indices]
        self.strides = [model.feature_info[i]['reduction'] for i in out_indices]
        with torch.device(next(model.parameters()).device):
            self.out_norms = nn.ModuleList(
                [out_norm(c) if out_norm is not None else nn.Identity() for c in self.out_channels])
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.model.stem] + list(self.model.stages[:self.frozen_stages])

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> DenseBackbone:
        super().train(mode)
        self._freeze()  # frozen parts stay in eval mode (no dropout, BN statistics kept)
        if mode and self.norm_eval:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4:
            raise ValueError(f'{self.name} backbone expects a batch of images (B, C, H, W); got {tuple(x.shape)}.')
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = -h % m, -w % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # B, C, H + ph, W + pw: zeros at the bottom / right
        feats = self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True,
                                                 stop_early=True)
        out = []
        for f, s, norm in zip(feats, self.strides, self.out_norms, strict=True):
            f = f[..., :-(-h // s), :-(-w // s)]  # crop the padding back off: ceil(H / s) x ceil(W / s)
            out.append(norm(f))
        return out


def backbone(
        name: str,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        checkpoint_path: str | os.PathLike | None = None,
        **model_kwargs,
) -> DenseBackbone:
    """Build the dense-prediction backbone of the registered model ``name`` (see the module docstring).

    Args:
        name: a registered mlpvision model.
        out_indices: pyramid levels to return (0..3 = strides 4, 8, 16, 32).
        frozen_stages: -1 none; 0 the stem; k the stem and stages 0..k-1.
        norm_eval: BatchNorms stay in eval mode during training.
        checkpoint_path: classification weights of ``name`` (official or mlpvision format), loaded before the head
            is dropped.
        **model_kwargs: passed to the model constructor (``drop_path_rate``, ``img_size``, ...).
    """
    if not is_model(name):
        create_model(name)  # raises the registry's error naming the closest models
    family = model_family(name)
    if family not in _PYRAMID_ANY_SIZE:
        raise UsageError(f'mlpvision.dense.backbone does not support the {family} family ({name!r}) yet; '
                         f'supported: {", ".join(sorted(_PYRAMID_ANY_SIZE))}.')
    multiple, out_norm = _PYRAMID_ANY_SIZE[family]
    model = create_model(name, checkpoint_path=checkpoint_path, **model_kwargs)
    return DenseBackbone(model, out_indices, pad_multiple=multiple, out_norm=out_norm, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, name=name)
