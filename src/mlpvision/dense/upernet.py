"""UperNet semantic segmentation (UPerHead + FCN auxiliary head) on any backbone with the pyramid contract.

The model the AS-MLP paper (and Hire-MLP, which follows it) trains on ADE20K: svip-lab/AS-MLP-Semantic-Segmentation@
c9838f92fae7090d9edc29d4fba7d55e078a91ac, ``configs/_base_/models/upernet_swin.py`` with
``configs/asmlp/upernet_asmlp_{tiny,small,base}_patch4_shift5_512x512_160k_ade20k.py``; the heads are that repository's
copy of mmsegmentation's ``mmseg/models/decode_heads/{uper_head,psp_head,fcn_head}.py``. Written here with
torchvision's :class:`~torchvision.ops.Conv2dNormActivation`, which is mmcv's ``ConvModule`` with the config's norm
(conv without bias -> BatchNorm -> ReLU). segmentation_models_pytorch's ``UPerNet`` is not the same model (its PPM
and fusion differ in channel widths and norms), so it is not used.

* :class:`UPerHead` (``decode_head``): PPM on the stride-32 map (adaptive average pools 1, 2, 3, 6, each a 1x1
  ConvModule to ``channels``, upsampled bilinearly and concatenated with the map, then a 3x3 ConvModule); 1x1
  lateral ConvModules on the other three maps; top-down FPN sums (bilinear, ``align_corners=False``); 3x3 ConvModules
  on those; every level upsampled to stride 4, concatenated, a 3x3 ConvModule (``fpn_bottleneck``), Dropout2d(0.1)
  and a 1x1 classifier. ``channels`` = 512 in the config.
* :class:`FCNHead` (``auxiliary_head``): on the stride-16 map (``in_index=2``), one 3x3 ConvModule to 256 channels
  (``num_convs=1``, ``concat_input=False``), Dropout2d(0.1), a 1x1 classifier; its loss weighs 0.4 (config's
  ``loss_weight``; applied by the training loop, :mod:`mlpvision.engine.segmentation`).
* The logits are upsampled bilinearly to the input size (mmseg's ``EncoderDecoder`` does it at test time and the loss
  does it at training time; the same values either way).

Output convention of torchvision's segmentation models: ``forward`` returns ``{'out': logits}`` (B, classes, H, W)
and, when the auxiliary head is there, ``'aux'`` (the FCN head's logits, also at input size).

Deviations: BatchNorm, not SyncBN (:func:`torch.nn.SyncBatchNorm.convert_sync_batchnorm` converts it for DDP, as
``mlpvision train-seg --sync-bn`` does); the config's per-output LayerNorms of the Swin-style backbone are whatever the
backbone module provides.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation

__all__ = ['UperNet', 'UPerHead', 'FCNHead', 'PPM', 'upernet']


def _conv_module(in_chs: int, out_chs: int, kernel_size: int) -> Conv2dNormActivation:
    """mmcv ``ConvModule(norm_cfg=BN, act_cfg=ReLU)``: a conv without bias (``bias='auto'`` with a norm), BN, ReLU."""
    return Conv2dNormActivation(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False,
                                norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


class PPM(nn.Module):
    """Pyramid pooling: for each scale an adaptive average pool and a 1x1 ConvModule, upsampled back to the input."""

    def __init__(self, in_chs: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_module(in_chs, channels, 1))
                                    for s in pool_scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_resize(stage(x), x.shape[2:]) for stage in self.stages]  # each B, channels, H, W


class UPerHead(nn.Module):
    """mmseg ``UPerHead``: PPM on the last map, FPN over all of them, fused at the finest level."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        in_channels = list(in_channels)
        self.ppm = PPM(in_channels[-1], channels, pool_scales)
        self.bottleneck = _conv_module(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(_conv_module(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv_module(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = _conv_module(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1], strict=True)]
        last = features[-1]
        laterals.append(self.bottleneck(torch.cat([last, *self.ppm(last)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level += the coarser one upsampled to it
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0], *(_resize(o, size) for o in outs[1:])], dim=1))
        return self.conv_seg(self.dropout(fused))  # B, classes, H/4, W/4


class FCNHead(nn.Module):
    """mmseg ``FCNHead`` with ``num_convs`` 3x3 ConvModules, ``concat_input=False``."""

    def __init__(self, in_chs: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(_conv_module(in_chs if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class UperNet(nn.Module):
    """A backbone returning a list of NCHW maps (``out_channels`` attribute), a :class:`UPerHead` on all of them and,
    optionally, an :class:`FCNHead` on ``features[aux_index]``. ``forward`` -> ``{'out': ..., 'aux': ...}`` at the
    input's size."""

    def __init__(self, backbone: nn.Module, num_classes: int, aux_head: bool = True, channels: int = 512,
                 aux_channels: int = 256, aux_index: int = 2, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 dropout: float = 0.1) -> None:
        super().__init__()
        in_channels = list(backbone.out_channels)
        if aux_head and not -len(in_channels) <= aux_index < len(in_channels):
            raise ValueError(f'aux_index={aux_index} is out of range for a backbone with {len(in_channels)} outputs '
                             f'{in_channels}; pass an index below {len(in_channels)} or aux_head=False')
        self.num_classes = num_classes
        self.aux_index = aux_index
        self.backbone = backbone
        self.decode_head = UPerHead(in_channels, num_classes, channels, pool_scales, dropout)
        self.aux_head = FCNHead(in_channels[aux_index], num_classes, aux_channels, 1, dropout) if aux_head else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        features = self.backbone(x)
        out = {'out': _resize(self.decode_head(features), size)}
        if self.aux_head is not None:
            out['aux'] = _resize(self.aux_head(features[self.aux_index]), size)
        return out


def upernet(backbone: str | nn.Module, num_classes: int, aux_head: bool = True, channels: int = 512,
            aux_channels: int = 256, pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
            **backbone_kwargs) -> UperNet:
    """UperNet as the AS-MLP / Hire-MLP ADE20K configs build it (defaults: 512 channels, PPM 1/2/3/6, dropout 0.1,
    FCN auxiliary head with 256 channels on stage 3).

    Args:
        backbone: a model name (an mlpvision model is built by :func:`mlpvision.dense.backbone` with
            ``backbone_kwargs``, any other timm model with ``features_only``, see
            :func:`mlpvision.dense.timm_backbone.build_backbone` and its ``pyramid`` option), or a module returning a
            list of NCHW maps with an ``out_channels`` attribute.
        num_classes: classes of the classifiers (150 for ADE20K, 11 for CamVid).
    """
    if isinstance(backbone, str):
        from .timm_backbone import build_backbone
        backbone = build_backbone(backbone, **backbone_kwargs)
    elif backbone_kwargs:
        raise TypeError(f'upernet() got backbone options {sorted(backbone_kwargs)} with a backbone module; pass a '
                        f'name to build the backbone with them, or build it yourself')
    return UperNet(backbone, num_classes, aux_head=aux_head, channels=channels, aux_channels=aux_channels,
                   pool_scales=pool_scales, dropout=dropout)
