"""Hire-MLP: Vision MLP via Hierarchical Rearrangement.

Paper: Guo et al., CVPR 2022, arXiv:2108.13341 (v2; the README's table gives the released variants' figures).
Official code: ggjy/Hire-Wave-MLP.pytorch@7ef7ddd784f97b6369d6fbaf913c4c1536949cf6, ``mlp_based/hire_mlp.py`` (the
paper's code link; huawei-noah/Efficient-AI-Backbones has no Hire-MLP).

A four-stage NCHW pyramid: an overlapping stem (conv 7x7, stride 4, padding 2 + BN + ReLU), stages joined by
conv 3x3 / stride 2 + BN + ReLU, blocks ``x + DP(HireModule(BN(x)))`` and ``x + DP(Mlp(BN(x)))``, a final BN, the
spatial mean and a Linear head. The Hire module mixes tokens in three branches fused by split attention:

* h branch (inner-region rearrangement along H): the rows are cut into regions of ``p`` rows (padded at the bottom
  to a multiple of ``p``, circularly by default), each region's rows are stacked into the channels
  (``B, C, H, W -> B, C*p, H/p, W``, channel ``c * p + i``), mixed by ``1x1 conv C*p -> C/2 -> BN -> ReLU ->
  1x1 conv C/2 -> C*p`` (hidden width C/2 whatever ``p``), put back and cropped. Cross-region rearrangement:
  before that, the map is rolled by ``step`` rows, and rolled back after, so consecutive blocks see regions with
  different borders. The step of block ``i`` of a stage is ``(i % step_stride) * step_dilation``.
* w branch: the same along W. c branch: a 1x1 conv C -> C.
* fusion: ``a = mean_HW(h + w + c)``, ``Mlp(C, C/4, 3C)``, softmax over the three branches per channel,
  ``proj(a_h * h + a_w * w + a_c * c)``.

Knobs (constructor arguments; the released models use the defaults): region size, step stride and step dilation
per stage, the padding mode of the shift (``'circular'`` roll, ``'zero'``, ``'replicate'``) and of the regions
(``'circular'``, ``'zero'``, ``'replicate'``), and the paper's ablation switches ``inner_region`` (False: region
size 1, no rows or columns stacked into channels), ``cross_region`` (False: step 0 in every block) and
``channel_branch`` (False: no c branch; the split attention is over h and w). The official mode names ``'c'`` and
``'0'`` are accepted too.

Deviations from the official code:

* key names: ``stem`` / ``stages.i.downsample`` / ``stages.i.blocks.j`` (timm's ConvNormAct, ``conv`` + ``bn``)
  instead of ``patch_embed`` / ``network.k``; ``token_mixer.mlp_h.{fc1,norm,fc2}`` instead of
  ``attn.mlp_h1`` / ``attn.mlp_h1_norm`` / ``attn.mlp_h2``; ``head.fc``. ``checkpoint_filter_fn`` maps them.
* the official ``drop_rate`` is accepted but never used; here it is the classifier's dropout (timm's convention),
  and ``proj_drop_rate`` is the dropout the official blocks have but never set (0 in the released models).
* ``in_chans`` is honoured (the official stem hard-codes 3 input channels).
* circular region padding wraps as often as needed, so maps smaller than the padding (inputs under ~19 pixels,
  where the official ``F.pad`` raises) work; at every size the official code accepts, the output is the same.
* ``'replicate'`` as the shift's padding mode is an addition (the official code has circular and zero); like the
  zero mode, it shifts without shifting back.
* no printing on construction; an input of the wrong rank, channel count or smaller than 3x3 raises ValueError.
* a re-parameterised inference form, which the official code does not have (``deploy=True`` /
  ``mlpvision.reparameterize``): the stem's and the downsamplings' BN folded into their convs, each region MLP's BN
  into its fc1, the blocks' second BN into the channel MLP's fc1 and their first BN into the first conv of every
  branch (unless a 'zero' pad mode makes that inexact);
* the feature maps are stored channels-last after the stem (``channels_last=True``; same values): the 1x1 convs
  then run in CPU inference as oneDNN convolutions with ReLU / GELU or the residual sum fused
  (:class:`mlpvision.layers.PointwiseConv`, :class:`mlpvision.layers.Mlp`), and the split-attention weights are
  applied in the branches' dtype under autocast (docs/benchmarks.md has the figures); ``channels_last=False`` keeps
  NCHW storage;

Names: the model is :class:`HireMLP` (the family's name, as timm names ``ConvNeXt`` beside ``ConvNeXtBlock``;
``HireMLPNet``, its former name, stays an alias), its block :class:`HireMLPBlock` (alias ``HireBlock``) and the token
mixer, the paper's Hire module, :class:`HireModule` (the official ``HireMLP``; that name is now the model's).

timm's model contract (tests/test_models.py): ``device=`` / ``dtype=`` build the model there directly (the meta
device and bf16 / float16 / float64 included); ``reset_classifier`` keeps the model's device and dtype; forward and
features trace with ``torch.fx``: the input check, the blocks and the conv-BN layers are FX leaves, since they branch
on the input's shape and memory layout, so a traced graph runs the same code as the model (identical outputs).
TorchScript does not apply: the blocks hand their conv modules to the oneDNN dispatch functions of
:mod:`mlpvision.layers.fast_linear`, and TorchScript cannot pass a module as an argument.

Export (``torch.export``, ``torch.jit.trace``, both ONNX exporters; :mod:`mlpvision.export`): while a graph is
captured (:func:`mlpvision.layers.fast_linear.tracing`) the region MLPs run ``RegionMlp._forward_traced``, the same
maths written as gathers, so that no size in the graph depends on the input size's remainder by the region size (the
eager code pads by it in Python, which a graph would bake in). A torch.export graph then serves every input from the
size its 0/1 specialisation allows (Hire-MLP-Tiny: 67 px for a ``.pt2`` program, where every stage needs two regions,
35 px for the dynamo ONNX graph; docs/export.md), a ``torch.jit.trace`` graph every size.

MACs: ``mlpvision.profile`` counts convs and linears (tiny at 224: 2.144 G); the official figure (fvcore, 2.149 G)
also counts two flops per element of every eval-mode BatchNorm, which accounts for the whole difference.
"""
import re
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module, trunc_normal_

from .._checkpoint import register_checkpoint_filter, unwrap_state_dict
from ..layers import (
    ConvBN,
    Mlp,
    PointwiseConv,
    ProjectedMixer,
    autocast_input,
    derived_weights,
    mean_hw,
    pointwise_conv,
    pointwise_conv_mean,
)
from ..layers.fast_linear import tracing
from ..layers.fusion import bn_scale_shift, fold_affine_into_next_linear, fuse_conv_bn
from ._base import PyramidNet, SequentialStage, check_input, one_d_and_bias_params, prenorm_residual_forward
from ._factory import DeviceLike, factory_kwargs
from ._registry import ModelMeta, Weights, build_model, generate_cfgs, register_model

__all__ = ['HireMLP', 'HireMLPBlock', 'HireModule', 'RegionMlp', 'HireMLPNet', 'HireBlock']

torch.fx.wrap('check_input')  # an FX leaf here too (torch.fx.wrap patches this module's global)

_OFFICIAL = 'ggjy/Hire-Wave-MLP.pytorch@7ef7ddd784f97b6369d6fbaf913c4c1536949cf6:mlp_based/hire_mlp.py'

_PAD_MODES = {'circular': 'circular', 'c': 'circular', 'zero': 'zero', '0': 'zero', 'replicate': 'replicate'}


def _pad_mode(mode: str, what: str) -> str:
    if mode not in _PAD_MODES:
        raise ValueError(f"{what} must be 'circular', 'zero' or 'replicate' (or the official 'c' / '0'), got {mode!r}.")
    return _PAD_MODES[mode]


def _per_stage(value, n: int, name: str) -> tuple:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * n
    if len(values) != n:
        raise ValueError(f'{name} needs one value per stage ({n}), got {len(values)}: {values}.')
    return values


def pad_end(x: torch.Tensor, pad: int, dim: int, mode: str) -> torch.Tensor:
    """Pad ``x`` by ``pad`` (a Python int) at the end of ``dim`` (2: H, 3: W) of a (B, C, H, W) map."""
    if pad == 0:
        return x
    if mode == 'circular':
        # the first ``pad`` rows (columns) again, wrapping as often as needed: F.pad's circular mode refuses
        # pad > size, which small maps reach; an index modulo the size serves both cases without a branch
        tail = x.index_select(dim, torch.arange(pad, device=x.device) % x.shape[dim])
        if x.is_contiguous(memory_format=torch.channels_last):
            tail = tail.contiguous(memory_format=torch.channels_last)  # then the concatenation is channels-last too
        return torch.cat([x, tail], dim)  # B, C, H + pad, W (or W + pad)
    pads = (0, 0, 0, pad) if dim == 2 else (0, pad, 0, 0)  # F.pad order: (left, right, top, bottom)
    if mode == 'zero':
        return F.pad(x, pads)
    return F.pad(x, pads, mode='replicate')


def shift(x: torch.Tensor, step: int, dim: int, mode: str) -> torch.Tensor:
    """Move the rows (dim 2) or columns (dim 3) of a (B, C, H, W) map forward by ``step``.

    ``'circular'`` rolls (what leaves at the end comes back at the start); ``'zero'`` / ``'replicate'`` fill the
    first ``step`` rows or columns with zeros / copies of the first one and drop the last ``step``.
    """
    if mode == 'circular':
        return torch.roll(x, step, dim)  # B, C, H, W
    size = x.shape[dim]
    pads = (0, 0, step, 0) if dim == 2 else (step, 0, 0, 0)
    x = F.pad(x, pads) if mode == 'zero' else F.pad(x, pads, mode='replicate')  # B, C, H + step, W (or W + step)
    return x.narrow(dim, 0, size)  # B, C, H, W


def _conv1x1_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased 1x1 conv holding ``weight`` (out, in) and ``bias``."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight.reshape(conv.weight.shape))
    conv.bias.copy_(bias)
    return conv


class RegionMlp(nn.Module):
    """Inner-region rearrangement along one axis, inside an optional cross-region shift.

    Input and output (B, C, H, W). With ``dim=2`` (H) every ``region_size`` consecutive rows become the channels of
    one row of a (B, C*p, H/p, W) map, which a two-layer 1x1-conv MLP mixes; ``dim=3`` does the same with columns.
    """

    def __init__(
            self,
            channels: int,
            dim: int,
            region_size: int,
            step: int = 0,
            step_pad_mode: str = 'circular',
            region_pad_mode: str = 'circular',
            act_layer: type[nn.Module] = nn.ReLU,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            deploy: bool = False,
    ) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f'dim must be 2 (rows) or 3 (columns), got {dim}.')
        if region_size < 1 or step < 0:
            raise ValueError(f'region_size must be >= 1 and step >= 0, got {region_size} and {step}.')
        self.dim = dim
        self.region_size = region_size
        self.step = step
        self.step_pad_mode = _pad_mode(step_pad_mode, 'step_pad_mode')
        self.region_pad_mode = _pad_mode(region_pad_mode, 'region_pad_mode')
        hidden = channels // 2  # official: C/2 for every region size
        self.fc1 = nn.Conv2d(channels * region_size, hidden, 1, bias=deploy)  # deploy: the norm folded in
        self.norm = nn.Identity() if deploy else norm_layer(hidden)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden, channels * region_size, 1)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, region_size={self.region_size}, step={self.step}, '
                f'step_pad_mode={self.step_pad_mode}, region_pad_mode={self.region_pad_mode}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_mean(x, want_mean=False)[0]

    def forward_with_mean(self, x: torch.Tensor, want_mean: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output and, when asked for and cheap, its mean over H and W (B, C); else None.

        The mean is cheap when no region padding is cropped off (the axis a multiple of ``p``): the output is then a
        permutation of fc2's output, whose mean is fc2 applied to the mean of fc1's (8p times smaller) output. On the
        channels-last path only; the split attention then reads the branch once instead of twice. Not in a graph
        captured for export (:func:`mlpvision.layers.fast_linear.tracing`), which must not depend on whether the
        size is a multiple of ``p`` (the caller then takes the plain mean: the same value up to float rounding).
        """
        if tracing():
            return self._forward_traced(x), None
        p = self.region_size
        size = x.shape[self.dim]
        if self.step:
            x = shift(x, self.step, self.dim, self.step_pad_mode)
        x = pad_end(x, -size % p, self.dim, self.region_pad_mode)
        n = x.shape[self.dim] // p  # regions along the axis
        mean = None
        if x.is_contiguous(memory_format=torch.channels_last):
            x, mean = self._mix_channels_last(x, n, want_mean and not tracing() and size % p == 0)
        else:
            x = self._mix_nchw(x, n)
        x = x.narrow(self.dim, 0, size)  # B, C, H, W
        if self.step and self.step_pad_mode == 'circular':
            # official: only the roll is undone; the zero-filled shift is left in place
            x = torch.roll(x, -self.step, self.dim)  # B, C, H, W
        return x, mean

    def _forward_traced(self, x: torch.Tensor) -> torch.Tensor:
        """The forward as a graph captured for export holds it (:func:`mlpvision.layers.fast_linear.tracing`): the
        same maths on NCHW, written so that the graph serves every input size.

        The eager forward pads the axis by ``-size % p``, reshapes it into regions and crops by narrowing. Captured
        that way, ``torch.export`` must prove the padded length a multiple of ``p`` and the crop inside it, facts
        about floor divisions of the input's size it cannot derive, and specialises the graph to the example's size.
        Here one gather reads the padded axis straight into region order (phase-major: row ``i`` of region ``j`` at
        ``i * n + j``, so that ``(p * n) -> (p, n)`` is a plain reshape) and another reads the output rows back, so
        the only symbolic size is the region count ``n``.
        """
        p, dim = self.region_size, self.dim
        size = x.shape[dim]
        # ceil(size / p) with positive operands: floor and truncating division agree (a traced shape arithmetic
        # exported to ONNX truncates)
        n = (size + p - 1) // p
        if self.step:
            x = shift(x, self.step, dim, self.step_pad_mode)
        # padded row j * p + i for region j, row i, at position i * n + j
        src = (torch.arange(p, device=x.device)[:, None] + torch.arange(n, device=x.device) * p).flatten()  # p*n
        # the size as a tensor: the ONNX exporter cannot translate an op between a tensor and a symbolic scalar
        size_t = torch.full((), size, dtype=src.dtype, device=src.device)
        if self.region_pad_mode == 'circular':
            x = x.index_select(dim, torch.remainder(src, size_t))  # wraps as often as needed
        else:
            x = x.index_select(dim, torch.minimum(src, size_t - 1))  # replicate: the last row
            if self.region_pad_mode == 'zero':
                inside = src < size_t
                x = torch.where(inside[:, None] if dim == 2 else inside, x, 0.)
        # split the axis, then merge the channels: a reshape that merges an axis of symbolic size (here p * n) into
        # another makes torch.export ask whether p * n divides p, which it cannot decide from the input's size range
        b, c, h, w = x.shape
        if dim == 2:
            x = x.reshape(b, c, p, n, w).reshape(b, c * p, n, w)  # B, C*p, n, W (channel c * p + i)
        else:
            x = x.reshape(b, c, h, p, n).permute(0, 1, 3, 2, 4).reshape(b, c * p, h, n)  # B, C*p, H, n
        x = self.fc2(self.act(self.norm(self.fc1(x))))  # the norm is an Identity in the deploy form
        # output row r = j * p + i is row i of region j: read it by two indices (merging (p, n) into one axis
        # would ask torch.export the same undecidable question as above)
        rows = torch.arange(size, device=x.device)
        if dim == 2:
            x = x.reshape(b, c, p, n, w)[:, :, rows % p, rows // p]  # B, C, H, W
        else:
            x = x.reshape(b, c, p, h, n).permute(0, 1, 3, 2, 4)[:, :, :, rows % p, rows // p]  # B, C, H, W
        if self.step and self.step_pad_mode == 'circular':
            x = torch.roll(x, -self.step, dim)  # B, C, H, W
        return x

    @torch.no_grad()
    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Make fc1 absorb a per-channel affine map ``x * scale + shift`` applied to this module's input (C entries;
        every region row of channel c, fc1 input ``c * p + i``, gets channel c's). Exact only where the padding
        brings in copies of the input (circular, replicate), not zeros."""
        w = self.fc1.weight.flatten(1)  # hidden, C*p
        bias = self.fc1.bias if self.fc1.bias is not None else w.new_zeros(w.shape[0])
        p = self.region_size
        self.fc1 = _conv1x1_from(*fold_affine_into_next_linear(w, bias, scale.repeat_interleave(p),
                                                               shift.repeat_interleave(p)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if isinstance(self.norm, nn.Identity):
            return
        w, b = fuse_conv_bn(self.fc1.weight, self.fc1.bias, self.norm)
        self.fc1 = _conv1x1_from(w.flatten(1), b)
        self.norm = nn.Identity()

    def _mix_nchw(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.region_size
        if self.dim == 2:
            x = x.reshape(b, c, n, p, w).permute(0, 1, 3, 2, 4)  # B, C, p, H'/p, W
            x = x.reshape(b, c * p, n, w)  # B, C*p, H'/p, W
        else:
            x = x.reshape(b, c, h, n, p).permute(0, 1, 4, 2, 3)  # B, C, p, H, W'/p
            x = x.reshape(b, c * p, h, n)  # B, C*p, H, W'/p
        x = self.fc2(self.act(self.norm(self.fc1(x))))  # the norm is an Identity in the deploy form
        if self.dim == 2:
            x = x.reshape(b, c, p, n, w).permute(0, 1, 3, 2, 4)  # B, C, H'/p, p, W
            return x.reshape(b, c, n * p, w)  # B, C, H', W
        x = x.reshape(b, c, p, h, n).permute(0, 1, 3, 4, 2)  # B, C, H, W'/p, p
        return x.reshape(b, c, h, n * p)  # B, C, H, W'

    def _mix_channels_last(self, x: torch.Tensor, n: int, want_mean: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        # the same on the (B, H, W, C) storage of a channels-last map, with the region's rows in the outer place of
        # the stacked channels (channel i * C + c instead of c * p + i, the fc weights permuted to match): moving
        # whole C-vectors, the rearrangement along H is a copy of contiguous blocks and the one along W a view
        b, c, h, w = x.shape
        p = self.region_size
        w1, b1, w2, b2 = self._region_major_weights()
        x = x.permute(0, 2, 3, 1)  # B, H', W', C
        if self.dim == 2:
            x = x.reshape(b, n, p, w, c).transpose(2, 3).reshape(b, n, w, p * c)  # B, H'/p, W, p*C
        else:
            x = x.reshape(b, h, n, p * c)  # B, H, W'/p, p*C (a view)
        x = x.permute(0, 3, 1, 2)  # B, p*C, H'/p, W or B, p*C, H, W'/p (channels-last)
        if isinstance(self.norm, nn.Identity):
            x = pointwise_conv(x, w1, b1, self.act)
        else:
            x = self.act(self.norm(pointwise_conv(x, w1, b1)))
        mean = pointwise_conv_mean(x, w2, b2) if want_mean else None  # B, p*C (or None while MACs are counted)
        if mean is not None:
            mean = mean.reshape(b, p, c).mean(1)  # B, C
        x = pointwise_conv(x, w2, b2).permute(0, 2, 3, 1)  # B, H'/p, W, p*C or B, H, W'/p, p*C
        if self.dim == 2:
            x = x.reshape(b, n, w, p, c).transpose(2, 3).reshape(b, n * p, w, c)  # B, H', W, C
        else:
            x = x.reshape(b, h, n * p, c)  # B, H, W', C (a view)
        return x.permute(0, 3, 1, 2), mean  # B, C, H', W'

    def _region_major_weights(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """fc1's input and fc2's output channels reordered from ``c * p + i`` to ``i * C + c`` (kept between calls
        until a parameter changes)."""
        return derived_weights(self, (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias), self._reorder)

    def _reorder(self, w1, b1, w2, b2):
        p = self.region_size
        hidden, cp = w1.shape[:2]
        c = cp // p
        w1 = w1.reshape(hidden, c, p).transpose(1, 2).reshape(hidden, cp, 1, 1)
        w2 = w2.reshape(c, p, hidden).transpose(0, 1).reshape(cp, hidden, 1, 1)
        return w1, b1, w2, b2.reshape(c, p).t().reshape(cp)

class HireModule(ProjectedMixer):
    """The Hire module (official ``HireMLP``): h, w (and c) branches fused by split attention, then a 1x1
    projection. Input (B, C, H, W).

    The block's residual is added inside ``proj`` (:class:`mlpvision.layers.ProjectedMixer`).
    """

    def __init__(self, dim: int, channel_branch: bool = True, proj_drop: float = 0., **region_kwargs) -> None:
        """
        Args:
            channel_branch: keep the c branch (False: split attention over h and w only).
            **region_kwargs: ``region_size``, ``step``, ``step_pad_mode``, ``region_pad_mode`` and ``deploy`` of the
                h and w branches (:class:`RegionMlp`).
        """
        super().__init__()
        self.mlp_h = RegionMlp(dim, 2, **region_kwargs)
        self.mlp_w = RegionMlp(dim, 3, **region_kwargs)
        self.mlp_c = PointwiseConv(dim, dim) if channel_branch else None
        self.num_branches = 3 if channel_branch else 2
        self.reweight = Mlp(dim, dim // 4, dim * self.num_branches, act_layer=nn.GELU, use_conv=True)
        self.proj = PointwiseConv(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The branches weighted by the split attention, the input of ``proj``."""
        b, c = x.shape[:2]
        # every branch starts with a conv that autocast feeds in its lower precision: cast once, before the copies
        x = autocast_input(x)
        (h, mean_h), (w, mean_w) = self.mlp_h.forward_with_mean(x), self.mlp_w.forward_with_mean(x)
        branches, means = [h, w], [mean_h, mean_w]
        if self.mlp_c is not None:
            branches.append(self.mlp_c(x))
            means.append(None)
        # the mean of the sum (B, C), from the region MLPs where they could give it cheaply
        a = sum(mean_hw(br) if m is None else m for br, m in zip(branches, means, strict=True))
        # the reweight MLP on this (B, C) vector (a 1x1 map); output channel c * n + k is branch k's logit for c
        a = self.reweight(a)
        a = a.reshape(b, c, self.num_branches, 1, 1).softmax(dim=2)  # B, C, n, 1, 1
        # under autocast the branches are bf16 / fp16 and the weights float32: weighting in the branches' dtype
        # (rounded as the projection's input will be) keeps the elementwise passes in one dtype
        # (and each branch's weights contiguous, so that the products run vectorised over the channels)
        a = a.to(branches[0].dtype).permute(2, 0, 1, 3, 4).contiguous()  # n, B, C, 1, 1
        x = branches[0] * a[0]
        for k in range(1, self.num_branches):
            x = torch.addcmul(x, branches[k], a[k])  # x + branch * weight
        return x


@register_notrace_module  # an FX leaf: its convs dispatch on the map's layout (oneDNN fast path), see HireMLP
class HireMLPBlock(nn.Module):
    """``x + DP(HireModule(BN(x)))``, then ``x + DP(Mlp(BN(x)))``. Input (B, C, H, W).

    Deploy form: ``norm2`` folded into the channel MLP's fc1; ``norm1`` folded into the first layer of every branch
    (the region MLPs' fc1 and the c branch) where that is exact, i.e. unless a shift or region padding brings in
    zeros (``'zero'`` pad modes); the region MLPs' own norms folded into their fc1.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4., proj_drop: float = 0., drop_path: float = 0.,
                 deploy: bool = False, **mixer_kwargs) -> None:
        """
        Args:
            proj_drop: dropout in the channel MLP and after the Hire projection.
            deploy: build the re-parameterised structure (see the class docstring).
            **mixer_kwargs: passed to :class:`HireModule` (``channel_branch``, ``region_size``, ``step``, pad modes).
        """
        super().__init__()
        self.token_mixer = HireModule(dim, proj_drop=proj_drop, deploy=deploy, **mixer_kwargs)
        self.norm1 = nn.Identity() if deploy and self._norm1_folds() else nn.BatchNorm2d(dim)
        self.norm2 = nn.Identity() if deploy else nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def _norm1_folds(self) -> bool:
        # the branches see norm1's output through shifts and paddings: a zero brought in after the norm is not the
        # image of any input under it, so the fold is exact only for circular / replicate filling
        return all((not m.step or m.step_pad_mode != 'zero') and (m.region_size == 1 or m.region_pad_mode != 'zero')
                   for m in (self.token_mixer.mlp_h, self.token_mixer.mlp_w))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if isinstance(self.norm2, nn.Identity):
            return
        fc1 = self.mlp.fc1
        self.mlp.fc1 = _conv1x1_from(*fold_affine_into_next_linear(fc1.weight.flatten(1), fc1.bias,
                                                                   *bn_scale_shift(self.norm2)))
        self.norm2 = nn.Identity()
        if self._norm1_folds():
            scale, shift = bn_scale_shift(self.norm1)
            mixer = self.token_mixer
            mixer.mlp_h.fold_input_affine(scale, shift)
            mixer.mlp_w.fold_input_affine(scale, shift)
            if mixer.mlp_c is not None:
                c = mixer.mlp_c
                weight, bias = fold_affine_into_next_linear(c.weight.flatten(1), c.bias, scale, shift)
                c.weight.copy_(weight.reshape(c.weight.shape))
                c.bias.copy_(bias)
            self.norm1 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prenorm_residual_forward(self, self.token_mixer, x)


class HireStage(SequentialStage):
    """Optional downsampling (conv 3x3 / 2 + BN + ReLU), then Hire blocks with the stage's step schedule."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            downsample: bool,
            step_stride: int,
            step_dilation: int,
            drop_path: Sequence[float],
            **block_kwargs,
    ) -> None:
        """
        Args:
            step_stride, step_dilation: block ``i`` shifts by ``(i % step_stride) * step_dilation``.
            drop_path: one rate per block.
            **block_kwargs: passed to every :class:`HireMLPBlock`.
        """
        deploy = block_kwargs.get('deploy', False)
        super().__init__(
            [HireMLPBlock(dim, step=(i % step_stride) * step_dilation, drop_path=drop_path[i], **block_kwargs)
             for i in range(depth)],
            ConvBN(in_dim, dim, 3, stride=2, padding=1, act_layer=nn.ReLU, bias=True, deploy=deploy)
            if downsample else None)


class HireMLP(PyramidNet):
    """Hire-MLP: accepts any input of at least 3x3 pixels, square or not (regions are padded as needed)."""

    @factory_kwargs
    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 4, 2),
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            mlp_ratio: float | Sequence[float] = 4.,
            region_sizes: int | Sequence[int] = (4, 3, 3, 2),
            step_strides: int | Sequence[int] = (2, 2, 3, 2),
            step_dilations: int | Sequence[int] = (2, 2, 1, 1),
            step_pad_mode: str = 'circular',
            region_pad_mode: str = 'circular',
            inner_region: bool = True,
            cross_region: bool = True,
            channel_branch: bool = True,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            channels_last: bool = True,
            deploy: bool = False,
            device: DeviceLike = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            depths: blocks per stage.
            embed_dims: channels per stage.
            mlp_ratio: channel-MLP expansion, one value or one per stage.
            region_sizes: region size ``p`` per stage (rows / columns stacked into channels).
            step_strides, step_dilations: block ``i`` of a stage shifts by ``(i % stride) * dilation``.
            step_pad_mode: how the cross-region shift fills: 'circular' (roll and roll back, official), 'zero'
                (official '0': shift with zeros, not shifted back) or 'replicate'.
            region_pad_mode: how H and W are padded to a multiple of the region size: 'circular' (official),
                'zero' or 'replicate'.
            inner_region: False sets every region size to 1 (ablation: no inner-region rearrangement).
            cross_region: False sets every step to 0 (ablation: no cross-region rearrangement).
            channel_branch: False drops the c branch (ablation); the split attention is then over h and w.
            drop_rate: classifier dropout (the official argument exists but is unused).
            proj_drop_rate: dropout in the blocks' MLPs and after the Hire projection (0 in the official models).
            drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks (official).
            channels_last: store the feature maps channels-last after the stem (same values; the 1x1 convs then
                run as oneDNN convolutions with activations and residual sums fused in CPU inference,
                :class:`mlpvision.layers.PointwiseConv`). Features come out channels-last.
            deploy: build the re-parameterised inference form (every BatchNorm folded into a neighbouring conv where
                that is exact; :class:`HireMLPBlock`); ``mlpvision.reparameterize`` turns a trained model into it.
            device, dtype: where and in what floating-point dtype to build the parameters and buffers (timm 1.0's
                factory arguments; :func:`mlpvision.models._factory.factory_kwargs`).
        """
        super().__init__()
        n = len(depths)
        if len(embed_dims) != n:
            raise ValueError(f'depths and embed_dims need one value per stage, got {len(depths)} and '
                             f'{len(embed_dims)}.')
        mlp_ratios = _per_stage(mlp_ratio, n, 'mlp_ratio')
        region_sizes = _per_stage(region_sizes, n, 'region_sizes') if inner_region else (1,) * n
        step_strides = _per_stage(step_strides, n, 'step_strides')
        step_dilations = _per_stage(step_dilations, n, 'step_dilations') if cross_region else (0,) * n
        if min(step_strides) < 1:
            raise ValueError(f'step_strides must be >= 1, got {step_strides}.')
        _pad_mode(step_pad_mode, 'step_pad_mode')
        _pad_mode(region_pad_mode, 'region_pad_mode')
        self.in_chans = in_chans
        self.channels_last = channels_last
        self.deploy = deploy

        # conv + BN + ReLU with timm ConvNormAct's keys (conv.*, bn.*); the deploy form folds the BN into the conv
        self.stem = ConvBN(in_chans, embed_dims[0], 7, stride=4, padding=2, act_layer=nn.ReLU, bias=True,
                           deploy=deploy)
        total = sum(depths)
        # official: block k of all blocks gets drop_path_rate * k / (total - 1)
        dpr = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        stages = []
        for i in range(n):
            first = sum(depths[:i])
            stages.append(HireStage(
                embed_dims[i - 1] if i else embed_dims[0], embed_dims[i], depths[i], i > 0, step_strides[i],
                step_dilations[i], dpr[first:first + depths[i]], mlp_ratio=mlp_ratios[i], proj_drop=proj_drop_rate,
                channel_branch=channel_branch, region_size=region_sizes[i], step_pad_mode=step_pad_mode,
                region_pad_mode=region_pad_mode, deploy=deploy))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}') for i in range(n)]
        self.norm = nn.BatchNorm2d(embed_dims[-1])
        self._init_head(embed_dims[-1], num_classes, global_pool, drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official: trunc_normal(0.02) on every conv and linear with zero bias, BN weight 1 and bias 0
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore  # Python (the error message reads the class); TorchScript calls back into it
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        # at least 3x3: the stem is a 7x7 conv with padding 2
        return check_input(x, self.in_chans, model_name=type(self).__name__, min_size=3)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        if self.channels_last:  # the stem conv too runs faster on a channels-last input (docs/benchmarks.md)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stem(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # the official recipe (DeiT's train.py -> timm create_optimizer with filter_bias_and_bn) exempts every 1-D
        # parameter (BN weights and biases, conv and linear biases); the model lists no names of its own
        return one_d_and_bias_params(self)


HireMLPNet = HireMLP  # the model's former name
HireBlock = HireMLPBlock  # the block's former name


def _official_to_ours(k: str) -> str:
    k = re.sub(r'^patch_embed\.proj\.', 'stem.conv.', k)
    k = re.sub(r'^patch_embed\.norm\.', 'stem.bn.', k)
    # official network = [blocks 0, downsample 0->1, blocks 1, downsample 1->2, ...]
    m = re.match(r'^network\.(\d+)\.(.*)$', k)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx % 2 == 0:
            rest = re.sub(r'^(\d+)\.attn\.mlp_([hw])1_norm\.', r'\1.token_mixer.mlp_\2.norm.', rest)
            rest = re.sub(r'^(\d+)\.attn\.mlp_([hw])1\.', r'\1.token_mixer.mlp_\2.fc1.', rest)
            rest = re.sub(r'^(\d+)\.attn\.mlp_([hw])2\.', r'\1.token_mixer.mlp_\2.fc2.', rest)
            rest = re.sub(r'^(\d+)\.attn\.', r'\1.token_mixer.', rest)
            k = f'stages.{idx // 2}.blocks.{rest}'
        else:
            rest = re.sub(r'^proj\.', 'conv.', rest)
            rest = re.sub(r'^norm\.', 'bn.', rest)
            k = f'stages.{idx // 2 + 1}.downsample.{rest}'
    return re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', k)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: HireMLP) -> dict[str, torch.Tensor]:
    """Map an official Hire-MLP state_dict or training checkpoint (the release files are saved by the DeiT-based
    ``train.py``: ``{'model': state_dict, ...}``) or an mlpvision state_dict onto ``model``; mlpvision names pass
    through unchanged."""
    state_dict = unwrap_state_dict(state_dict)  # {'model': ...} (or 'model_ema'), DDP's 'module.' prefix
    return {_official_to_ours(k): v for k, v in state_dict.items()}


register_checkpoint_filter(HireMLP, checkpoint_filter_fn)


def _create_hire_mlp(variant: str, pretrained: bool = False, **kwargs) -> HireMLP:
    return build_model(
        HireMLP, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs)


def _cfg(meta: ModelMeta, crop_pct: float = 0.9, **kwargs) -> dict:
    # official _cfg: crop 0.9, bicubic, ImageNet mean/std; the model accepts any input size (Wave-MLP, from the same
    # repository, shares it)
    return dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), fixed_input_size=False,
        crop_pct=crop_pct, interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv='stem.conv', classifier='head.fc', license='mit', meta=meta, **kwargs)


_PAPER = 'arXiv:2108.13341 v2 / official README table'
# Releases: the README table's "Ckpt" links, GitHub release assets (direct downloads; no hash published). The files
# are the training script's checkpoints ({'model': ..., 'args': argparse.Namespace, ...}), read with weights_only.
# License: the README's MIT badge (the repository has no LICENSE file).
_RELEASE = 'https://github.com/ggjy/Hire-Wave-MLP.pytorch/releases/download/log/'


def _weights(file: str, top1: float, release: str = _RELEASE) -> Weights:
    """A release asset of the repository (``release``: its download folder; Wave-MLP's is ``log-wave/``)."""
    return Weights(source='ggjy/Hire-Wave-MLP.pytorch@7ef7ddd784f97b6369d6fbaf913c4c1536949cf6:README.md',
                   host='direct', page=release + file, top1=top1, top1_source='official README table',
                   license='mit')


default_cfgs = generate_cfgs({
    'hire_mlp_tiny.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':hire_mlp_tiny', params=18_041_672, gmacs=2.149,
        params_paper='18M', gmacs_paper=2.1, top1_paper=79.7), weights=_weights('hire_mlp_tiny.pth', 79.7)),
    'hire_mlp_small.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':hire_mlp_small', params=33_113_848, gmacs=4.240,
        params_paper='33M', gmacs_paper=4.2, top1_paper=82.1), weights=_weights('hire_mlp_small.pth', 82.1)),
    'hire_mlp_base.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':hire_mlp_base', params=58_226_856, gmacs=8.125,
        params_paper='58M', gmacs_paper=8.1, top1_paper=83.2), weights=_weights('hire_mlp_base.pth', 83.2)),
    'hire_mlp_large.untrained': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':hire_mlp_large', params=95_723_944, gmacs=13.442,
        params_paper='96M', gmacs_paper=13.4, top1_paper=83.8, notes='no released checkpoint')),
})


@register_model
def hire_mlp_tiny(pretrained: bool = False, **kwargs) -> HireMLP:
    """Hire-MLP-Tiny (README: 18M params, 2.1 GFLOPs, 79.7% top-1)."""
    model_args = dict(depths=(2, 2, 4, 2), embed_dims=(64, 128, 320, 512))
    return _create_hire_mlp('hire_mlp_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def hire_mlp_small(pretrained: bool = False, **kwargs) -> HireMLP:
    """Hire-MLP-Small (README: 33M params, 4.2 GFLOPs, 82.1% top-1)."""
    model_args = dict(depths=(3, 4, 10, 3), embed_dims=(64, 128, 320, 512))
    return _create_hire_mlp('hire_mlp_small', pretrained, **dict(model_args, **kwargs))


@register_model
def hire_mlp_base(pretrained: bool = False, **kwargs) -> HireMLP:
    """Hire-MLP-Base (README: 58M params, 8.1 GFLOPs, 83.2% top-1)."""
    model_args = dict(depths=(4, 6, 24, 3), embed_dims=(64, 128, 320, 512))
    return _create_hire_mlp('hire_mlp_base', pretrained, **dict(model_args, **kwargs))


@register_model
def hire_mlp_large(pretrained: bool = False, **kwargs) -> HireMLP:
    """Hire-MLP-Large (README: 96M params, 13.4 GFLOPs, 83.8% top-1)."""
    model_args = dict(depths=(4, 6, 24, 3), embed_dims=(96, 192, 384, 768))
    return _create_hire_mlp('hire_mlp_large', pretrained, **dict(model_args, **kwargs))
