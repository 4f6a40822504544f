"""ResMLP specifics: LayerScale init per depth, constant drop path, the deploy form, other input sizes, timm's
``resmlp_*_224`` weights, and the isotropic model base it shares with MLP-Mixer-like models."""
import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.layers import DropPath, PatchEmbed
from timm.models.mlp_mixer import MixerBlock, MlpMixer

import mlpvision
from mlpvision.models import IsotropicNet
from mlpvision.models.resmlp import Affine, ResMLPBlock, checkpoint_filter_fn

from conftest import is_heavy


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


def test_intermediates_nlc_are_the_tokens_of_the_nchw_maps():
    model = mlpvision.create_model('resmlp_s12', img_size=(64, 96), depth=3).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, nchw = model.forward_intermediates(x, norm=True)
        nlc = model.forward_intermediates(x, norm=True, output_fmt='NLC', intermediates_only=True)
        feats = model.forward_features(x)
    torch.testing.assert_close(final, feats)
    assert [tuple(t.shape) for t in nchw] == [(2, 384, 4, 6)] * 3
    assert [tuple(t.shape) for t in nlc] == [(2, 24, 384)] * 3
    for a, b in zip(nchw, nlc, strict=True):
        torch.testing.assert_close(a.flatten(2).transpose(1, 2), b)  # B, C, H/p, W/p -> B, N, C
    torch.testing.assert_close(nlc[-1], feats)  # the final Affine normed every intermediate
    with pytest.raises(ValueError, match=r"output_fmt must be 'NCHW' or 'NLC' for ResMLP, got 'NHWC'"):
        model.forward_intermediates(x, output_fmt='NHWC')


def test_reset_classifier_keeps_the_models_dtype():
    model = mlpvision.create_model('resmlp_s12', depth=1).double().eval()
    model.reset_classifier(7)
    assert model.head.weight.dtype == torch.float64
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224, dtype=torch.float64)).shape == (1, 7)


# timm's own ResMLP entrypoints (timm.models.mlp_mixer) and ours for the same architecture
TIMM_PAIRS = [('resmlp_12_224', 'resmlp_s12'), ('resmlp_24_224', 'resmlp_s24'), ('resmlp_36_224', 'resmlp_s36'),
              ('resmlp_big_24_224', 'resmlp_b24_p8')]


@pytest.mark.parametrize('timm_name, name', TIMM_PAIRS)
def test_timm_state_dict_maps_key_for_key(timm_name, name):
    """Every timm ``resmlp_*_224`` (their distilled, in22k and DINO weights are tags of the same entrypoints, so
    the same keys) maps onto ours with no key missing, left over or mis-shaped."""
    with torch.device('meta'):
        theirs = timm.create_model(timm_name)
        ours = mlpvision.create_model(name)
    mapped = checkpoint_filter_fn(theirs.state_dict(), ours)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours.state_dict().items()}


def _random_timm_resmlp(timm_name: str) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(timm_name).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            # off timm's trivial init (Affine ones/zeros, LayerScale 1e-4, biases ~0, zero head) so every
            # parameter moves the logits
            if p.ndim != 2 and p.ndim != 4 or n.startswith('head'):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _assert_logits_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    scale = ref.abs().max().item()
    assert scale > 0.1  # the random weights reach the logits
    err = (y - ref).abs().max().item()
    assert err <= 1e-5 * scale, f'max |diff| {err:.3g} > 1e-5 x {scale:.3g}'


@pytest.mark.parametrize('timm_name, name', [
    pytest.param(t, n, marks=[pytest.mark.slow] if is_heavy(n) else []) for t, n in TIMM_PAIRS])
@torch.no_grad()
def test_timm_weights_give_timms_logits(timm_name, name, tmp_path):
    """A timm ``resmlp_*_224`` state_dict saved as timm's hub does (safetensors) loads into ours through
    ``checkpoint_path`` (train and deploy form) and through timm's pretrained loader (``pretrained_cfg_overlay``, the
    path ``hf_hub_id='timm/resmlp_12_224.fb_in1k'`` takes once downloaded), and gives timm's logits."""
    theirs = _random_timm_resmlp(timm_name)
    path = tmp_path / f'{timm_name}.safetensors'
    save_file(theirs.state_dict(), str(path))
    torch.save(theirs.state_dict(), tmp_path / f'{timm_name}.pth')
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ref = theirs(x)
    _assert_logits_close(mlpvision.create_model(name, checkpoint_path=path).eval()(x), ref)
    _assert_logits_close(mlpvision.create_model(name, checkpoint_path=path, deploy=True).eval()(x), ref)
    via_timm = timm.create_model(name, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / f'{timm_name}.pth')))
    _assert_logits_close(via_timm.eval()(x), ref)


class _TinyMixer(IsotropicNet):
    """MLP-Mixer on the isotropic base: timm's MixerBlock and LayerNorm under timm MlpMixer's module names."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, embed_dim: int = 32, depth: int = 3,
                 num_classes: int = 5) -> None:
        super().__init__()
        self.in_chans, self.img_size = 3, (img_size, img_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.stem = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.blocks = nn.Sequential(*[MixerBlock(embed_dim, self.stem.num_patches) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_head(embed_dim, num_classes)
        self._init_feature_info(reduction=patch_size)


@torch.no_grad()
def test_isotropic_base_carries_an_mlp_mixer_like_timms():
    """The base ResMLP shares is not ResMLP-specific: an MLP-Mixer built on it loads timm MlpMixer's weights and
    matches its forward, features, intermediates (NCHW / NLC, normed, stopped early), pruning and param groups."""
    torch.manual_seed(0)
    theirs = MlpMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=3, embed_dim=32).eval()
    nn.init.normal_(theirs.head.weight)  # timm zero-inits the head
    ours = _TinyMixer().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                               theirs.forward_head(theirs.forward_features(x), pre_logits=True))
    for kw in (dict(), dict(norm=True, indices=(0, 2)), dict(output_fmt='NLC', indices=1, stop_early=True)):
        (a, inter_a), (b, inter_b) = ours.forward_intermediates(x, **kw), theirs.forward_intermediates(x, **kw)
        torch.testing.assert_close(a, b)
        assert len(inter_a) == len(inter_b)
        for ia, ib in zip(inter_a, inter_b, strict=True):
            torch.testing.assert_close(ia, ib)
    assert ours.group_matcher() == theirs.group_matcher()
    assert ours.feature_info == theirs.feature_info
    assert ours.prune_intermediate_layers((0, 1)) == theirs.prune_intermediate_layers((0, 1))
    assert len(ours.blocks) == 2 and isinstance(ours.head, nn.Identity)
    torch.testing.assert_close(ours.forward_intermediates(x, intermediates_only=True),
                               theirs.forward_intermediates(x, intermediates_only=True))


def test_grad_checkpointing_gives_the_same_gradients():
    model = mlpvision.create_model('resmlp_s12', img_size=64, depth=2, num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        assert model.grad_checkpointing is enable
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, msg=n)


@pytest.mark.parametrize('deploy', [False, True])
def test_factory_device_and_dtype(deploy):
    """timm 1.0's factory arguments: every parameter is made where and as asked (ResMLP's head, Affine, LayerScale
    and deploy-form token bias included)."""
    model = timm.create_model('resmlp_s12', depth=2, dtype=torch.float64, deploy=deploy).eval()
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224, dtype=torch.float64)).dtype == torch.float64
    meta = timm.create_model('resmlp_s12', depth=2, device='meta', deploy=deploy)
    assert {p.device.type for p in meta.parameters()} == {'meta'}
    assert mlpvision.count_params(meta) == mlpvision.count_params(model)
