"""CycleMLP: A MLP-like Architecture for Dense Prediction.

Paper: Chen, Xie, Ge, Chen, Liang, Luo, ICLR 2022 (oral), arXiv:2107.10224. Official code:
ShoufaChen/CycleMLP@4e062a03e875d8dc4fbdd5dec96a918494705d38, ``cycle_mlp.py`` (``CycleMLP_B1`` .. ``CycleMLP_B5``);
the README's model zoo gives the released variants' figures and checkpoints.

A four-stage pyramid (widths 64/128/320/512, B5 96/192/384/768): an overlapping stem (conv 7x7, stride 4, padding
2, no norm), stages joined by a conv 3x3 / stride 2 / padding 1 (no norm), blocks ``x + DP(CycleMixer(LN(x)))`` and
``x + DP(Mlp(LN(x)))`` (GELU; LayerNorm over the channels, eps 1e-5), a final LayerNorm, the spatial mean and a
Linear head. The token mixer (official ``CycleMLP``) has three branches fused by split attention:

* h branch: a Cycle FC along W (official ``sfc_h``, kernel (1, 3)); w branch: a Cycle FC along H (``sfc_w``,
  kernel (3, 1)); c branch: a channel FC without bias (``mlp_c``);
* fusion: ``a = mean_HW(h + w + c)``, ``Mlp(C, C/4, 3C)`` (output channel ``3c + j`` is branch ``j``'s logit for
  channel ``c``), softmax over the three branches per channel, ``proj(a_h * h + a_w * w + a_c * c)``.

Cycle FC (:class:`CycleFC`). The official layer is torchvision's ``deform_conv2d`` with a 1x1 kernel and fixed
offsets, one offset group per input channel: channel ``c`` is read at a displacement of
``d(c) = (c + S // 2) % S - S // 2`` along its axis (S = 3, the paper's stepsize: 0, +1, -1, 0, +1, -1, ...), every
offset an integer, so the bilinear sampling reads exactly one pixel, or zero outside the map. The layer is therefore
a per-channel shift (zero filled) followed by a channel FC. Here it is written as that: :func:`cycle_shift` (one
strided copy per residue of ``c`` modulo S) and one GEMM, through :mod:`mlpvision.layers.fast_linear` in CPU
inference. ``tests/test_cycle_mlp.py`` checks it against ``torchvision.ops.deform_conv2d`` with the official offsets.

Layout: the feature maps between stages are NCHW tensors stored channels-last (``channels_last=True``), so each
block reads them as (B, H, W, C) tokens with a free ``permute`` and hands the same storage back: LayerNorm and the
FCs run on contiguous tokens, as the official NHWC code does, while stage outputs, ``forward_intermediates`` and
``features_only`` give NCHW maps as every mlpvision family. ``channels_last=False`` stores NCHW (a copy per block).

Deviations from the official code:

* key names: ``stem.proj`` (``patch_embed.proj``), ``stages.i.blocks.j`` (``network.2i.j``),
  ``stages.i.downsample.proj`` (``network.2i-1.proj``), ``token_mixer`` (``attn``), ``head.fc`` (``head``);
  ``checkpoint_filter_fn`` maps them. The official ``offset`` buffers of the Cycle FCs are not state here (the
  offsets follow from the channel count and the stepsize): the filter checks that a checkpoint's offsets are the
  fixed ones and drops them (other offsets would be another model, an error).
* the official ``drop_rate``, ``attn_drop_rate``, ``qk_scale`` and ``skip_lam`` are unused or 1.0 in every released
  model: ``drop_rate`` is the classifier's dropout here (timm's convention) and ``proj_drop_rate`` the dropout after
  the mixer's projection and in the MLPs (0 in the official models); ``skip_lam`` is not an argument.
* ``in_chans`` is honoured (the official stem hard-codes 3 input channels); ``stepsize`` (3) is an argument.
* no printing on construction (the official file prints when mmdet / mmseg are missing); an input of the wrong
  rank, channel count or smaller than 3x3 raises ValueError. The official ``reset_classifier`` (which reads an
  ``embed_dim`` the model does not have) is timm's here.
* the official CycleMLP-T / S / B (README rows added at 5296a2b, "following Swin configuration", checkpoints
  ``CycleMLP_{tiny,small,base}.pth``) have no code in the repository at this commit; they are not registered (the
  B1-B5 model with Swin's depths and widths has 32.4M / 55.4M / 98.2M parameters, not the README's 28M / 50M / 88M,
  so they are another architecture, which the code does not define).
* there is nothing to re-parameterise: ``deploy=True`` is accepted and builds the same model.

Any input size of at least 3x3 (the stem's 7x7 conv with padding 2); there is no size constraint beyond that, since
every layer is a convolution, a per-channel shift or a per-token FC.

timm's model contract (tests/test_models.py): ``device=`` / ``dtype=``; ``reset_classifier`` keeps the model's device
and dtype; forward and features trace with ``torch.fx``: the input check, the blocks and the strided convs are FX leaves
(they dispatch on the input's layout and dtype), so a traced graph runs the same code as the model (identical
outputs). TorchScript does not apply: the blocks hand their layers to the oneDNN dispatch functions of
:mod:`mlpvision.layers.fast_linear`, and TorchScript cannot pass a module as an argument.

MACs: ``mlpvision.profile`` counts convs and linears, the Cycle FCs as the GEMMs they are (B1 at 224: 2.122 G; the
README prints 2.1 G).
"""
import re
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, register_notrace_module, trunc_normal_

from .._checkpoint import CheckpointError, register_checkpoint_filter, unwrap_state_dict
from ..layers import Linear, Mlp, ProjectedMixer
from ..layers.fast_linear import conv_act, linear, tracing
from ._base import PyramidNet, SequentialStage, check_input, one_d_and_bias_params, prenorm_residual_forward
from ._factory import DeviceLike, factory_kwargs
from ._registry import ModelMeta, Weights, build_model, generate_cfgs, register_model

__all__ = ['CycleMLP', 'CycleMLPBlock', 'CycleMixer', 'CycleFC', 'cycle_shift', 'cycle_offsets']

torch.fx.wrap('check_input')  # an FX leaf here too (torch.fx.wrap patches this module's global)

_OFFICIAL = 'ShoufaChen/CycleMLP@4e062a03e875d8dc4fbdd5dec96a918494705d38:cycle_mlp.py'


def _displacement(channel: int, stepsize: int) -> int:
    """Where channel ``channel`` reads along its axis, relative to the output position (official ``gen_offset``)."""
    half = stepsize // 2
    return (channel + half) % stepsize - half


def cycle_offsets(channels: int, stepsize: int, dim: int) -> torch.Tensor:
    """The official ``deform_conv2d`` offset buffer of a Cycle FC, (1, 2 * channels, 1, 1): (dy, dx) per input
    channel, the displacement along H (``dim=1``) or W (``dim=2``) and 0 along the other axis."""
    offsets = torch.zeros(1, 2 * channels, 1, 1)
    for c in range(channels):
        offsets[0, 2 * c + (0 if dim == 1 else 1), 0, 0] = _displacement(c, stepsize)
    return offsets


def cycle_shift(x: torch.Tensor, dim: int, stepsize: int) -> torch.Tensor:
    """Shift each channel of the (B, H, W, C) tokens ``x`` along H (``dim=1``) or W (``dim=2``), zero filled.

    ``out[..., p, c] = x[..., p + d(c), c]`` (0 where ``p + d(c)`` is outside the map), ``d(c) =
    (c + S // 2) % S - S // 2`` with S = ``stepsize``: the channels of one residue modulo S share a displacement,
    so the shift is one strided copy per residue, written into one buffer.

    A captured graph (:func:`mlpvision.layers.fast_linear.tracing`: torch.export, FX, ONNX) gets the same values
    without writes into a buffer: the map zero-padded by S // 2 along ``dim`` once, each residue's window of it
    scattered into a zero tensor (``slice_scatter``). The int8 quantizer needs that form: it observes a GEMM's input
    where the graph defines it, which for the buffer is the ``empty_like`` before the copies fill it.
    """
    n = x.shape[dim]
    if tracing():
        half = stepsize // 2
        pad = (0, 0, half, half) if dim == 2 else (0, 0, 0, 0, half, half)
        padded = F.pad(x, pad)  # B, H, W + 2 half, C (dim 2) or B, H + 2 half, W, C (dim 1)
        out = torch.zeros_like(x)
        for r in range(min(stepsize, x.shape[-1])):
            window = padded.narrow(dim, half + _displacement(r, stepsize), n)[..., r::stepsize]  # B, H, W, C/S
            out = out.slice_scatter(window, dim=3, start=r, step=stepsize)
        return out
    out = torch.empty_like(x, memory_format=torch.contiguous_format)  # B, H, W, C
    for r in range(stepsize):
        d = _displacement(r, stepsize)
        src, dst = x[..., r::stepsize], out[..., r::stepsize]  # B, H, W, C/S (channels r, r + S, ...)
        if abs(d) >= n:
            dst.zero_()
        elif d >= 0:
            dst.narrow(dim, 0, n - d).copy_(src.narrow(dim, d, n - d))
            dst.narrow(dim, n - d, d).zero_()
        else:
            dst.narrow(dim, -d, n + d).copy_(src.narrow(dim, 0, n + d))
            dst.narrow(dim, 0, -d).zero_()
    return out


class CycleFC(nn.Module):
    """Cycle fully-connected layer: :func:`cycle_shift` along one axis, then a channel FC. Input and output
    (B, H, W, C) tokens.

    The weight keeps the official 1x1-kernel shape (out, in, 1, 1), so official checkpoints load without a reshape.
    """

    def __init__(self, in_features: int, out_features: int, dim: int, stepsize: int = 3, bias: bool = True) -> None:
        """
        Args:
            dim: the axis of the (B, H, W, C) tokens the channels are shifted along, 1 (H) or 2 (W).
            stepsize: the period of the displacements over the channels (the paper's stepsize; official kernel
                size (1, S) along W, (S, 1) along H).
        """
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f'dim must be 1 (H) or 2 (W) of (B, H, W, C) tokens, got {dim}.')
        if stepsize < 1:
            raise ValueError(f'stepsize must be >= 1, got {stepsize}.')
        self.in_features, self.out_features = in_features, out_features
        self.dim, self.stepsize = dim, stepsize
        self.weight = nn.Parameter(torch.empty(out_features, in_features, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        trunc_normal_(self.weight, std=.02)  # official cls_init_weights
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f'{self.in_features}, {self.out_features}, dim={self.dim}, stepsize={self.stepsize}, '
                f'bias={self.bias is not None}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = cycle_shift(x, self.dim, self.stepsize)  # B, H, W, C
        return linear(x, self.weight.flatten(1), self.bias)  # B, H, W, out


class CycleMixer(ProjectedMixer):
    """The CycleMLP token mixer (official ``CycleMLP``): Cycle FC along W (h), along H (w) and a channel FC (c),
    fused by split attention, then ``proj``. Input and output (B, H, W, C) tokens.

    The block's residual is added inside ``proj`` (:class:`mlpvision.layers.ProjectedMixer`).
    """

    def __init__(self, dim: int, stepsize: int = 3, qkv_bias: bool = False, proj_drop: float = 0.) -> None:
        super().__init__()
        self.mlp_c = Linear(dim, dim, bias=qkv_bias)  # official qkv_bias=False: no bias
        self.sfc_h = CycleFC(dim, dim, dim=2, stepsize=stepsize)  # official kernel (1, S): along W
        self.sfc_w = CycleFC(dim, dim, dim=1, stepsize=stepsize)  # official kernel (S, 1): along H
        self.reweight = Mlp(dim, dim // 4, dim * 3, act_layer=nn.GELU)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        b, _, _, c = x.shape
        h = self.sfc_h(x)
        w = self.sfc_w(x)
        ch = self.mlp_c(x)
        a = h.mean((1, 2)) + w.mean((1, 2)) + ch.mean((1, 2))  # B, C: the mean of h + w + c
        a = self.reweight(a).reshape(b, c, 3).permute(2, 0, 1).softmax(dim=0)  # 3, B, C
        # the branches' dtype under autocast; a cast only where they differ, so that a graph captured in float32
        # holds no dtype assertion for the int8 program's bf16 tensors to fail
        a = (a if a.dtype == h.dtype else a.to(h.dtype)).unsqueeze(2).unsqueeze(2)  # 3, B, 1, 1, C
        if tracing() or torch.is_grad_enabled() and (h.requires_grad or a.requires_grad):
            return h * a[0] + w * a[1] + ch * a[2]  # out of place: autograd, and a graph with no in-place writes
        # inference: three passes over the map instead of five, no temporaries
        return h.mul_(a[0]).addcmul_(w, a[1]).addcmul_(ch, a[2])


@register_notrace_module  # an FX leaf: its layers dispatch on the input's layout and dtype (oneDNN fast path)
class CycleMLPBlock(nn.Module):
    """Pre-norm residual block: Cycle mixer, then a channel MLP. Input and output (B, C, H, W) maps, computed on
    their (B, H, W, C) view (free when the map is stored channels-last)."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            stepsize: int = 3,
            qkv_bias: bool = False,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = CycleMixer(dim, stepsize, qkv_bias, proj_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # B, C, H, W -> B, H, W, C (a view; contiguous for a channels-last map)
        x = prenorm_residual_forward(self, self.token_mixer, x)
        x = x.permute(0, 3, 1, 2)  # B, C, H, W (channels-last storage)
        return x if self.channels_last else x.contiguous()


@register_notrace_module  # an FX leaf: it dispatches on the input's layout (oneDNN fast path), as the blocks
class ConvEmbed(nn.Module):
    """A strided conv with bias and no norm (official ``PatchEmbedOverlapping`` and ``Downsample``). (B, C, H, W)
    in and out; on a channels-last map in CPU inference it runs as oneDNN's convolution
    (:func:`mlpvision.layers.fast_linear.conv_act`) and its output is channels-last."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_act(x, self.proj)


class CycleStage(SequentialStage):
    """Optional downsampling (conv 3x3 / 2), then Cycle blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, drop_path: Sequence[float],
                 **block_kwargs) -> None:
        super().__init__(
            [CycleMLPBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)],
            ConvEmbed(in_dim, dim, 3, 2, 1) if downsample else None)


class CycleMLP(PyramidNet):
    """CycleMLP: accepts any input of at least 3x3 pixels, square or not."""

    @factory_kwargs
    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 4, 2),
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            mlp_ratio: float | Sequence[float] = 4.,
            stepsize: int = 3,
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
            stepsize: the Cycle FCs' stepsize (official kernel sizes (1, 3) and (3, 1)).
            qkv_bias: bias on the mixer's channel FC (official False).
            drop_rate: classifier dropout (the official argument exists but is unused).
            proj_drop_rate: dropout after the mixer's projection and in the MLPs (0 in the official models).
            drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks (official).
            channels_last: store the feature maps channels-last (the blocks then read them as (B, H, W, C) tokens
                without a copy). Features come out channels-last.
            deploy: accepted for the common interface; CycleMLP has no re-parameterisable part.
            device, dtype: where and in what floating-point dtype to build the parameters and buffers (timm 1.0's
                factory arguments; :func:`mlpvision.models._factory.factory_kwargs`).
        """
        super().__init__()
        n = len(depths)
        if len(embed_dims) != n:
            raise ValueError(f'depths and embed_dims need one value per stage, got {len(depths)} and '
                             f'{len(embed_dims)}.')
        mlp_ratios = tuple(mlp_ratio) if isinstance(mlp_ratio, Sequence) else (mlp_ratio,) * n
        if len(mlp_ratios) != n:
            raise ValueError(f'mlp_ratio needs one value per stage ({n}), got {len(mlp_ratios)}: {mlp_ratios}.')
        self.in_chans = in_chans
        self.channels_last = channels_last
        self.deploy = deploy

        self.stem = ConvEmbed(in_chans, embed_dims[0], 7, 4, 2)
        total = sum(depths)
        # official: block k of all blocks gets drop_path_rate * k / (total - 1)
        dpr = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        self.stages = nn.Sequential(*[
            CycleStage(embed_dims[i - 1] if i else embed_dims[0], embed_dims[i], depths[i], i > 0,
                       dpr[sum(depths[:i]):sum(depths[:i + 1])], mlp_ratio=mlp_ratios[i], stepsize=stepsize,
                       qkv_bias=qkv_bias, proj_drop=proj_drop_rate, channels_last=channels_last)
            for i in range(n)])
        self.feature_info = [dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}') for i in range(n)]
        self.norm = LayerNorm2d(embed_dims[-1], eps=1e-5)  # official nn.LayerNorm over the channels
        self._init_head(embed_dims[-1], num_classes, global_pool, drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official cls_init_weights: trunc_normal(0.02) on linears (zero bias), LayerNorm 1 / 0; the Cycle FCs are
        # initialised so in their constructor; convs keep PyTorch's default
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore  # Python (the error message reads the class); TorchScript calls back into it
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        # at least 3x3: the stem is a 7x7 conv with padding 2
        return check_input(x, self.in_chans, model_name=type(self).__name__, min_size=3)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stem(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # the official recipe (DeiT's main.py -> timm create_optimizer, filter_bias_and_bn) exempts every 1-D
        # parameter and every bias
        return one_d_and_bias_params(self)


def _official_to_ours(k: str) -> str:
    k = re.sub(r'^patch_embed\.proj\.', 'stem.proj.', k)
    # official network = [blocks 0, downsample 0->1, blocks 1, downsample 1->2, ...]
    m = re.match(r'^network\.(\d+)\.(.*)$', k)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx % 2 == 0:
            k = f'stages.{idx // 2}.blocks.' + re.sub(r'^(\d+)\.attn\.', r'\1.token_mixer.', rest)
        else:
            k = f'stages.{idx // 2 + 1}.downsample.{rest}'
    return re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', k)


_OFFSET_KEY = re.compile(r'\.sfc_([hw])\.offset$')


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CycleMLP) -> dict[str, torch.Tensor]:
    """Map an official CycleMLP state_dict or training checkpoint (DeiT's ``main.py`` saves ``{'model': ...}``) or an
    mlpvision state_dict onto ``model``; mlpvision names pass through unchanged.

    The official Cycle FC ``offset`` buffers are checked against the fixed offsets of ``model``'s stepsize and
    dropped; other offsets raise :class:`mlpvision.CheckpointError` (they would make another model).
    """
    state_dict = unwrap_state_dict(state_dict)  # {'model': ...} (or 'model_ema'), DDP's 'module.' prefix
    stepsize = next((m.stepsize for m in model.modules() if isinstance(m, CycleFC)), 3)
    out = {}
    for k, v in state_dict.items():
        m = _OFFSET_KEY.search(k)
        if m:
            expected = cycle_offsets(v.shape[1] // 2, stepsize, dim=2 if m.group(1) == 'h' else 1)
            if v.shape != expected.shape or not torch.equal(v.float().cpu(), expected):
                raise CheckpointError(f'{k}: the Cycle FC offsets are not the fixed CycleMLP offsets of stepsize '
                                      f'{stepsize}; this checkpoint is not a CycleMLP of this configuration.')
            continue
        out[_official_to_ours(k)] = v
    return out


register_checkpoint_filter(CycleMLP, checkpoint_filter_fn)


def _create_cycle_mlp(variant: str, pretrained: bool = False, **kwargs) -> CycleMLP:
    return build_model(
        CycleMLP, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs)


def _cfg(meta: ModelMeta, crop_pct: float, **kwargs) -> dict:
    # official default_cfgs: bicubic, ImageNet mean / std, crop 0.9 (cycle_S / cycle_M: B1-B3) or 0.875 (cycle_L:
    # B4, B5); the model accepts any input size
    return dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), fixed_input_size=False,
        crop_pct=crop_pct, interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv='stem.proj', classifier='head.fc', license='mit', meta=meta, **kwargs)


# params: the official code's exact counts (sum of p.numel() of CycleMLP_B*(), timm 1.0); gmacs: mlpvision.profile of
# this implementation at 224 (no fvcore count of the official code here: fvcore skips torchvision's deform_conv2d);
# paper figures: the official README model zoo (params rounded, "FLOPs" = MACs, ImageNet-1k top-1 at 224)
_PAPER = 'arXiv:2107.10224 (ICLR 2022) / official README model zoo'
# Releases: the README's "model" links, GitHub release assets (direct downloads; no hash published). License: the
# repository's LICENSE (MIT).
_RELEASE = 'https://github.com/ShoufaChen/CycleMLP/releases/download/v0.1/'


def _weights(file: str, top1: float) -> Weights:
    return Weights(source='ShoufaChen/CycleMLP@4e062a03e875d8dc4fbdd5dec96a918494705d38:README.md', host='direct',
                   page=_RELEASE + file, top1=top1, top1_source='official README model zoo', license='mit')


# variant: official constructor, exact params, gmacs, README params / GFLOPs / top-1, official crop_pct
_VARIANTS = {
    'cycle_mlp_b1': ('CycleMLP_B1', 15_155_400, 2.122, '15M', 2.1, 78.9, 0.9),
    'cycle_mlp_b2': ('CycleMLP_B2', 26_802_504, 3.876, '27M', 3.9, 81.6, 0.9),
    'cycle_mlp_b3': ('CycleMLP_B3', 38_385_720, 6.831, '38M', 6.9, 82.4, 0.9),
    'cycle_mlp_b4': ('CycleMLP_B4', 51_796_552, 10.027, '52M', 10.1, 83.0, 0.875),
    'cycle_mlp_b5': ('CycleMLP_B5', 75_747_280, 12.232, '76M', 12.3, 83.2, 0.875),
}
default_cfgs = generate_cfgs({
    f'{name}.in1k': _cfg(ModelMeta(paper=_PAPER, official=f'{_OFFICIAL}:{ctor}', params=params, gmacs=gmacs,
                                   params_paper=params_paper, gmacs_paper=gmacs_paper, top1_paper=top1),
                         crop_pct, weights=_weights(f'{ctor}.pth', top1))
    for name, (ctor, params, gmacs, params_paper, gmacs_paper, top1, crop_pct) in _VARIANTS.items()
})


@register_model
def cycle_mlp_b1(pretrained: bool = False, **kwargs) -> CycleMLP:
    """CycleMLP-B1 (README: 15M params, 2.1 GFLOPs, 78.9% top-1)."""
    model_args = dict(depths=(2, 2, 4, 2), embed_dims=(64, 128, 320, 512), mlp_ratio=4)
    return _create_cycle_mlp('cycle_mlp_b1', pretrained, **dict(model_args, **kwargs))


@register_model
def cycle_mlp_b2(pretrained: bool = False, **kwargs) -> CycleMLP:
    """CycleMLP-B2 (README: 27M params, 3.9 GFLOPs, 81.6% top-1)."""
    model_args = dict(depths=(2, 3, 10, 3), embed_dims=(64, 128, 320, 512), mlp_ratio=4)
    return _create_cycle_mlp('cycle_mlp_b2', pretrained, **dict(model_args, **kwargs))


@register_model
def cycle_mlp_b3(pretrained: bool = False, **kwargs) -> CycleMLP:
    """CycleMLP-B3 (README: 38M params, 6.9 GFLOPs, 82.4% top-1)."""
    model_args = dict(depths=(3, 4, 18, 3), embed_dims=(64, 128, 320, 512), mlp_ratio=(8, 8, 4, 4))
    return _create_cycle_mlp('cycle_mlp_b3', pretrained, **dict(model_args, **kwargs))


@register_model
def cycle_mlp_b4(pretrained: bool = False, **kwargs) -> CycleMLP:
    """CycleMLP-B4 (README: 52M params, 10.1 GFLOPs, 83.0% top-1)."""
    model_args = dict(depths=(3, 8, 27, 3), embed_dims=(64, 128, 320, 512), mlp_ratio=(8, 8, 4, 4))
    return _create_cycle_mlp('cycle_mlp_b4', pretrained, **dict(model_args, **kwargs))


@register_model
def cycle_mlp_b5(pretrained: bool = False, **kwargs) -> CycleMLP:
    """CycleMLP-B5 (README: 76M params, 12.3 GFLOPs, 83.2% top-1)."""
    model_args = dict(depths=(3, 4, 24, 3), embed_dims=(96, 192, 384, 768), mlp_ratio=4)
    return _create_cycle_mlp('cycle_mlp_b5', pretrained, **dict(model_args, **kwargs))
