"""RepMLP: Re-parameterizing Convolutions into Fully-connected Layers for Image Recognition (the first RepMLP paper).

Paper: Ding et al., arXiv:2105.01883 (v1/v2): §3 (the RepMLP block), §4.1 + Fig. 3 (pure-MLP CIFAR-10 model and its
ablations), §4.2 + Tables 2-4 (RepMLP-ResNet-50), Appendix A + Table 7 (Light Block).
Official code: DingXiaoH/RepMLP@4b3e347422797747ca98e8c2b0b06a3d38c68244 (``repmlp.py``, ``repmlp_blocks.py``,
``repmlp_resnet.py``, ``convert.py``; deleted from the repository's HEAD by 82c0ea6, so read at that parent commit).

RepMLP block (input (B, C, H, W), partitions h x w, output O channels):

* Global Perceptron (only when H != h or W != w): average pool over each partition -> BN(C) -> flatten to
  C * (H/h) * (W/w) -> fc1 -> ReLU -> fc2 -> reshaped and *added* to every pixel of its partition;
* Partition Perceptron fc3: a grouped FC (g groups) from C*h*w to O*h*w per partition (a grouped 1x1 conv on
  (B * partitions, C*h*w, 1, 1)), orthogonal init, no bias, then BatchNorm1d(O*h*w), one channel per output position;
* Local Perceptron: k x k convs (groups g) + BN(O), k = 1, 3, 5 (1, 3, 5, 7 at 320 input), on each partition separately
  (zero padding at the partition borders), added to the fc3 output.

Deploy form (``deploy=True`` / ``mlpvision.reparameterize``, as the official ``repmlp_model_convert``): every conv and
its BN are folded, the Local Perceptron kernels padded to the largest one, turned into the equal FC
(:func:`mlpvision.layers.conv_to_fc`: the official code convolves an identity, the same matrix is read directly from
the kernel here) and added to the BN-folded fc3, which gains a bias; the BN after the average pool is folded into fc1;
every ResNet conv+BN is fused into a biased conv too.

RepMLP-ResNet-50: torchvision-style ResNet-50 (stride on the 3x3 conv) whose stride-1 bottlenecks in c3 and c4 are
replaced by RepMLP blocks: the Light Block (1x1 conv+BN+ReLU to out/8 -> RepMLP -> ReLU -> 1x1 conv+BN, paper Appendix
A) or the RepMLP Bottleneck (1x1 to out/4 -> 3x3 to out/4/r -> RepMLP -> ReLU -> 3x3 back -> 1x1, r = 2 in c3 and 4 in
c4, paper Fig. 4). The official factories build the Light model with g = 4 (``create_RepMLPRes50_Light_224``) and the
Bottleneck model with g = 8 (the paper's 78.55% model); the paper's Light Block uses g = 8, and its 320-input g8/16 and
g4/8 models (h = w = 10, K = 1, 3, 5, 7) need groups per stage, which ``fc3_groups`` accepts here (the official
constructor takes one value for both stages).

The pure-MLP CIFAR-10 model (not in the official code), checked against the paper's §4.1 ("Pure MLP and Ablation
Studies") and the caption of its Fig. 3, read in the arXiv v1 text:

* §4.1: "We interleave RepMLP and regular FC (1 x 1 conv) to construct three stages and downsample by max pooling,
  as shown in Fig. 3 [...] the channels of the three stages are 16,32,64 for the pure MLP and 32,64,128 for the
  ConvNet"; "the pure MLP model reaches 91.11% accuracy with only 52.8M FLOPs" (Table 1, which also has the Wide
  ConvNet at 91.99%, 65.1M FLOPs, 0.50M parameters).
* Fig. 3's caption: "C = 16 is the number of output channels (except the last layer) [...] FC(32,16) [...] projects
  16 channels into 32 channels; all the RepMLPs are configured with g = 2, h = w = 8 [...] A BN follows every conv
  and a ReLU follows every RepMLP or conv-BN sequence."

Built here, in agreement with each of those statements: a stem FC(3 -> 16) + BN + ReLU; three stages at 32, 16 and
8 pixels with C = 16, 32, 64, each ``[RepMLP, FC, RepMLP, FC]`` (a ReLU after each RepMLP, BN + ReLU after each
FC), the last FC of a stage widening to the next stage's C; 2x2 max pooling before stages 2 and 3; global average
pool and a linear classifier. What the text does not say, because it is drawn only in Fig. 3 (not read: the figure
is an image), is the stem, the number of RepMLP-FC pairs per stage and the head; these are the reading whose
deploy-form MACs are 52,806,272 (the paper's 52.8M) and whose ConvNet counterpart (RepMLP -> 3x3 conv, channels
32/64/128) has the paper's 65.1M (its 0.50M parameters come out 0.44M here). Unstated and chosen: Local Perceptron
K = 1, 3, 5, 7 (Fig. 1's caption: "We assume h, w > 7 so that the Local Perceptron has conv branches of kernel size
1, 3, 5, 7"; here h = w = 8), fc1/fc2 reduction 1 (the official default), CIFAR-10 mean/std normalisation. Stage 3
is one 8x8 partition, so it has no Global Perceptron. Ablations (§4.1 B-D): ``local_kernels=()`` ("w/o Local": "no
Local Perceptron"), ``global_perceptron=False`` ("w/o Global" "removes FC1 and FC2 and directly feed[s] the
partition map into Local Perceptron and Partition Perceptron"; the pool's BN, which feeds only FC1, goes with them),
``fc3_kernel=9`` ("FC3 as conv9" "replaces FC3 with a conv (K = 9 and p = 4 [...]) followed by BN": here with fc3's
groups, on each partition; the Local Perceptron folds into it at deploy). §4.1's E, "RepMLP as conv9", is not
built. The training setting of §4.1 (pad to 40x40, random crop, flip, batch 128, "cosine learning rate annealing
from 0.2 to 0 in 100 epochs") is ``recipes/repmlp_cifar10.yaml``.

Deviations from the official code:

* key names (``stage0`` -> ``stem``, ``stage{i}.{j}`` -> ``stages.{i-1}.blocks.{j}``, ``light_``/``btnk_`` prefixes
  dropped, ``avg.bn`` -> ``gp.norm``, ``fc1_fc2.fc1/fc2`` -> ``gp.fc1/fc2``, ``linear`` -> ``head.fc``);
  ``checkpoint_filter_fn`` maps the official train-form and deploy-form (``convert.py`` output) names;
* per-stage ``fc3_groups`` and ``bottleneck_r`` and a configurable set of RepMLP stages (paper Tables 3 and 4);
* optional stochastic depth on the residual branches (``drop_path_rate``, default 0: the official model has none) and
  head dropout (``drop_rate``);
* a wrong input size raises ValueError instead of failing inside a reshape.

How it runs (same values up to float rounding): on a channels-last map the RepMLP block writes its output
channels-last (the same one copy as the official NCHW rearrangement), and in CPU inference of the deploy form each
block's last conv adds the shortcut and applies the ReLU in the same oneDNN convolution
(:func:`mlpvision.layers.fast_linear.conv_add_act`).

``no_weight_decay()`` is empty: the official repository has no training code for these models, and the paper's
recipe (§4.2: SGD, weight decay 1e-4) names no exclusions.

Names and arguments: the RepMLP block (the official ``RepMLP`` class) is :class:`RepMLPBlock` here, as RepMLPNet's
is :class:`~mlpvision.models.repmlpnet.RepMLPNetBlock`, so that no block carries the family's name (``RepMLP`` stays an
alias); the models are :class:`RepMLPResNet` and :class:`RepMLPCifarNet`. Blocks per stage are ``depths`` and widths
per stage ``embed_dims`` in every family; the former ``layers=`` (and the official ``num_blocks=``) of RepMLPResNet and
the former ``channels=`` of RepMLPCifarNet are accepted too (giving both raises TypeError).

timm's model contract (tests/test_models.py): ``device=`` / ``dtype=`` build the model there directly (the meta
device and bf16 / float16 / float64 included; fc3's orthogonal init is computed in float32 for reduced precision);
``reset_classifier`` keeps the model's device and dtype; forward and features trace with ``torch.fx``: the input
check, the conv-BN layers and the RepMLP blocks (their FCs dispatch on the input's device and dtype) are FX leaves,
so a traced graph runs the same code as the model (identical outputs). TorchScript does not apply: the Local
Perceptron convs are attributes named by kernel size (``repconv{k}``, the official keys), which TorchScript cannot look
up by a computed name, and the conv-BN layers hand their conv modules to the oneDNN dispatch of
:mod:`mlpvision.layers.fast_linear`, and TorchScript cannot pass a module as an argument.
"""
import re
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module

from .._checkpoint import register_checkpoint_filter
from ..layers import ConvBN, GroupedLinear, bn_scale_shift, conv_to_fc, fold_affine_into_next_linear, pad_kernel
from ..layers.fast_linear import conv_add_act, tracing
from ._base import PyramidNet, SequentialStage, check_input, model_name, to_2tuple_int
from ._factory import DeviceLike, accepts_aliases, factory_kwargs, variant_args
from ._registry import ModelMeta, Weights, build_model, generate_cfgs, register_model

__all__ = ['RepMLPBlock', 'RepMLPResNet', 'RepMLPCifarNet', 'RepMLPLightBlock', 'RepMLPBottleneckBlock']

torch.fx.wrap('check_input')  # an FX leaf here too (torch.fx.wrap patches this module's global)

_OFFICIAL = 'DingXiaoH/RepMLP@4b3e347422797747ca98e8c2b0b06a3d38c68244'


@torch.no_grad()
def orthogonal_(weight: torch.Tensor) -> torch.Tensor:
    """``torch.nn.init.orthogonal_`` (same random draw, same matrix up to float rounding), computed by Cholesky QR.

    PyTorch orthogonalises the Gaussian matrix with a Householder QR and fixes the signs so that R has a positive
    diagonal; that Q is also ``G R^-1`` with R the Cholesky factor of ``G^T G``, which BLAS-3 products compute several
    times faster: it matters here, where a RepMLP-Res50 holds several 6272 x 1568 fc3 kernels.
    """
    if weight.device.type == 'meta':  # shapes only (e.g. counting parameters without memory)
        return weight
    rows = weight.shape[0]
    cols = weight.numel() // rows
    # reduced precision (dtype=torch.bfloat16 / float16 at construction): drawn and orthogonalised in float32, as
    # torch.nn.init.orthogonal_ would need too (no Cholesky / QR in half precision), then rounded
    work = torch.float32 if weight.dtype in (torch.bfloat16, torch.float16) else weight.dtype
    g = weight.new_empty(rows, cols, dtype=work).normal_(0, 1)
    if rows < cols:
        g = g.t()
    # a Gaussian matrix at least twice as tall as wide has a condition number of about 6 or less, so its Gram matrix
    # is safe in float32; a nearly square one is ill-conditioned
    if g.shape[0] < 2 * g.shape[1]:
        g = g.double()
    r, info = torch.linalg.cholesky_ex(g.t() @ g, upper=True)
    if info.item() != 0:  # rank-deficient draw (practically never): PyTorch's own routine
        return nn.init.orthogonal_(weight)
    q = torch.linalg.solve_triangular(r, g, upper=True, left=False)  # G R^-1: orthonormal columns
    if rows < cols:
        q = q.t()
    return weight.copy_(q.reshape(weight.shape))


class GlobalPerceptron(nn.Module):
    """Average pool over each h x w partition -> BN -> flatten (C * H/h * W/w) -> fc1 -> ReLU -> fc2.

    Input (B, C, H, W); output (B, C, H/h, 1, W/w, 1), to be added to the partitioned map.
    """

    def __init__(self, channels: int, parts: tuple[int, int], partition: tuple[int, int], reduction: int = 1,
                 deploy: bool = False) -> None:
        super().__init__()
        self.channels, self.parts, self.partition = channels, parts, partition
        dim = channels * parts[0] * parts[1]
        self.norm = nn.Identity() if deploy else nn.BatchNorm2d(channels)
        self.fc1 = nn.Linear(dim, dim // reduction)
        self.fc2 = nn.Linear(dim // reduction, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.norm(F.avg_pool2d(x, self.partition))  # B, C, H/h, W/w
        v = self.fc2(torch.relu(self.fc1(v.flatten(1))))  # B, C*(H/h)*(W/w), channel-major
        return v.reshape(-1, self.channels, self.parts[0], 1, self.parts[1], 1)  # B, C, H/h, 1, W/w, 1

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN after the pool into fc1 (the flattened input repeats each channel H/h * W/w times)."""
        if not isinstance(self.norm, nn.BatchNorm2d):
            return
        scale, shift = bn_scale_shift(self.norm)
        n = self.parts[0] * self.parts[1]
        w, b = fold_affine_into_next_linear(self.fc1.weight, self.fc1.bias, scale.repeat_interleave(n),
                                            shift.repeat_interleave(n))
        self.fc1.weight.copy_(w)
        self.fc1.bias.copy_(b)
        self.norm = nn.Identity()


@register_notrace_module  # an FX leaf: fc3 dispatches on the input's device and dtype (oneDNN fast path)
class RepMLPBlock(nn.Module):
    """The RepMLP block of the first paper (official ``RepMLP``): Global, Partition and Local Perceptron.

    Input (B, C, H, W) at the size it was built for (the Global Perceptron's FCs are sized by the number of
    partitions); output (B, O, H, W).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            size: tuple[int, int],
            partition: tuple[int, int],
            local_kernels: Sequence[int] = (1, 3, 5),
            groups: int = 1,
            gp_reduction: int = 1,
            global_perceptron: bool = True,
            fc3_kernel: int | None = None,
            deploy: bool = False,
    ) -> None:
        """
        Args:
            size: the input (H, W); multiples of ``partition``.
            partition: (h, w) of a partition.
            local_kernels: Local Perceptron kernel sizes (odd, at most h and w); () switches it off.
            groups: groups of fc3 and of the Local Perceptron convs.
            gp_reduction: fc1 output (and fc2 input) is C * partitions / gp_reduction.
            global_perceptron: False removes fc1 and fc2 (paper ablation "w/o Global").
            fc3_kernel: replace the fc3 FC by a k x k conv + BN(O) on each partition (paper ablation "FC3 as conv9").
            deploy: build the converted form (fc3 with bias, no BNs, no Local Perceptron).
        """
        super().__init__()
        (height, width), (h, w) = size, partition
        if height % h or width % w:
            raise ValueError(f'RepMLP input size {size} must be a multiple of the partition size {partition}.')
        if in_chs % groups or out_chs % groups:
            raise ValueError(f'in_chs ({in_chs}) and out_chs ({out_chs}) must be multiples of groups ({groups}).')
        if any(k % 2 == 0 or k > min(h, w) for k in local_kernels):
            raise ValueError(f'local_kernels {tuple(local_kernels)} must be odd and at most the partition {partition}.')
        self.in_chs, self.out_chs, self.groups = in_chs, out_chs, groups
        self.h, self.w = h, w
        self.parts = (height // h, width // w)
        self.local_kernels = tuple(sorted(local_kernels))
        self.fc3_kernel = fc3_kernel
        self.deploy = deploy
        # official: no Global Perceptron when one partition covers the whole map
        use_gp = global_perceptron and self.parts != (1, 1)
        self.gp = GlobalPerceptron(in_chs, self.parts, partition, gp_reduction, deploy) if use_gp else None
        hw = h * w
        if fc3_kernel is None:
            # a grouped FC from C*h*w to O*h*w: the official grouped 1x1 conv on (B * partitions, C*h*w, 1, 1)
            self.fc3 = GroupedLinear(in_chs * hw, out_chs * hw, groups, bias=deploy)
            self.fc3_bn = nn.Identity() if deploy else nn.BatchNorm1d(out_chs * hw)
        else:
            # at deploy the Local Perceptron kernels are merged into this conv, so it takes the largest size
            k = max(fc3_kernel, *self.local_kernels) if deploy else fc3_kernel
            self.fc3 = nn.Conv2d(in_chs, out_chs, k, padding=k // 2, groups=groups, bias=deploy)
            self.fc3_bn = nn.Identity() if deploy else nn.BatchNorm2d(out_chs)
        orthogonal_(self.fc3.weight)  # official init of fc3; everything else keeps PyTorch's default
        if not deploy:
            for k in self.local_kernels:
                setattr(self, f'repconv{k}', ConvBN(in_chs, out_chs, k, padding=k // 2, groups=groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        (hp, wp), h, w, o = self.parts, self.h, self.w, self.out_chs
        parts = x.reshape(b, c, hp, h, wp, w)  # B, C, H/h, h, W/w, w
        if self.gp is not None:
            parts = parts + self.gp(x)  # the partition's global vector on each of its pixels
        parts = parts.permute(0, 2, 4, 1, 3, 5).reshape(-1, c, h, w)  # B*(H/h)*(W/w), C, h, w
        if self.fc3_kernel is None:
            g = self.fc3.groups
            out = self.fc3(parts.reshape(-1, g, c * h * w // g)).reshape(-1, o * h * w)  # B*parts, O*h*w
            out = self.fc3_bn(out).reshape(-1, o, h, w)  # B*parts, O, h, w
        else:
            out = self.fc3_bn(self.fc3(parts))  # B*parts, O, h, w
        if not self.deploy:
            for k in self.local_kernels:
                out = out + getattr(self, f'repconv{k}')(parts)
        out = out.reshape(b, hp, wp, o, h, w)
        if not tracing() and x.is_contiguous(memory_format=torch.channels_last):
            # the same copy, into channels-last storage: the convs after it then run as oneDNN's (fast_linear)
            out = out.permute(0, 1, 4, 2, 5, 3).reshape(b, height, width, o)  # B, H/h, h, W/w, w, O -> B, H, W, O
            return out.permute(0, 3, 1, 2)  # B, O, H, W (channels-last)
        out = out.permute(0, 3, 1, 4, 2, 5)  # B, O, H/h, h, W/w, w
        return out.reshape(b, o, height, width)

    def _local_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of the BN-folded Local Perceptron convs, zero-padded to size x size."""
        kernel = bias = 0
        for k in self.local_kernels:
            kk, kb = getattr(self, f'repconv{k}').fused_kernel_bias()
            kernel, bias = kernel + pad_kernel(kk, size), bias + kb
        return kernel, bias

    def fused_fc3(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the single fc3 equal to fc3 + its BN + the Local Perceptron (eval mode)."""
        if self.deploy:
            return self.fc3.weight, self.fc3.bias
        scale, shift = bn_scale_shift(self.fc3_bn)
        weight = self.fc3.weight * scale[:, None, None, None]
        if not self.local_kernels:
            return weight, shift
        if self.fc3_kernel is not None:
            size = max(self.fc3_kernel, *self.local_kernels)
            kernel, kbias = self._local_kernel_bias(size)
            return pad_kernel(weight, size) + kernel, shift + kbias
        kernel, kbias = self._local_kernel_bias(max(self.local_kernels))
        fc = conv_to_fc(kernel, self.h, self.w)  # O*h*w, C/g*h*w
        return weight + fc.reshape_as(weight), shift + kbias.repeat_interleave(self.h * self.w)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.gp is not None:
            self.gp.reparameterize()
        if self.deploy:
            return
        weight, bias = self.fused_fc3()
        old = self.fc3
        if self.fc3_kernel is None:
            self.fc3 = GroupedLinear(old.in_channels, old.out_channels, self.groups, bias=True, device=weight.device,
                                     dtype=weight.dtype)
        else:
            self.fc3 = nn.Conv2d(old.in_channels, old.out_channels, weight.shape[-1], padding=weight.shape[-1] // 2,
                                 groups=self.groups, bias=True, device=weight.device, dtype=weight.dtype)
        self.fc3.weight.copy_(weight)
        self.fc3.bias.copy_(bias)
        self.fc3_bn = nn.Identity()
        for k in self.local_kernels:
            delattr(self, f'repconv{k}')
        if self.fc3_kernel is not None:
            self.fc3_kernel = weight.shape[-1]
        self.deploy = True


_RELU = nn.ReLU()  # the activation after each residual sum (a module: conv_add_act fuses it by its type)


class _Residual(nn.Module):
    """Base of the ResNet-style blocks: ``relu(drop_path(branch(x)) + shortcut(x))``, where the branch ends in the
    conv+BN named by ``last`` (no activation) and :meth:`body` is everything before it.

    Without stochastic depth, the deploy form's last conv adds the shortcut and applies the ReLU in the same oneDNN
    convolution in CPU inference (:func:`mlpvision.layers.fast_linear.conv_add_act`; same values up to float rounding).
    """

    shortcut: nn.Module
    drop_path: nn.Module
    last: str

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.last)(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = getattr(self, self.last)
        if last.deploy and (isinstance(self.drop_path, nn.Identity) or not self.training):
            return conv_add_act(self.body(x), last.conv, self.shortcut(x), _RELU)
        return torch.relu(self.drop_path(self.branch(x)) + self.shortcut(x))


class ResNetBottleneck(_Residual):
    """torchvision-style ResNet-50 bottleneck (stride on the 3x3 conv); the official ``BaseBlock``."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, stride: int = 1, drop_path: float = 0.,
                 deploy: bool = False) -> None:
        super().__init__()
        need_proj = stride != 1 or in_chs != out_chs
        self.shortcut = ConvBN(in_chs, out_chs, 1, stride, deploy=deploy) if need_proj else nn.Identity()
        self.conv1 = ConvBN(in_chs, mid_chs, 1, act_layer=nn.ReLU, deploy=deploy)
        self.conv2 = ConvBN(mid_chs, mid_chs, 3, stride, 1, act_layer=nn.ReLU, deploy=deploy)
        self.conv3 = ConvBN(mid_chs, out_chs, 1, deploy=deploy)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    last = 'conv3'

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class RepMLPLightBlock(_Residual):
    """1x1 conv+BN+ReLU (out/8) -> RepMLP -> ReLU -> 1x1 conv+BN (paper Appendix A, Fig. 6)."""

    def __init__(self, in_chs: int, out_chs: int, size: tuple[int, int], drop_path: float = 0., deploy: bool = False,
                 **repmlp_args) -> None:
        super().__init__()
        mid = out_chs // 8
        self.shortcut = ConvBN(in_chs, out_chs, 1, deploy=deploy) if in_chs != out_chs else nn.Identity()
        self.conv1 = ConvBN(in_chs, mid, 1, act_layer=nn.ReLU, deploy=deploy)
        self.repmlp = RepMLPBlock(mid, mid, size, deploy=deploy, **repmlp_args)
        self.act = nn.ReLU()
        self.conv3 = ConvBN(mid, out_chs, 1, deploy=deploy)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    last = 'conv3'

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.repmlp(self.conv1(x)))


class RepMLPBottleneckBlock(_Residual):
    """1x1 (out/4) -> 3x3 (out/4/r) -> RepMLP -> ReLU -> 3x3 (out/4) -> 1x1 (out), each conv+BN(+ReLU); paper Fig. 4."""

    def __init__(self, in_chs: int, out_chs: int, size: tuple[int, int], reduction: int = 2, drop_path: float = 0.,
                 deploy: bool = False, **repmlp_args) -> None:
        super().__init__()
        mid = out_chs // 4
        inner = mid // reduction
        self.shortcut = ConvBN(in_chs, out_chs, 1, deploy=deploy) if in_chs != out_chs else nn.Identity()
        self.conv1 = ConvBN(in_chs, mid, 1, act_layer=nn.ReLU, deploy=deploy)
        self.conv2 = ConvBN(mid, inner, 3, padding=1, act_layer=nn.ReLU, deploy=deploy)
        self.repmlp = RepMLPBlock(inner, inner, size, deploy=deploy, **repmlp_args)
        self.act = nn.ReLU()
        self.conv4 = ConvBN(inner, mid, 3, padding=1, act_layer=nn.ReLU, deploy=deploy)
        self.conv5 = ConvBN(mid, out_chs, 1, deploy=deploy)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    last = 'conv5'

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv4(self.act(self.repmlp(self.conv2(self.conv1(x)))))


def _per_stage(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n:
        raise ValueError(f'{name} needs one value per RepMLP stage ({n}), got {value!r}.')
    return values


class _FixedSizeNet(PyramidNet):
    """A PyramidNet that runs only at the input size it was built for."""

    img_size: tuple[int, int]
    in_chans: int

    @torch.jit.ignore  # Python (the error message reads the class); TorchScript calls back into it
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        return check_input(x, self.in_chans, img_size=self.img_size, model_name=model_name(self))


class RepMLPResNet(_FixedSizeNet):
    """ResNet-50 with RepMLP Light or Bottleneck blocks in place of the stride-1 bottlenecks of some stages.

    Built for one input size (the Global Perceptron's FCs are sized by the number of partitions).
    """

    @accepts_aliases(layers='depths', num_blocks='depths')
    @factory_kwargs
    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            block_type: str = 'light',
            depths: tuple[int, ...] = (3, 4, 6, 3),
            partition: int | tuple[int, int] = 7,
            local_kernels: tuple[int, ...] = (1, 3, 5),
            fc3_groups: int | Sequence[int] = 4,
            bottleneck_r: int | Sequence[int] = (2, 4),
            gp_reduction: int = 1,
            repmlp_stages: tuple[int, ...] = (1, 2),
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            deploy: bool = False,
            device: DeviceLike = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            img_size: the input size the model is built for.
            block_type: 'light' (paper Appendix A) or 'bottleneck' (paper Fig. 4).
            partition: RepMLP partition (h, w).
            local_kernels: Local Perceptron kernel sizes.
            fc3_groups: fc3 groups, one value or one per RepMLP stage (paper Table 4: g8/16 = (8, 16)).
            bottleneck_r: RepMLP Bottleneck channel reduction r, one value or one per RepMLP stage.
            repmlp_stages: which of the four stages (0-3 = c2-c5) use RepMLP blocks (official and paper: c3, c4).
            depths: blocks per stage (also accepted as ``layers=``, its former name, or the official ``num_blocks=``).
            deploy: build the converted form (every conv+BN fused, RepMLPs merged into fc3).
            device, dtype: where and in what floating-point dtype to build the parameters and buffers (timm 1.0's
                factory arguments; :func:`mlpvision.models._factory.factory_kwargs`).
        """
        super().__init__()
        layers = depths
        if block_type not in ('light', 'bottleneck'):
            raise ValueError(f"block_type must be 'light' or 'bottleneck', got {block_type!r}.")
        self.img_size = to_2tuple_int(img_size)
        self.in_chans = in_chans
        self.deploy = deploy
        partition = to_2tuple_int(partition)
        groups = dict(zip(repmlp_stages, _per_stage(fc3_groups, len(repmlp_stages), 'fc3_groups'), strict=True))
        ratios = dict(zip(repmlp_stages, _per_stage(bottleneck_r, len(repmlp_stages), 'bottleneck_r'), strict=True))
        self.stem = nn.Sequential(
            ConvBN(in_chans, 64, 7, 2, 3, act_layer=nn.ReLU, deploy=deploy),
            nn.MaxPool2d(3, 2, 1))
        channels = (256, 512, 1024, 2048)
        dpr = torch.linspace(0, drop_path_rate, sum(layers), device='cpu', dtype=torch.float32).tolist()
        prev, stages, self.feature_info = 64, [], []
        for i, (c, n) in enumerate(zip(channels, layers, strict=True)):
            reduction = 4 * 2 ** i
            size = (self.img_size[0] // reduction, self.img_size[1] // reduction)
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                dp = dpr[sum(layers[:i]) + j]
                # the paper keeps each stage's first bottleneck (the stride-2 one; in c2 the channel-expanding one)
                if j > 0 and i in groups:
                    rep = dict(partition=partition, local_kernels=local_kernels, groups=groups[i],
                               gp_reduction=gp_reduction)
                    if block_type == 'light':
                        blocks.append(RepMLPLightBlock(prev, c, size, dp, deploy, **rep))
                    else:
                        blocks.append(RepMLPBottleneckBlock(prev, c, size, ratios[i], dp, deploy, **rep))
                else:
                    blocks.append(ResNetBottleneck(prev, c // 4, c, stride, dp, deploy))
                prev = c
            stages.append(SequentialStage(blocks))
            self.feature_info.append(dict(num_chs=c, reduction=reduction, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self._init_head(prev, num_classes, global_pool, drop_rate)


class RepMLPFCUnit(nn.Module):
    """RepMLP -> ReLU -> FC (1x1 conv) + BN + ReLU, the pure-MLP model's repeating pair (paper Fig. 3). NCHW."""

    def __init__(self, in_chs: int, out_chs: int, size: tuple[int, int], deploy: bool = False, **repmlp_args) -> None:
        super().__init__()
        self.repmlp = RepMLPBlock(in_chs, in_chs, size, deploy=deploy, **repmlp_args)
        self.act = nn.ReLU()
        self.fc = ConvBN(in_chs, out_chs, 1, act_layer=nn.ReLU, deploy=deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.repmlp(x)))


class RepMLPCifarNet(_FixedSizeNet):
    """The paper's pure-MLP CIFAR model (no conv larger than 1x1 after conversion), three stages at strides 1, 2, 4."""

    @accepts_aliases(channels='embed_dims')
    @factory_kwargs
    def __init__(
            self,
            img_size: int | tuple[int, int] = 32,
            in_chans: int = 3,
            num_classes: int = 10,
            embed_dims: tuple[int, ...] = (16, 32, 64),
            depths: tuple[int, ...] = (2, 2, 2),
            partition: int | tuple[int, int] = 8,
            groups: int = 2,
            local_kernels: tuple[int, ...] = (1, 3, 5, 7),
            gp_reduction: int = 1,
            global_perceptron: bool = True,
            fc3_kernel: int | None = None,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            deploy: bool = False,
            device: DeviceLike = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            embed_dims: C per stage (the RepMLPs and the FCs within a stage; a stage's last FC widens to the next C);
                also accepted as ``channels=``, its former name.
            depths: RepMLP + FC pairs per stage.
            local_kernels: Local Perceptron kernels; () is the paper's "w/o Local" ablation.
            global_perceptron: False is the paper's "w/o Global" ablation.
            fc3_kernel: 9 is the paper's "FC3 as conv9" ablation.
            drop_path_rate: accepted for the common interface; the model has no residual branches to drop.
            device, dtype: where and in what floating-point dtype to build the parameters and buffers (timm 1.0's
                factory arguments; :func:`mlpvision.models._factory.factory_kwargs`).
        """
        super().__init__()
        channels = embed_dims
        self.img_size = to_2tuple_int(img_size)
        self.in_chans = in_chans
        self.deploy = deploy
        partition = to_2tuple_int(partition)
        rep = dict(partition=partition, local_kernels=local_kernels, groups=groups, gp_reduction=gp_reduction,
                   global_perceptron=global_perceptron, fc3_kernel=fc3_kernel)
        self.stem = ConvBN(in_chans, channels[0], 1, act_layer=nn.ReLU, deploy=deploy)
        stages, self.feature_info = [], []
        for i, (c, n) in enumerate(zip(channels, depths, strict=True)):
            size = (self.img_size[0] // 2 ** i, self.img_size[1] // 2 ** i)
            nxt = channels[i + 1] if i + 1 < len(channels) else c
            units = [RepMLPFCUnit(c, nxt if j == n - 1 else c, size, deploy, **rep) for j in range(n)]
            stages.append(SequentialStage(units, nn.MaxPool2d(2) if i > 0 else None))
            self.feature_info.append(dict(num_chs=nxt, reduction=2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self._init_head(channels[-1], num_classes, global_pool, drop_rate)


RepMLP = RepMLPBlock  # the block's former name (the official class name)


def _official_to_ours(k: str) -> str:
    k = re.sub(r'^stage0\.0\.', 'stem.0.', k)
    k = re.sub(r'^stage(\d)\.(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.', k)
    k = re.sub(r'\.(?:light|btnk)_(conv\d|repmlp)\.', r'.\1.', k)
    k = k.replace('.repmlp.avg.bn.', '.repmlp.gp.norm.').replace('.repmlp.fc1_fc2.', '.repmlp.gp.')
    return re.sub(r'^linear\.', 'head.fc.', k)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official RepMLP-ResNet state_dict (train form, or the deploy form written by the official
    ``convert.py`` / ``repmlp_model_convert``) or an mlpvision one onto our key names (either form; the loader
    folds a train-form checkpoint for ``deploy=True``)."""
    return {_official_to_ours(k): v for k, v in state_dict.items()}


register_checkpoint_filter((RepMLPResNet, RepMLPCifarNet), checkpoint_filter_fn)


def _create(cls: type[nn.Module], variant: str, pretrained: bool, default_out_indices: tuple[int, ...], **kwargs):
    # the user's out_indices (features_only) replace the default; feature_cls='getter' runs forward_intermediates,
    # so a wrong input size meets the model's own check instead of failing inside a reshape
    out_indices = kwargs.pop('out_indices', default_out_indices)
    return build_model(
        cls, variant, pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)


def _create_repmlp_resnet(variant: str, pretrained: bool = False, **kwargs) -> RepMLPResNet:
    return _create(RepMLPResNet, variant, pretrained, (0, 1, 2, 3), **kwargs)


def _cfg(size: int, meta: ModelMeta, **kwargs) -> dict:
    # official test.py: Resize(256) + CenterCrop(224) at 224, Resize(320) + CenterCrop(320) at 320; bilinear
    return dict(
        url='', num_classes=1000, input_size=(3, size, size), pool_size=(size // 32, size // 32),
        fixed_input_size=True, crop_pct=0.875 if size == 224 else 1.0, interpolation='bilinear',
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv='stem.0.conv', classifier='head.fc',
        license='mit', meta=meta, **kwargs)


_PAPER = 'arXiv:2105.01883'
_RESNET = _OFFICIAL + ':repmlp_resnet.py'
# Release: the RepMLP-ResNet README (@4b3e347) points to one Google Drive folder (and a Baidu share, key "rmlp") and
# names RepMLP-Res50-light-224_train.pth as what it holds, with no accuracy; no other variant's file is named. Not a
# direct download, no hash; the file is a train-form state_dict (test.py loads it as one), deploy=True folds it.
_RES50_LIGHT = Weights(
    source=_OFFICIAL + ':README.md', host='Google Drive',
    page='https://drive.google.com/drive/folders/1eDFunxOQ67MvBBmJ4Bw01TFh2YVNRrg2 (file '
         'RepMLP-Res50-light-224_train.pth; or Baidu https://pan.baidu.com/s/14tGRpKT_WohX7UBcnWH6Zg, key rmlp)',
    top1=None, top1_source='the README gives no accuracy for the released file', license='mit')
default_cfgs = generate_cfgs({
    'repmlp_res50_light_224.in1k': _cfg(224, ModelMeta(
        paper=f'{_PAPER} Appendix A', official=_RESNET + ':create_RepMLPRes50_Light_224', params=87_038_248,
        gmacs=3.325, deploy_params=86_142_440,
        notes='the official factory (fc3 groups 4; the paper\'s Light Block uses 8: repmlp_res50_light_g8_224)'),
        weights=_RES50_LIGHT),
    'repmlp_res50_light_g8_224.untrained': _cfg(224, ModelMeta(
        paper=f'{_PAPER} Appendix A, Table 7', official=_RESNET + ' (RepMLPResNet, block light, fc3_groups=8)',
        params=58_351_912, gmacs=3.055, top1_paper=77.14, deploy_params=57_868_264,
        notes='paper: 30% fewer FLOPs than ResNet-50 (4.1G); deploy form 2.92 GMACs')),
    'repmlp_res50_bottleneck_224.untrained': _cfg(224, ModelMeta(
        paper=f'{_PAPER} Tables 3-4 (c3+c4, g=8, r=2/4)', official=_RESNET + ':create_RepMLPRes50_Bottleneck_224',
        params=41_071_144, gmacs=3.975, params_paper='4M fewer than ResNet-101 (44.5M)', top1_paper=78.55,
        deploy_params=40_871_528, notes='paper: 50% of the FLOPs of ResNet-101; deploy form 3.89 GMACs')),
    'repmlp_res50_g8_16_320.untrained': _cfg(320, ModelMeta(
        paper=f'{_PAPER} Table 4 (g8/16, 320)', official=_RESNET + ' (RepMLPResNet with per-stage fc3 groups 8/16)',
        params=59_543_080, gmacs=8.357, deploy_params=59_223_144)),
    'repmlp_res50_g4_8_320.untrained': _cfg(320, ModelMeta(
        paper=f'{_PAPER} Table 4 (g4/8, 320)', official=_RESNET + ' (RepMLPResNet with per-stage fc3 groups 4/8)',
        params=87_939_624, gmacs=8.904, params_paper='+47% vs g8/16', deploy_params=87_383_144)),
    'repmlp_cifar_pure.untrained': dict(
        url='', num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), fixed_input_size=True, crop_pct=1.0,
        interpolation='bilinear', mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        first_conv='stem.conv', classifier='head.fc', license='mit', meta=ModelMeta(
            paper=f'{_PAPER} §4.1, Fig. 3, Table 1', official=_OFFICIAL + ':repmlp.py (the RepMLP block only)',
            params=None, gmacs=None, gmacs_paper=0.0528, top1_paper=91.11,
            notes='not in the official code; built from the paper text (§4.1 and Fig. 3\'s caption), the reading '
                  'whose deploy-form MACs equal the paper\'s 52.8M; the text gives no parameter count for it (Table '
                  '1\'s pure-MLP rows were not readable in the text copy read)')),
})


@register_model
def repmlp_res50_light_224(pretrained: bool = False, **kwargs) -> RepMLPResNet:
    """RepMLP-Res50-Light-224 as the official factory builds it (fc3 groups 4)."""
    model_args = dict(img_size=224, block_type='light', partition=7, local_kernels=(1, 3, 5), fc3_groups=4)
    return _create_repmlp_resnet('repmlp_res50_light_224', pretrained, **variant_args(RepMLPResNet, model_args, kwargs))


@register_model
def repmlp_res50_light_g8_224(pretrained: bool = False, **kwargs) -> RepMLPResNet:
    """RepMLP-Res50 with the paper's Light Block (g = 8; Appendix A, Table 7: 77.14% top-1)."""
    model_args = dict(img_size=224, block_type='light', partition=7, local_kernels=(1, 3, 5), fc3_groups=8)
    return _create_repmlp_resnet('repmlp_res50_light_g8_224', pretrained,
                                 **variant_args(RepMLPResNet, model_args, kwargs))


@register_model
def repmlp_res50_bottleneck_224(pretrained: bool = False, **kwargs) -> RepMLPResNet:
    """RepMLP-Res50 with RepMLP Bottlenecks in c3 and c4 (g = 8, r = 2/4; the paper's 78.55% model)."""
    model_args = dict(img_size=224, block_type='bottleneck', partition=7, local_kernels=(1, 3, 5), fc3_groups=8,
                      bottleneck_r=(2, 4))
    return _create_repmlp_resnet('repmlp_res50_bottleneck_224', pretrained,
                                 **variant_args(RepMLPResNet, model_args, kwargs))


@register_model
def repmlp_res50_g8_16_320(pretrained: bool = False, **kwargs) -> RepMLPResNet:
    """RepMLP-Res50-g8/16 at 320 (paper Table 4: h = w = 10, K = 1, 3, 5, 7, g = 8 in c3 and 16 in c4)."""
    model_args = dict(img_size=320, block_type='bottleneck', partition=10, local_kernels=(1, 3, 5, 7),
                      fc3_groups=(8, 16), bottleneck_r=(2, 4))
    return _create_repmlp_resnet('repmlp_res50_g8_16_320', pretrained, **variant_args(RepMLPResNet, model_args, kwargs))


@register_model
def repmlp_res50_g4_8_320(pretrained: bool = False, **kwargs) -> RepMLPResNet:
    """RepMLP-Res50-g4/8 at 320 (paper Table 4: h = w = 10, K = 1, 3, 5, 7, g = 4 in c3 and 8 in c4)."""
    model_args = dict(img_size=320, block_type='bottleneck', partition=10, local_kernels=(1, 3, 5, 7),
                      fc3_groups=(4, 8), bottleneck_r=(2, 4))
    return _create_repmlp_resnet('repmlp_res50_g4_8_320', pretrained, **variant_args(RepMLPResNet, model_args, kwargs))


@register_model
def repmlp_cifar_pure(pretrained: bool = False, **kwargs) -> RepMLPCifarNet:
    """The paper's pure-MLP CIFAR-10 model (§4.1, Fig. 3: 91.11% top-1 at 52.8M FLOPs after conversion)."""
    model_args = dict(img_size=32, embed_dims=(16, 32, 64), depths=(2, 2, 2), partition=8, groups=2)
    return _create(RepMLPCifarNet, 'repmlp_cifar_pure', pretrained, (0, 1, 2),
                   **variant_args(RepMLPCifarNet, model_args, kwargs))
