"""Mask R-CNN and RetinaNet (torchvision's detection models) on an mlpvision backbone with an FPN.

The Mask R-CNN follows the AS-MLP detection config (svip-lab/AS-MLP-Object-Detection@
f80ff38ff2e5c42d8b10a56d57d60e3377f81ba3, ``configs/_base_/models/mask_rcnn_asmlp_fpn.py``: mmdet's Mask R-CNN FPN),
which torchvision's model matches part for part: FPN of 256 channels on the four stages plus a max-pooled fifth
level (mmdet ``num_outs=5``; torchvision ``LastLevelMaxPool``), an RPN head of one 3x3 conv and 1x1 classifier /
regressor for 3 anchors per place (scales 8 x strides 4..64 = sizes 32..512, ratios 0.5, 1, 2), RoIAlign 7x7 into
two 1024-wide FCs (``Shared2FCBBoxHead``), RoIAlign 14x14 into four 3x3 convs, a 2x2 stride-2 transposed conv and a
1x1 classifier (``FCNMaskHead``). The one difference in structure: mmdet's box regressor has 4 outputs per object
class (``reg_class_agnostic=False``, 80 classes: 320), torchvision's one per class including the background (324),
4 100 parameters more at 80 classes (docs/dense.md has the counts).

RetinaNet follows mmdet's ``retinanet_r50_fpn`` (torchvision's ``retinanet_resnet50_fpn`` is the same design): FPN
on the stride 8/16/32 stages (``start_level=1``), P6 / P7 by 3x3 stride-2 convs from the last stage's map
(``add_extra_convs='on_input'``; torchvision's ``LastLevelP6P7`` does this when that map is not 256 wide), 9 anchors
per place, four 3x3 convs per head branch.

Labels follow torchvision's convention for both detectors: object classes are ``1 .. num_classes`` and 0 is the
background (Mask R-CNN's extra logit); RetinaNet is built with ``num_classes + 1`` sigmoid outputs so the same
targets serve both (its class-0 output is never a positive: 2 304 + 9 more parameters, as torchvision's COCO
RetinaNet with its 91 slots).

Input sizes: torchvision's transform resizes every image (``min_size`` / ``max_size``) and pads the batch to a
multiple of ``size_divisible`` (32); the backbone then pads further to what its family needs
(:mod:`mlpvision.dense.backbone`). For the canvas families (Strip-MLP, RepMLP-Res50, ResMLP) the detectors default
``min_size`` and ``max_size`` to the canvas's shorter side rounded down to a multiple of ``size_divisible``, so that
every resized and padded image fits the canvas in either orientation. For landscape images up to H x W (multiples of
32), ``backbone_kwargs=dict(img_size=(H, W))`` with ``min_size=H, max_size=W`` runs them at that size (the canvas is
rounded up to what the family takes: 336x448 for RepMLP-Res50 at 320x416).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .._checkpoint import load_checkpoint
from ..errors import UsageError
from .backbone import DenseBackbone
from .backbone import backbone as build_backbone

__all__ = ['BackboneWithFPN', 'maskrcnn', 'retinanet']


class BackboneWithFPN(nn.Module):
    """A :class:`DenseBackbone` and torchvision's ``FeaturePyramidNetwork``: an ordered dict of 256-channel maps
    (keys '0', '1', ... and the extra levels' names), as torchvision's detectors take it.

    Attributes:
        body: the DenseBackbone (its keys in a state_dict: ``backbone.body.*``, as torchvision's ResNet-FPN).
        fpn: the FPN; ``out_channels`` its width.
    """

    def __init__(self, body: DenseBackbone, out_channels: int = 256, extra_blocks: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels,
                                         extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _body(backbone: str | DenseBackbone, out_indices: tuple[int, ...], backbone_kwargs: dict | None) -> DenseBackbone:
    if isinstance(backbone, str):
        return build_backbone(backbone, out_indices=out_indices, **(backbone_kwargs or {}))
    if backbone_kwargs:
        raise UsageError('backbone_kwargs apply to a backbone given by name; this backbone module is already built.')
    if not (isinstance(backbone, DenseBackbone) or hasattr(backbone, 'out_channels') and
            hasattr(backbone, 'out_indices')):
        raise UsageError(f'backbone must be a model name, a module from mlpvision.dense.backbone(), or a module with '
                         f'out_channels and out_indices (a timm model through mlpvision.engine.detection), got '
                         f'{type(backbone).__name__}.')
    if backbone.out_indices != out_indices:
        raise UsageError(f'this detector needs a backbone with out_indices={out_indices}, got '
                         f'{backbone.out_indices}: build it with mlpvision.dense.backbone(name, '
                         f'out_indices={out_indices}).')
    return backbone


def _size_kwargs(body: DenseBackbone, kwargs: dict) -> dict:
    """Default torchvision's resize so that every image fits the canvas of a fixed-size backbone.

    torchvision resizes the shorter side to ``min_size`` unless the longer one would pass ``max_size``, then pads the
    batch to a multiple of ``size_divisible`` (32), and either side may be the longer one; so both default to the
    largest multiple of ``size_divisible`` within the canvas's shorter side (a 336x448 RepMLP-Res50 canvas: 320).
    """
    if body.canvas is not None:
        divisor = kwargs.get('size_divisible', 32)
        side = min(body.canvas) // divisor * divisor
        if side == 0 and ('min_size' not in kwargs or 'max_size' not in kwargs):
            raise UsageError(f'the {body.canvas[0]}x{body.canvas[1]} canvas of {body.name} holds no image padded to a '
                             f'multiple of size_divisible={divisor}: build the backbone with img_size sides of at '
                             f'least {divisor}, or pass min_size, max_size and a smaller size_divisible.')
        kwargs.setdefault('min_size', side)
        kwargs.setdefault('max_size', side)
    return kwargs


def _load(model: nn.Module, checkpoint_path: str | os.PathLike | None) -> nn.Module:
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)  # strict; weights_only / safetensors, never code from the file
    return model


def maskrcnn(
        backbone: str | DenseBackbone,
        num_classes: int = 80,
        *,
        fpn_channels: int = 256,
        backbone_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        **kwargs,
) -> MaskRCNN:
    """Mask R-CNN with an FPN on an mlpvision backbone (the AS-MLP detection config; module docstring).

    Args:
        backbone: a model name (built by :func:`mlpvision.dense.backbone` with ``backbone_kwargs``: e.g.
            ``checkpoint_path`` for classification weights, ``frozen_stages``, ``drop_path_rate``, ``img_size``) or a
            module from it with ``out_indices=(0, 1, 2, 3)``.
        num_classes: object classes (COCO: 80); labels are 1..num_classes, 0 is the background.
        fpn_channels: FPN width (256 in mmdet and torchvision).
        checkpoint_path: weights of the whole detector (a state_dict of this model, e.g. saved with
            ``mlpvision.save_state_dict``), loaded strictly.
        **kwargs: torchvision ``MaskRCNN`` arguments (``min_size``, ``max_size``, ``box_score_thresh``, ...).
    """
    body = _body(backbone, (0, 1, 2, 3), backbone_kwargs)
    model = MaskRCNN(BackboneWithFPN(body, fpn_channels), num_classes=num_classes + 1, **_size_kwargs(body, kwargs))
    return _load(model, checkpoint_path)


def retinanet(
        backbone: str | DenseBackbone,
        num_classes: int = 80,
        *,
        fpn_channels: int = 256,
        backbone_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        **kwargs,
) -> RetinaNet:
    """RetinaNet with an FPN (P3-P7) on an mlpvision backbone (mmdet's ``retinanet_r50_fpn``; module docstring).

    Args:
        backbone: a model name (built with ``out_indices=(1, 2, 3)`` and ``backbone_kwargs``) or a module from
            :func:`mlpvision.dense.backbone` with ``out_indices=(1, 2, 3)``.
        num_classes: object classes (COCO: 80); labels are 1..num_classes as for :func:`maskrcnn`.
        checkpoint_path: weights of the whole detector, loaded strictly.
        **kwargs: torchvision ``RetinaNet`` arguments (``min_size``, ``score_thresh``, ...).
    """
    body = _body(backbone, (1, 2, 3), backbone_kwargs)
    extra = LastLevelP6P7(body.out_channels[-1], fpn_channels)
    # mmdet / torchvision RetinaNet anchors: octave scales 2^0, 2^(1/3), 2^(2/3) of 4 x stride, ratios 0.5, 1, 2
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    kwargs.setdefault('anchor_generator', AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes)))
    model = RetinaNet(BackboneWithFPN(body, fpn_channels, extra), num_classes=num_classes + 1,
                      **_size_kwargs(body, kwargs))
    return _load(model, checkpoint_path)
