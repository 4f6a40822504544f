"""mlpvision.layers.fast_linear: the oneDNN path equals F.linear up to float rounding, and every case it does not
cover (autograd, autocast, switched off) is exactly F.linear."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from mlpvision.layers import fast_linear
from mlpvision.layers.conv_bn import ConvBN
from mlpvision.layers.fast_linear import (
    conv1x1,
    conv_act,
    conv_add_act,
    conv_mlp_forward,
    linear,
    mlp_forward,
    set_onednn_linear,
)

TOL = 1e-5  # relative to the largest output: float32 rounding of a different summation order


def _close(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL * b.abs().max().item()


@pytest.fixture
def xwb():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 7, 48, generator=g), torch.randn(96, 48, generator=g) * 0.1,
            torch.randn(96, generator=g))


@pytest.mark.parametrize('act', [None, nn.GELU(), nn.GELU(approximate='tanh'), nn.ReLU(), nn.SiLU()])
@pytest.mark.parametrize('bias', [True, False])
def test_matches_f_linear(xwb, act, bias):
    x, w, b = xwb
    b = b if bias else None
    with torch.no_grad():
        ref = F.linear(x, w, b)
        ref = ref if act is None else act(ref)
        _close(linear(x, w, b, act), ref)
        _close(linear(x.transpose(0, 1), w, b, act), ref.transpose(0, 1))  # non-contiguous input


def test_onednn_path_is_taken(xwb, monkeypatch):
    if not fast_linear._onednn_available():
        pytest.skip('this torch has no oneDNN linear op')
    x, w, b = xwb
    calls = []
    real = F.linear
    monkeypatch.setattr(fast_linear.F, 'linear', lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        linear(x, w, b, nn.GELU())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            linear(x, w, b)
    # bf16 through oneDNN only where oneDNN has bf16 (AVX512 / AMX); an AVX2-only CPU gets autocast's F.linear
    assert calls == ([] if fast_linear.onednn_bf16_supported() else [1])
    calls.clear()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
        linear(x, w, b)
    assert calls == [1]


def test_bf16_steps_aside_on_a_cpu_without_onednn_bf16(xwb, monkeypatch):
    """On a CPU where oneDNN has no bf16 (AVX2 only: its bf16 ops raise) the layers run autocast's plain ops: the
    same result as F.linear / the conv under autocast, exactly, and the fp32 path is unchanged."""
    monkeypatch.setattr(fast_linear, '_bf16_available', False)
    assert not fast_linear.onednn_bf16_supported()
    x, w, b = xwb
    reorder = torch.ops.mkldnn._reorder_linear_weight
    monkeypatch.setattr(torch.ops.mkldnn, '_reorder_linear_weight',
                        lambda *a: pytest.fail('a bf16 weight was packed for oneDNN') if a[0].dtype == torch.bfloat16
                        else reorder(*a))
    conv = nn.Conv2d(48, 32, 1)
    x4 = torch.randn(2, 48, 5, 5).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(linear(x, w, b, nn.GELU()), F.gelu(F.linear(x, w, b)))
        assert torch.equal(conv1x1(x4, conv, nn.ReLU()), F.relu(conv(x4)))
        assert torch.equal(conv_act(x4, conv, nn.GELU()), F.gelu(conv(x4)))
    with torch.no_grad():
        _close(linear(x, w, b), F.linear(x, w, b))


def test_autograd_and_switch_are_exact(xwb):
    """Under autograd: the oneDNN training path (tests/test_fast_linear_train.py has its gradients), equal to F.linear
    up to float rounding; switched off, exactly F.linear."""
    x, w, b = xwb
    w = w.clone().requires_grad_()
    y = linear(x, w, b, nn.GELU())
    _close(y, F.gelu(F.linear(x, w, b)))
    y.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    previous = set_onednn_linear(False)
    try:
        with torch.no_grad():
            assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    finally:
        set_onednn_linear(previous)


@pytest.mark.parametrize('act', [None, nn.GELU()])
def test_bf16_autocast(xwb, act):
    """Under bf16 autocast: bf16 out, equal to autocast's F.linear up to one bf16 rounding."""
    x, w, b = xwb
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        y = linear(x, w, b, act)
        ref = F.linear(x, w, b)
        ref = ref if act is None else act(ref)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert (y.float() - ref.float()).abs().max().item() <= 2 ** -7 * ref.float().abs().max().item()


@pytest.mark.skipif(not fast_linear.onednn_bf16_supported(), reason="oneDNN has no bf16 on this CPU: autocast's "
                    "own ops run, and autocast keeps its weight casts until the region ends")
def test_bf16_weight_copy_follows_the_parameter(xwb):
    x, w, b = xwb
    lin = nn.Linear(48, 96)
    with torch.no_grad():
        lin.weight.copy_(w)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            before = linear(x, lin.weight, lin.bias)
            lin.weight.mul_(2)  # in place: the cached bf16 copy must be remade
            after = linear(x, lin.weight, lin.bias)
            ref = F.linear(x, lin.weight, lin.bias)
    assert not torch.equal(before, after)
    assert (after.float() - ref.float()).abs().max().item() <= 2 ** -7 * ref.float().abs().max().item()
    with torch.inference_mode():
        made_here = nn.Linear(48, 96)  # inference tensors: no version counter, cast on every call
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert linear(x, made_here.weight, made_here.bias).dtype == torch.bfloat16


def test_mlp_forward(xwb):
    x = xwb[0]
    mlp = Mlp(48, 96, drop=0.1).eval()
    with torch.no_grad():
        _close(mlp_forward(mlp, x), mlp(x))
    conv = Mlp(48, 96, use_conv=True).eval()
    x4 = x.reshape(2, 48, 7, 1)  # B, C, H, W
    with torch.no_grad():
        assert torch.equal(mlp_forward(conv, x4), conv(x4))
    mlp.train()
    torch.manual_seed(0)
    y = mlp_forward(mlp, x)
    torch.manual_seed(0)
    assert torch.equal(y, mlp(x))  # training: F.linear, dropout in the same places


def test_flop_counter_sees_the_linear(xwb):
    from torch.utils.flop_counter import FlopCounterMode
    x, w, b = xwb
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        linear(x, w, b, nn.GELU())
    assert counter.get_total_flops() == 2 * 2 * 7 * 48 * 96


# --- 1x1 convs on channels-last maps --------------------------------------------------------------------------------

def _conv_ref(conv, x, act, residual):
    y = conv(x)
    y = y if act is None else act(y)
    return y if residual is None else residual + y


@pytest.mark.parametrize('act', [None, nn.GELU(), nn.ReLU(), nn.SiLU()])
@pytest.mark.parametrize('with_residual', [False, True])
def test_conv1x1_matches_the_conv(act, with_residual):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(24, 40, 1)
    x = torch.randn(2, 24, 5, 7, generator=g)
    res = torch.randn(2, 40, 5, 7, generator=g) if with_residual else None
    with torch.no_grad():
        ref = _conv_ref(conv, x, act, res)
        assert torch.equal(conv1x1(x, conv, act, res), ref)  # NCHW storage: the module itself
        cl = torch.channels_last
        res_cl = None if res is None else res.contiguous(memory_format=cl)
        y = conv1x1(x.contiguous(memory_format=cl), conv, act, res_cl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _close(y, ref)


def test_conv1x1_onednn_path_is_taken_only_where_it_applies(monkeypatch):
    if not fast_linear._onednn_available():
        pytest.skip('this torch has no oneDNN ops')
    conv = nn.Conv2d(8, 16, 1)
    calls = []
    monkeypatch.setattr(conv, 'forward', lambda x: calls.append(1) or F.conv2d(x, conv.weight, conv.bias))
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv1x1(x, conv, nn.GELU())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert conv1x1(x, conv, nn.GELU()).dtype == torch.bfloat16
    assert calls == ([] if fast_linear.onednn_bf16_supported() else [1])  # bf16: oneDNN's where it has bf16
    calls.clear()
    y = conv1x1(x, conv, nn.GELU())  # autograd: the module, with its backward
    assert calls == [1] and y.requires_grad
    strided = nn.Conv2d(8, 16, 1, stride=2)
    with torch.no_grad():
        assert torch.equal(conv1x1(x, strided), strided(x))


@pytest.mark.parametrize('geometry', [
    dict(kernel_size=7, stride=4, padding=2),  # Hire-MLP's stem
    dict(kernel_size=3, stride=2, padding=1),  # its downsamplings
    dict(kernel_size=3, padding=2, dilation=2, groups=4),
    dict(kernel_size=(1, 3), padding=(0, 1), bias=False),
])
@pytest.mark.parametrize('act', [None, nn.ReLU(), nn.GELU(), nn.SiLU()])
def test_conv_act_matches_the_conv(geometry, act):
    if not fast_linear._onednn_available():
        pytest.skip('this torch has no oneDNN ops')
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, **geometry)
    x = torch.randn(2, 8, 23, 30, generator=g)
    cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = _conv_ref(conv, x, act, None)
        assert torch.equal(conv_act(x, conv, act), ref)  # NCHW storage: the module itself
        y = conv_act(cl, conv, act)
        assert y.is_contiguous(memory_format=torch.channels_last)
        _close(y, ref)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y16, ref16 = conv_act(cl, conv, act), _conv_ref(conv, cl, act, None)
    assert y16.dtype == ref16.dtype == torch.bfloat16
    # bf16 inputs and weights either way; the activation applied before rounding (fused) or after
    assert (y16.float() - ref.float()).abs().max().item() <= 2 ** -6 * ref.abs().max().item()


def test_conv_act_path_and_conv_bn(monkeypatch):
    if not fast_linear._onednn_available():
        pytest.skip('this torch has no oneDNN ops')
    block = ConvBN(8, 16, 3, stride=2, padding=1, act_layer=nn.ReLU, bias=True, deploy=True).eval()
    calls = []
    monkeypatch.setattr(block.conv, 'forward', lambda x: calls.append(1) or F.conv2d(x, block.conv.weight,
                                                                                      block.conv.bias, 2, 1))
    x = torch.randn(1, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = block(x)
    assert calls == []
    _close(y, F.relu(F.conv2d(x, block.conv.weight, block.conv.bias, 2, 1)))
    assert block(x).requires_grad and calls == [1]  # autograd: the module
    reflect = nn.Conv2d(8, 16, 3, padding=1, padding_mode='reflect')
    with torch.no_grad():
        assert torch.equal(conv_act(x, reflect), reflect(x))  # not zero padding: the module


@pytest.mark.parametrize('geometry', [dict(kernel_size=1), dict(kernel_size=3, stride=2, padding=1)])
def test_conv_add_act_matches_the_sum_and_takes_the_fused_op_only_where_it_applies(geometry, monkeypatch):
    """``relu(conv(x) + residual)``: one oneDNN convolution with the sum and the ReLU as post-ops on channels-last
    maps in inference (fp32, bf16 autocast), the plain ops for NCHW maps, a residual of another dtype or layout, under
    autograd and for another activation (oneDNN's binary convolution takes none after the sum)."""
    act = nn.ReLU()
    if not fast_linear._onednn_available():
        pytest.skip('this torch has no oneDNN ops')
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, **geometry)
    x = torch.randn(2, 8, 12, 10, generator=g)
    hw = (12, 10) if geometry['kernel_size'] == 1 else (6, 5)
    res = torch.randn(2, 16, *hw, generator=g)
    cl, res_cl = x.contiguous(memory_format=torch.channels_last), res.contiguous(memory_format=torch.channels_last)
    calls = []
    monkeypatch.setattr(conv, 'forward', lambda t: calls.append(1) or F.conv2d(t, conv.weight, conv.bias, **{
        k: v for k, v in geometry.items() if k != 'kernel_size'}))
    with torch.no_grad():
        ref_sum = F.conv2d(x, conv.weight, conv.bias, **{k: v for k, v in geometry.items() if k != 'kernel_size'}) + res
        ref = act(ref_sum)
        y = conv_add_act(cl, conv, res_cl, act)
        assert calls == [] and y.is_contiguous(memory_format=torch.channels_last)
        _close(y, ref)
        assert torch.equal(conv_add_act(x, conv, res, act), ref) and calls == [1]  # NCHW: the plain ops
        _close(conv_add_act(cl, conv, res, act), ref)  # an NCHW residual: the plain ops
        assert calls == [1, 1]
        _close(conv_add_act(cl, conv, res_cl, nn.GELU()), F.gelu(ref_sum))
        assert calls == [1, 1, 1]  # GELU after the sum: the plain ops
        with torch.autocast('cpu', dtype=torch.bfloat16):
            calls.clear()
            y16 = conv_add_act(cl, conv, res_cl.bfloat16(), act)
            assert calls == ([] if fast_linear.onednn_bf16_supported() else [1])
            conv_add_act(cl, conv, res_cl, act)  # a float32 residual under bf16 autocast: the plain ops
            assert calls[-1:] == [1]
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - ref).abs().max().item() <= 2 ** -6 * ref.abs().max().item()
    calls.clear()
    assert conv_add_act(cl, conv, res_cl, act).requires_grad and calls == [1]  # autograd: the module


def test_packed_weights_kept_per_dtype(monkeypatch):
    if not fast_linear._onednn_available():
        pytest.skip('this torch has no oneDNN ops')
    conv = nn.Conv2d(8, 16, 1)
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    packs = []
    reorder = torch.ops.mkldnn._reorder_convolution_weight
    monkeypatch.setattr(fast_linear.torch.ops.mkldnn, '_reorder_convolution_weight',
                        lambda w, *a: packs.append(w.dtype) or reorder(w, *a), raising=False)
    with torch.no_grad():
        for _ in range(3):  # float32 and bf16 runs of one model alternate, as in a benchmark: packed once each
            conv1x1(x, conv)
            with torch.autocast('cpu', dtype=torch.bfloat16):
                conv1x1(x, conv)
        bf16 = [torch.bfloat16] if fast_linear.onednn_bf16_supported() else []  # none packed without oneDNN bf16
        assert packs == [torch.float32, *bf16]
        conv.weight.mul_(2)  # in place: remade
        _close(conv1x1(x, conv), conv(x))
    assert packs == [torch.float32, *bf16, torch.float32]

def test_conv_mlp_forward():
    mlp = Mlp(16, 32, act_layer=nn.GELU, use_conv=True).eval()
    x = torch.randn(2, 16, 3, 5).contiguous(memory_format=torch.channels_last)
    res = torch.randn(2, 16, 3, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _close(conv_mlp_forward(mlp, x), mlp(x))
        _close(conv_mlp_forward(mlp, x, residual=res), res + mlp(x))
