"""ResMLP specifics: LayerScale init per depth, constant drop path, the deploy form, other input sizes."""
import pytest
import torch
from timm.layers import DropPath

import mlpvision
from mlpvision.models.resmlp import Affine, ResMLPBlock


@pytest.mark.parametrize('name, init', [('resmlp_s12', 0.1), ('resmlp_s24', 1e-5), ('resmlp_s36', 1e-6),
                                        ('resmlp_b24', 1e-6), ('resmlp_b24_p8', 1e-6)])
def test_layerscale_init_follows_official_factories(name, init):
    model = mlpvision.create_model(name, depth=1)
    assert model.blocks[0].ls1.shape == (model.embed_dim,)
    assert torch.all(model.blocks[0].ls1 == init) and torch.all(model.blocks[0].ls2 == init)


def test_drop_path_is_constant_over_depth():
    model = mlpvision.create_model('resmlp_s12', drop_path_rate=0.05)
    rates = [b.drop_path.drop_prob for b in model.blocks]
    assert all(isinstance(b.drop_path, DropPath) for b in model.blocks)
    assert rates == [0.05] * 12


def test_no_weight_decay_is_every_1d_parameter():
    model = mlpvision.create_model('resmlp_s12', depth=2)
    nwd = model.no_weight_decay()
    assert 'blocks.0.norm1.alpha' in nwd and 'blocks.1.ls2' in nwd and 'norm.beta' in nwd
    assert 'blocks.0.linear_tokens.weight' not in nwd and 'blocks.0.mlp_channels.fc1.weight' not in nwd


@torch.no_grad()
def test_deploy_form_has_no_affine_and_equal_outputs():
    model = mlpvision.create_model('resmlp_s12', depth=3).double().eval()
    for p in model.parameters():
        if p.ndim == 1:
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    deployed = mlpvision.reparameterize(model)
    assert not any(isinstance(m, Affine) for m in deployed.modules())
    assert all(isinstance(b, ResMLPBlock) and b.deploy for b in deployed.blocks)
    torch.testing.assert_close(deployed(x), model(x), rtol=1e-10, atol=1e-10)
    inplace = mlpvision.reparameterize(model, inplace=True)
    assert inplace is model and mlpvision.is_reparameterized(model)


def test_img_size_builds_for_another_size():
    model = mlpvision.create_model('resmlp_s12', img_size=(160, 224), depth=2).eval()
    assert model.blocks[0].linear_tokens.weight.shape == (140, 140)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 224)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r'built for 160x224 input but got 224x224.*img_size=\(224, 224\)'):
        model(torch.randn(1, 3, 224, 224))


def test_in_chans_and_num_classes():
    model = mlpvision.create_model('resmlp_s12', in_chans=1, num_classes=10, depth=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 224, 224)).shape == (2, 10)


def test_features_only_isotropic_maps():
    import timm
    feat = timm.create_model('resmlp_s12', features_only=True, depth=4, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = feat(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outs] == [(1, 384, 14, 14)] * 2
