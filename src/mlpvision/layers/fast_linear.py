"""Linear layers and 1x1 convolutions through oneDNN for CPU inference (fp32, and bf16 autocast).

PyTorch runs an fp32 ``F.linear`` on CPU as a BLAS sgemm (MKL in the official wheels). PyTorch also ships oneDNN,
whose matmul is what its bf16 path and inductor's CPU fusions use, and which can apply the activation in the same
pass; on the machine of ``docs/benchmarks.md`` it runs the fp32 GEMMs of an MLP block faster than MKL (figures there,
"Why the layers do what they do").

The model files do not call these functions: they use the layer modules of :mod:`mlpvision.layers.linear`
(``Linear``, ``PointwiseConv``, ``GroupedLinear``, ``Mlp``), which run through them.

:func:`linear` takes the oneDNN path only where it needs nothing else: a CPU input and weight, no autograd
(``torch.no_grad`` / ``torch.inference_mode``, or tensors that do not require grad), not while ``torch.compile``
traces (inductor picks its own kernels), not while a graph is captured for export (:func:`tracing`: ``torch.fx``,
``torch.jit.trace`` and the legacy ONNX exporter built on it, ``torch.export`` and the ONNX exporter built on that;
an exported graph must hold the plain ops, which every runtime knows) and not under a Python dispatch mode
(``FlopCounterMode`` counts only aten ops). Two cases are covered:

* float32 without autocast: equal to ``act(F.linear(x, weight, bias))`` up to float rounding (another summation
  order);
* bf16 autocast, on a CPU where oneDNN has bf16 (:func:`onednn_bf16_supported`; elsewhere autocast's plain ops
  run): the GEMM autocast would run (bf16 input, weight and bias, float accumulation), with the weight's bf16 copy
  kept between calls instead of a cast on every call, and the activation applied before the output is rounded to
  bf16 rather than after; the output is bf16 either way.

In both cases the weight is kept between calls in oneDNN's blocked layout for the current input shape (remade when
the parameter changes in place or is replaced, or the input shape changes), which saves the reorder oneDNN makes on
every call otherwise (a few per cent of a whole model; docs/benchmarks.md). This keeps one such copy of every weight
the path has seen per dtype it ran in: the weight's size in float32, half in bf16; it goes when the parameter does.

Under autograd (training) a float32 :func:`linear` without autocast on the CPU runs ``_OneDNNLinear``, an autograd
function whose forward and both backward GEMMs (input and weight gradients) are oneDNN's, with the activation and
the residual applied by PyTorch's ops after it: the same values and gradients as ``F.linear`` up to float rounding
(tests/test_fast_linear_train.py). On the host of docs/benchmarks.md ("Same setting", 2026-12-07) it made
ResMLP-S12's fp32 training step 1.04-1.16x the plain path's (``benchmarks/train_step_onednn.py``). Under bf16
autocast training keeps autocast's ops (already oneDNN's bf16 matmul).

Everywhere else it is ``act(F.linear(x, weight, bias))``. ``linear`` can also add a residual (fused into the GEMM
when there is no activation).

The same rules apply to :func:`conv1x1` / :func:`pointwise_conv`, a 1x1 convolution on a channels-last map run as
oneDNN's convolution with the activation or the residual sum fused (AS-MLP, Hire-MLP), to :func:`conv_act`, any
zero-padded convolution on a channels-last map with the activation fused (Hire-MLP's stem and downsamplings), and
:func:`grouped_linear`, a grouped 1x1 convolution on a 1x1 map (RepMLP's FCs) run as batched matrix products.

``set_onednn_linear(False)`` or the environment variable ``MLPVISION_ONEDNN_LINEAR=0`` turns the oneDNN paths off
(to compare, or on a machine where BLAS is faster).
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ['linear', 'grouped_linear', 'conv1x1', 'conv_act', 'conv_add_act', 'conv2d', 'pointwise_conv', 'mlp_forward',
           'conv_mlp_forward', 'derived_weights', 'set_onednn_linear', 'onednn_linear_enabled', 'onednn_bf16_supported',
           'dispatch_mode_active', 'tracing']

_enabled = os.environ.get('MLPVISION_ONEDNN_LINEAR', '1') != '0'
_available: bool | None = None
_bf16_available: bool | None = None
_bf16_copies = WeakIdKeyDictionary()  # parameter -> ((its _version, data_ptr) when copied, bf16 copy)
_packed_weights = WeakIdKeyDictionary()  # weight (or the tensor it views) -> {dtype: (key, packed copy)}
_derived = weakref.WeakKeyDictionary()  # module -> {name of the function: (key of its inputs, derived tensors)}


def set_onednn_linear(enabled: bool) -> bool:
    """Turn the oneDNN path of :func:`linear` on or off; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def onednn_linear_enabled() -> bool:
    return _enabled


def _onednn_available() -> bool:
    global _available
    if _available is None:
        _available = bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise'))
    return _available


def onednn_bf16_supported() -> bool:
    """Whether oneDNN computes in bf16 on this CPU (its own check: AVX512 BW/VL/DQ, AVX-NE-CONVERT or newer; AMX
    and AVX512-BF16 natively, plain AVX512 by conversion). On an AVX2-only CPU (many AMD EPYC / Ryzen and older
    Intel parts) oneDNN's bf16 ops raise, so the bf16 autocast paths here step aside and autocast runs the plain ops
    (PyTorch's own bf16 kernels: correct, and slower than fp32 there; docs/benchmarks.md "AVX2-only host")."""
    global _bf16_available
    if _bf16_available is None:
        _bf16_available = bool(_onednn_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return _bf16_available


def _act_attr(act: nn.Module | None) -> tuple[str, str] | None:
    """oneDNN post-op (name, algorithm) equal to ``act``, '' for none; None when oneDNN has no exact equivalent."""
    if act is None or isinstance(act, nn.Identity):
        return 'none', ''
    if type(act) is nn.GELU:
        return 'gelu', act.approximate  # 'none' (erf) or 'tanh', as nn.GELU
    if type(act) is nn.ReLU:
        return 'relu', ''
    return None


def dispatch_mode_active() -> bool:
    """Whether a Python dispatch mode (``FlopCounterMode`` in :func:`mlpvision.profile`, ``FakeTensorMode``) is on:
    such a mode sees only aten ops, so the fast paths give it the plain op it knows how to count or trace."""
    return not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() > 0


def tracing() -> bool:
    """Whether a graph is being captured for export: ``torch.fx`` symbolic tracing, ``torch.jit.trace`` (which the
    legacy ONNX exporter, ``torch.onnx.export(dynamo=False)``, runs) or ``torch.export`` (under the default ONNX
    exporter too). The oneDNN dispatch below reads the input's device, dtype and layout, which a traced value does
    not have (FX) or which the graph would bake in (its ops are CPU-only, ``torch.jit.trace`` cannot even record their
    scalar-list arguments, and no ONNX runtime has them), so captured graphs get the plain ops (the same values up to
    float rounding). Model code also asks this before a shortcut that depends on the input's size (Hire-MLP), so that
    an exported graph serves every size."""
    return (torch.fx._symbolic_trace.is_fx_symbolic_tracing() or torch.jit.is_tracing()
            or torch.compiler.is_exporting())


def _eager_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a oneDNN path may run this call at all: switched on, CPU tensors, eager mode (not while a graph is
    captured, compiled or a dispatch mode is active), oneDNN's ops present."""
    if tracing() or not _enabled or x.device.type != 'cpu' or weight.device.type != 'cpu':
        return False
    return not (torch.compiler.is_compiling() or dispatch_mode_active()) and _onednn_available()


def _needs_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                        (bias is not None and bias.requires_grad))


def _all_float32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return x.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.dtype | None:
    """The dtype the oneDNN path computes in for this call (float32 or bfloat16), or None when it does not apply."""
    if not _eager_cpu(x, weight) or _needs_grad(x, weight, bias):
        return None  # the oneDNN ops have no backward (training: _OneDNNLinear, for linear only)
    floats = (torch.float32, torch.bfloat16)
    if torch.is_autocast_enabled('cpu'):
        if (torch.get_autocast_dtype('cpu') == torch.bfloat16 and x.dtype in floats and weight.dtype in floats
                and onednn_bf16_supported()):
            return torch.bfloat16
        return None
    return torch.float32 if _all_float32(x, weight, bias) else None


def _bf16(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` in bfloat16; for a float32 tensor a copy kept until ``t`` changes in place."""
    if t is None or t.dtype == torch.bfloat16:
        return t
    if t.is_inference():  # no version counter to tell when it changes: cast every call
        return t.to(torch.bfloat16)
    # a view made on each call (``weight.reshape(...)``) is keyed by the tensor it views, with its geometry
    owner = t if t._base is None else t._base
    entry = _bf16_copies.get(owner)
    key = (t._version, t.data_ptr(), tuple(t.shape), t.stride())
    if entry is None or entry[0] != key:
        entry = (key, t.detach().to(torch.bfloat16))
        _bf16_copies[owner] = entry
    return entry[1]


def _packed(weight: torch.Tensor, dtype: torch.dtype, kind: str, hint: tuple) -> torch.Tensor:
    """``weight`` in ``dtype`` and in oneDNN's blocked layout for inputs described by ``hint`` (a linear's rows, a
    conv's input shape and geometry), kept until the weight changes in place or another ``hint`` comes; for an
    inference tensor (no version counter) cast only. Pre-packing saves the reorder oneDNN otherwise makes on every
    call (docs/benchmarks.md, "Why the layers do what they do"). One packed copy per
    weight and dtype is kept (float32 and bf16 runs of one model, as in a benchmark, do not evict each other)."""
    if weight.is_inference():
        return weight.to(dtype)
    # a view made on each call (``conv.weight.flatten(1)``) is keyed by the tensor it views, with its geometry
    owner = weight if weight._base is None else weight._base
    # the data pointer too: ``param.data = other`` replaces the values without a new version
    key = (weight._version, weight.data_ptr(), tuple(weight.shape), weight.stride(), kind, hint)
    entries = _packed_weights.get(owner)
    if entries is None:
        entries = _packed_weights[owner] = {}
    entry = entries.get(dtype)
    if entry is None or entry[0] != key:
        w = weight.detach().to(dtype)
        if kind == 'conv':  # hint: input shape, then padding, stride, dilation, groups
            shape, padding, stride, dilation, groups = hint
            packed = torch.ops.mkldnn._reorder_convolution_weight(w, list(padding), list(stride), list(dilation),
                                                                  groups, list(shape))
        else:
            packed = torch.ops.mkldnn._reorder_linear_weight(w, hint[0])
        entry = entries[dtype] = (key, packed)
    return entry[1]


def _trains_through_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`linear` runs as :class:`_OneDNNLinear`: float32 on the CPU under autograd (training), in eager
    mode (not while compiling, exporting, tracing or under a dispatch mode), without autocast (under bf16 autocast
    ``F.linear`` already runs oneDNN's bf16 matmul)."""
    return (_eager_cpu(x, weight) and _needs_grad(x, weight, bias) and not torch.is_autocast_enabled('cpu')
            and _all_float32(x, weight, bias) and x.dim() >= 2 and x.numel() > 0)


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` in float32 with oneDNN's GEMM forward and backward.

    PyTorch runs an fp32 ``F.linear`` and its backward as BLAS sgemm calls (MKL in the official wheels), slower than
    oneDNN's fp32 GEMM on the AMD hosts of docs/hosts.md (2048^3 peaks: 77-101 against 201-231 G MAC/s on
    epyc-avx512-1202, 71-97 against 102-113 on epyc-avx512-1207). Backward: the input gradient is ``grad @ weight``,
    the linear of ``grad`` with ``weight^T``; the weight gradient ``grad^T @ x``, the linear of ``grad^T`` with
    ``x^T`` (transposed views, which the op copies where it needs them contiguous: the copies of docs/benchmarks.md's
    ResMLP profile); the bias gradient the sum of ``grad`` over its rows. Equal to autograd's up to float summation
    order (tests/test_fast_linear_train.py). Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, 'none', [], '')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        g = grad.contiguous().reshape(-1, grad.shape[-1])  # rows, out
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.mkldnn._linear_pointwise(g, weight.t(), None, 'none', [], '').reshape(x.shape)
        if ctx.needs_input_grad[1]:
            rows = x.contiguous().reshape(-1, x.shape[-1])  # rows, in
            gw = torch.ops.mkldnn._linear_pointwise(g.t(), rows.t(), None, 'none', [], '')
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           act: nn.Module | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(F.linear(x, weight, bias)) + residual``, through oneDNN with the activation (or, without one, the
    residual sum) fused where that applies.

    ``x`` is (..., in_features); ``act`` an activation module (GELU and ReLU fuse; others run after); ``residual``
    a tensor of the output's shape or None.
    """
    dtype = _onednn_dtype(x, weight, bias)
    if dtype is not None and residual is not None and torch.is_grad_enabled() and residual.requires_grad:
        dtype = None  # the fused sum has no backward either
    if dtype is None:
        trains = _trains_through_onednn(x, weight, bias)
        y = _OneDNNLinear.apply(x, weight, bias) if trains else F.linear(x, weight, bias)
        y = y if act is None else act(y)
        return y if residual is None else residual + y
    if dtype == torch.bfloat16:
        x, bias = x.to(torch.bfloat16), _bf16(bias)
    weight = _packed(weight, dtype, 'linear', (x.numel() // x.shape[-1],))
    if residual is not None and act is None and residual.dtype == x.dtype and residual.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, 'add')
    attr = _act_attr(act)
    if attr is not None:
        y = torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr[0], [], attr[1])
    else:
        y = act(torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], ''))
    return y if residual is None else residual + y


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """One linear layer per group: ``y[n, g] = weight[g] @ x[n, g] + bias[g]``.

    ``x`` is (N, G, K), ``weight`` (G, M, K) and ``bias`` (G, M) or None; returns (N, G, M). This is the grouped 1x1
    convolution on a (N, G*K, 1, 1) map that RepMLP's FCs are written as, run as one (G = 1: :func:`linear`) or G
    batched matrix products: oneDNN's convolution handles a 1x1 map with many channels poorly (docs/benchmarks.md).
    """
    n, g, k = x.shape
    m = weight.shape[1]
    if g == 1:
        return linear(x.reshape(n, k), weight.reshape(m, k), None if bias is None else bias.reshape(m)).reshape(n, 1, m)
    if _onednn_dtype(x, weight, bias) == torch.bfloat16:
        # inference under bf16 autocast: the weight's bf16 copy kept between calls (autocast would cast the whole
        # weight, RepMLP's largest tensors, on every call: docs/benchmarks.md, RepMLP-Res50)
        x, weight, bias = x.to(torch.bfloat16), _bf16(weight), _bf16(bias)
    if weight.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing() and n * (m + k) < m * k:
        # training with a weight larger than the activations (RepMLP's last stage: N = batch, 2 x 2048 x 2048): as
        # y^T = W x^T, whose weight gradient comes out in the weight's own (G, M, K) layout; written as x W^T
        # below, autograd returns it as (G, K, M) and transposes it into the (G, M, K) gradient, a strided copy of
        # the whole weight that took longer than the product itself (benchmarks/profile_train_step.py). Not while
        # torch.jit.trace records: its check traces again with gradients off, and the two graphs must be the same
        xt = x.permute(1, 2, 0)  # G, K, N
        y = torch.bmm(weight, xt) if bias is None else torch.baddbmm(bias.reshape(g, m, 1), weight, xt)  # G, M, N
        return y.permute(2, 0, 1)  # N, G, M
    xt = x.transpose(0, 1)  # G, N, K
    wt = weight.transpose(1, 2)  # G, K, M
    y = torch.bmm(xt, wt) if bias is None else torch.baddbmm(bias.reshape(g, 1, m), xt, wt)  # G, N, M
    return y.transpose(0, 1)  # N, G, M


def _is_pointwise_conv(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and
            conv.padding in ((0, 0), 'valid') and conv.dilation == (1, 1) and conv.groups == 1)


def _geometry(conv: nn.Module) -> tuple | None:
    """(padding, stride, dilation, groups) of a plain zero-padded ``nn.Conv2d`` with numeric padding, else None."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
        return None
    return tuple(conv.padding), tuple(conv.stride), tuple(conv.dilation), conv.groups


def conv_act(x: torch.Tensor, conv: nn.Conv2d, act: nn.Module | None = None) -> torch.Tensor:
    """``act(conv(x))`` for any zero-padded ``nn.Conv2d`` (the stems and downsamplings, 3x3 or 7x7, strided) on
    (B, C, H, W): on a channels-last map where the oneDNN path applies, oneDNN's convolution with the weight kept in
    its blocked layout (and in bf16 under autocast: no cast and reorder on every call) and ReLU / GELU fused (other
    activations run after it); the result is stored channels-last. Otherwise ``act(conv(x))``."""
    geometry = _geometry(conv)
    dtype = None if geometry is None else _conv_dtype(x, conv.weight, conv.bias, None)
    if dtype is None:
        y = conv(x)
        return y if act is None else act(y)
    return _onednn_conv(x, conv.weight, conv.bias, dtype, geometry, act, None)


def conv_add_act(x: torch.Tensor, conv: nn.Conv2d, residual: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """``act(conv(x) + residual)`` for a zero-padded ``nn.Conv2d``: a ResNet block's last conv, its shortcut and the
    ReLU after the sum. Where the oneDNN path applies (as for :func:`conv_act`) and ``residual`` is a channels-last
    map of the output's shape in the dtype the conv computes in, one oneDNN convolution with the sum and then a ReLU
    as post-ops (oneDNN's binary convolution takes no GELU after the sum), stored channels-last: the two passes over
    the map that the sum and the ReLU take otherwise (docs/benchmarks.md, RepMLP-Res50). Otherwise
    ``act(conv(x) + residual)``."""
    geometry = _geometry(conv)
    fuses = type(act) is nn.ReLU
    dtype = None if geometry is None or not fuses else _conv_dtype(x, conv.weight, conv.bias, residual)
    if dtype is not None:
        padding, stride, dilation, _ = geometry
        out_hw = tuple((size + 2 * p - d * (k - 1) - 1) // st + 1 for size, p, d, k, st in
                       zip(x.shape[2:], padding, dilation, conv.kernel_size, stride, strict=True))
        if (residual.dtype == dtype and residual.is_contiguous(memory_format=torch.channels_last)
                and tuple(residual.shape) == (x.shape[0], conv.out_channels, *out_hw)):
            xd, weight, bias, args = _conv_operands(x, conv.weight, conv.bias, dtype, geometry)
            return torch.ops.mkldnn._convolution_pointwise.binary(xd, residual, weight, bias, *args, 'add', None,
                                                                   'relu', [], None)
    return act(conv(x) + residual)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           padding: tuple[int, int] = (0, 0), groups: int = 1, act: nn.Module | None = None) -> torch.Tensor:
    """:func:`conv_act` for a stride-1, zero-padded conv whose kernel is given as a tensor (one derived from the
    parameters: a fold, a reordering; kept by :func:`derived_weights` so that its packed copy is kept too):
    ``act(F.conv2d(x, weight, bias, padding=padding, groups=groups))``."""
    padding = tuple(padding)
    dtype = _conv_dtype(x, weight, bias, None)
    if dtype is None:
        y = F.conv2d(x, weight, bias, padding=padding, groups=groups)
        return y if act is None else act(y)
    return _onednn_conv(x, weight, bias, dtype, (padding, (1, 1), (1, 1), groups), act, None)


def conv1x1(x: torch.Tensor, conv: nn.Conv2d, act: nn.Module | None = None,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv(x)) + residual`` for a 1x1 ``nn.Conv2d`` (stride 1, no padding, one group) on (B, C, H, W).

    When ``x`` is stored channels-last and the oneDNN path applies (as for :func:`linear`: CPU, no autograd, float32
    or bf16 autocast), the conv runs as oneDNN's convolution with the activation (GELU, ReLU) or, without one, the
    residual sum fused; the result is stored channels-last (faster than the conv and a separate activation pass, and
    than oneDNN's inner product for these shapes; docs/benchmarks.md). Otherwise it is ``act(conv(x)) + residual``.
    """
    dtype = _conv_dtype(x, conv.weight, conv.bias, residual) if _is_pointwise_conv(conv) else None
    if dtype is not None:
        return _onednn_conv(x, conv.weight, conv.bias, dtype, ((0, 0), (1, 1), (1, 1), 1), act, residual)
    y = conv(x)  # the module, with its hooks
    y = y if act is None else act(y)
    return y if residual is None else residual + y


def _conv_dtype(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                residual: torch.Tensor | None) -> torch.dtype | None:
    if tracing():
        return None
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        return None
    if residual is not None and torch.is_grad_enabled() and residual.requires_grad:
        return None
    return _onednn_dtype(x, weight, bias)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   act: nn.Module | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`conv1x1` with the kernel (C_out, C_in, 1, 1) and bias given as tensors:
    ``act(F.conv2d(x, weight, bias)) + residual``."""
    dtype = _conv_dtype(x, weight, bias, residual)
    if dtype is None:
        y = F.conv2d(x, weight, bias)
        y = y if act is None else act(y)
        return y if residual is None else residual + y
    return _onednn_conv(x, weight, bias, dtype, ((0, 0), (1, 1), (1, 1), 1), act, residual)


def _conv_operands(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                   geometry: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple]:
    """A oneDNN convolution's operands in ``dtype``: the input (cast for bf16), the weight packed for its shape and
    ``geometry``, the bias (its kept bf16 copy), and the geometry as the lists the op takes."""
    if dtype == torch.bfloat16:
        x, bias = x.to(torch.bfloat16), _bf16(bias)
    weight = _packed(weight, dtype, 'conv', (tuple(x.shape), *geometry))
    return x, weight, bias, tuple(list(g) if isinstance(g, tuple) else g for g in geometry)


def _onednn_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 geometry: tuple, act: nn.Module | None, residual: torch.Tensor | None) -> torch.Tensor:
    """``act(conv2d(x, weight, bias, *geometry)) + residual`` through oneDNN in ``dtype`` (from ``_conv_dtype``)."""
    out_chs = weight.shape[0]
    x, weight, bias, geometry = _conv_operands(x, weight, bias, dtype, geometry)
    if (residual is not None and act is None and residual.dtype == x.dtype and residual.shape[1] == out_chs
            and residual.is_contiguous(memory_format=torch.channels_last)):
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, *geometry, 'add', None, None,
                                                               [], None)
    attr = _act_attr(act)
    if attr is not None:
        y = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, attr[0], [], attr[1] or None)
    else:
        y = act(torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, 'none', [], None))
    return y if residual is None else residual + y


def mlp_forward(mlp: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + mlp(x)`` for a timm ``Mlp`` (fc1, act, drop1, norm, fc2, drop2), its layers through
    :func:`linear` / :func:`conv1x1`; ``residual`` None adds nothing. Dropout and norm run as in ``Mlp.forward``.

    The linear form takes (..., C). The 1x1-conv form (``use_conv=True``) takes a (B, C, H, W) map
    (:func:`conv_mlp_forward`) or a (B, C) vector, read as a 1x1 map and run as linear layers (oneDNN's convolution
    is slow on 1x1 maps), which returns (B, out).
    """
    if isinstance(mlp.fc1, nn.Conv2d) and x.dim() != 2:
        return conv_mlp_forward(mlp, x, residual)
    fc1, fc2 = mlp.fc1, mlp.fc2
    w1 = fc1.weight if isinstance(fc1, nn.Linear) else fc1.weight.flatten(1)
    x = mlp.drop1(linear(x, w1, fc1.bias, mlp.act))
    x = mlp.norm(x)
    w2 = fc2.weight if isinstance(fc2, nn.Linear) else fc2.weight.flatten(1)
    if residual is None:
        return mlp.drop2(linear(x, w2, fc2.bias))
    if mlp.training and mlp.drop2.p > 0:
        return residual + mlp.drop2(linear(x, w2, fc2.bias))
    return linear(x, w2, fc2.bias, residual=residual)


def conv_mlp_forward(mlp: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + mlp(x)`` for a timm ``Mlp`` built with ``use_conv=True`` (1x1 convs; (B, C, H, W)), its convs
    through :func:`conv1x1`. ``residual`` None adds nothing. Dropout and norm run as in ``Mlp.forward``."""
    if not isinstance(mlp.fc1, nn.Conv2d):
        y = mlp(x)
        return y if residual is None else residual + y
    x = conv1x1(x, mlp.fc1, mlp.act)
    x = mlp.norm(mlp.drop1(x))
    if mlp.training and mlp.drop2.p > 0:
        y = mlp.drop2(conv1x1(x, mlp.fc2))
        return y if residual is None else residual + y
    return conv1x1(x, mlp.fc2, residual=residual)


def derived_weights(owner: nn.Module, params: tuple[torch.Tensor | None, ...],
                    make: Callable[..., tuple[torch.Tensor | None, ...]]) -> tuple[torch.Tensor | None, ...]:
    """``make(*params)`` (tensors derived from ``owner``'s parameters: a reordering, a fold), kept between calls
    until one of ``params`` is replaced or changes in place, so that the oneDNN paths keep their packed copies of the
    result too. Made afresh on every call while autograd must see the derivation, ``torch.compile`` traces or a graph is
captured for export (:func:`tracing`: the graph derives them from the parameters instead of baking in a copy).

    The copies live outside the module (not state, not copied with it) and go with it; one set per ``owner`` and
    ``make`` (by name).
    """
    if (torch.compiler.is_compiling() or tracing() or
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)):
        return make(*params)
    key = tuple(None if t is None else (id(t), t.data_ptr(), t.dtype, t.device, t._version) for t in params)
    entries = _derived.get(owner)
    if entries is None:
        entries = _derived[owner] = {}
    entry = entries.get(make.__name__)
    if entry is None or entry[0] != key:
        # plain tensors the packed copies can follow (inference_mode(False) alone would turn grad mode back on)
        with torch.inference_mode(False), torch.no_grad():
            entry = entries[make.__name__] = (key, make(*params))
    return entry[1]
