"""Dense-prediction backbones: the stride 4/8/16/32 pyramid of any mlpvision model, for detectors and segmenters.

:func:`backbone` builds a registered model without its classifier and wraps it in :class:`DenseBackbone`, whose
``forward(x)`` (B, 3, H, W) returns a list of NCHW maps, one per ``out_indices`` entry, and which carries
``out_channels`` and ``strides`` (what torchvision's ``FeaturePyramidNetwork`` and smp-style decoders read).

Input sizes. Every backbone takes any H x W up to what its family allows; the input is zero-padded at the bottom and
right to a size the trunk runs at and every output map is cropped back to ``ceil(H / s) x ceil(W / s)`` (s the
map's stride), the maps mmdet's backbones give on an input padded to ``size_divisor=32``:

* AS-MLP, Hire-MLP, CycleMLP, Wave-MLP (fully convolutional): padded to a multiple of 32 per side.
* RepMLPNet (token-mixing FCs sized by the partition, the stage map at the native ``img_size``; integer multiples of
  it per axis run with more partitions and the same weights): padded to the next multiple of the native size per
  axis (224 x 224 built: 320 x 416 runs as 448 x 448). The 224 / 256 weights load unchanged.
* Strip-MLP, RepMLP-Res50, ResMLP (weights sized by the feature maps: strip FCs and position tables, Global
  Perceptron FCs, token-mixing FCs): built for one canvas (``img_size=(H, W)``, default the classification size);
  every input up to the canvas is padded to it. A requested ``img_size`` is rounded up per side to the next size the
  family's architecture takes (:func:`canvas_rule`, read off the model; logged at INFO when it rounds, the canvas
  built is ``DenseBackbone.canvas``):

  - Strip-MLP: multiples of its last stage's stride (32 with four stages; ``StripMLP.__init__`` checks it, as its
    strips are sized by ``img_size // stride`` of every stage);
  - RepMLP-Res50: multiples of partition x stride for every stage with RepMLP blocks (``RepMLPResNet`` sizes them by
    ``img_size // stride`` where its convs give ``ceil(H / stride)``, so the stride must divide the side, and
    ``RepMLPBlock`` needs that map to be a multiple of the partition): lcm(7 x 8, 7 x 16) = 112 for the 224 models
    (7x7 partitions at strides 8 and 16; 320x416 is built as 336x448), 160 for the 320 ones (10x10 partitions);
  - ResMLP: multiples of the patch size (16, or 8 for ``resmlp_b24_p8``).

  A larger input raises a one-line ValueError naming the canvas and the ``img_size`` that would cover it. The
  detectors in :mod:`mlpvision.dense.detection` size torchvision's resize so that images fit (``min_size`` /
  ``max_size``). ``checkpoint_path`` weights trained at another size (the 224 classification models) are resampled
  onto the canvas for Strip-MLP and ResMLP (:mod:`mlpvision.dense.adapt`: token-mixing matrices and position tables
  resized, a starting point for fine-tuning); RepMLP-Res50's Global Perceptron FCs are sized by the number of
  partitions, which has no grid to resample, so its weights of another size are refused by the strict loader
  (:class:`mlpvision.CheckpointError` naming the mis-shaped keys); a request that rounds up to the size they were
  trained at (e.g. 200x200 -> 224x224) loads them.

ResMLP is isotropic (one map at the patch stride). Its pyramid is ViTDet's simple feature pyramid (Li et al.,
arXiv:2203.16527, §3 "Simple feature pyramid"), built from the last block's map (after the final Affine): stride
p/4 and p/2 by 2x2 stride-2 transposed convs (LayerNorm2d + GELU between two of them), stride p as it is, strides
2p, 4p by 2x2 max pooling; channels C/4, C/2, C, C, ... as ViTDet (whose 1x1 + 3x3 output convs are the FPN's
lateral and output convs in the detectors here).

Official dense code followed: svip-lab/AS-MLP-Object-Detection@f80ff38ff2e5c42d8b10a56d57d60e3377f81ba3,
``mmdet/models/backbones/asmlp.py``: one ``GroupNorm(1, C)`` per output (its ``norm{i}``); ``frozen_stages``: 0 freezes
the stem, k >= 1 the stem and stages 0..k-1 (its ``_freeze_stages``: ``layers[0 .. k-2]`` whose downsample feeds our
stage k-1). CycleMLP's dense backbone is the official ``CycleNet(fork_feat=True)`` of
ShoufaChen/CycleMLP@4e062a03e875d8dc4fbdd5dec96a918494705d38 ``cycle_mlp.py``: one LayerNorm per output (its detection
and segmentation configs are not released: its detection/README.md says "coming soon"). Hire-MLP, Strip-MLP and RepMLP
have no released detection code: their stage outputs are used as they are.
"""
from __future__ import annotations

import logging
import math
import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GroupNorm1, LayerNorm2d, freeze_batch_norm_2d

from ..errors import UsageError
from ..models._registry import create_model, is_model, model_family
from ..models.repmlp import RepMLPBlock

__all__ = ['CanvasRule', 'DenseBackbone', 'SimpleFeaturePyramid', 'backbone', 'canvas_rule', 'param_groups',
           'SIZE_POLICY']

_logger = logging.getLogger(__name__)

# family -> how an input of any size is brought to one the trunk runs at (see the module docstring)
SIZE_POLICY = {
    'as_mlp': 'multiple of 32',
    'cycle_mlp': 'multiple of 32',
    'hire_mlp': 'multiple of 32',
    'wave_mlp': 'multiple of 32',
    'repmlpnet': 'multiple of the native img_size',
    'strip_mlp': 'canvas img_size',
    'repmlp': 'canvas img_size',
    'resmlp': 'canvas img_size',
}
# AS-MLP's official detection backbone norms each output with GroupNorm(1, C) (its ``norm{i}``), CycleMLP's with a
# LayerNorm over the channels (``CycleNet(fork_feat=True)``: ``norm0`` .. ``norm6``, nn.LayerNorm's eps 1e-5)
_OUT_NORM = {'as_mlp': GroupNorm1, 'cycle_mlp': partial(LayerNorm2d, eps=1e-5)}
_FAMILY_NAMES = {'strip_mlp': 'Strip-MLP', 'repmlp': 'RepMLP-Res50', 'resmlp': 'ResMLP'}
# what happens to classification weights of another size on a canvas of this family (for the error messages)
_WEIGHTS_NOTE = {
    'strip_mlp': 'weights of another size are resampled onto it',
    'resmlp': 'weights of another size are resampled onto it',
    'repmlp': 'weights trained at another size will not load',
}


@dataclass(frozen=True)
class CanvasRule:
    """The canvases a fixed-canvas family takes: (H, W) with H a multiple of ``multiple[0]`` and W of ``multiple[1]``.

    Attributes:
        family_name: the family as people write it ('RepMLP-Res50').
        multiple: per side, the number every canvas side must be a multiple of.
        reason: where the number comes from in the model ('7x7 partitions at strides 8, 16').
    """

    family_name: str
    multiple: tuple[int, int]
    reason: str

    def round_up(self, size: Sequence[int]) -> tuple[int, int]:
        """The smallest canvas this family takes that covers ``size`` (H, W)."""
        return tuple(-(-int(s) // m) * m for s, m in zip(size, self.multiple, strict=True))

    def describe(self) -> str:
        mh, mw = self.multiple
        sides = f'sides that are multiples of {mh}' if mh == mw else f'heights multiples of {mh}, widths of {mw}'
        return f'{self.family_name} needs {sides}: {self.reason}'


def canvas_rule(model: nn.Module, family: str) -> CanvasRule:
    """The canvas rule of a fixed-canvas ``model`` (Strip-MLP, RepMLP-Res50, ResMLP), read off its structure.

    * Strip-MLP: the stride of the last stage (its constructor's own check: every stage's strips are sized by
      ``img_size // stride``).
    * RepMLP-Res50: per side, the least common multiple of partition x stride over the stages holding RepMLP blocks
      (the blocks are sized by ``img_size // stride`` and need it to be a multiple of the partition; the convs give
      ``ceil(H / stride)``, so the stride must divide the side for the two to agree). 1 when there are none.
    * ResMLP: the patch size (the token-mixing FCs are sized by the patch grid).

    Raises:
        UsageError: ``family`` is not a fixed-canvas family.
    """
    if family == 'strip_mlp':
        s = model.feature_info[-1]['reduction']
        return CanvasRule('Strip-MLP', (s, s), f'the stride of its last stage, {s}')
    if family == 'resmlp':
        p = model.patch_size
        return CanvasRule('ResMLP', (p, p), f'its {p}x{p} patches')
    if family == 'repmlp':
        mh = mw = 1
        parts = {}  # partition (h, w) -> strides of the stages using it
        for info, stage in zip(model.feature_info, model.stages, strict=True):
            s = info['reduction']
            for m in stage.modules():
                if isinstance(m, RepMLPBlock):
                    mh, mw = math.lcm(mh, m.h * s), math.lcm(mw, m.w * s)
                    parts.setdefault((m.h, m.w), set()).add(s)
        reason = '; '.join(f'{h}x{w} partitions at stride{"s" if len(st) > 1 else ""} '
                           f'{", ".join(map(str, sorted(st)))}' for (h, w), st in parts.items())
        return CanvasRule('RepMLP-Res50', (mh, mw), reason or 'no RepMLP blocks')
    raise UsageError(f'{family} backbones are not built for a canvas; the canvas families are '
                     f'{", ".join(sorted(_FAMILY_NAMES))}.')


def _size_pair(img_size: object) -> tuple[int, int]:
    """``img_size`` as a pair of positive ints; UsageError naming the forms taken otherwise."""
    try:
        pair = (img_size, img_size) if not isinstance(img_size, (tuple, list)) else img_size
        h, w = (operator.index(v) for v in pair)
    except (TypeError, ValueError):
        h = w = 0
    if h <= 0 or w <= 0 or isinstance(img_size, bool):
        raise UsageError(f'img_size must be a positive int or a pair of them (H, W), got {img_size!r}.')
    return h, w


def _fit_canvas(name: str, family: str, model_kwargs: dict) -> dict:
    """``model_kwargs`` with a requested ``img_size`` rounded up to the next canvas the family takes.

    The rule is read off a shape-only build (the meta device) of the model with the same arguments at its default
    size, or at the requested size if the arguments do not fit the default (e.g. another partition).
    """
    if model_kwargs.get('img_size') is None:
        return model_kwargs  # the variant's classification size, which the family takes
    requested = _size_pair(model_kwargs['img_size'])
    probe_kwargs = {k: v for k, v in model_kwargs.items() if k not in ('img_size', 'device', 'dtype', 'pretrained')}
    with torch.device('meta'):
        try:
            probe = create_model(name, **probe_kwargs)
        except ValueError:
            probe = create_model(name, img_size=requested, **probe_kwargs)
    rule = canvas_rule(probe, family)
    canvas = rule.round_up(requested)
    if canvas != requested:
        _logger.info('%s backbone: img_size %dx%d rounded up to the canvas %dx%d; %s.', name, *requested, *canvas,
                     rule.describe())
    return dict(model_kwargs, img_size=canvas)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid on one NCHW map at stride ``in_stride``: maps at ``strides``.

    A stride below ``in_stride`` is reached by 2x2 stride-2 transposed convs (each halving the channels, LayerNorm2d +
    GELU between consecutive ones), a larger one by 2x2 max pooling (channels kept).
    """

    def __init__(self, in_chs: int, in_stride: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        self.out_channels = []
        for s in strides:
            steps = int(round(math.log2(s / in_stride)))
            if 2 ** steps * in_stride != s:
                raise UsageError(f'a simple feature pyramid from stride {in_stride} reaches {in_stride} * 2**k; '
                                 f'{s} is not one.')
            layers: list[nn.Module] = []
            c = in_chs
            for k in range(-steps):  # upsampling: C -> C/2 -> C/4
                if k:
                    layers += [LayerNorm2d(c), nn.GELU()]
                layers.append(nn.ConvTranspose2d(c, c // 2, 2, stride=2))
                c //= 2
            layers += [nn.MaxPool2d(2, 2, ceil_mode=True) for _ in range(steps)]
            self.levels.append(nn.Sequential(*layers))
            self.out_channels.append(c)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels]


class DenseBackbone(nn.Module):
    """The pyramid of an mlpvision classification model at strides 4, 8, 16, 32 (see the module docstring).

    Built by :func:`backbone`; the model's head and final norm are dropped (for the pyramids; ResMLP keeps its final
    Affine, applied to the last block's map) and its trunk is cut after the last stage asked for.

    Attributes:
        model: the trunk (the classification model, pruned).
        out_channels, strides: of each returned map.
        size_policy: how inputs are padded (``SIZE_POLICY``); ``canvas`` / ``multiple`` the sizes it pads to.
        canvas_rule: for the canvas families, the canvases the family takes (:func:`canvas_rule`); else None.
    """

    def __init__(
            self,
            model: nn.Module,
            family: str,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            name: str = '',
    ) -> None:
        super().__init__()
        self.name = name or type(model).__name__
        self.family = family
        self.size_policy = SIZE_POLICY[family]
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i < 0 or i > 3 for i in out_indices) or list(out_indices) != sorted(set(out_indices)):
            raise UsageError(f'out_indices must be increasing pyramid levels in 0..3 (strides 4, 8, 16, 32), got '
                             f'{out_indices}.')
        self.out_indices = out_indices
        self.isotropic = hasattr(model, 'blocks')
        num_units = len(model.blocks) if self.isotropic else len(model.feature_info)
        if not -1 <= frozen_stages <= num_units:
            unit = 'blocks' if self.isotropic else 'stages'
            raise UsageError(f'frozen_stages must be in -1..{num_units} for {self.name} (-1: none, 0: the stem, k: the '
                             f'stem and the first k {unit}), got {frozen_stages}.')
        img_size = getattr(model, 'img_size', None)
        self.canvas = tuple(img_size) if self.size_policy == 'canvas img_size' else None
        self.multiple = (tuple(img_size) if self.size_policy == 'multiple of the native img_size' else (32, 32))
        self.canvas_rule = canvas_rule(model, family) if self.canvas is not None else None  # before any pruning
        device = next(model.parameters()).device
        if self.isotropic:
            patch = model.patch_size
            model.prune_intermediate_layers(len(model.blocks), prune_norm=False, prune_head=True)
            self.strides = [4 * 2 ** i for i in out_indices]
            with torch.device(device):
                self.pyramid = SimpleFeaturePyramid(model.num_features, patch, self.strides)
            self.out_channels = self.pyramid.out_channels
            out_norm = None
        else:
            model.prune_intermediate_layers(list(out_indices), prune_norm=True, prune_head=True)
            self.pyramid = None
            self.out_channels = [model.feature_info[i]['num_chs'] for i in out_indices]
            self.strides = [model.feature_info[i]['reduction'] for i in out_indices]
            out_norm = _OUT_NORM.get(family)
        self.model = model
        with torch.device(device):
            self.out_norms = nn.ModuleList(
                [out_norm(c) if out_norm is not None else nn.Identity() for c in self.out_channels])
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        trunk = self.model.blocks if self.isotropic else self.model.stages
        return [self.model.stem] + list(trunk[:self.frozen_stages])

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> DenseBackbone:
        """Train mode, except frozen parts (kept in eval mode) and, with ``norm_eval``, every BatchNorm of the trunk
        (its running statistics stay as loaded; mmdet's ``norm_eval=True``)."""
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The size an H x W input is padded to; ValueError naming the allowed sizes if it cannot be."""
        if self.canvas is not None:
            ch, cw = self.canvas
            if h > ch or w > cw:
                rule = self.canvas_rule
                fit = rule.round_up((max(h, ch), max(w, cw)))
                raise UsageError(
                    f'{self.name} backbone was built for a {ch}x{cw} canvas and takes inputs up to that size (padded '
                    f'to it), got {h}x{w}: resize the input to fit, or build it with img_size={fit} '
                    f'({rule.describe()}; {_WEIGHTS_NOTE[self.family]}).')
            return ch, cw
        mh, mw = self.multiple
        return -(-h // mh) * mh, -(-w // mw) * mw

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4:
            raise UsageError(f'{self.name} backbone expects a batch of images (B, C, H, W); got {tuple(x.shape)}.')
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))  # B, C, ph, pw: zeros at the bottom and right
        if self.isotropic:
            (last,) = self.model.forward_intermediates(x, indices=[len(self.model.blocks) - 1], norm=True,
                                                       intermediates_only=True)  # B, C, ph/p, pw/p
            feats = self.pyramid(last)
        else:
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
        *,
        frozen_bn: bool = False,
        **model_kwargs,
) -> DenseBackbone:
    """Build the dense-prediction backbone of the registered model ``name`` (see the module docstring).

    Args:
        name: a registered mlpvision model.
        out_indices: pyramid levels to return (0..3 = strides 4, 8, 16, 32).
        frozen_stages: -1 none; 0 the stem; k the stem and the first k stages (ResMLP: blocks).
        norm_eval: BatchNorms stay in eval mode during training (mmdet's ``norm_eval``).
        checkpoint_path: classification weights of ``name`` (official or mlpvision format; read without running
            code), loaded into the full model before its head is dropped; for Strip-MLP and ResMLP built for
            another canvas (``img_size=``) their token-mixing weights are resampled to it (:mod:`.adapt`).
        frozen_bn: replace every BatchNorm by timm's ``FrozenBatchNorm2d`` (torchvision detection's default for
            ResNets); for DDP without it, ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` converts the BatchNorms.
        **model_kwargs: passed to the model constructor (``drop_path_rate``, ``img_size`` for the canvas families,
            ``depths``, ...). A canvas family's ``img_size`` is rounded up per side to the next canvas the family
            takes (:func:`canvas_rule`; logged), which the backbone's ``canvas`` records.

    Raises:
        UsageError: an unknown model, bad ``out_indices`` / ``frozen_stages`` / ``img_size``, or ``output_stride``
            other than 32.
    """
    if not is_model(name):
        create_model(name)  # raises the registry's error naming the closest models
    output_stride = model_kwargs.pop('output_stride', 32)
    if output_stride != 32:
        raise UsageError(
            f'output_stride={output_stride} is not supported by mlpvision backbones: their token mixers (shifts, '
            f'strip FCs, partitions, regions) are defined on the stride-32 pyramid and have no dilated form. Use '
            f'output_stride=32 with a decoder that upsamples (UperNet, FPN, DeepLabV3+ with output_stride=32).')
    family = model_family(name)
    if family not in SIZE_POLICY:
        raise UsageError(f'{name!r} ({family}) has no dense backbone; supported families: '
                         f'{", ".join(sorted(SIZE_POLICY))}.')
    if name == 'repmlp_cifar_pure':
        raise UsageError('repmlp_cifar_pure is a three-stage CIFAR model without a stride 4/8/16/32 pyramid; use '
                         'a RepMLP-Res50 (repmlp_res50_*) or RepMLPNet (repmlpnet_*) backbone.')
    if SIZE_POLICY[family] == 'canvas img_size':
        model_kwargs = _fit_canvas(name, family, model_kwargs)
    # built with its classifier, so that a classification checkpoint loads strictly; the head is dropped after
    if checkpoint_path is not None and SIZE_POLICY[family] == 'canvas img_size' and family != 'repmlp':
        model = _load_resampled(create_model(name, **model_kwargs), checkpoint_path)
    else:
        model = create_model(name, checkpoint_path=checkpoint_path, **model_kwargs)
    if frozen_bn:
        model = freeze_batch_norm_2d(model)
    return DenseBackbone(model, family, out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval, name=name)


def _load_resampled(model: nn.Module, checkpoint_path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint of any canvas into a Strip-MLP / ResMLP ``model`` strictly: the family's key mapping, then
    the token-mixing weights resampled to the model's grid (:mod:`.adapt`), as one filter of the shared loader (whose
    error policy turns a failing filter into a CheckpointError naming the file)."""
    from .._checkpoint import checkpoint_filter, load_checkpoint
    from .adapt import adapt_state_dict

    family_filter = checkpoint_filter(model)

    def resampled(sd: dict, m: nn.Module) -> dict:
        return adapt_state_dict(family_filter(sd, m) if family_filter else sd, m)

    return load_checkpoint(model, checkpoint_path, filter_fn=resampled)


def param_groups(
        model: nn.Module,
        weight_decay: float = 0.05,
        no_decay: Iterable[str] = ('pos_row', 'pos_col', 'relative_position', 'absolute_pos_embed'),
) -> list[dict]:
    """Two optimizer groups of the trainable parameters: with ``weight_decay``, and without it for every norm weight
    and bias, every other 1-D parameter (biases, ResMLP's Affine and LayerScale) and every parameter whose name holds
    one of ``no_decay`` (position tables: Strip-MLP's ``pos_row`` / ``pos_col``).

    The AS-MLP detection configs set ``decay_mult=0`` for norms and position tables (``paramwise_cfg``); the
    classification recipes of all five families exempt every 1-D parameter, which this does too.
    """
    keys = tuple(no_decay)
    decay, skip = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (skip if p.ndim <= 1 or n.endswith('.bias') or any(k in n for k in keys) else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=skip, weight_decay=0.)]
