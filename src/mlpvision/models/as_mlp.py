"""AS-MLP: An Axial Shifted MLP Architecture for Vision.

Paper: Lian, Yu, Sun, Gao, arXiv:2107.08391 (ICLR 2022). Official code:
svip-lab/AS-MLP@dd1eb4f768f46fdf7c8522fd535ea9e15f664fae, ``models/as_mlp.py`` with ``models/shift_cuda.py`` and the
released configs ``configs/as_{tiny,small,base}_patch4_shift5_224.yaml``.

A Swin-like four-stage pyramid on NCHW maps: a 4x4/4 patch conv + norm; stages of width C, 2C, 4C, 8C, each after the
first opening with a patch merging (2x2 space-to-depth -> norm -> 1x1 conv without bias); a final norm, global average
pool and a Linear head. A block is ``x = x + DP(AS(norm1(x)))`` then ``x = x + DP(MLP(norm2(x)))`` (1x1 convs,
ratio 4). The axial-shift token mixer ``AS`` is ``conv1 -> norm -> GELU``, then, in parallel on that map, a shift of
the channel groups along W -> ``conv2_1`` -> GELU and along H -> ``conv2_2`` -> GELU, summed, then ``norm -> conv3``.
Every norm is ``GroupNorm(1, C)`` (the official ``MyNorm``: it normalises over C, H and W per sample; the block
signature's ``nn.LayerNorm`` default is never used). The shift (:mod:`mlpvision.layers.axial_shift`) splits the
channels into ``shift_size`` groups of ``ceil(C / shift_size)`` and moves group ``g`` by ``shift_size // 2 - g``
positions, zero-filled. Convs keep PyTorch's default init (the official ``_init_weights`` only touches Linear and
LayerNorm); the head gets trunc_normal(0.02). Stochastic depth grows linearly over all blocks from 0 to 0.2 / 0.3 / 0.5
(T / S / B configs).

The ablation knobs of the paper are constructor arguments; the defaults are the released models:
``shift_size`` (5), ``dilation`` (1; group g moves by ``(shift_size // 2 - g) * dilation``), ``pad_mode`` ('zero';
'circular', 'reflect', 'replicate' shift in values of the padded border as :func:`torch.nn.functional.pad` makes
them) and ``connection`` ('parallel'; 'serial' feeds the W branch into the H branch, see :class:`AxialShiftMLP`).

Deviations from the official code:

* the shift is pure PyTorch, no CuPy, no CUDA, exportable (ONNX): slicing by default (copies only, so bit-identical
  to the CuPy kernel's zero-filled shift and to the paper's Algorithm 1 on any device and dtype), or a one-hot
  depthwise conv (``shift_impl='conv'``; exact in float32 on CPU, subject to TF32 / autocast rounding on GPUs);
* no build size: one model runs any input whose sides are multiples of 32 (the official PatchEmbed asserts the
  size it was built for); a wrong size or channel count raises ValueError instead of an assert;
* layout follows timm: ``stem`` (``patch_embed``), ``stages.i`` (``layers.i``) with the patch merging at the start of
  the stage it feeds (``layers.i.downsample`` -> ``stages.{i+1}.downsample``), so stage outputs are the stride
  4/8/16/32 features; ``head.fc`` (``head``); ``checkpoint_filter_fn`` maps the official names. The official mixer
  class ``AxialShift`` is :class:`AxialShiftMLP` here (its key prefix ``axial_shift`` is kept), and
  :class:`mlpvision.layers.axial_shift.AxialShift` is the shift itself (official ``Shift``);
* ``drop_rate`` is applied where the official code applies it (after the stem and inside the block MLPs), not
  before the head;
* the feature maps are stored channels-last after the stem (``channels_last=True``; same values): the 1x1 convs then
  run in CPU inference as oneDNN convolutions with the GELU or the residual sum fused
  (:class:`mlpvision.layers.PointwiseConv`, :class:`mlpvision.layers.Mlp`; speed in docs/benchmarks.md);
  ``channels_last=False`` keeps NCHW storage and plain convs;
* there is nothing to re-parameterise: ``deploy=True`` is accepted and builds the same model.

timm's model contract (tests/test_models.py): ``device=`` / ``dtype=`` build the model there directly (the meta
device and bf16 / float16 / float64 included); ``reset_classifier`` keeps the model's device and dtype; forward and
features trace with ``torch.fx``: the input check, the blocks and the patch mergings are FX leaves (timm's
``register_notrace_function`` / ``register_notrace_module``), since they branch on the input's shape and memory
layout, so a traced graph runs the same code as the model (identical outputs) and stage outputs can be extracted.
TorchScript does not apply: the blocks hand their conv modules to the oneDNN dispatch functions of
:mod:`mlpvision.layers.fast_linear`, and TorchScript cannot pass a module as an argument.
"""
import re

import torch
import torch.fx
import torch.nn as nn
from timm.layers import DropPath, GroupNorm1, register_notrace_module, trunc_normal_

from .._checkpoint import register_checkpoint_filter
from ..layers import Mlp, PointwiseConv, ProjectedMixer
from ..layers.axial_shift import DEFAULT_IMPL, PAD_MODES, AxialShift
from ._base import PyramidNet, SequentialStage, check_input, one_d_and_bias_params, prenorm_residual_forward
from ._factory import DeviceLike, factory_kwargs
from ._registry import ModelMeta, Weights, build_model, generate_cfgs, register_model

torch.fx.wrap('check_input')  # an FX leaf here too (torch.fx.wrap patches this module's global)

__all__ = ['ASMLP', 'AxialShiftMLP', 'AxialShiftedBlock']

_OFFICIAL = 'svip-lab/AS-MLP@dd1eb4f768f46fdf7c8522fd535ea9e15f664fae:models/as_mlp.py'
CONNECTIONS = ('parallel', 'serial')


class AxialShiftMLP(ProjectedMixer):
    """The axial-shift token mixer (official ``AxialShift``). Input and output (B, C, H, W).

    ``connection='parallel'`` (released)::

        u = GELU(norm1(conv1(x)))
        y = GELU(conv2_1(shift_W(u))) + GELU(conv2_2(shift_H(u)))
        out = conv3(norm2(y))

    ``connection='serial'`` (the paper's ablation) chains the two branches, W first, with nothing summed::

        y = GELU(conv2_2(shift_H(GELU(conv2_1(shift_W(u))))))

    The block's residual is added inside ``conv3`` (:class:`mlpvision.layers.ProjectedMixer`).
    """

    proj_name = 'conv3'

    def __init__(
            self,
            dim: int,
            shift_size: int = 5,
            as_bias: bool = True,
            dilation: int = 1,
            pad_mode: str = 'zero',
            connection: str = 'parallel',
            shift_impl: str = DEFAULT_IMPL,
            norm_layer: type[nn.Module] = GroupNorm1,
            act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if connection not in CONNECTIONS:
            raise ValueError(f'connection must be one of {CONNECTIONS}, got {connection!r}.')
        self.connection = connection
        self.conv1 = PointwiseConv(dim, dim, bias=as_bias)
        self.norm1 = norm_layer(dim)
        self.act = act_layer()
        self.shift_w = AxialShift(dim, shift_size, dim=3, dilation=dilation, pad_mode=pad_mode, impl=shift_impl)
        self.shift_h = AxialShift(dim, shift_size, dim=2, dilation=dilation, pad_mode=pad_mode, impl=shift_impl)
        self.conv2_1 = PointwiseConv(dim, dim, bias=as_bias)  # after the shift along W
        self.conv2_2 = PointwiseConv(dim, dim, bias=as_bias)  # after the shift along H
        self.norm2 = norm_layer(dim)
        self.conv3 = PointwiseConv(dim, dim, bias=as_bias)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """``norm2(y)``, the input of ``conv3``."""
        u = self.act(self.norm1(self.conv1(x)))
        if self.connection == 'parallel':
            y = self.conv2_1(self.shift_w(u), act=self.act) + self.conv2_2(self.shift_h(u), act=self.act)
        else:
            y = self.conv2_2(self.shift_h(self.conv2_1(self.shift_w(u), act=self.act)), act=self.act)
        return self.norm2(y)


@register_notrace_module  # an FX leaf: its convs dispatch on the map's layout (oneDNN fast path), see ASMLP
class AxialShiftedBlock(nn.Module):
    """Pre-norm residual block: axial-shift mixer, then a 1x1-conv MLP. Input and output (B, C, H, W)."""

    def __init__(
            self,
            dim: int,
            shift_size: int = 5,
            mlp_ratio: float = 4.,
            as_bias: bool = True,
            drop: float = 0.,
            drop_path: float = 0.,
            dilation: int = 1,
            pad_mode: str = 'zero',
            connection: str = 'parallel',
            shift_impl: str = DEFAULT_IMPL,
            norm_layer: type[nn.Module] = GroupNorm1,
            act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.axial_shift = AxialShiftMLP(dim, shift_size, as_bias, dilation, pad_mode, connection, shift_impl,
                                         norm_layer, act_layer)
        self.norm2 = norm_layer(dim)
        # official Mlp: fc1 -> act -> drop -> fc2 -> drop, as 1x1 convs
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prenorm_residual_forward(self, self.axial_shift, x)


@register_notrace_module  # an FX leaf: checks and reshapes by the input's shape and memory layout
class PatchMerging(nn.Module):
    """2x2 space-to-depth -> norm(4C) -> 1x1 conv 4C -> out_dim without bias. (B, C, H, W) -> (B, out, H/2, W/2)."""

    def __init__(self, dim: int, out_dim: int, norm_layer: type[nn.Module] = GroupNorm1) -> None:
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = PointwiseConv(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f'PatchMerging needs an even feature map, got {h}x{w}: the input sides must be multiples '
                             f'of 32 for AS-MLP (resize or pad the input).')
        # the official channel order is [x(0::2, 0::2), x(1::2, 0::2), x(0::2, 1::2), x(1::2, 1::2)]: the column
        # parity is the outer index, then the row parity, then the channel
        if x.is_contiguous(memory_format=torch.channels_last):  # keep the layout: one copy, channels-last out
            x = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c)  # B, H/2, dy, W/2, dx, C
            x = x.permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)  # B, H/2, W/2, dx*dy*C
            x = x.permute(0, 3, 1, 2)  # B, 4C, H/2, W/2 (channels-last)
        else:
            x = x.reshape(b, c, h // 2, 2, w // 2, 2)  # B, C, H/2, dy, W/2, dx
            x = x.permute(0, 5, 3, 1, 2, 4).reshape(b, 4 * c, h // 2, w // 2)  # B, dx*dy*C, H/2, W/2
        return self.reduction(self.norm(x))


class ASMLPStage(SequentialStage):
    """Optional patch merging (every stage but the first), then ``depth`` blocks."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            downsample: bool,
            drop_path: list[float],
            norm_layer: type[nn.Module] = GroupNorm1,
            **block_kwargs,
    ) -> None:
        super().__init__(
            [AxialShiftedBlock(out_dim, drop_path=drop_path[i], norm_layer=norm_layer, **block_kwargs)
             for i in range(depth)],
            PatchMerging(dim, out_dim, norm_layer) if downsample else None)


class Stem(nn.Module):
    """Non-overlapping patch conv + norm (official ``PatchEmbed`` without its size assert)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, norm_layer: type[nn.Module] | None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))  # B, C, H/p, W/p


class ASMLP(PyramidNet):
    """AS-MLP: fully convolutional, any input whose sides are multiples of ``patch_size * 2**(num_stages - 1)``."""

    @factory_kwargs
    def __init__(
            self,
            num_classes: int = 1000,
            in_chans: int = 3,
            patch_size: int = 4,
            embed_dim: int = 96,
            depths: tuple[int, ...] = (2, 2, 6, 2),
            shift_size: int = 5,
            mlp_ratio: float = 4.,
            as_bias: bool = True,
            dilation: int = 1,
            pad_mode: str = 'zero',
            connection: str = 'parallel',
            shift_impl: str = DEFAULT_IMPL,
            patch_norm: bool = True,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: type[nn.Module] = GroupNorm1,
            act_layer: type[nn.Module] = nn.GELU,
            channels_last: bool = True,
            deploy: bool = False,
            device: DeviceLike = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            embed_dim: width of the first stage; stage i has ``embed_dim * 2**i`` channels.
            depths: blocks per stage.
            shift_size: channel groups of the axial shift (odd); group g moves by ``(shift_size // 2 - g) * dilation``.
            as_bias: bias on the mixer's 1x1 convs (official ``as_bias``).
            dilation: the paper's dilated shift (1 in the released models).
            pad_mode: what the shift brings in at the border, one of 'zero' (released), 'circular', 'reflect',
                'replicate'.
            connection: 'parallel' (released: the W and H branches see the same map and are summed) or 'serial'.
            shift_impl: 'slice' or 'conv' (one-hot depthwise conv); identical outputs.
            patch_norm: norm after the patch conv (official default True).
            drop_rate: dropout after the stem and inside the block MLPs (the official placement).
            drop_path_rate: stochastic depth of the last block; it grows linearly from 0 over all blocks.
            channels_last: store the feature maps channels-last after the stem (same values; the 1x1 convs then
                run as oneDNN convolutions fused with their activation or residual sum in CPU inference,
                :class:`mlpvision.layers.PointwiseConv`). Features come out channels-last.
            deploy: accepted for the common interface; AS-MLP has no re-parameterisable part.
            device, dtype: where and in what floating-point dtype to build the parameters and buffers (timm 1.0's
                factory arguments; :func:`mlpvision.models._factory.factory_kwargs`).
        """
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f'pad_mode must be one of {PAD_MODES}, got {pad_mode!r}.')
        if connection not in CONNECTIONS:
            raise ValueError(f'connection must be one of {CONNECTIONS}, got {connection!r}.')
        self.in_chans = in_chans
        self.channels_last = channels_last
        self.patch_size = patch_size
        num_stages = len(depths)
        self.size_multiple = patch_size * 2 ** (num_stages - 1)
        dims = [embed_dim * 2 ** i for i in range(num_stages)]

        self.stem = Stem(in_chans, embed_dim, patch_size, norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(drop_rate)  # official name; it is a plain dropout (AS-MLP has no position embedding)
        # the official float32 linspace, on the CPU: readable under a meta device and the same rates under any dtype
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu', dtype=torch.float32).split(list(depths))
        block_kwargs = dict(shift_size=shift_size, mlp_ratio=mlp_ratio, as_bias=as_bias, drop=drop_rate,
                            dilation=dilation, pad_mode=pad_mode, connection=connection, shift_impl=shift_impl,
                            act_layer=act_layer)
        self.stages = nn.Sequential(*[
            ASMLPStage(dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0, drop_path=dpr[i].tolist(),
                       norm_layer=norm_layer, **block_kwargs)
            for i in range(num_stages)])
        self.feature_info = [dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}')
                             for i in range(num_stages)]
        self.norm = norm_layer(dims[-1])
        self._init_head(dims[-1], num_classes, global_pool, drop_rate=0.)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official: only Linear layers (the head) are re-initialised; convs and norms keep PyTorch's defaults
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # the Swin-based official optimizer skips every 1-D parameter and every '.bias' (AS_MLP defines no list)
        return one_d_and_bias_params(self)

    @torch.jit.ignore  # Python (the error message reads the class); TorchScript calls back into it
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        return check_input(x, self.in_chans, multiple=self.size_multiple, model_name=type(self).__name__)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        if self.channels_last:  # channels-last from here on, the stem conv included (see PointwiseConv)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.pos_drop(self.stem(x))


def _official_to_ours(k: str) -> str:
    k = re.sub(r'^patch_embed\.', 'stem.', k)
    k = re.sub(r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.', k)
    k = re.sub(r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.', k)
    k = re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', k)
    return k


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ASMLP) -> dict[str, torch.Tensor]:
    """Map an official AS-MLP state_dict (``{'model': sd}`` as its Swin-based ``main.py`` saves) onto ``model``.

    mlpvision's own state_dicts pass through unchanged.
    """
    state_dict = state_dict.get('model', state_dict)
    return {_official_to_ours(k): v for k, v in state_dict.items()}


register_checkpoint_filter(ASMLP, checkpoint_filter_fn)


def _create_as_mlp(variant: str, pretrained: bool = False, **kwargs) -> ASMLP:
    return build_model(
        ASMLP, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs)


def _cfg(meta: ModelMeta, **kwargs) -> dict:
    # official data/build.py: eval resizes to int(256 / 224 * 224) and centre-crops 224, bicubic, ImageNet mean/std
    return dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), fixed_input_size=False,
        crop_pct=0.875, interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv='stem.proj', classifier='head.fc', license='mit', meta=meta, **kwargs)


# params: exact official counts (shared reference official.md §2); gmacs: official code under fvcore (official.json);
# paper figures: the official README model zoo (params rounded, "FLOPs" = MACs, top-1 on ImageNet-1k at 224)
_PAPER = 'arXiv:2107.08391 (ICLR 2022), ImageNet-1k results as in the official README'
# Releases: the README model zoo links each variant to a OneDrive share page (no direct download, no hash).
_ZOO = 'https://shanghaitecheducn-my.sharepoint.com/:u:/g/personal/liandz_shanghaitech_edu_cn/'


def _weights(share: str, top1: float) -> Weights:
    return Weights(source='svip-lab/AS-MLP@dd1eb4f768f46fdf7c8522fd535ea9e15f664fae:README.md', host='OneDrive',
                   page=_ZOO + share, top1=top1, top1_source='official README model zoo', license='mit')


default_cfgs = generate_cfgs({
    'as_mlp_tiny.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ' (configs/as_tiny_patch4_shift5_224.yaml)', params=28_282_696,
        gmacs=4.383, params_paper='28M', gmacs_paper=4.4, top1_paper=81.3),
        weights=_weights('Eb2lPJI2BshEjJxf9CmRkCUBnB63Wj25-FVVc6zJvgRg6w?e=dEQd5q', 81.3)),
    'as_mlp_small.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ' (configs/as_small_patch4_shift5_224.yaml)', params=49_594_696,
        gmacs=8.563, params_paper='50M', gmacs_paper=8.5, top1_paper=83.1),
        weights=_weights('EVIbw8xHKk1Aq9MBQL-cRbIBVJA_hJE-HEVNf_GVgkw2iQ?e=QIIp2e', 83.1)),
    'as_mlp_base.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ' (configs/as_base_patch4_shift5_224.yaml)', params=87_752_808,
        gmacs=15.194, params_paper='88M', gmacs_paper=15.2, top1_paper=83.3),
        weights=_weights('EZVBFW_LKctLqgrnnINy88wBRtGFava9wp_65emsvVW2KQ?e=clNjuw', 83.3)),
})


@register_model
def as_mlp_tiny(pretrained: bool = False, **kwargs) -> ASMLP:
    """AS-MLP-T (28M params, 4.4 GMACs, 81.3% top-1; official README)."""
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), shift_size=5, drop_path_rate=0.2)
    return _create_as_mlp('as_mlp_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def as_mlp_small(pretrained: bool = False, **kwargs) -> ASMLP:
    """AS-MLP-S (50M params, 8.5 GMACs, 83.1% top-1; official README)."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), shift_size=5, drop_path_rate=0.3)
    return _create_as_mlp('as_mlp_small', pretrained, **dict(model_args, **kwargs))


@register_model
def as_mlp_base(pretrained: bool = False, **kwargs) -> ASMLP:
    """AS-MLP-B (88M params, 15.2 GMACs, 83.3% top-1; official README)."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), shift_size=5, drop_path_rate=0.5)
    return _create_as_mlp('as_mlp_base', pretrained, **dict(model_args, **kwargs))
