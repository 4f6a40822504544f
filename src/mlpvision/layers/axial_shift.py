"""AS-MLP's axial shift in pure PyTorch (no CuPy, no CUDA requirement).

The channels of an NCHW map are split into ``shift_size`` groups of ``ceil(C / shift_size)`` channels (the last group
is smaller, and there are fewer groups when ``C`` is small, as with ``torch.chunk``); group ``g`` is shifted along one
spatial axis by ``offset_g = (shift_size // 2 - g) * dilation``::

    out[:, c, i] = in[:, c, i + offset_g]          (c in group g, i along the shifted axis)

Positions ``i + offset_g`` outside the map read the border padding given by ``pad_mode``: ``'zero'`` (the released
AS-MLP; svip-lab/AS-MLP ``models/shift_cuda.py`` zero-fills), ``'circular'`` (wraps around), ``'reflect'`` or
``'replicate'`` (as :func:`torch.nn.functional.pad`). This is the paper's Algorithm 1 (pad, chunk, roll, narrow) with
the paper's dilation and padding variants.

Two implementations give bit-identical results, forward and backward:

* ``'slice'`` pads each channel group along the shifted axis, takes the shifted window and concatenates the groups:
  copies only, no arithmetic, so it is exact in every dtype and under autocast / TF32;
* ``'conv'`` is a depthwise convolution with a fixed one-hot kernel (kept in a non-persistent buffer, so it is neither
  a parameter nor in the state_dict): exact because every output is ``1 * x`` plus zeros, but it propagates a
  non-finite value to its neighbours (``0 * inf = nan``), and autocast runs it in reduced precision.

On the 2-core CPU this project is developed on, slicing was the faster one (see :data:`DEFAULT_IMPL`).

Export: :class:`AxialShift` works its channel groups out once, from the channel count it is built for, so a captured
graph holds them as constants. Worked out from the input's shape while ``torch.jit.trace`` records (the legacy ONNX
exporter), ``ceil(C / s)`` would be recorded as tensor arithmetic, and ONNX's integer ``Div`` truncates: written as
``-(-C // s)`` it gave ``AxialShift(16, 5, 3)`` groups of 3 channels, 12 channels out of 16 and wrong model outputs.
The map's size stays symbolic (no branch on it), so exported graphs serve every size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fast_linear import tracing

__all__ = ['AxialShift', 'axial_shift', 'shift_offsets', 'PAD_MODES', 'SHIFT_IMPLS', 'DEFAULT_IMPL']

PAD_MODES = ('zero', 'circular', 'reflect', 'replicate')
SHIFT_IMPLS = ('slice', 'conv')
# slicing: the fastest of the three on one CPU thread (docs/benchmarks.md) and exact under autocast and TF32
DEFAULT_IMPL = 'slice'


def shift_offsets(channels: int, shift_size: int, dilation: int = 1) -> list[tuple[int, int, int]]:
    """``(first_channel, num_channels, offset)`` of each channel group: ``out[i] = in[i + offset]``."""
    # ceil(C / s), as the official kernel and torch.chunk; operands kept positive, where floor and truncating
    # division agree (a traced shape arithmetic exported to ONNX truncates)
    group = (channels + shift_size - 1) // shift_size
    half = shift_size // 2
    return [(c0, min(group, channels - c0), (half - g) * dilation) for g, c0 in enumerate(range(0, channels, group))]


def _check_args(shift_size: int, dim: int, dilation: int, pad_mode: str) -> None:
    if shift_size < 1 or shift_size % 2 == 0:
        raise ValueError(f'shift_size must be a positive odd number (shifts symmetric about 0), got {shift_size}.')
    if dim not in (2, 3):
        raise ValueError(f'dim must be 2 (shift along H) or 3 (shift along W) of an NCHW map, got {dim}.')
    if dilation < 1:
        raise ValueError(f'dilation must be a positive integer, got {dilation}.')
    if pad_mode not in PAD_MODES:
        raise ValueError(f'pad_mode must be one of {PAD_MODES}, got {pad_mode!r}.')


def _pad_axis(x: torch.Tensor, dim: int, pad: int, pad_mode: str) -> torch.Tensor:
    """Pad only axis ``dim`` (2 or 3) of an NCHW map by ``pad`` on both sides."""
    size = x.shape[dim]
    if pad_mode == 'circular' and pad > size or pad_mode == 'reflect' and pad >= size:
        need = pad if pad_mode == 'circular' else pad + 1
        raise ValueError(
            f"pad_mode={pad_mode!r} with shift reach {pad} needs every feature map at least {need} wide along the "
            f'shifted axis, got {size}: use a larger input, a smaller shift_size/dilation, or pad_mode '
            f"'zero' or 'replicate'.")
    pads = (pad, pad, 0, 0) if dim == 3 else (0, 0, pad, pad)
    mode = 'constant' if pad_mode == 'zero' else pad_mode
    return F.pad(x, pads, mode=mode)  # B, C, H+2p, W or B, C, H, W+2p


def axial_shift(x: torch.Tensor, dim: int, shift_size: int, dilation: int = 1, pad_mode: str = 'zero') -> torch.Tensor:
    """Shift channel groups of an NCHW map along axis ``dim`` (the slicing implementation; see the module docstring).

    The groups come from ``x``'s channel count; :class:`AxialShift` works them out at construction instead.
    """
    _check_args(shift_size, dim, dilation, pad_mode)
    if shift_size == 1:
        return x
    return _shift_slices(x, dim, shift_offsets(int(x.shape[1]), shift_size, dilation), (shift_size // 2) * dilation,
                         pad_mode)


def _shift_into(out: torch.Tensor, x: torch.Tensor, dim: int, offsets: list[tuple[int, int, int]]) -> torch.Tensor:
    """Write the zero-filled shift of ``x`` into ``out`` (same shape): per channel group, the window that stays inside
    the map copied and the strip shifted in from outside zeroed; no padded copy, no concatenation."""
    size = x.shape[dim]
    for c0, n, off in offsets:
        src, dst = x.narrow(1, c0, n), out.narrow(1, c0, n)
        kept = size - abs(off)
        if kept <= 0:
            dst.zero_()
        elif off >= 0:
            dst.narrow(dim, 0, kept).copy_(src.narrow(dim, off, kept))
            dst.narrow(dim, kept, off).zero_()
        else:
            dst.narrow(dim, -off, kept).copy_(src.narrow(dim, 0, kept))
            dst.narrow(dim, 0, -off).zero_()
    return out


class _ZeroShift(torch.autograd.Function):
    """The zero-filled shift (pad_mode 'zero') written straight into a map of the input's memory layout, whose
    gradient is the shift by the opposite offsets (also zero-filled), done the same way.

    Autograd's gradient of the slicing form (narrow of a padded group, pad, split, cat) allocates each group's padded
    gradient in NCHW, so on a channels-last map the gradient reaching the GELU and GroupNorm before the shift was
    NCHW against their channels-last inputs, a slow mixed-layout path. Bit-identical to the slicing form forward and
    backward (copies only; tests/test_axial_shift.py); twice differentiable (the backward is this function again).
    On the host of docs/benchmarks.md, AS-MLP-T's training step 1.05x fp32 / 1.10x bf16 and its bf16 inference
    1.05x the slicing form's (interleaved, batch 8).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, offsets: list[tuple[int, int, int]]) -> torch.Tensor:
        ctx.dim, ctx.offsets = dim, offsets
        return _shift_into(torch.empty_like(x), x, dim, offsets)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _ZeroShift.apply(grad, ctx.dim, [(c0, n, -off) for c0, n, off in ctx.offsets]), None, None


def _shift_slices(x: torch.Tensor, dim: int, offsets: list[tuple[int, int, int]], reach: int,
                  pad_mode: str) -> torch.Tensor:
    """The slicing shift with the channel groups ``offsets`` (:func:`shift_offsets`) and the largest |offset|.

    In eager mode the zero-filled shift runs as :class:`_ZeroShift` (the same values, the input's memory layout kept
    forward and backward); a graph being captured (export, tracing) or compiled gets the pad-narrow-cat form below,
    plain ops that every exporter and runtime knows."""
    if pad_mode == 'zero' and not (tracing() or torch.compiler.is_compiling()):
        return _ZeroShift.apply(x, dim, offsets)
    size = x.shape[dim]
    # split first and pad each group: the backward of split is one cat, whereas narrowing the channels of one padded
    # map would make every group's backward allocate a zero gradient of the whole map. Group g reads the padded
    # positions [reach + offset, reach + offset + size), a window that always lies inside the padded axis, so there is
    # no branch on the map size (an exported graph serves every size; a pad that crops one side and fills the other
    # would need one once |offset| exceeds the size)
    groups = x.split([n for _, n, _ in offsets], dim=1)
    parts = [_pad_axis(g, dim, reach, pad_mode).narrow(dim, reach + off, size)
             for g, (_, _, off) in zip(groups, offsets, strict=True)]
    return torch.cat(parts, dim=1)  # B, C, H, W


class AxialShift(nn.Module):
    """The axial shift of one spatial axis as a module (NCHW in and out, no parameters).

    ``count_macs = False``: the paper counts the shift as free, and :func:`mlpvision.profile` leaves it out (the
    ``'conv'`` implementation would otherwise add ``shift_size * C * H * W`` MACs).
    """

    count_macs = False

    def __init__(
            self,
            channels: int,
            shift_size: int,
            dim: int,
            dilation: int = 1,
            pad_mode: str = 'zero',
            impl: str = DEFAULT_IMPL,
    ) -> None:
        """
        Args:
            channels: C of the input (the ``'conv'`` kernel is built for it).
            shift_size: number of channel groups, odd; 1 is the identity.
            dim: 2 shifts along H, 3 along W.
            dilation: multiplies every group's offset (the paper's dilated shift).
            pad_mode: what is shifted in at the border: 'zero' (released models), 'circular', 'reflect', 'replicate'.
            impl: 'slice' or 'conv' (identical results; see the module docstring).
        """
        super().__init__()
        _check_args(shift_size, dim, dilation, pad_mode)
        if impl not in SHIFT_IMPLS:
            raise ValueError(f'impl must be one of {SHIFT_IMPLS}, got {impl!r}.')
        self.channels = channels
        self.shift_size = shift_size
        self.dim = dim
        self.dilation = dilation
        self.pad_mode = pad_mode
        self.impl = impl
        # the channel groups, from the channel count built for (never from a traced shape; module docstring)
        self.offsets = shift_offsets(channels, shift_size, dilation)
        if impl == 'conv':
            # tap t of a kernel of size shift_size and this dilation reads in[i + (t - s//2) * d]; group g needs
            # offset (s//2 - g) * d, i.e. tap s - 1 - g
            kernel = torch.zeros(channels, 1, shift_size)
            for g, (c0, n, _) in enumerate(self.offsets):
                kernel[c0:c0 + n, 0, shift_size - 1 - g] = 1.
            shape = (channels, 1, shift_size, 1) if dim == 2 else (channels, 1, 1, shift_size)
            self.register_buffer('kernel', kernel.reshape(shape), persistent=False)  # C, 1, k, 1 or C, 1, 1, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift_size == 1:
            return x
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f'AxialShift was built for (B, {self.channels}, H, W) input, got shape {tuple(x.shape)}: '
                             f'build it with channels={x.shape[1] if x.ndim == 4 else "C"}.')
        reach = (self.shift_size // 2) * self.dilation
        if self.impl == 'slice':
            return _shift_slices(x, self.dim, self.offsets, reach, self.pad_mode)
        dilation = (self.dilation, 1) if self.dim == 2 else (1, self.dilation)
        kernel = self.kernel.to(x.dtype)
        if self.pad_mode == 'zero':  # the convolution's own zero padding saves a copy
            padding = (reach, 0) if self.dim == 2 else (0, reach)
            return F.conv2d(x, kernel, padding=padding, dilation=dilation, groups=self.channels)  # B, C, H, W
        xp = _pad_axis(x, self.dim, reach, self.pad_mode)  # B, C, H+2p, W or B, C, H, W+2p
        return F.conv2d(xp, kernel, dilation=dilation, groups=self.channels)  # B, C, H, W

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, shift_size={self.shift_size}, dim={self.dim}, dilation={self.dilation}, '
                f'pad_mode={self.pad_mode!r}, impl={self.impl!r}')
