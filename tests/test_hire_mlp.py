"""Hire-MLP: the official outputs at a non-square size, the structure and step schedule, the knobs, input sizes,
checkpoint layouts and export. Official 224x224 parity for all four variants lives in test_parity.py."""
import argparse
import contextlib
import importlib.util
import io
import json
import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.optim._param_groups import param_groups_weight_decay

import mlpvision
from mlpvision.models.hire_mlp import HireMLP, checkpoint_filter_fn, pad_end, shift

from conftest import FIXTURES, on_meta, parity_record
from fill import fill_state_dict, make_input

NONSQUARE = json.loads((FIXTURES / 'hire_mlp' / 'hire_mlp_tiny_230x301.json').read_text())
TOL = 1e-5  # relative to the largest reference value; float32 rounding gives ~2e-7 here


@pytest.fixture(scope='module')
def official_sd() -> dict[str, torch.Tensor]:
    """Deterministic official-format weights of hire_mlp_tiny (the parity fixture's schema)."""
    return fill_state_dict(parity_record('hire_mlp_tiny')['schema'])


@pytest.fixture(scope='module')
def tiny() -> HireMLP:
    """A default hire_mlp_tiny in eval mode, shared by the tests that only read it."""
    return mlpvision.create_model('hire_mlp_tiny').eval()


def _tiny(sd: dict[str, torch.Tensor] | None = None, **kwargs) -> HireMLP:
    model = mlpvision.create_model('hire_mlp_tiny', **kwargs).eval()
    if sd is not None:
        model.load_state_dict(checkpoint_filter_fn(sd, model))
    return model


def _assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    err, scale = (y - ref).abs().max().item(), ref.abs().max().item()
    assert err <= TOL * scale, f'max |diff| {err:.3g} > {TOL} x {scale:.3g}'


# --- official outputs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('case', NONSQUARE['cases'], ids=[c['name'] for c in NONSQUARE['cases']])
def test_official_output_at_non_square_non_divisible_size(case, official_sd):
    # 230x301: stage maps 57x75, 29x38, 15x19, 8x10, so every region size (4, 3, 3, 2) needs padding somewhere
    model = _tiny(official_sd, **case['kwargs'])
    x = make_input(**NONSQUARE['input'])
    with torch.no_grad():
        maps = model.forward_features(x)
        feats, logits = model.forward_head(maps, pre_logits=True), model.forward_head(maps)
    _assert_close(feats, torch.tensor(case['pre_logits']))
    if 'logits' in case:
        _assert_close(logits, torch.tensor(case['logits']))


def test_release_checkpoint_layout_loads(official_sd, tmp_path):
    # the official train.py (DeiT) saves {'model', 'optimizer', 'lr_scheduler', 'epoch', 'model_ema', 'args'}
    path = tmp_path / 'hire_mlp_tiny.pth'
    torch.save({'model': official_sd, 'optimizer': {'state': {}, 'param_groups': []}, 'lr_scheduler': {'t': 300},
                'epoch': 299, 'model_ema': None, 'args': argparse.Namespace(model='hire_mlp_tiny', lr=5e-4)}, path)
    model = mlpvision.create_model('hire_mlp_tiny', checkpoint_path=path).eval()
    x = make_input(0, (1, 3, 64, 80))
    with torch.no_grad():
        assert torch.equal(model(x), _tiny(official_sd)(x))


def test_own_state_dict_passes_through_unchanged(tiny):
    model = tiny
    sd = model.state_dict()
    out = checkpoint_filter_fn(sd, model)
    assert list(out) == list(sd) and all(out[k] is sd[k] for k in sd)


# --- structure -------------------------------------------------------------------------------------------------

def test_structure_follows_official(tiny):
    model = tiny
    mixers = [[b.token_mixer for b in s.blocks] for s in model.stages]
    # step of block i: (i % step_stride) * step_dilation, strides (2, 2, 3, 2), dilations (2, 2, 1, 1)
    assert [[m.mlp_h.step for m in s] for s in mixers] == [[0, 2], [0, 2], [0, 1, 2, 0], [0, 1]]
    assert [[m.mlp_w.step for m in s] for s in mixers] == [[0, 2], [0, 2], [0, 1, 2, 0], [0, 1]]
    assert [s[0].mlp_h.region_size for s in mixers] == [4, 3, 3, 2]
    for s, dim in zip(mixers, (64, 128, 320, 512), strict=True):
        h = s[0].mlp_h
        # hidden width C/2 whatever the region size, BN + ReLU inside, no bias before the BN
        assert (h.fc1.in_channels, h.fc1.out_channels, h.fc2.out_channels) == (dim * h.region_size, dim // 2,
                                                                              dim * h.region_size)
        assert h.fc1.bias is None and isinstance(h.norm, nn.BatchNorm2d) and isinstance(h.act, nn.ReLU)
        assert s[0].reweight.fc2.out_channels == 3 * dim
    stem = model.stem.conv
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (4, 4), (2, 2))
    down = model.stages[1].downsample.conv
    assert (down.kernel_size, down.stride, down.padding) == ((3, 3), (2, 2), (1, 1))
    assert isinstance(model.stem.bn, nn.BatchNorm2d) and isinstance(model.stem.act, nn.ReLU)
    assert isinstance(model.stages[3].downsample.act, nn.ReLU)


def test_deploy_form_folds_every_norm_it_can():
    # released settings (circular padding): only the final norm is left; the equivalence itself is tested for every
    # model in float64 by tests/test_models.py
    deployed = mlpvision.create_model('hire_mlp_tiny', deploy=True)
    assert [n for n, m in deployed.named_modules() if isinstance(m, nn.BatchNorm2d)] == ['norm']
    # a zero-filled shift or region padding brings in zeros after the first norm: it stays, and the deploy form of
    # such a model still equals its training form
    torch.manual_seed(0)
    kw = dict(depths=(1, 2, 1, 1), embed_dims=(16, 32, 32, 64), step_pad_mode='zero', drop_path_rate=0.)
    model = mlpvision.create_model('hire_mlp_tiny', **kw).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    deployed = mlpvision.reparameterize(model)
    norm1 = [type(b.norm1) for s in deployed.stages for b in s.blocks]
    assert norm1 == [nn.Identity, nn.Identity, nn.BatchNorm2d, nn.Identity, nn.Identity]  # steps 0, 0, 2, 0, 0
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-5)
    direct = mlpvision.create_model('hire_mlp_tiny', deploy=True, **kw)
    direct.load_state_dict(deployed.state_dict(), strict=True)


def test_step_schedule_and_macs_match_official():
    # the official parameter counts (ModelMeta.params, equal to the parity fixtures') are asserted for every model in
    # test_models.py and test_parity.py
    small = on_meta('hire_mlp_small')
    assert [b.token_mixer.mlp_h.step for b in small.stages[2].blocks] == [0, 1, 2] * 3 + [0]
    # fvcore (the official figure) also counts 2 flops per element of every eval-mode BatchNorm
    model = on_meta('hire_mlp_tiny')
    bn_elems = []
    hooks = [m.register_forward_hook(lambda m, i, o: bn_elems.append(o.numel()))
             for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    prof = mlpvision.profile(model)
    for h in hooks:
        h.remove()
    assert prof.macs == 2_144_002_048
    assert round((prof.macs + 2 * sum(bn_elems)) / 1e9, 3) == mlpvision.model_meta('hire_mlp_tiny').gmacs


def test_drop_path_linear_over_all_blocks():
    model = _tiny(drop_path_rate=0.1)
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0. for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.1 * k / 9 for k in range(10)], abs=1e-12)


def test_official_init(tiny):
    model = tiny
    w = model.stages[3].blocks[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 1e-3
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            assert not m.bias.any()
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and not m.bias.any()


def test_no_weight_decay_matches_deit_optimizer(tiny):
    model = tiny
    nwd = model.no_weight_decay()
    assert {'stem.conv.bias', 'stem.bn.weight', 'norm.weight', 'head.fc.bias'} <= nwd and 'head.fc.weight' not in nwd
    groups = param_groups_weight_decay(model, 0.05)  # timm's filter_bias_and_bn, as the official create_optimizer
    no_decay = {id(p) for g in groups if g['weight_decay'] == 0. for p in g['params']}
    assert {n for n, p in model.named_parameters() if id(p) in no_decay} == nwd


def test_no_output_on_construction(capsys):
    with torch.device('meta'):
        mlpvision.create_model('hire_mlp_small')
    assert capsys.readouterr().out == ''


# --- input sizes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('hw', [(64, 96), (37, 53), (17, 40), (5, 9), (3, 3)])
def test_any_input_size(hw, tiny):
    # below ~19 pixels the official F.pad(circular) raises; circular padding here wraps as often as needed
    with torch.no_grad():
        y = tiny(torch.randn(1, 3, *hw))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_feature_maps_non_square():
    model = timm.create_model('hire_mlp_tiny', features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 24), (128, 8, 12), (320, 4, 6), (512, 2, 3)]


def test_bad_input_is_a_clear_error(tiny):
    model = tiny
    with pytest.raises(ValueError, match='at least 3x3'):
        model(torch.randn(1, 3, 2, 16))
    with pytest.raises(ValueError, match='in_chans=1'):
        model(torch.randn(1, 1, 32, 32))


# --- padding and shift helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize('dim', [2, 3])
def test_pad_end_and_shift(dim):
    x = torch.randn(1, 2, 5, 7)
    size = x.shape[dim]
    ref = F.pad(x, (0, 0, 0, 3) if dim == 2 else (0, 3, 0, 0), mode='circular')
    assert torch.equal(pad_end(x, 3, dim, 'circular'), ref)
    wrapped = pad_end(x, 2 * size + 1, dim, 'circular')  # more than F.pad allows
    assert torch.equal(wrapped, x.index_select(dim, torch.arange(3 * size + 1) % size))
    assert torch.equal(pad_end(x, 2, dim, 'zero').narrow(dim, size, 2), torch.zeros_like(x.narrow(dim, 0, 2)))
    assert torch.equal(pad_end(x, 2, dim, 'replicate').narrow(dim, size, 2), x.narrow(dim, size - 1, 1).expand_as(
        x.narrow(dim, 0, 2)))
    assert torch.equal(shift(x, 2, dim, 'circular'), torch.roll(x, 2, dim))
    zero = shift(x, 2, dim, 'zero')
    assert not zero.narrow(dim, 0, 2).any() and torch.equal(zero.narrow(dim, 2, size - 2), x.narrow(dim, 0, size - 2))


# --- knobs -----------------------------------------------------------------------------------------------------

def test_ablation_switches():
    with torch.device('meta'):
        no_inner = _tiny(inner_region=False)
        no_cross = _tiny(cross_region=False)
    assert {b.token_mixer.mlp_h.region_size for s in no_inner.stages for b in s.blocks} == {1}
    assert {b.token_mixer.mlp_w.step for s in no_cross.stages for b in s.blocks} == {0}
    no_c = _tiny(channel_branch=False)
    mixer = no_c.stages[0].blocks[0].token_mixer
    assert mixer.mlp_c is None and mixer.reweight.fc2.out_channels == 2 * 64
    assert mlpvision.count_params(no_c) == 18_041_672 - sum(d * d + d + (d // 4) * d + d for d in (64,) * 2 + (
        128,) * 2 + (320,) * 4 + (512,) * 2)
    with torch.no_grad():
        assert torch.isfinite(no_c(torch.randn(1, 3, 40, 56))).all()


def test_rolling_is_undone():
    # with region size 1 the branches are per-pixel, so a circular shift and its inverse cancel exactly
    a = _tiny(inner_region=False)
    b = _tiny(inner_region=False, cross_region=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)


def test_official_mode_names_and_bad_knobs():
    with torch.device('meta'):
        model = _tiny(step_pad_mode='0', region_pad_mode='c')
    assert model.stages[0].blocks[1].token_mixer.mlp_h.step_pad_mode == 'zero'
    with pytest.raises(ValueError, match="'circular', 'zero' or 'replicate'"):
        HireMLP(region_pad_mode='reflect')
    with pytest.raises(ValueError, match='one value per stage'):
        HireMLP(region_sizes=(4, 3, 3))


def test_grad_checkpointing_same_output():
    model = _tiny().train()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x).detach()  # with autograd, as below (without it the convs take the fused oneDNN path)
    model.set_grad_checkpointing(True)
    y = model(x)
    y.sum().backward()
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)


# --- export ----------------------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec('onnx') is None, reason='onnx is not installed')
def test_legacy_onnx_export():
    model = _tiny()
    x = torch.randn(1, 3, 70, 93)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings: the traced graph is for this input size
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17)
    if importlib.util.find_spec('onnxruntime') is None:
        return
    import onnxruntime
    sess = onnxruntime.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    model = _tiny()
    x = torch.randn(1, 3, 70, 93)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
