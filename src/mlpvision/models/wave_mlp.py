"""Wave-MLP: An Image Patch is a Wave: Phase-Aware Vision MLP.

Paper: Tang et al., CVPR 2022, arXiv:2111.12294 (the official README's table gives the released variants' figures).
Official code: ggjy/Hire-Wave-MLP.pytorch@7ef7ddd784f97b6369d6fbaf913c4c1536949cf6, ``mlp_based/wave_mlp.py`` (the
repository that also holds Hire-MLP; the README's checkpoints are its releases).

A four-stage NCHW pyramid: an overlapping stem (conv 7x7, stride 4, padding 2, + norm), stages joined by conv 3x3 /
stride 2 (+ norm), blocks ``x + DP(PATM(norm1(x)))`` and ``x + DP(Mlp(norm2(x)))``, a final norm, the spatial mean and
a Linear head. The norm is BatchNorm (Wave-MLP-T*, T) or GroupNorm with one group (S, M, B: the official ``MyNorm``);
M and B have no norm after the stem and downsampling convs (official ``ds_use_norm=False``).

PATM, the phase-aware token mixing, on the block's normed input x (B, C, H, W):

* amplitudes ``x_h = fc_h(x)``, ``x_w = fc_w(x)`` (1x1 convs without bias) and phases ``theta_h``, ``theta_w``, each
  ``ReLU(BN(conv(x)))`` with a biased 1x1 conv (``phase_mode='fc'``) or a 3x3 depthwise conv without bias
  (``'depthwise'``, Wave-MLP-T*);
* every token as a wave ``x e^{i theta}``, unrolled into its real and imaginary parts,
  ``z_h = cat(x_h cos theta_h, x_h sin theta_h)`` (B, 2C, H, W), likewise ``z_w``;
* token mixing: ``h = tfc_h(z_h)``, a grouped conv (C groups of two input channels, no bias) with a 1x7 kernel, and
  ``w = tfc_w(z_w)`` with a 7x1 kernel (the official names: ``tfc_h`` mixes along W, ``tfc_w`` along H). Group g reads
  channels 2g and 2g + 1 of z: for g < C/2 the cosine parts of amplitudes 2g and 2g + 1, for g >= C/2 the sine parts
  of amplitudes 2g - C and 2g - C + 1. ``c = fc_c(x)`` (1x1, no bias);
* fusion as in Hire-MLP: ``a = mean_HW(h + w + c)``, ``Mlp(C, C/4, 3C)`` with GELU, softmax over the three branches
  per channel, ``proj(a_h h + a_w w + a_c c)``.

How it runs (same values up to float rounding): the three 1x1 convs that read x for the amplitudes and the c branch
run as one conv with their kernels stacked, the two 1x1 phase convs as another with their BN folded in and the ReLU
fused (eval mode; in training each phase conv runs alone, so that its BatchNorm gets a channels-last map); the waves
are ``amp cos(phase - t pi/2)`` written into one buffer in three passes (:func:`_waves`); each grouped token-mixing
conv runs as a depthwise conv over the 2C wave channels followed by the sum of each group's two outputs (the same
multiply-adds; oneDNN's depthwise kernel is several times faster than its grouped one with two channels a group). The
feature maps are stored channels-last after the stem (``channels_last=True``) and the convs run through oneDNN in CPU
inference (:mod:`mlpvision.layers.fast_linear`).

Deviations from the official code:

* key names: ``stem`` / ``stages.i.downsample`` / ``stages.i.blocks.j`` instead of ``patch_embed`` / ``network.k``;
  ``token_mixer`` instead of ``attn``; ``theta_h.{conv,bn}`` instead of ``theta_h_conv.{0,1}``; ``head.fc``.
  ``checkpoint_filter_fn`` maps them.
* the official ``drop_rate`` is accepted but never used; here it is the classifier's dropout (timm's convention),
  and ``proj_drop_rate`` is the dropout the official blocks have but never set (0 in the released models). The
  official ``qk_scale`` and ``attn_drop`` (unused there) are not taken.
* ``in_chans`` is honoured (the official stem hard-codes 3 input channels); ``reset_classifier`` works (the official
  one reads an attribute the model does not have).
* the official ``fork_feat`` (per-stage norms for its detection and segmentation code) is not a model argument:
  :mod:`mlpvision.dense` builds dense backbones from any model's ``forward_intermediates``.
* no printing on construction; an input of the wrong rank or channel count, or smaller than 3x3, raises ValueError.
* a re-parameterised inference form, which the official code does not have (``deploy=True`` /
  ``mlpvision.reparameterize``): the phase convs' BN folded into their convs, a BatchNorm after the stem and the
  downsampling convs folded into them, the blocks' BatchNorm ``norm2`` into the channel MLP's fc1 and ``norm1`` into
  the 1x1 convs that read it (``fc_h``, ``fc_w``, ``fc_c`` then have biases; with the 3x3 depthwise phase convs of
  Wave-MLP-T*, whose zero padding the fold would change, ``norm1`` stays). GroupNorm cannot be folded.

Names: the model is :class:`WaveMLP` (the official ``WaveNet``), its block :class:`WaveMLPBlock` (``WaveBlock``) and
the token mixer :class:`PATM` (the paper's and the code's name).

timm's model contract (tests/test_models.py): ``device=`` / ``dtype=``, ``forward_intermediates``, ``features_only``,
``torch.fx`` (the blocks and conv-norm layers are FX leaves, since they dispatch on the map's memory layout).
TorchScript does not apply: the blocks hand their modules to the oneDNN dispatch functions of
:mod:`mlpvision.layers.fast_linear`, and TorchScript cannot pass a module as an argument.

MACs: ``mlpvision.profile`` counts convs and linears: Wave-MLP-T at 224 2.462 G, the official module counted the same
way 2.462 G (README: 2.4 G).
"""
import re
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, GroupNorm1, register_notrace_module, trunc_normal_

from .._checkpoint import register_checkpoint_filter, unwrap_state_dict
from ..layers import ConvBN, Mlp, PointwiseConv, autocast_input, derived_weights, mean_hw, pointwise_conv
from ..layers.fast_linear import conv2d, conv_act, tracing
from ..layers.fusion import bn_scale_shift, fold_affine_into_next_linear, fuse_conv_bn
from ._base import PyramidNet, SequentialStage, prenorm_residual_forward
from ._factory import DeviceLike, factory_kwargs
from ._registry import ModelMeta, Weights, build_model, generate_cfgs, register_model
from .hire_mlp import HireMLP, _cfg
from .hire_mlp import _weights as _repo_weights

__all__ = ['WaveMLP', 'WaveMLPBlock', 'PATM', 'ConvNorm']

_OFFICIAL = 'ggjy/Hire-Wave-MLP.pytorch@7ef7ddd784f97b6369d6fbaf913c4c1536949cf6:mlp_based/wave_mlp.py'

_NORMS = {'batch': nn.BatchNorm2d, 'group': GroupNorm1}  # 'group': the official MyNorm, GroupNorm(1, C)
_PHASE_MODES = ('fc', 'depthwise')


def _norm_layer(norm: str) -> type[nn.Module]:
    if norm not in _NORMS:
        raise ValueError(f"norm_layer must be one of {sorted(_NORMS)}, got {norm!r}.")
    return _NORMS[norm]


def _per_stage(value, n: int, name: str) -> tuple:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * n
    if len(values) != n:
        raise ValueError(f'{name} needs one value per stage ({n}), got {len(values)}: {values}.')
    return values


@torch.no_grad()
def _fold_input_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A biased 1x1 conv computing ``conv(bn(x))`` (``bn`` in eval mode); the same class as ``conv``."""
    weight, bias = conv.weight.flatten(1), conv.bias if conv.bias is not None else conv.weight.new_zeros(
        conv.out_channels)
    weight, bias = fold_affine_into_next_linear(weight, bias, *bn_scale_shift(bn))
    folded = type(conv)(conv.in_channels, conv.out_channels, bias=True, device=weight.device, dtype=weight.dtype) \
        if isinstance(conv, PointwiseConv) else nn.Conv2d(conv.in_channels, conv.out_channels, 1, device=weight.device,
                                                          dtype=weight.dtype)
    folded.weight.copy_(weight.reshape(folded.weight.shape))
    folded.bias.copy_(bias)
    return folded


@register_notrace_module  # an FX leaf: its conv dispatches on the map's layout (oneDNN fast path)
class ConvNorm(nn.Module):
    """``norm(conv(x))`` with a biased conv: the stem (7x7 / 4) and the downsamplings (3x3 / 2). The norm is a
    BatchNorm (folded into the conv in the deploy form), a GroupNorm with one group, or none."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int,
                 norm_layer: type[nn.Module] | None, deploy: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding)
        folds = norm_layer is nn.BatchNorm2d
        self.norm = nn.Identity() if norm_layer is None or (deploy and folds) else norm_layer(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(conv_act(x, self.conv))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if not isinstance(self.norm, nn.BatchNorm2d):
            return
        weight, bias = fuse_conv_bn(self.conv.weight, self.conv.bias, self.norm)
        self.conv.weight.copy_(weight)
        self.conv.bias.copy_(bias)
        self.norm = nn.Identity()


def _waves(amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``cat(amp cos(phase), amp sin(phase))`` (B, 2C, H, W; channel t * C + m, the official order) from two
    (B, C, H, W) maps, written as ``amp cos(phase - t pi/2)`` into one (B, H, W, 2, C) buffer: three passes (in place
    where no autograd needs the intermediates) instead of two cosines, two products and a concatenation; returned
    channels-last. Out of place while a graph is captured for export or compiled; under autograd :class:`_Waves`."""
    if tracing() or torch.compiler.is_compiling():
        return _waves_plain(amp, phase)
    if torch.is_grad_enabled() and (phase.requires_grad or amp.requires_grad):
        return _Waves.apply(amp, phase)
    with torch.no_grad():  # a tensor that needs no gradient: the forward alone, in place
        return _waves_in_place(amp, phase)


def _quarter(phase: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[0.], [torch.pi / 2]], dtype=phase.dtype, device=phase.device)  # 2, 1: cos, then sin


def _waves_plain(amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """:func:`_waves` out of place, for a captured graph."""
    z = torch.cos(phase.permute(0, 2, 3, 1).unsqueeze(3) - _quarter(phase)) * amp.permute(0, 2, 3, 1).unsqueeze(3)
    return z.flatten(3).permute(0, 3, 1, 2)  # B, 2C, H, W (channels-last storage)


def _waves_in_place(amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """:func:`_waves` in one new buffer: the phase shifted into it, its cosine and the product in place."""
    b, c, h, w = amp.shape
    phase = phase.permute(0, 2, 3, 1).unsqueeze(3)  # B, H, W, 1, C
    amp = amp.permute(0, 2, 3, 1).unsqueeze(3)  # B, H, W, 1, C
    z = torch.sub(phase, _quarter(phase), out=phase.new_empty(b, h, w, 2, c)).cos_()  # B, H, W, 2, C
    z = z.mul_(amp) if z.dtype == amp.dtype else z * amp
    return z.flatten(3).permute(0, 3, 1, 2)  # B, 2C, H, W (channels-last storage)


class _Waves(torch.autograd.Function):
    """:func:`_waves` under autograd: the forward in place in one buffer, as in inference; the backward from
    ``cos(phase)`` and ``sin(phase)`` on the (B, H, W, C) maps, ``d amp = g_0 cos + g_1 sin`` and
    ``d phase = amp (g_1 cos - g_0 sin)`` (``g_t`` the gradient of wave t), where autograd of the out-of-place form
    takes the sine of the whole 2C buffer, two products over it and two sums over t. Equal to autograd's up to float
    rounding (tests/test_wave_mlp.py); not twice differentiable. On the host of docs/benchmarks.md Wave-MLP-T's
    training step ran 1.07-1.09x fp32 and 1.04x bf16 faster than with autograd of the out-of-place form."""

    @staticmethod
    def forward(ctx, amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(amp, phase)
        return _waves_in_place(amp, phase)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        amp, phase = ctx.saved_tensors
        b, c, h, w = amp.shape
        g = grad.permute(0, 2, 3, 1).reshape(b, h, w, 2, c)  # B, H, W, 2, C (a view of a channels-last gradient)
        g0, g1 = g.unbind(3)  # B, H, W, C each
        p = phase.permute(0, 2, 3, 1)  # B, H, W, C
        cos, sin = torch.cos(p), torch.sin(p)
        d_amp = d_phase = None
        if ctx.needs_input_grad[0]:
            d_amp = torch.addcmul(g0 * cos, g1, sin).permute(0, 3, 1, 2)  # B, C, H, W (channels-last)
        if ctx.needs_input_grad[1]:
            d_phase = (g1 * cos).addcmul_(g0, sin, value=-1).mul_(amp.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return d_amp, d_phase


def _token_fc(z: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """The official grouped token-mixing conv (C groups of two input channels, kernel ``weight`` (C, 2, kh, kw)) on
    the waves z (B, 2C, H, W), as a depthwise conv over the 2C channels and the sum of each group's two outputs:
    the same multiply-adds, which oneDNN runs several times faster as a depthwise conv than as a grouped one."""
    c2 = z.shape[1]
    y = conv2d(z, weight.reshape(c2, 1, *weight.shape[2:]), padding=padding, groups=c2)  # B, 2C, H, W
    return y[:, 0::2] + y[:, 1::2]  # B, C, H, W: group g's outputs 2g and 2g + 1


class PATM(nn.Module):
    """Phase-aware token mixing (official ``PATM``): h, w and c branches fused by split attention, then a 1x1
    projection. Input and output (B, C, H, W); ``forward(x, shortcut)`` adds a pre-norm block's shortcut inside the
    projection.
    """

    def __init__(self, dim: int, phase_mode: str = 'fc', qkv_bias: bool = False, proj_drop: float = 0.,
                 fold_norm: bool = False, deploy: bool = False) -> None:
        """
        Args:
            phase_mode: 'fc' (1x1 phase convs with bias) or 'depthwise' (3x3 depthwise without bias).
            qkv_bias: biases in fc_h, fc_w and fc_c (official argument; False in every released model).
            proj_drop: dropout after the projection (0 in the official models).
            fold_norm: the block's BatchNorm is folded into the 1x1 convs (deploy form): they have biases.
            deploy: build the phase convs with their BatchNorm folded.
        """
        super().__init__()
        if phase_mode not in _PHASE_MODES:
            raise ValueError(f'phase_mode must be one of {_PHASE_MODES}, got {phase_mode!r}.')
        self.phase_mode = phase_mode
        bias = qkv_bias or fold_norm
        self.fc_h = PointwiseConv(dim, dim, bias=bias)
        self.fc_w = PointwiseConv(dim, dim, bias=bias)
        self.fc_c = PointwiseConv(dim, dim, bias=bias)
        if phase_mode == 'fc':
            self.theta_h = ConvBN(dim, dim, 1, act_layer=nn.ReLU, bias=True, deploy=deploy)
            self.theta_w = ConvBN(dim, dim, 1, act_layer=nn.ReLU, bias=True, deploy=deploy)
        else:
            self.theta_h = ConvBN(dim, dim, 3, padding=1, groups=dim, act_layer=nn.ReLU, deploy=deploy)
            self.theta_w = ConvBN(dim, dim, 3, padding=1, groups=dim, act_layer=nn.ReLU, deploy=deploy)
        self.tfc_h = nn.Conv2d(2 * dim, dim, (1, 7), padding=(0, 3), groups=dim, bias=False)
        self.tfc_w = nn.Conv2d(2 * dim, dim, (7, 1), padding=(3, 0), groups=dim, bias=False)
        self.reweight = Mlp(dim, dim // 4, dim * 3, act_layer=nn.GELU, use_conv=True)
        self.proj = PointwiseConv(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _phase_bn_training(self) -> bool:
        bn = self.theta_h.bn
        return isinstance(bn, nn.BatchNorm2d) and bn.training

    def _amplitude_weights(self, *params) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fc_h, fc_w and fc_c stacked into one 1x1 kernel (3C, C, 1, 1) and bias (or None)."""
        convs = (self.fc_h, self.fc_w, self.fc_c)
        weight = torch.cat([m.weight for m in convs])
        if all(m.bias is None for m in convs):
            return weight, None
        return weight, torch.cat([m.bias if m.bias is not None else weight.new_zeros(m.out_channels) for m in convs])

    def _phase_weights(self, *params) -> tuple[torch.Tensor, torch.Tensor]:
        """The 1x1 phase convs stacked (2C, C, 1, 1), their BatchNorm folded in (eval mode)."""
        (w_h, b_h), (w_w, b_w) = self.theta_h.fused_kernel_bias(), self.theta_w.fused_kernel_bias()
        return torch.cat([w_h, w_w]), torch.cat([b_h, b_w])

    def _phases(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        if self.phase_mode != 'fc':
            return self.theta_h(x), self.theta_w(x)
        if self._phase_bn_training():  # the BNs' batch statistics: conv, then BN, then ReLU
            # one conv each, not the stacked conv: a channel slice of a channels-last map is not channels-last, and
            # BatchNorm's forward and backward on such a slice copy it and take a slow path (wave_mlp_t's fp32 step
            # 1.10x and bf16 1.19x faster this way; docs/benchmarks.md)
            return tuple(F.relu(t.bn(pointwise_conv(x, t.conv.weight, t.conv.bias)))
                         for t in (self.theta_h, self.theta_w))
        params = (*self.theta_h.parameters(), *self.theta_h.buffers(), *self.theta_w.parameters(),
                  *self.theta_w.buffers())
        y = pointwise_conv(x, *derived_weights(self, params, self._phase_weights), act=self.theta_h.act)  # B, 2C
        return y[:, :c], y[:, c:]

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
        b, c = x.shape[:2]
        x = autocast_input(x)  # every branch starts with a conv: cast once (under autocast)
        params = tuple(p for m in (self.fc_h, self.fc_w, self.fc_c) for p in m.parameters())
        y = pointwise_conv(x, *derived_weights(self, params, self._amplitude_weights))  # B, 3C, H, W
        amp_h, amp_w, mix_c = y[:, :c], y[:, c:2 * c], y[:, 2 * c:]
        theta_h, theta_w = self._phases(x)
        h = _token_fc(_waves(amp_h, theta_h), self.tfc_h.weight, (0, 3))  # B, C, H, W: along W (official name)
        w = _token_fc(_waves(amp_w, theta_w), self.tfc_w.weight, (3, 0))  # B, C, H, W: along H
        a = self.reweight(mean_hw(h) + mean_hw(w) + mean_hw(mix_c))  # B, 3C: channel c * 3 + k, branch k of c
        # softmax over the branches; each branch's weights contiguous for the vectorised products below, in the
        # branches' dtype under autocast (a cast only where they differ: none in a graph captured in float32)
        a = a.reshape(b, c, 3).softmax(2)
        a = (a if a.dtype == h.dtype else a.to(h.dtype)).permute(2, 0, 1).reshape(3, b, c, 1, 1).contiguous()
        x = torch.addcmul(torch.addcmul(h * a[0], w, a[1]), mix_c, a[2])  # B, C, H, W
        if self.proj_drop.p > 0 and self.training:
            x = self.proj_drop(self.proj(x))
            return x if shortcut is None else shortcut + x
        return self.proj(x, shortcut=shortcut)


@register_notrace_module  # an FX leaf: its convs dispatch on the map's layout (oneDNN fast path), see WaveMLP
class WaveMLPBlock(nn.Module):
    """``x + DP(PATM(norm1(x)))``, then ``x + DP(Mlp(norm2(x)))``. Input (B, C, H, W).

    Deploy form: the phase convs' BN folded into them; a BatchNorm ``norm2`` folded into the channel MLP's fc1 and a
    BatchNorm ``norm1`` into the 1x1 convs of PATM that read it, unless the phase convs are the 3x3 depthwise ones
    (whose zero padding a fold would change).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4., norm_layer: type[nn.Module] = nn.BatchNorm2d,
                 phase_mode: str = 'fc', qkv_bias: bool = False, proj_drop: float = 0., drop_path: float = 0.,
                 deploy: bool = False) -> None:
        super().__init__()
        folds = norm_layer is nn.BatchNorm2d
        fold_norm1 = deploy and folds and phase_mode == 'fc'
        self.norm1 = nn.Identity() if fold_norm1 else norm_layer(dim)
        self.token_mixer = PATM(dim, phase_mode=phase_mode, qkv_bias=qkv_bias, proj_drop=proj_drop,
                                fold_norm=fold_norm1, deploy=deploy)
        self.norm2 = nn.Identity() if deploy and folds else norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    @torch.no_grad()
    def reparameterize(self) -> None:
        mixer = self.token_mixer
        mixer.theta_h.reparameterize()
        mixer.theta_w.reparameterize()
        if isinstance(self.norm2, nn.BatchNorm2d):
            self.mlp.fc1 = _fold_input_bn(self.mlp.fc1, self.norm2)
            self.norm2 = nn.Identity()
        if isinstance(self.norm1, nn.BatchNorm2d) and mixer.phase_mode == 'fc':
            for name in ('fc_h', 'fc_w', 'fc_c'):
                setattr(mixer, name, _fold_input_bn(getattr(mixer, name), self.norm1))
            for theta in (mixer.theta_h, mixer.theta_w):
                theta.conv = _fold_input_bn(theta.conv, self.norm1)
            self.norm1 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prenorm_residual_forward(self, self.token_mixer, x)


class WaveMLP(PyramidNet):
    """Wave-MLP (official ``WaveNet``): accepts any input of at least 3x3 pixels, square or not."""

    @factory_kwargs
    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 4, 2),
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            mlp_ratio: float | Sequence[float] = 4.,
            phase_mode: str = 'fc',
            norm_layer: str = 'batch',
            downsample_norm: bool = True,
            qkv_bias: bool = False,
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
            phase_mode: how the phases are estimated: 'fc' (1x1 conv + BN + ReLU) or 'depthwise' (3x3 depthwise
                conv + BN + ReLU; Wave-MLP-T*, official ``mode='depthwise'``).
            norm_layer: 'batch' (BatchNorm2d) or 'group' (GroupNorm with one group, the official ``MyNorm``): the
                blocks' norms, the final norm and those after the stem and downsampling convs.
            downsample_norm: a norm after the stem and downsampling convs (official ``ds_use_norm``).
            qkv_bias: biases in PATM's fc_h, fc_w, fc_c (official argument, False in every released model).
            drop_rate: classifier dropout (the official argument exists but is unused).
            proj_drop_rate: dropout in the blocks' MLPs and after PATM's projection (0 in the official models).
            drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks (official).
            channels_last: store the feature maps channels-last after the stem (same values; the convs then run
                as oneDNN convolutions in CPU inference). Features come out channels-last.
            deploy: build the re-parameterised inference form (:class:`WaveMLPBlock`, :class:`ConvNorm`);
                ``mlpvision.reparameterize`` turns a trained model into it.
            device, dtype: where and in what floating-point dtype to build the parameters and buffers (timm 1.0's
                factory arguments; :func:`mlpvision.models._factory.factory_kwargs`).
        """
        super().__init__()
        n = len(depths)
        if len(embed_dims) != n:
            raise ValueError(f'depths and embed_dims need one value per stage, got {len(depths)} and '
                             f'{len(embed_dims)}.')
        mlp_ratios = _per_stage(mlp_ratio, n, 'mlp_ratio')
        norm = _norm_layer(norm_layer)
        if phase_mode not in _PHASE_MODES:
            raise ValueError(f'phase_mode must be one of {_PHASE_MODES}, got {phase_mode!r}.')
        ds_norm = norm if downsample_norm else None
        self.in_chans = in_chans
        self.channels_last = channels_last
        self.deploy = deploy

        self.stem = ConvNorm(in_chans, embed_dims[0], 7, stride=4, padding=2, norm_layer=ds_norm, deploy=deploy)
        total = sum(depths)
        # official: block k of all blocks gets drop_path_rate * k / (total - 1)
        dpr = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        stages = []
        for i in range(n):
            first = sum(depths[:i])
            blocks = [WaveMLPBlock(embed_dims[i], mlp_ratios[i], norm, phase_mode, qkv_bias, proj_drop_rate,
                                   dpr[first + j], deploy) for j in range(depths[i])]
            downsample = ConvNorm(embed_dims[i - 1], embed_dims[i], 3, stride=2, padding=1, norm_layer=ds_norm,
                                  deploy=deploy) if i else None
            stages.append(SequentialStage(blocks, downsample))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}') for i in range(n)]
        self.norm = norm(embed_dims[-1])
        self._init_head(embed_dims[-1], num_classes, global_pool, drop_rate)
        # official init: trunc_normal(0.02) and a zero bias for the one Linear, the head; BN weight 1 and bias 0 (as
        # PyTorch's); every conv keeps PyTorch's init
        if num_classes:
            trunc_normal_(self.head.fc.weight, std=.02)
            nn.init.zeros_(self.head.fc.bias)

    # Hire-MLP's (same repository, same stem): at least 3x3 pixels (a 7x7 conv with padding 2), the input stored
    # channels-last when asked, and the official optimizer's weight-decay exemptions (every 1-D parameter: timm's
    # create_optimizer with filter_bias_and_bn in train_wave.py, as DeiT's in Hire-MLP's train.py)
    check_input = HireMLP.check_input
    forward_stem = HireMLP.forward_stem
    no_weight_decay = HireMLP.no_weight_decay


def _official_to_ours(k: str) -> str:
    k = re.sub(r'^patch_embed\.proj\.', 'stem.conv.', k)
    k = re.sub(r'^patch_embed\.norm\.', 'stem.norm.', k)
    # official network = [blocks 0, downsample 0->1, blocks 1, downsample 1->2, ...] (every transition downsamples)
    m = re.match(r'^network\.(\d+)\.(.*)$', k)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx % 2 == 0:
            rest = re.sub(r'^(\d+)\.attn\.theta_([hw])_conv\.0\.', r'\1.token_mixer.theta_\2.conv.', rest)
            rest = re.sub(r'^(\d+)\.attn\.theta_([hw])_conv\.1\.', r'\1.token_mixer.theta_\2.bn.', rest)
            rest = re.sub(r'^(\d+)\.attn\.', r'\1.token_mixer.', rest)
            k = f'stages.{idx // 2}.blocks.{rest}'
        else:
            rest = re.sub(r'^proj\.', 'conv.', rest)
            k = f'stages.{idx // 2 + 1}.downsample.{rest}'
    return re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', k)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: WaveMLP) -> dict[str, torch.Tensor]:
    """Map an official Wave-MLP state_dict or training checkpoint (the release files are saved by timm's
    ``train.py`` as ``train_wave.py``: ``{'state_dict': ..., 'state_dict_ema': ..., ...}``; the plain weights are
    taken) or an mlpvision state_dict onto ``model``; mlpvision names pass through unchanged."""
    state_dict = unwrap_state_dict(state_dict)  # {'state_dict': ...} (or 'model', EMA), DDP's 'module.' prefix
    return {_official_to_ours(k): v for k, v in state_dict.items()}


register_checkpoint_filter(WaveMLP, checkpoint_filter_fn)


def _create_wave_mlp(variant: str, pretrained: bool = False, **kwargs) -> WaveMLP:
    return build_model(
        WaveMLP, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs)


_PAPER = 'arXiv:2111.12294 / official README table (Wave-MLP on ImageNet-1K)'
# Releases: the README table's "Ckpt" links, GitHub release assets under log-wave/ (direct downloads; no hash
# published), saved by timm's train.py (train_wave.py). License: the README's MIT badge. The cfg (official _cfg:
# bicubic, ImageNet mean / std, crop 0.9; WaveMLP_B 0.875) and the release layout are Hire-MLP's, same repository.
_RELEASE = 'https://github.com/ggjy/Hire-Wave-MLP.pytorch/releases/download/log-wave/'


def _weights(file: str, top1: float) -> Weights:
    return _repo_weights(file, top1, release=_RELEASE)


# params: sum(p.numel()) of the official factories (as the parity fixtures record them); gmacs: mlpvision.profile
# (torch's FLOP counter over convs and linears, one multiply-add one MAC) of the official modules at 224, the module
# imported as benchmarks/make_parity_fixture.py does (fvcore, which the other families' figures come from, counts
# the same ops but was not at hand)
default_cfgs = generate_cfgs({
    'wave_mlp_t_dw.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':WaveMLP_T_dw', params=15_286_472, gmacs=2.163,
        params_paper='15M', gmacs_paper=2.1, top1_paper=80.1, notes='Wave-MLP-T* in the README'),
        weights=_weights('WaveMLP_T_dw.pth.tar', 80.1)),
    'wave_mlp_t.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':WaveMLP_T', params=17_193_160, gmacs=2.462,
        params_paper='17M', gmacs_paper=2.4, top1_paper=80.9), weights=_weights('WaveMLP_T.pth.tar', 80.9)),
    'wave_mlp_s.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':WaveMLP_S', params=30_708_040, gmacs=4.522,
        params_paper='30M', gmacs_paper=4.5, top1_paper=82.9), weights=_weights('WaveMLP_S.pth.tar', 82.9)),
    'wave_mlp_m.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':WaveMLP_M', params=44_056_632, gmacs=7.872,
        params_paper='44M', gmacs_paper=7.9, top1_paper=83.3), weights=_weights('WaveMLP_M.pth.tar', 83.3)),
    'wave_mlp_b.untrained': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':WaveMLP_B', params=63_586_360, gmacs=10.215,
        notes='registered by the official code, not in its README table; no released checkpoint'), crop_pct=0.875),
})


@register_model
def wave_mlp_t_dw(pretrained: bool = False, **kwargs) -> WaveMLP:
    """Wave-MLP-T* (official ``WaveMLP_T_dw``; README: 15M params, 2.1 GFLOPs, 80.1% top-1)."""
    model_args = dict(depths=(2, 2, 4, 2), embed_dims=(64, 128, 320, 512), phase_mode='depthwise')
    return _create_wave_mlp('wave_mlp_t_dw', pretrained, **dict(model_args, **kwargs))


@register_model
def wave_mlp_t(pretrained: bool = False, **kwargs) -> WaveMLP:
    """Wave-MLP-T (README: 17M params, 2.4 GFLOPs, 80.9% top-1)."""
    model_args = dict(depths=(2, 2, 4, 2), embed_dims=(64, 128, 320, 512))
    return _create_wave_mlp('wave_mlp_t', pretrained, **dict(model_args, **kwargs))


@register_model
def wave_mlp_s(pretrained: bool = False, **kwargs) -> WaveMLP:
    """Wave-MLP-S (README: 30M params, 4.5 GFLOPs, 82.9% top-1)."""
    model_args = dict(depths=(2, 3, 10, 3), embed_dims=(64, 128, 320, 512), norm_layer='group')
    return _create_wave_mlp('wave_mlp_s', pretrained, **dict(model_args, **kwargs))


@register_model
def wave_mlp_m(pretrained: bool = False, **kwargs) -> WaveMLP:
    """Wave-MLP-M (README: 44M params, 7.9 GFLOPs, 83.3% top-1)."""
    model_args = dict(depths=(3, 4, 18, 3), embed_dims=(64, 128, 320, 512), mlp_ratio=(8, 8, 4, 4),
                      norm_layer='group', downsample_norm=False)
    return _create_wave_mlp('wave_mlp_m', pretrained, **dict(model_args, **kwargs))


@register_model
def wave_mlp_b(pretrained: bool = False, **kwargs) -> WaveMLP:
    """Wave-MLP-B (official ``WaveMLP_B``; not in the README table, no released checkpoint)."""
    model_args = dict(depths=(2, 2, 18, 2), embed_dims=(96, 192, 384, 768), norm_layer='group',
                      downsample_norm=False)
    return _create_wave_mlp('wave_mlp_b', pretrained, **dict(model_args, **kwargs))
