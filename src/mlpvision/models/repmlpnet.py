"""RepMLPNet: Hierarchical Vision MLP with Re-parameterized Locality.

Paper: Ding et al., CVPR 2022, arXiv:2112.11081 (the README table of the official repository gives the released
variants' params, FLOPs and top-1).
Official code: DingXiaoH/RepMLP@3eff13fa0257af28663880d870f327d665f0a8e2, ``repmlpnet.py`` (model), ``convert.py``
(train -> deploy), ``optimizer.py`` / ``data/build.py`` (training recipe, evaluation transform).

Layout: stem conv 4x4/s4 + BN + ReLU; four stages (downsampling conv 2x2/s2 + BN + ReLU before stages 2-4) of units
``y = x + RepMLPBlock(BN(x))``, ``z = y + FFN(BN(y))`` with FFN = 1x1 conv+BN -> GELU -> 1x1 conv+BN (ratio 4);
final BN -> global average pool -> Linear.

RepMLP Block (input and output NCHW, C channels, partition h x w, S share-sets):

* Global Perceptron: global average pool -> 1x1 fc1 (C -> C/4) -> ReLU -> fc2 -> sigmoid, a per-channel gate that
  multiplies the block output;
* Channel Perceptron fc3: the map is cut into (H/h) x (W/w) partitions and each partition's C channels into C/S
  samples of S consecutive channels; one grouped FC (groups S) maps each channel's h*w pixels to h*w pixels, so
  channel c uses share-set ``c mod S``; then BatchNorm over the S share-sets;
* Local Perceptron: depthwise (groups S) k x k convs + BN(S), k = 1 and 3, on the same samples, zero-padded at the
  partition borders, added to the fc3 output.

The partition is the stage resolution at the native input size ((56, 28, 14, 7) for *224, (64, 32, 16, 8) for *256),
so stage 1 of T224 is a single 3136 x 3136 FC. Inputs that are integer multiples of the native size per axis run
with more partitions per map, every partition through the same fc3 and Local Perceptron (see the deviations for how
the official code differs there); other sizes raise ValueError naming the allowed ones.

Deploy form (``deploy=True`` / ``mlpvision.reparameterize``), the official Locality Injection: each Local
Perceptron conv and its BN are folded, padded to the largest kernel, turned into the equal FC
(:func:`mlpvision.layers.conv_to_fc`, read from the kernel; the official code convolves an identity) and added to the
BN-folded fc3, which gains a bias. As in the official
``locality_injection()``, nothing else is fused: the pre-norms, the FFN conv+BN pairs, the stem, the downsampling
layers and the final BN stay, so the deploy model has slightly *more* parameters (the fc3 biases).

Deviations from the official code:

* key names (``conv_embedding`` -> ``stem``, ``embeds.i`` -> ``stages.{i+1}.downsample``, ``prebn1/2`` ->
  ``norm1/2``, ``repmlp_block`` -> ``repmlp``, ``ffn_block.ffn_fc1/2`` -> ``ffn.fc1/2``, ``head_norm`` -> ``norm``,
  ``head`` -> ``head.fc``); ``checkpoint_filter_fn`` maps the official train-form and deploy-form (``convert.py``
  output) names;
* optional stochastic depth on both residual branches (``drop_path_rate``, linear over depth, default 0: the
  official code has none) and head dropout (``drop_rate``, default 0);
* wrong input sizes raise ValueError instead of failing inside a reshape;
* inputs larger than the native size (P = H/h * W/w > 1 partitions per map): each partition's fc3 + Local Perceptron
  output goes back to that partition and its own channels, the per-partition FC the paper describes. The official
  code computes the same (B, H/h, W/w, C/S) rows of S*h*w values, but its ``partition_affine`` (and the Local
  Perceptron sum, in the same order) reshapes them back as (B*C/S, H/h, W/w, S, h, w): the row of partition p and
  channel group g, number q = p * C/S + g of its image, becomes group q // P of partition q % P, so partitions move
  across channel groups. At the native size (P = 1) the two agree. ``official_partition_order=True`` reproduces the
  official order (tested against the official T224 logits at 448x224 and 224x448, train and deploy form:
  ``tests/fixtures/repmlpnet``); the weights are the same either way. With two identical 224x224 halves stacked to
  448x224 and the parity fixtures' weights, T224's first RepMLP block gives its 224x224 output on each half in our
  order and outputs up to 0.41 away (largest output 0.73) in the official one; the logits move from their 224x224
  values by 6e-8 in ours and 0.052 in the official order (both tested in tests/test_repmlp.py).

Names and arguments: ``embed_dims`` (widths per stage, as Hire-MLP and timm's pyramids name them) is the official
``channels``, which is accepted too (giving both raises TypeError). The model is :class:`RepMLPNet`, its block
:class:`RepMLPNetUnit` and the token mixer :class:`RepMLPNetBlock` (the official names).

timm's model contract (tests/test_models.py): ``device=`` / ``dtype=`` build the model there directly (the meta
device and bf16 / float16 / float64 included); ``reset_classifier`` keeps the model's device and dtype; forward and
features trace with ``torch.fx``: the input checks and the blocks (whose FCs dispatch on the input's device, dtype
and layout) are FX leaves, so a traced graph runs the same code as the model (identical outputs). TorchScript does
not apply: the Local Perceptron convs are attributes named by kernel size (``repconv{k}``, the official keys), which
TorchScript cannot look up by a computed name, and the Global Perceptron hands its activation module to the oneDNN
dispatch of :mod:`mlpvision.layers.fast_linear`, and TorchScript cannot pass a module as an argument.
"""
import re
from collections import OrderedDict

import torch
import torch.fx
import torch.nn as nn
from timm.layers import DropPath, register_notrace_function, register_notrace_module

from .._checkpoint import register_checkpoint_filter
from ..layers import ConvBN, GroupedLinear, PointwiseConv, bn_scale_shift, conv_to_fc, pad_kernel
from ._base import PyramidNet, SequentialStage, check_input, model_name, one_d_and_bias_params, to_2tuple_int
from ._factory import DeviceLike, accepts_aliases, factory_kwargs, variant_args
from ._registry import ModelMeta, Weights, build_model, generate_cfgs, register_model

__all__ = ['RepMLPNet', 'RepMLPNetBlock', 'RepMLPNetUnit']

_OFFICIAL = 'DingXiaoH/RepMLP@3eff13fa0257af28663880d870f327d665f0a8e2:repmlpnet.py'


def conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, act_layer: type[nn.Module] | None = None
            ) -> nn.Sequential:
    """Conv (no bias) + BN (+ act) that stays unfused in the deploy form (official Locality Injection leaves it)."""
    layers = OrderedDict(conv=nn.Conv2d(in_chs, out_chs, kernel_size, stride, bias=False), bn=nn.BatchNorm2d(out_chs))
    if act_layer is not None:
        layers['act'] = act_layer()
    return nn.Sequential(layers)


class GlobalPerceptronGate(nn.Module):
    """Per-channel sigmoid gate from the global average: GAP -> fc1 -> ReLU -> fc2 -> sigmoid. NCHW -> (B, C, 1, 1)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = PointwiseConv(channels, hidden)
        self.act = nn.ReLU()
        self.fc2 = PointwiseConv(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.mean((2, 3))  # B, C: the official 1x1 convs run on this average as a 1x1 map
        x = self.fc2(self.fc1(x, act=self.act))  # B, C
        return torch.sigmoid(x).reshape(b, c, 1, 1)


class RepMLPNetBlock(nn.Module):
    """RepMLP Block of RepMLPNet (Global, Channel and Local Perceptron). Input and output (B, C, H, W), H and W
    multiples of the partition (h, w)."""

    def __init__(
            self,
            channels: int,
            partition: tuple[int, int],
            num_sharesets: int = 1,
            local_kernels: tuple[int, ...] = (1, 3),
            gp_reduction: int = 4,
            deploy: bool = False,
            official_partition_order: bool = False,
    ) -> None:
        super().__init__()
        if channels % num_sharesets:
            raise ValueError(f'channels ({channels}) must be a multiple of num_sharesets ({num_sharesets}).')
        self.channels = channels
        self.h, self.w = partition
        self.num_sharesets = s = num_sharesets
        self.local_kernels = tuple(sorted(local_kernels))
        self.deploy = deploy
        self.official_partition_order = official_partition_order
        self.gp = GlobalPerceptronGate(channels, channels // gp_reduction)
        hw = self.h * self.w
        # one FC per share-set over the h*w pixels of a channel (official: a grouped 1x1 conv on (N, S*h*w, 1, 1))
        self.fc3 = GroupedLinear(s * hw, s * hw, s, bias=deploy)
        self.fc3_bn = nn.Identity() if deploy else nn.BatchNorm2d(s)
        if not deploy:
            for k in self.local_kernels:
                setattr(self, f'repconv{k}', ConvBN(s, s, k, padding=k // 2, groups=s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gp(x)  # B, C, 1, 1
        b, c, height, width = x.shape
        hp, wp = height // self.h, width // self.w
        s, h, w = self.num_sharesets, self.h, self.w
        parts = x.reshape(b, c, hp, h, wp, w).permute(0, 2, 4, 1, 3, 5)  # B, H/h, W/w, C, h, w
        parts = parts.reshape(-1, s, h, w)  # B*(H/h)*(W/w)*C/S, S, h, w: S consecutive channels per sample
        out = self.fc3(parts.reshape(-1, s, h * w)).reshape(-1, s, h, w)  # B*parts*C/S, S, h, w
        out = self.fc3_bn(out)
        if not self.deploy:
            for k in self.local_kernels:
                out = out + getattr(self, f'repconv{k}')(parts)
        if self.official_partition_order:
            # the official partition_affine reads the (B, H/h, W/w, C/S) rows back as (B, C/S, H/h, W/w): row
            # q = p * C/S + g of a sample (partition p, group g) lands at group q // (H/h * W/w), partition
            # q % (H/h * W/w) (the same as ours when there is one partition)
            out = out.reshape(b, c // s, hp, wp, s, h, w).permute(0, 1, 4, 2, 5, 3, 6)  # B, C/S, S, H/h, h, W/w, w
        else:
            out = out.reshape(b, hp, wp, c, h, w).permute(0, 3, 1, 4, 2, 5)  # B, C, H/h, h, W/w, w
        return out.reshape(b, c, height, width) * gate

    def fused_fc3(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the single fc3 equal to fc3 + BN + Local Perceptron (eval mode)."""
        if self.deploy:
            return self.fc3.weight, self.fc3.bias
        hw = self.h * self.w
        scale, shift = bn_scale_shift(self.fc3_bn)  # per share-set; fc3 output channel s*h*w + p has set s
        weight = self.fc3.weight * scale.repeat_interleave(hw)[:, None, None, None]
        bias = shift.repeat_interleave(hw)
        if self.local_kernels:
            size = max(self.local_kernels)
            kernel, kbias = 0, 0
            for k in self.local_kernels:
                kk, kb = getattr(self, f'repconv{k}').fused_kernel_bias()
                kernel, kbias = kernel + pad_kernel(kk, size), kbias + kb
            fc = conv_to_fc(kernel, self.h, self.w)  # S*h*w, h*w
            weight = weight + fc.reshape_as(weight)
            bias = bias + kbias.repeat_interleave(hw)
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deploy:
            return
        weight, bias = self.fused_fc3()
        n = self.fc3.in_channels
        self.fc3 = GroupedLinear(n, n, self.num_sharesets, bias=True, device=weight.device, dtype=weight.dtype)
        self.fc3.weight.copy_(weight)
        self.fc3.bias.copy_(bias)
        self.fc3_bn = nn.Identity()
        for k in self.local_kernels:
            delattr(self, f'repconv{k}')
        self.deploy = True


class FFN(nn.Module):
    """1x1 conv+BN -> GELU -> 1x1 conv+BN (NCHW)."""

    def __init__(self, channels: int, hidden: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = conv_bn(channels, hidden, 1)
        self.act = act_layer()
        self.fc2 = conv_bn(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@register_notrace_module  # an FX leaf: its FCs dispatch on the input's device, dtype and layout (oneDNN fast path)
class RepMLPNetUnit(nn.Module):
    """``y = x + RepMLPBlock(BN(x))``; ``z = y + FFN(BN(y))``. NCHW."""

    def __init__(
            self,
            channels: int,
            partition: tuple[int, int],
            num_sharesets: int,
            local_kernels: tuple[int, ...] = (1, 3),
            gp_reduction: int = 4,
            ffn_ratio: int = 4,
            drop_path: float = 0.,
            deploy: bool = False,
            official_partition_order: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.repmlp = RepMLPNetBlock(channels, partition, num_sharesets, local_kernels, gp_reduction, deploy,
                                     official_partition_order)
        self.norm2 = nn.BatchNorm2d(channels)
        self.ffn = FFN(channels, channels * ffn_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.repmlp(self.norm1(x)))
        return x + self.drop_path(self.ffn(self.norm2(x)))


@register_notrace_function
@torch.jit.ignore
def check_native_multiple(x: torch.Tensor, img_size: tuple[int, int], model_name: str) -> torch.Tensor:
    """Raise ValueError unless H and W of ``x`` are integer multiples of the native ``img_size``, else return ``x``
    (an FX leaf, on the data path as :func:`~mlpvision.models._base.check_input`)."""
    h0, w0 = img_size
    h, w = x.shape[-2:]
    if h % h0 or w % w0:
        raise ValueError(
            f'{model_name} was built for {h0}x{w0} input but got {h}x{w}: its token-mixing FCs are sized for '
            f'partitions equal to the stage maps at {h0}x{w0}, so it accepts only integer multiples of that size per '
            f'axis ({h0}x{w0}, {h0}x{2 * w0}, {2 * h0}x{w0}, {2 * h0}x{2 * w0}, ...). Resize the input, or build the '
            f'model with img_size=({h}, {w}) (weights sized for another input size will not load).')
    return x


torch.fx.wrap('check_input')  # FX leaves here too (torch.fx.wrap patches this module's globals)
torch.fx.wrap('check_native_multiple')


class RepMLPNet(PyramidNet):
    """RepMLPNet, built for a native input size; integer multiples of it per axis also run."""

    @accepts_aliases(channels='embed_dims')
    @factory_kwargs
    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dims: tuple[int, ...] = (64, 128, 256, 512),
            depths: tuple[int, ...] = (2, 2, 6, 2),
            sharesets: tuple[int, ...] = (1, 4, 16, 128),
            local_kernels: tuple[int, ...] = (1, 3),
            gp_reduction: int = 4,
            ffn_ratio: int = 4,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            deploy: bool = False,
            official_partition_order: bool = False,
            device: DeviceLike = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            img_size: the native input size; stage i's partition is img_size / (4 * 2^i), so the fc3 weights depend
                on it. Inputs of integer multiples of it (per axis) run with more partitions.
            sharesets: share-sets S per stage (channel c of a stage uses set c mod S).
            local_kernels: Local Perceptron kernel sizes (official: 1 and 3; () switches it off).
            gp_reduction: Global Perceptron hidden width is C / gp_reduction.
            embed_dims: channels per stage (official ``channels``, also accepted).
            deploy: build the Locality-Injected form (fc3 with bias, no fc3 BN, no Local Perceptron).
            official_partition_order: at inputs larger than ``img_size``, put each fc3 output row where the official
                code puts it (which moves partitions across channel groups; see the module docstring) instead of
                back in its own partition. No effect at ``img_size``; the weights are the same either way.
            device, dtype: where and in what floating-point dtype to build the parameters and buffers (timm 1.0's
                factory arguments; :func:`mlpvision.models._factory.factory_kwargs`).
        """
        super().__init__()
        channels = embed_dims
        if not (len(channels) == len(depths) == len(sharesets) == 4):
            raise ValueError('embed_dims, depths and sharesets need one entry per stage (4).')
        self.img_size = to_2tuple_int(img_size)
        stride = 4 * 2 ** (len(depths) - 1)
        if self.img_size[0] % stride or self.img_size[1] % stride:
            raise ValueError(f'img_size {self.img_size} must be a multiple of {stride} (the total stride).')
        self.in_chans = in_chans
        self.deploy = deploy
        self.stem = conv_bn(in_chans, channels[0], 4, 4, nn.ReLU)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu', dtype=torch.float32).tolist()
        stages, self.feature_info = [], []
        prev = channels[0]
        for i, (c, d, s) in enumerate(zip(channels, depths, sharesets, strict=True)):
            reduction = 4 * 2 ** i
            partition = (self.img_size[0] // reduction, self.img_size[1] // reduction)
            blocks = [RepMLPNetUnit(c, partition, s, local_kernels, gp_reduction, ffn_ratio, dpr[sum(depths[:i]) + j],
                                    deploy, official_partition_order) for j in range(d)]
            stages.append(SequentialStage(blocks, conv_bn(prev, c, 2, 2, nn.ReLU) if i > 0 else None))
            self.feature_info.append(dict(num_chs=c, reduction=reduction, module=f'stages.{i}'))
            prev = c
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(prev)
        self._init_head(prev, num_classes, global_pool, drop_rate)
        # official: no weight initialisation function, PyTorch defaults everywhere

    @torch.jit.ignore  # Python (the error message reads the class); TorchScript calls back into it
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        name = model_name(self)
        x = check_input(x, self.in_chans, model_name=name)
        return check_native_multiple(x, self.img_size, name)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # official optimizer.py (Swin's): no weight decay for every 1-D parameter and every bias
        return one_d_and_bias_params(self)


def _official_to_ours(k: str) -> str:
    k = re.sub(r'^conv_embedding\.', 'stem.', k)
    k = re.sub(r'^embeds\.(\d+)\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.', k)
    k = re.sub(r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.', k)
    k = k.replace('.prebn1.', '.norm1.').replace('.prebn2.', '.norm2.').replace('.repmlp_block.', '.repmlp.')
    k = k.replace('.ffn_block.ffn_fc', '.ffn.fc')
    k = re.sub(r'^head_norm\.', 'norm.', k)
    return re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', k)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: RepMLPNet) -> dict[str, torch.Tensor]:
    """Map an official RepMLPNet state_dict (train form, or the deploy form written by the official ``convert.py``)
    or an mlpvision one onto our key names (either form; the loader folds a train-form checkpoint for
    ``deploy=True``)."""
    return {_official_to_ours(k): v for k, v in state_dict.items()}


register_checkpoint_filter(RepMLPNet, checkpoint_filter_fn)


def _create_repmlpnet(variant: str, pretrained: bool = False, **kwargs) -> RepMLPNet:
    return build_model(
        RepMLPNet, variant, pretrained,
        # 'getter' runs forward_intermediates: a wrong input size meets the model's check, not a reshape inside a stage
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs)


def _cfg(size: int, meta: ModelMeta, **kwargs) -> dict:
    # official evaluation (data/build.py, test.py): Resize(size) + CenterCrop(size), bilinear, ImageNet mean/std
    return dict(
        url='', num_classes=1000, input_size=(3, size, size), pool_size=(size // 32, size // 32),
        fixed_input_size=True, crop_pct=1.0, interpolation='bilinear', mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), first_conv='stem.conv', classifier='head.fc', license='mit', meta=meta, **kwargs)


_PAPER = 'arXiv:2112.11081 (official README table)'
# Releases: the README's "Pre-trained models" table (models reproduced with the repository's training script; its
# accuracies are those of the released files) links each to Google Drive and Baidu (code rmlp); no direct download,
# no hash. The files are bare train-form state_dicts (README FAQ); deploy=True folds them.
_GDRIVE = 'https://drive.google.com/file/d/{}/view?usp=sharing'


def _weights(drive_id: str, top1: float) -> Weights:
    return Weights(source='DingXiaoH/RepMLP@3eff13fa0257af28663880d870f327d665f0a8e2:README.md',
                   host='Google Drive', page=_GDRIVE.format(drive_id) + ' (or Baidu, listed in the same README)',
                   top1=top1, top1_source='official README table (the released files)', license='mit')


default_cfgs = generate_cfgs({
    'repmlpnet_t224.in1k': _cfg(224, ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':create_RepMLPNet_T224', params=38_293_608, gmacs=2.829,
        params_paper='38.3M', gmacs_paper=2.8, top1_paper=76.62, deploy_params=38_331_720),
        weights=_weights('1TgPDD78G-d3h_Y_vNTuqYdSJZHmnju7b', 76.62)),
    'repmlpnet_b224.in1k': _cfg(224, ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':create_RepMLPNet_B224', params=68_242_712, gmacs=6.716,
        params_paper='68.2M', gmacs_paper=6.7, top1_paper=80.32, deploy_params=68_332_664),
        weights=_weights('1GwoUvxGXgzKArlCf0V9kvc9_3GtkGltp', 80.32)),
    'repmlpnet_t256.in1k': _cfg(256, ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':create_RepMLPNet_T256', params=58_687_848, gmacs=4.285,
        params_paper='58.7M', gmacs_paper=4.2, top1_paper=77.44, deploy_params=58_739_400),
        weights=_weights('1mU0L76x20eAKzkHxEM7J2BvEOLWx_mux', 77.44)),
    'repmlpnet_b256.in1k': _cfg(256, ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':create_RepMLPNet_B256', params=96_447_512, gmacs=9.693,
        params_paper='96.5M', gmacs_paper=9.6, top1_paper=81.03, deploy_params=96_568_184),
        weights=_weights('1W-__gXE7903cX-gOSXEGxNBCJjvqFCiJ', 81.03)),
    'repmlpnet_d256.in1k': _cfg(256, ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':create_RepMLPNet_D256', params=86_887_648, gmacs=8.691,
        params_paper='86.9M', gmacs_paper=8.6, top1_paper=80.83, deploy_params=86_985_280),
        weights=_weights('1e5IYac0UHnJq2_lzbuE7J4rahMENX2ha', 80.83)),
    'repmlpnet_l256.in1k': _cfg(256, ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ':create_RepMLPNet_L256', params=117_641_560, gmacs=11.675,
        params_paper='117.7M', gmacs_paper=11.5, top1_paper=81.68, deploy_params=117_820_600),
        weights=_weights('1SHhNJ6pZax9qMLm8DJZtQ_XfmcmddPYU', 81.68)),
})


@register_model
def repmlpnet_t224(pretrained: bool = False, **kwargs) -> RepMLPNet:
    """RepMLPNet-T224 (38.3M params, 2.8 GFLOPs, 76.62% top-1)."""
    model_args = dict(img_size=224, embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), sharesets=(1, 4, 16, 128))
    return _create_repmlpnet('repmlpnet_t224', pretrained, **variant_args(RepMLPNet, model_args, kwargs))


@register_model
def repmlpnet_b224(pretrained: bool = False, **kwargs) -> RepMLPNet:
    """RepMLPNet-B224 (68.2M params, 6.7 GFLOPs, 80.32% top-1)."""
    model_args = dict(img_size=224, embed_dims=(96, 192, 384, 768), depths=(2, 2, 12, 2), sharesets=(1, 4, 32, 128))
    return _create_repmlpnet('repmlpnet_b224', pretrained, **variant_args(RepMLPNet, model_args, kwargs))


@register_model
def repmlpnet_t256(pretrained: bool = False, **kwargs) -> RepMLPNet:
    """RepMLPNet-T256 (58.7M params, 4.2 GFLOPs, 77.44% top-1)."""
    model_args = dict(img_size=256, embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), sharesets=(1, 4, 16, 128))
    return _create_repmlpnet('repmlpnet_t256', pretrained, **variant_args(RepMLPNet, model_args, kwargs))


@register_model
def repmlpnet_b256(pretrained: bool = False, **kwargs) -> RepMLPNet:
    """RepMLPNet-B256 (96.5M params, 9.6 GFLOPs, 81.03% top-1)."""
    model_args = dict(img_size=256, embed_dims=(96, 192, 384, 768), depths=(2, 2, 12, 2), sharesets=(1, 4, 32, 128))
    return _create_repmlpnet('repmlpnet_b256', pretrained, **variant_args(RepMLPNet, model_args, kwargs))


@register_model
def repmlpnet_d256(pretrained: bool = False, **kwargs) -> RepMLPNet:
    """RepMLPNet-D256 (86.9M params, 8.6 GFLOPs, 80.83% top-1)."""
    model_args = dict(img_size=256, embed_dims=(80, 160, 320, 640), depths=(2, 2, 18, 2), sharesets=(1, 4, 16, 128))
    return _create_repmlpnet('repmlpnet_d256', pretrained, **variant_args(RepMLPNet, model_args, kwargs))


@register_model
def repmlpnet_l256(pretrained: bool = False, **kwargs) -> RepMLPNet:
    """RepMLPNet-L256 (117.7M params, 11.5 GFLOPs, 81.68% top-1)."""
    model_args = dict(img_size=256, embed_dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), sharesets=(1, 4, 32, 256))
    return _create_repmlpnet('repmlpnet_l256', pretrained, **variant_args(RepMLPNet, model_args, kwargs))
