"""Strip-MLP: Efficient Token Interaction for Vision MLP.

Paper: Cao et al., ICCV 2023, arXiv:2307.11458 (ImageNet-1k table as repeated in the official README).
Official code: Med-Process/Strip_MLP@492d7050031fb01dc3e07de0c6598cc242f9d4dc, ``models/strip_mlp.py``.

A 4x4/s4 stem conv (no bias, no norm) and four stages of widths C, 2C, 4C, 8C joined by 2x2/s2 merging convs (no
bias, no norm); multi-scale skips add grouped 2x2/s2 convs of earlier stage inputs to the inputs of stages 3 and 4;
a final BatchNorm, the spatial mean and a Linear head. Every block is

* ``x = x + DP(StripMixing(PreActDW(x)))`` with ``PreActDW`` = BN -> GELU -> depthwise 3x3 (no bias) and the Strip
  Mixing Block = 1x1 conv + BN + GELU, the first channel half through CGSMM, the second through LSMM, concat, 1x1;
* ``x = x + DP(ChannelMixing(x))`` = depthwise 7x7 -> LayerNorm -> Linear C->3C -> GELU -> GRN(3C) -> Linear 3C->C.

CGSMM (Cascade Group Strip Mixing Module) on C' = C/2 channels, cut into P groups of C2 = C'/P channels whose C2
channel slots share their weights across the P groups: ``x + pos_row`` -> row strip -> 1x1 fuse of
``[row, x]`` -> BN -> GELU -> ``+ pos_col`` -> column strip -> 1x1 fuse of ``[x, col]``. A row strip is, for each
channel slot, a fully connected layer over the W tokens of a row that also reads the ``strip_width // 2`` rows above
and below (zero padded); a column strip is the same over the H tokens of a column and its neighbouring columns.
``pos_row``/``pos_col`` are relative-position tables: the bias at (h, w) is ``table[w - h + H]``, one C'-vector
per diagonal. P is hidden in the official code: 2 when the stage width is a multiple of 80 (T*, T), else 4 (S, B).
LSMM (Local Strip Mixing Module): depthwise (3, 7) and (7, 3) convs (no bias) and the identity, mixed by split
attention (an MLP C' -> C'/2 -> 3C' on the pooled sum, softmax over the three branches).

Input sizes. The strip weights and the position tables depend on the feature size, so a model is built for one
input size (``img_size``, sides multiples of 32) and refuses any other with a ValueError naming the built size. The
official code asserts a square size; here H != W is allowed and defined as: in a stage with an H x W map the row
strip is sized by W and the column strip by H (weights ``(C2 * W, W, 1, k)`` and ``(C2 * H, H, 1, k)``), and both
position tables have ``H + W + 1`` rows, token (h, w) reading row ``w - h + H`` (every diagonal has its own vector;
the first and last rows are never read, as in the official ``2H + 1``-row tables, whose clipping at +-H never acts).
For square sizes this is the official model, parameter for parameter and output for output.

Ablation knobs (the paper's, as constructor arguments; defaults are the released models): ``strip_width`` (1, 3,
5, 7), ``num_patches`` (P; None = the official rule), ``cascade`` (False = parallel: the column strip reads
``x + pos_col`` instead of the fused row output and the last 1x1 fuses ``[fused rows, columns]``), ``use_cgsmm`` /
``use_lsmm`` (a switched-off module passes its channel half through unchanged), ``lsmm_kernel`` (the long side of
the LSMM convs), ``use_grn``, ``multi_scale_skips``, ``drop_path_rate`` and ``drop_path_schedule`` ('constant' as
released, or 'linear' from 0). The paper's tables for these ablations could not be retrieved, so the switched-off
and parallel forms above are this implementation's definitions.

Implementation notes: the strip FCs keep the official parameters (grouped ``Conv2d`` weights of shape
``(C2 * L, L, 1, k)``) but run on layouts that need fewer copies than the official permutes: the row strip adds
``pos_row`` while writing the input transposed to (B, P, H, C2, W), which *is* the channels-last memory of the
conv's input (B*P, C2*W, 1, H), so the grouped conv reads and writes channels-last without further copies and its
output is transposed back by the concat that feeds the 1x1 fuse; the column strip does the same with (B, P, W, C2,
H). Channels-last grouped convs run faster on CPU than on the free NCHW view (B*P, C2*H, 1, W). GRN and LSMM's
split attention use fused multiply-adds instead of separate passes (CPU figures against the official code in
docs/benchmarks.md, "Why the layers do what they do").
Initialisation is PyTorch's default everywhere except the position tables (truncated normal, std 0.02), as in the
official code (which has no init function).

No deploy form: the only foldable parts are the two BatchNorms after 1x1 convs in each block, too little of the
run time to be worth a second form (docs/benchmarks.md), so ``deploy=True`` is accepted and builds the same model.

Deviations from the official code: input checks raise ValueError instead of asserting; the channel MLP's linears run
through :class:`mlpvision.layers.Linear` (oneDNN for fp32 CPU inference; equal up to float rounding);
non-square sizes (above);
the GRN is sized by the channel-MLP ratio (the official code hard-codes 3C, so any other ratio crashes there);
the official ``drop_rate`` reaches a Dropout that is never called, here ``drop_rate`` is timm's head dropout
(default 0, i.e. no dropout, as released); key names follow timm's layout (``stem``, ``stages.i.downsample``,
``stages.i.blocks.j``, ``head.fc``) and ``checkpoint_filter_fn`` maps the official names. Outputs equal the official
ones up to float rounding (max |diff| about 1e-7 for outputs of order 0.2; GRN and LSMM's split attention are
computed with fused multiply-adds).

timm's model contract (tests/test_models.py): ``device=`` / ``dtype=`` build the model there directly (the meta
device and bf16 / float16 / float64 included); ``reset_classifier`` keeps the model's device and dtype; forward and
features trace with ``torch.fx``: the input check and the channel mixing (whose linears dispatch on the input's
device and dtype, and whose GRN on its dtype) are FX leaves, so a traced graph runs the same code as the model
(identical outputs). ``torch.jit.script`` works: the channel mixing and GRN take their plain PyTorch forms under
TorchScript (the oneDNN dispatch of :mod:`mlpvision.layers.fast_linear` takes a module argument, which TorchScript
cannot pass; same values up to float rounding) and the stages are an ``nn.ModuleList`` (each also takes and returns
the carried skips). The input check stays Python (``torch.jit.ignore``): a scripted model runs and checks its input,
but ``torch.jit.save`` refuses the Python call.
"""
import re

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_module, trunc_normal_
from timm.models._manipulate import checkpoint_seq

from .._checkpoint import register_checkpoint_filter
from ..layers import GRN, Linear
from ._base import PyramidNet, check_input, one_d_and_bias_params, to_2tuple_int
from ._factory import DeviceLike, factory_kwargs
from ._registry import ModelMeta, Weights, build_model, generate_cfgs, register_model

__all__ = ['StripMLP', 'StripBlock', 'StripMixing', 'CGSMM', 'LSMM', 'ChannelMixing', 'GRN', 'official_num_patches']

torch.fx.wrap('check_input')  # an FX leaf here too (torch.fx.wrap patches this module's global)

_OFFICIAL = 'Med-Process/Strip_MLP@492d7050031fb01dc3e07de0c6598cc242f9d4dc:models/strip_mlp.py'


def official_num_patches(channels: int) -> int:
    """P for a Strip Mixing Block of ``channels`` (official ``StripMLP_Block``): 2 if a multiple of 80, else 4."""
    return 2 if channels % 80 == 0 else 4


class RelativePosition(nn.Module):
    """A (C, H, W) bias that depends on the diagonal ``w - h`` only: ``table[w - h + H]`` (official
    ``RelativePosition``; ``H + W + 1`` rows, the official ``2H + 1`` when square)."""

    def __init__(self, dim: int, size: tuple[int, int]) -> None:
        super().__init__()
        h, w = size
        self.table = nn.Parameter(torch.empty(h + w + 1, dim))
        trunc_normal_(self.table, std=.02)
        index = torch.arange(w)[None, :] - torch.arange(h)[:, None] + h  # H, W
        self.register_buffer('index', index, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table[self.index]  # H, W, C


class CGSMM(nn.Module):
    """Cascade Group Strip Mixing Module on NCHW input of the size it was built for.

    Args:
        dim: channels C' of the input (half the block's channels).
        size: feature size (H, W).
        num_patches: P; the C' channels form P groups of C2 = C'/P that share the strip weights.
        strip_width: rows (columns) each row (column) strip reads: itself and ``strip_width // 2`` on each side.
        cascade: column strip on the fused row output (official); False runs both strips on the input.
    """

    def __init__(
            self,
            dim: int,
            size: tuple[int, int],
            num_patches: int,
            strip_width: int = 3,
            cascade: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_patches:
            raise ValueError(f'num_patches={num_patches} must divide the CGSMM width {dim} (half the stage width).')
        self.size = h, w = size
        self.num_patches = num_patches
        self.group_dim = c2 = dim // num_patches
        self.cascade = cascade
        pad = (0, strip_width // 2)
        self.pos_row = RelativePosition(dim, size)
        # weight (C2 * W, W, 1, k): for channel slot c, output token w' of a row reads tokens (w, row offset k)
        self.row = nn.Conv2d(c2 * w, c2 * w, (1, strip_width), padding=pad, groups=c2)
        self.fuse_row = nn.Conv2d(2 * dim, dim, 1, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.act = nn.GELU()
        self.pos_col = RelativePosition(dim, size)
        self.col = nn.Conv2d(c2 * h, c2 * h, (1, strip_width), padding=pad, groups=c2)
        self.fuse_col = nn.Conv2d(2 * dim, dim, 1, bias=False)

    def strip_rows(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Row strip of ``x + pos`` for x (B, C', H, W) and pos (P, H, C2, W); returns (B, P, C2, H, W), strided."""
        b = x.shape[0]
        p, c2, (h, w) = self.num_patches, self.group_dim, self.size
        # the sum is written in pos's (contiguous) layout, so the transpose costs no extra pass
        x = torch.add(pos, x.reshape(b, p, c2, h, w).transpose(2, 3))  # B, P, H, C2, W
        # channels-last memory of a (B*P, C2*W, 1, H) map: the grouped conv mixes the W tokens of each channel slot
        x = x.view(b * p, 1, h, c2 * w).permute(0, 3, 1, 2)  # B*P, C2*W, 1, H (channels-last)
        x = self.row(x)
        x = x.permute(0, 2, 3, 1).reshape(b, p, h, c2, w)  # B, P, H, C2, W (a view when the conv kept channels-last)
        return x.transpose(2, 3)  # B, P, C2, H, W

    def strip_cols(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Column strip of ``x + pos`` for x (B, C', H, W) and pos (P, W, C2, H); returns (B, P, C2, H, W), strided."""
        b = x.shape[0]
        p, c2, (h, w) = self.num_patches, self.group_dim, self.size
        x = torch.add(pos, x.reshape(b, p, c2, h, w).permute(0, 1, 4, 2, 3))  # B, P, W, C2, H
        # as for rows: the channels-last grouped conv beats the free NCHW view (B*P, C2*H, 1, W) on CPU
        x = x.view(b * p, 1, w, c2 * h).permute(0, 3, 1, 2)  # B*P, C2*H, 1, W (channels-last)
        x = self.col(x)
        x = x.permute(0, 2, 3, 1).reshape(b, p, w, c2, h)  # B, P, W, C2, H
        return x.permute(0, 1, 3, 4, 2)  # B, P, C2, H, W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, dim, h, w = x.shape
        p, c2 = self.num_patches, self.group_dim
        pos_row = self.pos_row().view(h, w, p, c2).permute(2, 0, 3, 1).contiguous()  # P, H, C2, W
        pos_col = self.pos_col().view(h, w, p, c2).permute(2, 1, 3, 0).contiguous()  # P, W, C2, H
        x5 = x.reshape(b, p, c2, h, w)
        rows = self.strip_rows(x, pos_row)  # B, P, C2, H, W
        # concatenating along P keeps the channel order [rows, x] and makes the transposed rows contiguous
        r = self.act(self.norm(self.fuse_row(torch.cat([rows, x5], dim=1).view(b, 2 * dim, h, w))))
        if self.cascade:
            cols = self.strip_cols(r, pos_col)
            return self.fuse_col(torch.cat([x5, cols], dim=1).view(b, 2 * dim, h, w))
        cols = self.strip_cols(x, pos_col)
        return self.fuse_col(torch.cat([r.view(b, p, c2, h, w), cols], dim=1).view(b, 2 * dim, h, w))


class LSMM(nn.Module):
    """Local Strip Mixing Module: depthwise (3, k) and (k, 3) convs and the identity under split attention. NCHW."""

    def __init__(self, dim: int, kernel: int = 7) -> None:
        super().__init__()
        self.conv_3xk = nn.Conv2d(dim, dim, (3, kernel), padding=(1, kernel // 2), groups=dim, bias=False)
        self.conv_kx3 = nn.Conv2d(dim, dim, (kernel, 3), padding=(kernel // 2, 1), groups=dim, bias=False)
        self.reweight = Mlp(dim, dim // 2, dim * 3, act_layer=nn.GELU, use_conv=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        v = self.conv_kx3(x)
        h = self.conv_3xk(x)
        # the mean of the sum, without materialising the sum
        att = v.mean((2, 3), keepdim=True) + h.mean((2, 3), keepdim=True) + x.mean((2, 3), keepdim=True)
        att = self.reweight(att).view(b, c, 3).softmax(dim=-1)  # B, C, 3: weights of (v, h, x)
        att = att.transpose(1, 2)[..., None, None]  # B, 3, C, 1, 1
        return torch.addcmul(torch.addcmul(v * att[:, 0], h, att[:, 1]), x, att[:, 2])


class StripMixing(nn.Module):
    """Strip Mixing Block: 1x1 + BN + GELU, channel halves through CGSMM and LSMM, concat, 1x1. NCHW."""

    def __init__(
            self,
            dim: int,
            size: tuple[int, int],
            num_patches: int | None = None,
            strip_width: int = 3,
            cascade: bool = True,
            use_cgsmm: bool = True,
            use_lsmm: bool = True,
            lsmm_kernel: int = 7,
    ) -> None:
        super().__init__()
        half = dim // 2
        num_patches = official_num_patches(dim) if num_patches is None else num_patches
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.norm = nn.BatchNorm2d(dim)
        self.act = nn.GELU()
        self.cgsmm = CGSMM(half, size, num_patches, strip_width, cascade) if use_cgsmm else nn.Identity()
        self.lsmm = LSMM(half, lsmm_kernel) if use_lsmm else nn.Identity()
        self.proj_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.proj_in(x)))
        half = x.shape[1] // 2
        x1 = self.cgsmm(x[:, :half])
        x2 = self.lsmm(x[:, half:])
        return self.proj_out(torch.cat([x1, x2], dim=1))


class PreActDWConv(nn.Module):
    """BN -> GELU -> depthwise 3x3 conv (no bias). NCHW."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.act = nn.GELU()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


@register_notrace_module  # an FX leaf: its linears and GRN dispatch on the input's device and dtype
class ChannelMixing(nn.Module):
    """Depthwise 7x7 -> LayerNorm -> Linear -> GELU -> GRN -> Linear. NCHW in and out (channels-last inside)."""

    def __init__(self, dim: int, mlp_ratio: float = 3., use_grn: bool = True) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden) if use_grn else nn.Identity()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # B, H, W, C
        if torch.jit.is_scripting():  # TorchScript: plain ops (the layer modules take their activation as an argument)
            x = self.act(F.linear(self.norm(x), self.fc1.weight, self.fc1.bias))
            return F.linear(self.grn(x), self.fc2.weight, self.fc2.bias).permute(0, 3, 1, 2)
        x = self.fc1(self.norm(x), act=self.act)  # oneDNN with GELU fused for fp32 CPU inference (layers.Linear)
        x = self.fc2(self.grn(x))
        return x.permute(0, 3, 1, 2)  # B, C, H, W


class StripBlock(nn.Module):
    """Token mixing (pre-activation depthwise conv + Strip Mixing Block) and channel mixing, each residual. NCHW."""

    def __init__(
            self,
            dim: int,
            size: tuple[int, int],
            mlp_ratio: float = 3.,
            drop_path: float = 0.,
            use_grn: bool = True,
            **mixing_kwargs,
    ) -> None:
        super().__init__()
        self.token_dw = PreActDWConv(dim)
        self.token_mix = StripMixing(dim, size, **mixing_kwargs)
        self.channel_mix = ChannelMixing(dim, mlp_ratio, use_grn)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.token_mix(self.token_dw(x)))
        return x + self.drop_path(self.channel_mix(x))


class StripStage(nn.Module):
    """Downsampling conv, multi-scale skip inputs, blocks.

    ``forward(x, carry)`` adds the skip tensors carried from earlier stages (``carry``) to the downsampled input and
    returns the tensors it passes on: ``relay`` re-projects the carried skip to the next stage's size (official
    ``conv_s1_14``), ``skip`` projects this stage's own input (``conv_s1_28``, ``conv_s2_14``).
    """

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            size: tuple[int, int],
            downsample: bool,
            skip: bool,
            relay: bool,
            drop_path: list[float],
            **block_kwargs,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = nn.Conv2d(in_dim, dim, 2, stride=2, bias=False) if downsample else nn.Identity()
        # grouped 2x2/s2 convs (groups = input channels, no bias): stage-(i+1) width and size
        self.skip = nn.Conv2d(dim, 2 * dim, 2, stride=2, groups=dim, bias=False) if skip else None
        self.relay = nn.Conv2d(dim, 2 * dim, 2, stride=2, groups=dim, bias=False) if relay else None
        self.blocks = nn.Sequential(*[StripBlock(dim, size, drop_path=drop_path[i], **block_kwargs)
                                      for i in range(depth)])

    def forward(self, x: torch.Tensor, carry: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.downsample(x)
        out = []
        if self.relay is not None:
            out.append(self.relay(carry[0]))
        if self.skip is not None:
            out.append(self.skip(x))
        for c in carry:
            x = x + c
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x, out


class StripMLP(PyramidNet):
    """Strip-MLP, built for one input size (NCHW throughout)."""

    @factory_kwargs
    def __init__(
            self,
            num_classes: int = 1000,
            img_size: int | tuple[int, int] = 224,
            in_chans: int = 3,
            embed_dim: int = 80,
            depths: tuple[int, ...] = (2, 2, 12, 2),
            mlp_ratio: float = 3.,
            strip_width: int = 3,
            num_patches: int | None = None,
            cascade: bool = True,
            use_cgsmm: bool = True,
            use_lsmm: bool = True,
            lsmm_kernel: int = 7,
            use_grn: bool = True,
            multi_scale_skips: bool = True,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            drop_path_schedule: str = 'constant',
            deploy: bool = False,
            device: DeviceLike = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            img_size: the input size the model is built for (sides multiples of 32); no other size is accepted.
            embed_dim: width C of the first stage; stage i has C * 2**i channels.
            depths: blocks per stage (four stages).
            mlp_ratio: hidden width of the channel mixing MLP (paper's alpha, 3 in every released model).
            strip_width: rows (columns) read by each row (column) strip FC, odd (paper ablation 1, 3, 5, 7).
            num_patches: P, the number of channel groups sharing CGSMM's strip weights (None: 2 where the stage
                width is a multiple of 80, else 4, as the official code decides).
            cascade: column strip after the row strip (official); False runs them in parallel.
            use_cgsmm / use_lsmm: switch off a branch of the Strip Mixing Block (its channel half is passed on).
            lsmm_kernel: long side of LSMM's depthwise convs (official 7).
            use_grn: GRN in the channel mixing MLP.
            multi_scale_skips: the grouped-conv skips into stages 3 and 4.
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth; the official models use 0.1 in every block.
            drop_path_schedule: 'constant' (official: the same rate in every block) or 'linear' (0 to the rate).
            deploy: accepted for the common interface; Strip-MLP has no separate inference form.
            device, dtype: where and in what floating-point dtype to build the parameters and buffers (timm 1.0's
                factory arguments; :func:`mlpvision.models._factory.factory_kwargs`).
        """
        super().__init__()
        num_stages = len(depths)
        self.img_size = to_2tuple_int(img_size)
        self.in_chans = in_chans
        self.deploy = deploy  # nothing to re-parameterise: the train and deploy forms are the same model
        factor = 4 * 2 ** (num_stages - 1)
        if self.img_size[0] % factor or self.img_size[1] % factor:
            raise ValueError(f'img_size {self.img_size} must have sides that are multiples of {factor} (stride of '
                             f'the last stage), e.g. {tuple(-(-s // factor) * factor for s in self.img_size)}.')
        if strip_width < 1 or strip_width % 2 == 0:
            raise ValueError(f'strip_width must be a positive odd number (1, 3, 5, 7), got {strip_width}.')
        if drop_path_schedule not in ('constant', 'linear'):
            raise ValueError(f"drop_path_schedule must be 'constant' or 'linear', got {drop_path_schedule!r}.")
        dims = [embed_dim * 2 ** i for i in range(num_stages)]
        if num_patches is not None and any((d // 2) % num_patches for d in dims):
            raise ValueError(f'num_patches={num_patches} must divide half of every stage width {dims}.')
        total = sum(depths)
        if drop_path_schedule == 'constant':
            dpr = [drop_path_rate] * total
        else:
            # plain floats, so the model also builds under torch.device('meta')
            dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]

        self.stem = nn.Conv2d(in_chans, embed_dim, 4, stride=4, bias=False)
        stages = []
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            size = (self.img_size[0] // (4 * 2 ** i), self.img_size[1] // (4 * 2 ** i))
            has_next = i < num_stages - 1
            stages.append(StripStage(
                dims[i - 1] if i else dim, dim, depth, size, downsample=i > 0,
                skip=multi_scale_skips and 1 <= i and has_next, relay=multi_scale_skips and 2 <= i and has_next,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], mlp_ratio=mlp_ratio, use_grn=use_grn,
                num_patches=num_patches, strip_width=strip_width, cascade=cascade,
                use_cgsmm=use_cgsmm, use_lsmm=use_lsmm, lsmm_kernel=lsmm_kernel))
        self.stages = nn.ModuleList(stages)  # not a Sequential: each stage also takes and returns the carried skips
        self.norm = nn.BatchNorm2d(dims[-1])
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f'stages.{i}') for i, d in enumerate(dims)]
        self._init_head(dims[-1], num_classes, global_pool, drop_rate)

    @torch.jit.ignore  # Python (the error message reads the class); TorchScript calls back into it
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        # every argument, by position: a traced graph scripted afterwards (torch.jit.script of an FX GraphModule)
        # calls the ignored check through a stub that knows no defaults and passes keywords by position
        return check_input(x, self.in_chans, self.img_size, None, type(self).__name__, None)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.(?:downsample|skip|relay)', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # the official (Swin) optimizer skips 1-D parameters and '*.bias'; the model itself names nothing
        return one_d_and_bias_params(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        carry: list[torch.Tensor] = []
        for stage in self.stages:
            x, carry = stage(x, carry)  # as forward_stage (TorchScript takes no module argument)
        return self.norm(x)

    def forward_stage(
            self, stage: nn.Module, x: torch.Tensor, carry: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # each stage takes the skip tensors of the earlier ones and hands on its own (PyramidNet's stage hook)
        return stage(x, carry)

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        # the skips of the new last stage would feed stages that are gone
        self.stages[-1].skip = self.stages[-1].relay = None
        return take_indices


_BLOCK_KEYS = [  # official block key part -> ours (matched after 'blocks{i}.{j}.')
    ('token_mixing.dwsc.conv_merge.BN.', 'token_dw.norm.'),
    ('token_mixing.dwsc.conv_merge.Conv.', 'token_dw.conv.'),
    ('token_mixing.smlp_block.mlp.0.', 'token_mix.proj_in.'),
    ('token_mixing.smlp_block.mlp.1.', 'token_mix.norm.'),
    ('token_mixing.smlp_block.proj_h.', 'token_mix.cgsmm.row.'),
    ('token_mixing.smlp_block.proj_w.', 'token_mix.cgsmm.col.'),
    ('token_mixing.smlp_block.relate_pos_h.embeddings_table', 'token_mix.cgsmm.pos_row.table'),
    ('token_mixing.smlp_block.relate_pos_w.embeddings_table', 'token_mix.cgsmm.pos_col.table'),
    ('token_mixing.smlp_block.fuse_h.', 'token_mix.cgsmm.fuse_row.'),
    ('token_mixing.smlp_block.BN.', 'token_mix.cgsmm.norm.'),
    ('token_mixing.smlp_block.fuse_w.', 'token_mix.cgsmm.fuse_col.'),
    ('token_mixing.smlp_block.fc_h.', 'token_mix.lsmm.conv_3xk.'),
    ('token_mixing.smlp_block.fc_w.', 'token_mix.lsmm.conv_kx3.'),
    ('token_mixing.smlp_block.reweight.', 'token_mix.lsmm.reweight.'),
    ('token_mixing.smlp_block.fuse.', 'token_mix.proj_out.'),
    ('channel_mixing.conv_77.', 'channel_mix.conv_dw.'),
    ('channel_mixing.layer_norm.', 'channel_mix.norm.'),
    ('channel_mixing.', 'channel_mix.'),
]

_TOP_KEYS = {
    'patch_embed.weight': 'stem.weight',
    'merging1.weight': 'stages.1.downsample.weight',
    'merging2.weight': 'stages.2.downsample.weight',
    'merging3.weight': 'stages.3.downsample.weight',
    'conv_s1_28.weight': 'stages.1.skip.weight',
    'conv_s1_14.weight': 'stages.2.relay.weight',
    'conv_s2_14.weight': 'stages.2.skip.weight',
    'head.weight': 'head.fc.weight',
    'head.bias': 'head.fc.bias',
}


def _official_to_ours(k: str) -> str:
    if k in _TOP_KEYS:
        return _TOP_KEYS[k]
    m = re.match(r'^blocks([1-4])\.(\d+)\.(.*)$', k)
    if m is None:
        return k
    rest = m.group(3)
    for old, new in _BLOCK_KEYS:
        if rest.startswith(old):
            rest = new + rest[len(old):]
            break
    return f'stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.{rest}'


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: StripMLP) -> dict[str, torch.Tensor]:
    """Map an official (``StripMLPNet``) or mlpvision state_dict onto ``model`` (key names only: the official
    parameter shapes are kept)."""
    state_dict = state_dict.get('model', state_dict)
    return {_official_to_ours(k): v for k, v in state_dict.items()}


register_checkpoint_filter(StripMLP, checkpoint_filter_fn)


def _create_strip_mlp(variant: str, pretrained: bool = False, **kwargs) -> StripMLP:
    return build_model(
        StripMLP, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs)


def _cfg(meta: ModelMeta, **kwargs) -> dict:
    # official eval (Swin data/build.py): resize to int(256 / 224 * 224), centre crop 224, bicubic, ImageNet mean/std
    return dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), fixed_input_size=True,
        crop_pct=0.875, interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv='stem', classifier='head.fc', license='mit', meta=meta, **kwargs)


_PAPER = 'arXiv:2307.11458 (ICCV 2023), ImageNet-1k table (official README)'
# Releases: the README's ImageNet-1K table links each checkpoint to a Baidu share (extraction code 1234 in the link;
# no direct download, no hash). License: the README's MIT badge (the repository has no LICENSE file).


def _weights(share: str, top1: float) -> Weights:
    return Weights(source='Med-Process/Strip_MLP@492d7050031fb01dc3e07de0c6598cc242f9d4dc:README.md', host='Baidu',
                   page=f'https://pan.baidu.com/s/{share}?pwd=1234', top1=top1,
                   top1_source='official README ImageNet-1K table', license='mit')


default_cfgs = generate_cfgs({
    'strip_mlp_tiny_light.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ' (tiny light)', params=18_243_920, gmacs=2.531,
        params_paper='18M', gmacs_paper=2.5, top1_paper=81.2), weights=_weights('15SQy1MxY5RQlybNVpuFQcg', 81.2)),
    'strip_mlp_tiny.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ' (tiny)', params=24_903_920, gmacs=3.665,
        params_paper='25M', gmacs_paper=3.7, top1_paper=82.2), weights=_weights('1mUDavm3Y8pmW8p7QmypnNQ', 82.2)),
    'strip_mlp_small.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ' (small)', params=42_568_600, gmacs=6.828,
        params_paper='43M', gmacs_paper=6.8, top1_paper=83.3), weights=_weights('1uXoPzrhptbA8FBuQcaOrVg', 83.3)),
    'strip_mlp_base.in1k': _cfg(ModelMeta(
        paper=_PAPER, official=_OFFICIAL + ' (base)', params=57_216_480, gmacs=9.214,
        params_paper='57M', gmacs_paper=9.2, top1_paper=83.6), weights=_weights('1t4iQuMqUR8yfAO0kRS1EFg', 83.6)),
})


@register_model
def strip_mlp_tiny_light(pretrained: bool = False, **kwargs) -> StripMLP:
    """Strip-MLP-T* (README: 18M params, 2.5 GFLOPs, 81.2% top-1); C=80, depths 2-2-6-2, P=2."""
    model_args = dict(embed_dim=80, depths=(2, 2, 6, 2), mlp_ratio=3.)
    return _create_strip_mlp('strip_mlp_tiny_light', pretrained, **dict(model_args, **kwargs))


@register_model
def strip_mlp_tiny(pretrained: bool = False, **kwargs) -> StripMLP:
    """Strip-MLP-T (README: 25M params, 3.7 GFLOPs, 82.2% top-1); C=80, depths 2-2-12-2, P=2."""
    model_args = dict(embed_dim=80, depths=(2, 2, 12, 2), mlp_ratio=3.)
    return _create_strip_mlp('strip_mlp_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def strip_mlp_small(pretrained: bool = False, **kwargs) -> StripMLP:
    """Strip-MLP-S (README: 43M params, 6.8 GFLOPs, 83.3% top-1); C=96, depths 2-2-18-2, P=4."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), mlp_ratio=3.)
    return _create_strip_mlp('strip_mlp_small', pretrained, **dict(model_args, **kwargs))


@register_model
def strip_mlp_base(pretrained: bool = False, **kwargs) -> StripMLP:
    """Strip-MLP-B (README: 57M params, 9.2 GFLOPs, 83.6% top-1); C=112, depths 2-2-18-2, P=4."""
    model_args = dict(embed_dim=112, depths=(2, 2, 18, 2), mlp_ratio=3.)
    return _create_strip_mlp('strip_mlp_base', pretrained, **dict(model_args, **kwargs))
