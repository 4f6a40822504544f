"""mlpvision.layers' modules: the parameters and state-dict keys of the modules they stand for, the same function
(exactly where the plain op runs, up to float rounding on the oneDNN path), and the shortcut / activation fusion."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp as TimmMlp
from torch.utils.flop_counter import FlopCounterMode

from mlpvision.layers import (
    GRN,
    GroupedLinear,
    Linear,
    Mlp,
    PointwiseConv,
    ProjectedMixer,
    autocast_input,
    derived_weights,
    fast_linear,
    mean_hw,
    pointwise_conv_mean,
)

TOL = 1e-5  # relative to the largest output: float32 rounding of a different summation order
CL = torch.channels_last


def _close(a, b, tol=TOL):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert (a - b).abs().max().item() <= tol * b.abs().max().item()


def _gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize('use_conv', [False, True])
def test_mlp_has_timm_keys_and_output(use_conv):
    torch.manual_seed(0)
    ours = Mlp(16, 32, act_layer=nn.GELU, drop=0.1, use_conv=use_conv)
    torch.manual_seed(0)
    timm_mlp = TimmMlp(16, 32, act_layer=nn.GELU, drop=0.1, use_conv=use_conv)
    assert list(ours.state_dict()) == list(timm_mlp.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), timm_mlp.state_dict().values(),
                                                 strict=True))
    x = torch.randn(2, 16, 3, 5, generator=_gen())
    if not use_conv:
        x = x.permute(0, 2, 3, 1)  # B, H, W, C
    ours.eval(), timm_mlp.eval()
    with torch.no_grad():
        if use_conv:
            assert torch.equal(ours(x), timm_mlp(x))  # NCHW storage: the convs themselves
        else:
            _close(ours(x), timm_mlp(x))  # oneDNN's matmul
        if use_conv:
            x_cl = x.contiguous(memory_format=CL)
            y = ours(x_cl, shortcut=x_cl)
            assert y.is_contiguous(memory_format=CL)
            _close(y, x + timm_mlp(x))
            v = torch.randn(2, 16, generator=_gen())  # a (B, C) vector: the convs on a 1x1 map
            _close(ours(v), timm_mlp(v[:, :, None, None]).flatten(1))
        else:
            _close(ours(x, shortcut=x), x + timm_mlp(x))
    ours.train(), timm_mlp.train()
    torch.manual_seed(1)
    y = ours(x, shortcut=x)
    torch.manual_seed(1)
    assert torch.equal(y, x + timm_mlp(x))  # training with dropout: autograd, the plain ops, the same draws


@pytest.mark.parametrize('act', [None, nn.GELU(), nn.ReLU(), nn.SiLU()])
@pytest.mark.parametrize('with_shortcut', [False, True])
def test_pointwise_conv_matches_the_conv(act, with_shortcut):
    g = _gen()
    conv = PointwiseConv(24, 40)
    assert conv.kernel_size == (1, 1) and set(conv.state_dict()) == {'weight', 'bias'}
    x = torch.randn(2, 24, 5, 7, generator=g)
    s = torch.randn(2, 40, 5, 7, generator=g) if with_shortcut else None

    def ref(inp):
        y = F.conv2d(inp, conv.weight, conv.bias)
        y = y if act is None else act(y)
        return y if s is None else s + y

    with torch.no_grad():
        assert torch.equal(conv(x, act=act, shortcut=s), ref(x))  # NCHW storage: the plain conv
        s_cl = None if s is None else s.contiguous(memory_format=CL)
        y = conv(x.contiguous(memory_format=CL), act=act, shortcut=s_cl)
        assert y.is_contiguous(memory_format=CL)
        _close(y, ref(x))
        v = x[:, :, 0, 0]  # (B, C): the conv on a 1x1 map
        sv = None if s is None else s[:, :, 0, 0]
        y = conv(v, act=act, shortcut=sv)
        r = F.conv2d(v[:, :, None, None], conv.weight, conv.bias).flatten(1)
        r = r if act is None else act(r)
        _close(y, r if sv is None else sv + r)


def test_pointwise_conv_takes_the_onednn_path_only_where_it_applies(monkeypatch):
    if not fast_linear._onednn_available():
        pytest.skip('this torch has no oneDNN ops')
    calls = []
    real = F.conv2d
    monkeypatch.setattr(fast_linear.F, 'conv2d', lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = PointwiseConv(8, 16)
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=CL)
    with torch.inference_mode():
        conv(x, act=nn.GELU())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert conv(x, act=nn.GELU()).dtype == torch.bfloat16
    assert calls == ([] if fast_linear.onednn_bf16_supported() else [1])  # bf16: oneDNN's where it has bf16
    calls.clear()
    y = conv(x, act=nn.GELU())  # autograd: the plain conv, with its backward
    assert calls == [1] and y.requires_grad


@pytest.mark.parametrize('act', [None, nn.GELU()])
def test_linear_matches_nn_linear(act):
    torch.manual_seed(0)
    ours = Linear(48, 96)
    torch.manual_seed(0)
    plain = nn.Linear(48, 96)
    assert torch.equal(ours.weight, plain.weight) and torch.equal(ours.bias, plain.bias)
    x = torch.randn(2, 7, 48, generator=_gen())
    s = torch.randn(2, 7, 96, generator=_gen())
    ref = plain(x) if act is None else act(plain(x))
    with torch.no_grad():
        _close(ours(x, act=act), ref)
        _close(ours(x, act=act, shortcut=s), s + ref)
    assert torch.equal(ours(x, act=act), ref)  # autograd: F.linear itself


@pytest.mark.parametrize('groups', [1, 4])
def test_grouped_linear_is_the_grouped_1x1_conv(groups):
    fc = GroupedLinear(32, 24, groups)
    assert isinstance(fc, nn.Conv2d) and fc.weight.shape == (24, 32 // groups, 1, 1)
    x = torch.randn(5, 32, generator=_gen())
    ref = F.conv2d(x[:, :, None, None], fc.weight, fc.bias, groups=groups).reshape(5, groups, 24 // groups)
    with torch.no_grad():
        _close(fc(x.reshape(5, groups, 32 // groups)), ref)
    nobias = GroupedLinear(32, 24, groups, bias=False)
    ref = F.conv2d(x[:, :, None, None], nobias.weight, groups=groups).reshape(5, groups, 24 // groups)
    _close(nobias(x.reshape(5, groups, 32 // groups)), ref)


def test_grouped_linear_bf16_inference_keeps_one_bf16_weight_copy(monkeypatch):
    """Under bf16 autocast in inference the grouped FC runs on a bf16 copy of its weight kept between calls (made
    again after the weight changes in place), with autocast's values; without autocast the float32 weight."""
    from mlpvision.layers import fast_linear
    if not (fast_linear._onednn_available() and fast_linear.onednn_bf16_supported()):
        pytest.skip('no oneDNN bf16 on this CPU')
    fc = GroupedLinear(32, 24, 4)
    x = torch.randn(5, 4, 8, generator=_gen())
    ref = F.conv2d(x.reshape(5, 32, 1, 1).bfloat16(), fc.weight.bfloat16(), fc.bias.bfloat16(), groups=4)
    casts = []
    real = fast_linear._bf16
    monkeypatch.setattr(fast_linear, '_bf16', lambda t: casts.append(t is not None) or real(t))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        y = fc(x)
        copy = fast_linear._bf16_copies[fc.weight][1]
        y2 = fc(x)
        assert fast_linear._bf16_copies[fc.weight][1] is copy  # kept, not cast again
        fc.weight.mul_(2)
        y3 = fc(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y2) and casts == [True] * 6
    assert (y.float() - ref.reshape(5, 4, 6).float()).abs().max() <= 2 ** -6 * ref.float().abs().max()
    assert fast_linear._bf16_copies[fc.weight][1] is not copy and not torch.equal(y3, y)


@pytest.mark.parametrize('batch', [4, 64])  # 4: weight larger than the activations, computed as y^T = W x^T
@pytest.mark.parametrize('bias', [True, False])
def test_grouped_linear_gradients_are_the_grouped_1x1_convs(batch, bias):
    fc = GroupedLinear(32, 32, 2, bias=bias)
    x = torch.randn(batch, 32, generator=_gen(), requires_grad=True)
    grad = torch.randn(batch, 2, 16, generator=_gen())
    ref = F.conv2d(x[:, :, None, None], fc.weight, fc.bias, groups=2).reshape(batch, 2, 16)
    ref_grads = torch.autograd.grad(ref, [x, fc.weight] + ([fc.bias] if bias else []), grad)
    out = fc(x.reshape(batch, 2, 16))
    grads = torch.autograd.grad(out, [x, fc.weight] + ([fc.bias] if bias else []), grad)
    _close(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        _close(g, r)


class _Mixer(ProjectedMixer):
    proj_name = 'out'

    def __init__(self, drop: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.out = PointwiseConv(8, 8)
        self.proj_drop = nn.Dropout(drop)

    def mix(self, x):
        return torch.relu(self.conv(x))


@pytest.mark.parametrize('drop', [0., 0.5])
def test_projected_mixer_adds_the_shortcut_in_its_projection(drop):
    m = _Mixer(drop).eval()
    x = torch.randn(2, 8, 5, 5, generator=_gen()).contiguous(memory_format=CL)
    ref = F.conv2d(torch.relu(m.conv(x)), m.out.weight, m.out.bias)
    with torch.no_grad():
        _close(m(x), ref)
        _close(m(x, shortcut=x), x + ref)
    m.train()
    torch.manual_seed(0)
    y = m(x, shortcut=x)
    torch.manual_seed(0)
    assert torch.equal(y, x + m.proj_drop(m.out(m.mix(x))))


def test_grn_is_its_definition_in_float32_and_close_in_bf16():
    grn = GRN(12)
    with torch.no_grad():
        grn.gamma.normal_(generator=_gen())
        grn.beta.normal_(generator=_gen())
    x = torch.randn(2, 5, 7, 12, generator=_gen())  # B, H, W, C
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    ref = grn.gamma * (x * (gx / (gx.mean(dim=-1, keepdim=True) + grn.eps))) + grn.beta + x
    _close(grn(x), ref)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        y = grn(x.bfloat16())
    assert y.dtype == torch.bfloat16  # the map stays bf16
    assert (y.float() - ref).abs().max().item() <= 2 ** -6 * ref.abs().max().item()


def test_grn_gradient_at_an_all_zero_channel_is_torch_norms_not_nan():
    # a channel that is zero over the whole map (a 1x1 map after GELU's exact zeros): sqrt'(0) = inf gave NaN
    # gradients that stopped Strip-MLP training at 32x32; the official torch.norm has gradient 0 there
    grn = GRN(6)
    with torch.no_grad():
        grn.gamma.normal_(generator=_gen())
        grn.beta.normal_(generator=_gen())
    for hw in ((1, 1), (3, 4)):
        x = torch.randn(3, *hw, 6, generator=_gen())
        x[:, :, :, 2] = 0
        x[1] = 0  # one sample zero in every channel
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        gx = torch.norm(xb, p=2, dim=(1, 2), keepdim=True)
        ref = grn.gamma * (xb * (gx / (gx.mean(dim=-1, keepdim=True) + grn.eps))) + grn.beta + xb
        out = grn(xa)
        assert torch.equal(out, ref) or (out - ref).abs().max().item() < 1e-6
        w = torch.randn(out.shape, generator=_gen())
        (ga,), (gb,) = torch.autograd.grad((out * w).sum(), xa), torch.autograd.grad((ref * w).sum(), xb)
        assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
        _close(ga, gb)


def test_mean_hw_and_autocast_input():
    x = torch.randn(2, 6, 9, 11, generator=_gen())
    assert torch.equal(mean_hw(x), x.mean((2, 3)))
    y = mean_hw(x.bfloat16())
    assert y.dtype == torch.bfloat16
    ref = x.bfloat16().float().mean((2, 3))
    assert (y.float() - ref).abs().max().item() <= 2 ** -7 * ref.abs().max().item()
    assert autocast_input(x) is x
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert autocast_input(x).dtype == torch.bfloat16
        assert autocast_input(torch.arange(3)).dtype == torch.int64


def test_pointwise_conv_mean_and_the_flop_counter():
    conv = nn.Conv2d(8, 16, 1)
    x = torch.randn(2, 8, 6, 5, generator=_gen())
    with torch.no_grad():
        _close(pointwise_conv_mean(x, conv.weight, conv.bias), conv(x).mean((2, 3)))
        with FlopCounterMode(display=False):  # the FLOP counter counts the plain mean: the caller takes it
            assert pointwise_conv_mean(x, conv.weight, conv.bias) is None


def test_derived_weights_are_kept_until_a_parameter_changes():
    lin = nn.Linear(4, 3)
    made = []

    def transpose(w, b):
        made.append(1)
        return w.t().contiguous(), b  # a copy (a view of a parameter would report requires_grad in any mode)

    with torch.no_grad():
        first = derived_weights(lin, (lin.weight, lin.bias), transpose)
        again = derived_weights(lin, (lin.weight, lin.bias), transpose)
        assert made == [1] and first[0] is again[0] and not first[0].requires_grad
        lin.weight.mul_(2)  # in place: remade
        after = derived_weights(lin, (lin.weight, lin.bias), transpose)
        assert made == [1, 1] and torch.equal(after[0], lin.weight.t())
    y = derived_weights(lin, (lin.weight, lin.bias), transpose)  # autograd sees the derivation: made every call
    assert made == [1, 1, 1] and y[0].requires_grad
