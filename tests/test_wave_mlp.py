"""Wave-MLP: the official outputs at a second, non-square size and in train mode, the part of the logits that depends
on the input, the token-mixing conv as a depthwise one, structure and knobs, input sizes, checkpoint layouts, pretrained
download and torch.export at any size (ONNX and the rest: test_export.py). Official 224x224 parity (train and deploy
form) for every variant lives in test_parity.py."""
import argparse

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import GroupNorm1
from timm.optim._param_groups import param_groups_weight_decay

import mlpvision
from mlpvision.models import wave_mlp
from mlpvision.models.wave_mlp import WaveMLP, checkpoint_filter_fn

from conftest import by_weight, is_heavy, parity_record
from fill import fill_state_dict, make_input

TOL = 1e-4  # relative to the largest logit (tests/fixtures/parity/README.md); float32 rounding gives ~5e-7 here
VARIANTS = ['wave_mlp_t_dw', 'wave_mlp_t', 'wave_mlp_s', 'wave_mlp_m', 'wave_mlp_b']
SMALL = dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1))


def _official(name: str, **kwargs) -> WaveMLP:
    """``name`` with the fixture's deterministic official-format weights, mapped by checkpoint_filter_fn."""
    model = mlpvision.create_model(name, **kwargs).eval()
    model.load_state_dict(checkpoint_filter_fn(fill_state_dict(parity_record(name)['schema']), model))
    return model


def _assert_close(y: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    err, scale = (y - ref).abs().max().item(), ref.abs().max().item()
    assert err <= tol * scale, f'max |diff| {err:.3g} > {tol} x {scale:.3g}'


@pytest.fixture(scope='module')
def tiny() -> WaveMLP:
    return _official('wave_mlp_t')


# --- official outputs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', by_weight(VARIANTS, heavy=lambda n: is_heavy(n) or n in ('wave_mlp_s', 'wave_mlp_m')))
def test_official_output_at_a_second_non_square_size(name):
    """192x256 (stage maps 48x64 ... 6x8), train and deploy form; the fixture's ``more`` records."""
    model = _official(name)
    deployed = mlpvision.reparameterize(model)
    (rec,) = parity_record(name)['more']
    assert rec['input']['shape'][2:] == [192, 256]
    x, ref = make_input(**rec['input']), torch.tensor(rec['logits'])
    with torch.no_grad():
        _assert_close(model(x), ref)
        _assert_close(deployed(x), ref)


@pytest.mark.parametrize('name', ['wave_mlp_t_dw', 'wave_mlp_t', pytest.param('wave_mlp_s', marks=pytest.mark.slow)])
def test_official_output_in_train_mode(name):
    """Train mode (BatchNorm on the batch's statistics), where each phase conv runs on its own and its BN on the
    batch statistics of its output instead of being folded into a stacked conv."""
    rec = parity_record(name)['train_mode']
    model = _official(name).train()
    with torch.no_grad():
        _assert_close(model(make_input(**rec['input'])), torch.tensor(rec['logits']))


def test_input_dependent_part_of_the_logits(tiny):
    """The fixture weights make the logits mostly the head's bias (the two images differ by ~0.2% of the largest
    logit): the difference between the two images, the part a wrong branch moves most, matches on its own scale."""
    rec = parity_record('wave_mlp_t')
    ref = torch.tensor(rec['logits'])
    with torch.no_grad():
        y = tiny(make_input(**rec['input']))
    _assert_close(y[0] - y[1], ref[0] - ref[1], tol=2e-3)


# --- how it runs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kernel, padding', [((1, 7), (0, 3)), ((7, 1), (3, 0))])
def test_token_fc_is_the_official_grouped_conv(kernel, padding):
    """A depthwise conv over the 2C wave channels and the sum of each group's two outputs: the official grouped conv
    (C groups of two inputs), with the same gradients, channels-last (oneDNN in inference) or not."""
    conv = nn.Conv2d(16, 8, kernel, padding=padding, groups=8, bias=False)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        z = torch.randn(2, 16, 9, 11).contiguous(memory_format=memory_format).requires_grad_()
        y = wave_mlp._token_fc(z, conv.weight, padding)
        ref = conv(z)
        torch.testing.assert_close(y, ref)
        g, g_ref = (torch.autograd.grad(t.square().sum(), [z, conv.weight]) for t in (y, ref))
        for a, b in zip(g, g_ref, strict=True):
            torch.testing.assert_close(a, b)
        with torch.inference_mode():
            torch.testing.assert_close(wave_mlp._token_fc(z.detach(), conv.weight.detach(), padding),
                                       conv(z.detach()), rtol=1e-5, atol=1e-6)


def test_waves_are_the_official_concatenation():
    """``amp cos(phase - t pi/2)`` in one buffer: the official ``cat(amp cos, amp sin)`` (channels-last storage), in
    place in inference and out of place under autograd, with the official gradients."""
    y = torch.randn(2, 24, 5, 7).contiguous(memory_format=torch.channels_last)
    amp, phase = y[:, :8], y[:, 16:].relu() * 3  # strided slices, as the stacked convs' outputs
    ref = torch.cat([amp * torch.cos(phase), amp * torch.sin(phase)], 1)
    with torch.inference_mode():
        z = wave_mlp._waves(amp, phase)
    assert z.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-6)
    a, p = amp.clone().requires_grad_(), phase.clone().requires_grad_()
    grads = torch.autograd.grad(wave_mlp._waves(a, p).square().sum(), [a, p])
    grads_ref = torch.autograd.grad(torch.cat([a * torch.cos(p), a * torch.sin(p)], 1).square().sum(), [a, p])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_waves_backward_is_autograds_in_float32_and_bf16():
    """Under autograd the waves run ``_Waves`` (in-place forward, a backward from cos and sin of the phase): the same
    values as the out-of-place form autograd differentiates, gradients within float rounding of its gradients (bf16:
    within bf16's); with only one input requiring grad, only that one gets a gradient."""
    y = torch.randn(2, 24, 5, 7).contiguous(memory_format=torch.channels_last)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2 ** -7)):
        amp, phase = y[:, :8].to(dtype), (y[:, 16:].relu() * 3).to(dtype)
        a, p = amp.detach().requires_grad_(), phase.detach().requires_grad_()
        a2, p2 = amp.detach().requires_grad_(), phase.detach().requires_grad_()
        z, ref = wave_mlp._waves(a, p), wave_mlp._waves_plain(a2, p2)
        assert torch.equal(z, ref)
        w = torch.randn(z.shape).to(dtype)
        grads = torch.autograd.grad((z * w).sum(), [a, p])
        grads_ref = torch.autograd.grad((ref * w).sum(), [a2, p2])
        for g, g_ref in zip(grads, grads_ref, strict=True):
            assert g.dtype == dtype
            assert (g.float() - g_ref.float()).abs().max() <= tol * g_ref.float().abs().max()
    a = y[:, :8].clone().requires_grad_()
    (ga,) = torch.autograd.grad(wave_mlp._waves(a, y[:, 16:]).sum(), [a])
    torch.testing.assert_close(ga, torch.cos(y[:, 16:]) + torch.sin(y[:, 16:]))


@pytest.mark.parametrize('phase_mode', ['fc', 'depthwise'])
def test_train_and_eval_paths_against_nchw(phase_mode):
    """The stacked and folded convs (eval), the batch-statistics path (train) and their gradients, channels-last
    against NCHW storage (where no oneDNN path runs)."""
    kw = dict(phase_mode=phase_mode, drop_path_rate=0., **SMALL)
    cl = mlpvision.create_model('wave_mlp_t', **kw)
    ref = mlpvision.create_model('wave_mlp_t', channels_last=False, **kw)
    ref.load_state_dict(cl.state_dict())
    x = torch.randn(2, 3, 50, 70)
    with torch.inference_mode():
        torch.testing.assert_close(cl.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)
    for m in (cl.train(), ref.train()):
        m(x).square().mean().backward()
    for (name, a), b in zip(cl.named_parameters(), ref.parameters(), strict=True):
        assert (a.grad - b.grad).norm() <= 1e-4 * b.grad.norm() + 1e-7, name


def test_odd_width():
    model = mlpvision.create_model('wave_mlp_t', embed_dims=(15, 17, 33, 65), depths=(1, 1, 1, 1)).eval()
    nchw = mlpvision.create_model('wave_mlp_t', embed_dims=(15, 17, 33, 65), depths=(1, 1, 1, 1),
                                  channels_last=False).eval()
    nchw.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(model(x), nchw(x), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_is_close_to_float32():
    model = mlpvision.create_model('wave_mlp_t', **SMALL).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = model(x)
    assert (y.float() - ref).abs().max() <= 0.05 * ref.abs().max()


# --- structure ----------------------------------------------------------------------------------------------------

def test_variants_follow_the_official_factories():
    t_dw, s, m = (mlpvision.create_model(n, device='meta') for n in ('wave_mlp_t_dw', 'wave_mlp_s', 'wave_mlp_m'))
    theta = t_dw.stages[0].blocks[0].token_mixer.theta_h.conv
    assert (theta.kernel_size, theta.groups, theta.bias) == ((3, 3), 64, None)  # official mode='depthwise'
    assert isinstance(s.stages[2].blocks[0].norm1, GroupNorm1) and isinstance(s.stem.norm, GroupNorm1)
    assert isinstance(s.stages[2].blocks[0].token_mixer.theta_h.bn, nn.BatchNorm2d)  # always BN (official)
    assert isinstance(m.stem.norm, nn.Identity) and isinstance(m.stages[1].downsample.norm, nn.Identity)
    assert [len(st.blocks) for st in m.stages] == [3, 4, 18, 3]
    assert [st.blocks[0].mlp.fc1.out_channels for st in m.stages] == [512, 1024, 1280, 2048]
    tfc = m.stages[0].blocks[0].token_mixer
    assert (tfc.tfc_h.kernel_size, tfc.tfc_w.kernel_size, tfc.tfc_h.groups) == ((1, 7), (7, 1), 64)


@pytest.mark.parametrize('name, folded', [('wave_mlp_t', True), ('wave_mlp_t_dw', False), ('wave_mlp_s', False)])
def test_deploy_form_folds_every_norm_it_can(name, folded):
    model = mlpvision.create_model(name, **SMALL)
    deployed = mlpvision.reparameterize(model)
    bns = [n for n, m in deployed.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if folded:  # BatchNorm everywhere, 1x1 phase convs: only the final norm stays
        assert bns == ['norm']
    elif name == 'wave_mlp_t_dw':  # the depthwise phase convs' zero padding keeps norm1
        assert bns == [f'stages.{i}.blocks.0.norm1' for i in range(4)] + ['norm']
    else:  # GroupNorm cannot be folded; the phase convs' BN is
        assert bns == []
    direct = mlpvision.create_model(name, deploy=True, **SMALL)
    direct.load_state_dict(deployed.state_dict())


def test_drop_path_linear_over_all_blocks():
    model = mlpvision.create_model('wave_mlp_t', drop_path_rate=0.9)
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.9 * k / 9 for k in range(10)])


def test_no_weight_decay_matches_the_timm_optimizer():
    model = mlpvision.create_model('wave_mlp_t', **SMALL)
    groups = param_groups_weight_decay(model, 0.05)
    no_decay = {n for n, p in model.named_parameters() if any(p is q for q in groups[0]['params'])}
    assert model.no_weight_decay() == no_decay


def test_no_output_on_construction(capsys):
    mlpvision.create_model('wave_mlp_t', **SMALL)
    assert capsys.readouterr() == ('', '')


@pytest.mark.parametrize('hw', [(64, 96), (37, 53), (17, 40), (5, 9), (3, 3)])
def test_any_input_size(hw):
    model = mlpvision.create_model('wave_mlp_t_dw', **SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *hw)).shape == (1, 1000)


def test_bad_input_and_knobs_are_clear_errors():
    model = mlpvision.create_model('wave_mlp_t', **SMALL).eval()
    with pytest.raises(ValueError, match='at least 3x3 pixels, got 2x9'):
        model(torch.randn(1, 3, 2, 9))
    with pytest.raises(ValueError, match="phase_mode must be one of .*'fc'.*got 'conv'"):
        mlpvision.create_model('wave_mlp_t', phase_mode='conv', **SMALL)
    with pytest.raises(ValueError, match=r"norm_layer must be one of \['batch', 'group'\], got 'layer'"):
        mlpvision.create_model('wave_mlp_t', norm_layer='layer', **SMALL)


# --- checkpoints ----------------------------------------------------------------------------------------------------

def test_release_checkpoint_layout_loads(tmp_path, tiny):
    """The releases are saved by timm's train.py (train_wave.py): {'state_dict', 'state_dict_ema', 'args', ...}; the
    plain weights are read (nothing executed)."""
    sd = fill_state_dict(parity_record('wave_mlp_t')['schema'])
    path = tmp_path / 'WaveMLP_T.pth.tar'
    torch.save({'epoch': 299, 'arch': 'WaveMLP_T', 'state_dict': sd, 'optimizer': {'state': {}, 'param_groups': []},
                'version': 2, 'args': argparse.Namespace(model='WaveMLP_T', lr=1e-3), 'metric': 80.9,
                'state_dict_ema': {k: torch.zeros_like(v) for k, v in sd.items()}}, path)
    model = mlpvision.create_model('wave_mlp_t', checkpoint_path=path).eval()
    x = make_input(0, (1, 3, 64, 80))
    with torch.no_grad():
        assert torch.equal(model(x), tiny(x))


def test_own_state_dict_passes_through_unchanged(tiny):
    sd = tiny.state_dict()
    assert checkpoint_filter_fn(sd, tiny).keys() == sd.keys()


def test_pretrained_download_through_timm(tmp_path, monkeypatch):
    """``pretrained=True`` through timm's machinery: the registered tag's file, served locally, loaded and folded."""
    from test_pretrained import _pth, _Server
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    rec = parity_record('wave_mlp_t_dw')
    assert timm.get_pretrained_cfg('wave_mlp_t_dw.in1k').url.endswith('/log-wave/WaveMLP_T_dw.pth.tar')
    with _Server() as server:
        server.files['WaveMLP_T_dw.pth.tar'] = _pth({'state_dict': fill_state_dict(rec['schema']), 'epoch': 299,
                                                     'args': argparse.Namespace(model='WaveMLP_T_dw')})
        model = timm.create_model('wave_mlp_t_dw.in1k', pretrained=True, deploy=True,
                                  pretrained_cfg_overlay=dict(url=f'{server.url}/ok/WaveMLP_T_dw.pth.tar'))
    assert mlpvision.is_reparameterized(model)
    with torch.no_grad():
        _assert_close(model.eval()(make_input(**rec['input'])), torch.tensor(rec['logits']))


# --- export -------------------------------------------------------------------------------------------------------

def test_torch_export_any_size():
    """torch.export (the waves built with cos / sin: no complex tensors in the graph) serves other input sizes, from
    35 px, where every stage's map has at least 2 rows and columns (torch.export's 0/1 specialisation)."""
    model = mlpvision.create_model('wave_mlp_t', **SMALL).eval()
    h, w = torch.export.Dim('h', min=35, max=512), torch.export.Dim('w', min=35, max=512)
    with torch.no_grad():
        prog = torch.export.export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes=({2: h, 3: w},))
        x = torch.randn(2, 3, 45, 77)
        torch.testing.assert_close(prog.module()(x), model(x), rtol=1e-4, atol=1e-5)
