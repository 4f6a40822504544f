"""The dense models' table behind ``mlpvision models --dense``: parameter counts of UperNet, Mask R-CNN and RetinaNet
on mlpvision backbones, counted on the meta device (no memory, no init), beside the official dense configurations'
figures where they exist.

Official figures (the only dense tables the five families' repositories publish for these heads):

* UperNet + AS-MLP-T / S / B on ADE20K (150 classes): 60M / 81M / 121M params, 937 / 1024 / 1166 GMACs at 512x2048
  (svip-lab/AS-MLP-Semantic-Segmentation README; mmseg's ``get_flops.py``: no auxiliary head, see docs/dense.md);
* Mask R-CNN + AS-MLP-T / S on COCO (80 classes): 48M / 69M params, 260 / 346 GMACs at 1280x800
  (svip-lab/AS-MLP-Object-Detection README).

The other rows (each family's smallest variant under each head) have no official counterpart. GMACs are counted
here for UperNet only, without its auxiliary head as mmseg's counter does, on the meta device, at the official size
or (for a fixed-size backbone) its canvas; a detector's MACs need a real forward (region proposals, NMS), e.g.
``mlpvision.profile(maskrcnn('as_mlp_tiny', 80, box_score_thresh=0.0), (3, 1280, 800))``, which takes minutes on 2
cores (docs/dense.md has the figures).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch

from .._profile import count_params, profile

COLUMNS = ('head', 'backbone', 'classes', 'params (M)', 'GMACs', 'at', 'params (official)', 'GMACs (official)',
           'source')
_SEG_README = 'svip-lab/AS-MLP-Semantic-Segmentation README (ADE20K)'
_DET_README = 'svip-lab/AS-MLP-Object-Detection README (COCO)'


@dataclass(frozen=True)
class DenseConfig:
    head: str  # upernet, maskrcnn, retinanet
    backbone: str
    num_classes: int
    params_official: str = ''
    gmacs_official: float | None = None
    size_official: tuple[int, int] | None = None  # (H, W) of the official GMACs
    source: str = ''


_SMALLEST = ('as_mlp_tiny', 'hire_mlp_tiny', 'strip_mlp_tiny_light', 'repmlpnet_t224', 'repmlp_res50_light_224',
             'resmlp_s12', 'wave_mlp_t_dw')
DENSE_CONFIGS: tuple[DenseConfig, ...] = (
    DenseConfig('upernet', 'as_mlp_tiny', 150, '60M', 937, (512, 2048), _SEG_README),
    DenseConfig('upernet', 'as_mlp_small', 150, '81M', 1024, (512, 2048), _SEG_README),
    DenseConfig('upernet', 'as_mlp_base', 150, '121M', 1166, (512, 2048), _SEG_README),
    DenseConfig('maskrcnn', 'as_mlp_tiny', 80, '48M', 260, (800, 1280), _DET_README),
    DenseConfig('maskrcnn', 'as_mlp_small', 80, '69M', 346, (800, 1280), _DET_README),
    *(DenseConfig(head, name, n) for name in _SMALLEST[1:]
      for head, n in (('upernet', 150), ('maskrcnn', 80), ('retinanet', 80))),
    DenseConfig('retinanet', 'as_mlp_tiny', 80),
)


def build(config: DenseConfig) -> torch.nn.Module:
    from . import maskrcnn, retinanet, upernet
    return {'upernet': upernet, 'maskrcnn': maskrcnn, 'retinanet': retinanet}[config.head](
        config.backbone, config.num_classes)


def dense_rows(pattern: str = '*') -> list[list[str]]:
    """One row per :data:`DENSE_CONFIGS` entry whose ``head:backbone`` matches ``pattern`` (a glob)."""
    from . import upernet

    rows = []
    for c in DENSE_CONFIGS:
        if not fnmatch.fnmatch(f'{c.head}:{c.backbone}', pattern):
            continue
        with torch.device('meta'):
            model = build(c)
        gmacs, at = '', ''
        if c.head == 'upernet':  # UperNet's MACs need no data-dependent op: counted on the meta device
            canvas = getattr(model.backbone, 'canvas', None)
            size = c.size_official or canvas or (512, 512)
            if canvas is not None and (size[0] > canvas[0] or size[1] > canvas[1]):
                size = canvas
            with torch.device('meta'):  # mmseg's get_flops convention: backbone + decode head, no auxiliary head
                no_aux = upernet(c.backbone, c.num_classes, aux_head=False)
                gmacs = f'{profile(no_aux, (3, *size)).gmacs:.1f}'
            at = f'{size[0]}x{size[1]}'
        rows.append([c.head, c.backbone, str(c.num_classes), f'{count_params(model) / 1e6:.2f}', gmacs, at,
                     c.params_official, '' if c.gmacs_official is None else
                     f'{c.gmacs_official:g} at {c.size_official[0]}x{c.size_official[1]}', c.source])
    return rows
