"""The model contract, checked for every registered model (parametrised over mlpvision.list_models(), so each new
family is covered by adding it to the registry)."""
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import mlpvision
from mlpvision.models._registry import model_meta

from conftest import on_meta as _on_meta
from conftest import randomise_norm_stats as _randomise_norm_stats

ALL = mlpvision.list_models()


def _heavy(name: str) -> bool:
    """Variants whose real forward/backward checks run only in the slow suite (2 cores; the default suite keeps the
    small variant(s) of each family, which share all code with the big ones)."""
    meta = model_meta(name)
    return (meta.params or 0) > 45e6 or (meta.gmacs or meta.gmacs_paper or 0) > 5


def _params(names, slow_if=_heavy):
    return [pytest.param(n, marks=[pytest.mark.slow] if slow_if(n) else []) for n in names]


def _input(model, batch=2, dtype=torch.float32):
    c, h, w = model.pretrained_cfg['input_size']
    return torch.randn(batch, c, h, w, dtype=dtype)


def test_registry_lists_only_mlpvision_models():
    assert ALL, 'no model registered'
    assert 'resnet50' not in ALL and 'resmlp_12_224' not in ALL
    assert set(ALL) <= set(timm.list_models())
    assert mlpvision.list_models('resmlp_s*') == ['resmlp_s12', 'resmlp_s24', 'resmlp_s36']


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match=r"Unknown mlpvision model 'resmlp_s13'.*resmlp_s12"):
        mlpvision.create_model('resmlp_s13')


@pytest.mark.parametrize('name', ALL)
def test_param_count_and_macs(name):
    meta = model_meta(name)
    model = _on_meta(name).eval()
    n_params = mlpvision.count_params(model)
    if meta.params is not None:
        assert n_params == meta.params, f'{name}: {n_params:,} params, official {meta.params:,}'
    else:
        assert meta.notes, f'{name} has no official parameter count; ModelMeta.notes must say why'

    # MACs within 3% of the paper's figure, counted on the inference (deploy) form that the papers count (RepMLP:
    # "FLOPs ... after the conversion"), or of the official code's count (fvcore, train form) where the paper gives none
    if meta.gmacs_paper is not None:
        ref = meta.gmacs_paper
        prof = mlpvision.profile(_on_meta(name, deploy=True) if _has_reparam(model) else model)
    else:
        ref, prof = meta.gmacs, mlpvision.profile(model)
    assert ref is not None
    assert math.isclose(prof.gmacs, ref, rel_tol=0.03), f'{name}: {prof.gmacs:.3f} GMACs vs {ref}'


@pytest.mark.parametrize('name', _params(ALL))
def test_contract(name):
    model = timm.create_model(name).eval()  # registered into timm
    cfg = model.pretrained_cfg
    for key in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv', 'classifier'):
        assert cfg.get(key) is not None, f'{name} cfg lacks {key}'

    x = _input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
        full = model(x)
        final, inter = model.forward_intermediates(x)
    assert logits.shape == (2, cfg['num_classes'])  # 1000 for ImageNet models, 10 for CIFAR ones
    assert pre.shape == (2, model.num_features)
    torch.testing.assert_close(full, logits)
    torch.testing.assert_close(final, feats)
    assert len(inter) == len(model.feature_info)
    for t, info in zip(inter, model.feature_info, strict=True):
        assert t.shape[1] == info['num_chs']
        assert t.shape[-1] == x.shape[-1] // info['reduction']

    # classifier reset
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)

    # no_weight_decay names real parameters; group_matcher covers every parameter
    names = dict(model.named_parameters())
    assert set(model.no_weight_decay()) <= set(names)
    from timm.models import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert sum(len(v) for v in groups.values()) == len(names)


@pytest.mark.parametrize('name', _params(ALL))
def test_backward_reaches_every_parameter(name):
    model = mlpvision.create_model(name, num_classes=10, drop_path_rate=0.1).train()
    model.set_grad_checkpointing(True)
    out = model(_input(model))
    out.float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'


@pytest.mark.parametrize('name', _params(ALL))
def test_features_only(name):
    info = _on_meta(name).feature_info
    feat = timm.create_model(name, features_only=True).eval()
    taken = feat.feature_info.out_indices
    assert len(taken) > 0
    assert feat.feature_info.channels() == [info[i]['num_chs'] for i in taken]
    assert feat.feature_info.reduction() == [info[i]['reduction'] for i in taken]
    x = _input(feat, batch=1)
    with torch.no_grad():
        outs = feat(x)
    assert [o.shape[1] for o in outs] == feat.feature_info.channels()
    assert [x.shape[-1] // o.shape[-1] for o in outs] == feat.feature_info.reduction()


def _has_reparam(model: nn.Module) -> bool:
    return any(hasattr(m, 'reparameterize') for m in model.modules())


@pytest.mark.parametrize('name', _params(ALL))
@torch.no_grad()
def test_deploy_equivalence_float64(name):
    model = mlpvision.create_model(name).double().eval()
    if not _has_reparam(model):
        pytest.skip(f'{name} has no re-parameterisable part')
    _randomise_norm_stats(model)
    for p in model.parameters():  # move LayerScale / Affine / GRN off their trivial init
        if p.ndim == 1:
            p.add_(torch.randn_like(p) * 0.05)
    x = _input(model, batch=1, dtype=torch.float64)
    ref = model(x)
    deployed = mlpvision.reparameterize(model)
    assert deployed is not model
    torch.testing.assert_close(deployed(x), ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())
    sd = deployed.state_dict()
    again = mlpvision.reparameterize(deployed)  # re-parameterising twice is harmless
    assert again.state_dict().keys() == sd.keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sd.items())
    direct = mlpvision.create_model(name, deploy=True).double()
    direct.load_state_dict(deployed.state_dict(), strict=True)


@pytest.mark.parametrize('name', ALL)
def test_wrong_channel_count_is_a_clear_error(name):
    model = _on_meta(name).eval()
    c, h, w = model.pretrained_cfg['input_size']
    with pytest.raises(ValueError, match=rf'built for {c}-channel input but got {c + 1} channels'):
        model(torch.randn(1, c + 1, h, w, device='meta'))


@pytest.mark.parametrize('name', [n for n in ALL if timm.models.get_pretrained_cfg(n).fixed_input_size])
def test_fixed_size_model_rejects_other_sizes(name):
    model = _on_meta(name).eval()
    c, h, w = model.pretrained_cfg['input_size']
    with pytest.raises(ValueError, match=rf'built for {h}x{w} input but got {h + 32}x{w}'):
        model(torch.randn(1, c, h + 32, w, device='meta'))


@pytest.mark.parametrize('name, kw, size', [
    ('as_mlp_tiny', dict(embed_dim=32, depths=(1, 2, 1, 1)), (64, 96)),
    ('hire_mlp_tiny', dict(depths=(1, 2, 1, 1), embed_dims=(16, 32, 32, 64)), (70, 90)),  # regions padded
])
def test_channels_last_only_changes_the_storage(name, kw, size):
    """channels_last=True (the default of these families) stores the maps channels-last and, in CPU inference, runs
    the 1x1 convs through oneDNN with activations / residual sums fused: the same logits and features as NCHW
    storage and, in training, the same gradients."""
    ref = mlpvision.create_model(name, channels_last=False, drop_path_rate=0., **kw)
    cl = mlpvision.create_model(name, drop_path_rate=0., **kw)
    cl.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        y_ref, feats_ref = ref.eval().forward_intermediates(x)
        y, feats = cl.eval().forward_intermediates(x)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)
    assert all(f.is_contiguous() for f in feats_ref)
    for a, b in zip([y, *feats], [y_ref, *feats_ref], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    target = torch.tensor([1, 2])
    for m in (ref.train(), cl.train()):
        F.cross_entropy(m(x), target).backward()
    for (pname, a), b in zip(cl.named_parameters(), ref.parameters(), strict=True):
        assert (a.grad - b.grad).norm() <= 1e-4 * b.grad.norm() + 1e-7, pname
