"""Strip-MLP: official sizes, the strip FCs against their definition, non-square sizes, the ablation knobs, checkpoint
mapping. Official-output parity is in test_parity.py."""
import pytest
import timm
import torch
import torch.nn.functional as F

import mlpvision
from mlpvision.models.strip_mlp import CGSMM, RelativePosition, checkpoint_filter_fn, official_num_patches

from conftest import on_meta, parity_record, randomise_norm_stats

SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), img_size=(64, 96), num_classes=10)


def _small(**kwargs):
    return mlpvision.create_model('strip_mlp_tiny', **dict(SMALL, **kwargs))


@pytest.mark.parametrize('name', mlpvision.list_models('strip_mlp_*'))
def test_official_num_patches(name):
    # the official counts (ModelMeta.params) are asserted for every model in test_models.py
    model = on_meta(name)
    # the hidden P rule: 2 for the 80-wide models, 4 for S and B
    p = model.stages[0].blocks[0].token_mix.cgsmm.num_patches
    assert p == (2 if name.startswith('strip_mlp_tiny') else 4)


def test_official_keys_and_shapes_map_one_to_one():
    rec = parity_record('strip_mlp_tiny_light')
    model = mlpvision.create_model('strip_mlp_tiny_light')
    sd = {k: torch.zeros(shape, dtype=getattr(torch, dt)) for k, shape, dt in rec['schema']}
    mapped = checkpoint_filter_fn({'model': sd}, model)
    own = model.state_dict()
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)
    # mlpvision's own state_dicts pass through unchanged
    assert checkpoint_filter_fn(own, model).keys() == own.keys()


def _strip_reference(x, conv, width):
    """The strip FC by its definition: for channel slot c, output token j of a line reads tokens i of the lines
    ``o - width//2 .. o + width//2`` (zero outside): x (B, P, C2, lines, L) -> same shape."""
    b, p, c2, n, length = x.shape
    w = conv.weight.view(c2, length, length, width)  # c, j, i, offset
    xp = F.pad(x, (0, 0, width // 2, width // 2))
    out = conv.bias.view(1, 1, c2, 1, length).expand(b, p, c2, n, length).clone()
    for k in range(width):
        out = out + torch.einsum('bpcni,cji->bpcnj', xp[:, :, :, k:k + n], w[..., k])
    return out


def _cgsmm_reference(m: CGSMM, x):
    """CGSMM written out with einsum on the plain (B, P, C2, H, W) layout."""
    b, dim, h, w = x.shape
    p, c2 = m.num_patches, m.group_dim
    diag = torch.arange(w)[None, :] - torch.arange(h)[:, None] + h  # the bias at (h, w) is table[w - h + H]
    pos_row = m.pos_row.table[diag].permute(2, 0, 1)  # C', H, W
    pos_col = m.pos_col.table[diag].permute(2, 0, 1)
    width = m.row.kernel_size[1]

    def rows(t):
        return _strip_reference(t.reshape(b, p, c2, h, w), m.row, width).reshape(b, dim, h, w)

    def cols(t):
        t = t.reshape(b, p, c2, h, w).transpose(3, 4)  # a column strip is a row strip of the transposed map
        return _strip_reference(t, m.col, width).transpose(3, 4).reshape(b, dim, h, w)

    r = F.gelu(m.norm(m.fuse_row(torch.cat([rows(x + pos_row), x], 1))))
    if m.cascade:
        return m.fuse_col(torch.cat([x, cols(r + pos_col)], 1))
    return m.fuse_col(torch.cat([r, cols(x + pos_col)], 1))


@pytest.mark.parametrize('size,num_patches,width,cascade', [
    ((7, 7), 2, 3, True), ((4, 6), 4, 3, True), ((6, 4), 2, 5, False), ((5, 3), 1, 1, True), ((3, 8), 4, 7, False)])
@torch.no_grad()
def test_cgsmm_matches_its_definition(size, num_patches, width, cascade):
    m = CGSMM(8, size, num_patches, width, cascade).eval()
    randomise_norm_stats(m)  # non-trivial BN statistics (identities at init)
    for t in (m.pos_row.table, m.pos_col.table):
        t.normal_()  # the 0.02 init would hide a wrong index
    x = torch.randn(2, 16, *size)[:, 8:]  # a channel slice, as the block passes it
    torch.testing.assert_close(m(x), _cgsmm_reference(m, x), rtol=1e-5, atol=1e-5)


def test_relative_position_square_is_official_nonsquare_by_diagonal():
    h = 7
    rp = RelativePosition(4, (h, h))
    assert rp.table.shape == (2 * h + 1, 4)  # official RelativePosition(C, H)
    dist = torch.arange(h)[None, :] - torch.arange(h)[:, None]
    assert torch.equal(rp.index, dist.clamp(-h, h) + h)  # official distance_mat_clipped + max_relative_position
    rp = RelativePosition(4, (3, 5))
    assert rp.table.shape == (3 + 5 + 1, 4)
    bias = rp()  # H, W, C
    for i in range(3):
        for j in range(5):
            assert torch.equal(bias[i, j], rp.table[j - i + 3])


def test_num_patches_rule():
    assert [official_num_patches(c) for c in (80, 160, 320, 640, 96, 768, 112, 896)] == [2, 2, 2, 2, 4, 4, 4, 4]


KNOBS = [
    dict(),
    dict(strip_width=1), dict(strip_width=5), dict(strip_width=7),
    dict(num_patches=1), dict(num_patches=8),
    dict(cascade=False),
    dict(use_cgsmm=False), dict(use_lsmm=False), dict(use_cgsmm=False, use_lsmm=False),
    dict(use_grn=False), dict(lsmm_kernel=5), dict(multi_scale_skips=False),
    dict(drop_path_rate=0.3, drop_path_schedule='linear'),
]


@pytest.mark.parametrize('knobs', KNOBS, ids=lambda k: ','.join(f'{a}={b}' for a, b in k.items()) or 'default')
def test_knobs_build_forward_backward(knobs):
    model = _small(**knobs).train()
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 10)
    out.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    names = dict(model.named_parameters())
    block = model.stages[0].blocks[0]
    if 'strip_width' in knobs:
        assert block.token_mix.cgsmm.row.weight.shape == (8 // 4 * 24, 24, 1, knobs['strip_width'])
        assert block.token_mix.cgsmm.col.weight.shape == (8 // 4 * 16, 16, 1, knobs['strip_width'])
    if 'num_patches' in knobs:
        assert all(b.token_mix.cgsmm.num_patches == knobs['num_patches'] for s in model.stages for b in s.blocks)
    if knobs.get('use_cgsmm') is False:
        assert not any('cgsmm' in n for n in names)
    if knobs.get('use_lsmm') is False:
        assert not any('lsmm' in n for n in names)
    if knobs.get('use_grn') is False:
        assert not any('grn' in n for n in names)
    if knobs.get('multi_scale_skips') is False:
        assert not any('skip' in n or 'relay' in n for n in names)
    if 'lsmm_kernel' in knobs:
        assert block.token_mix.lsmm.conv_3xk.weight.shape[-2:] == (3, 5)


def test_drop_path_schedules():
    def rates(model):
        return [getattr(b.drop_path, 'drop_prob', 0.) for s in model.stages for b in s.blocks]
    assert rates(_small()) == [0.1] * 4  # official: 0.1 in every block
    assert rates(_small(drop_path_rate=0.2)) == [0.2] * 4
    assert rates(_small(drop_path_rate=0.3, drop_path_schedule='linear')) == pytest.approx([0., 0.1, 0.2, 0.3])


def test_non_square_shapes_and_features():
    model = _small().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    assert [t.shape[-2:] for t in inter] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    cgsmm = model.stages[1].blocks[0].token_mix.cgsmm  # 8x12 map: rows are 12 long, columns 8
    c2 = cgsmm.group_dim
    assert cgsmm.row.weight.shape == (c2 * 12, 12, 1, 3) and cgsmm.col.weight.shape == (c2 * 8, 8, 1, 3)
    assert cgsmm.pos_row.table.shape == (8 + 12 + 1, 16)


def test_features_only_strides():
    feat = timm.create_model('strip_mlp_tiny_light', features_only=True, **dict(SMALL, num_classes=1000))
    assert feat.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = feat(torch.randn(1, 3, 64, 96))
    assert [o.shape[1:] for o in outs] == [(16, 16, 24), (32, 8, 12), (64, 4, 6), (128, 2, 3)]
    feat = timm.create_model('strip_mlp_tiny_light', features_only=True, out_indices=(1,), **SMALL)
    with torch.no_grad():
        assert [o.shape[1] for o in feat(torch.randn(1, 3, 64, 96))] == [32]


def test_input_and_argument_errors():
    model = _small().eval()
    with pytest.raises(ValueError, match=r'built for 64x96 input but got 64x64'):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r'multiples of 32'):
        _small(img_size=(64, 80))
    with pytest.raises(ValueError, match=r'odd'):
        _small(strip_width=4)
    with pytest.raises(ValueError, match=r'num_patches=3 must divide'):
        _small(num_patches=3)
    with pytest.raises(ValueError, match=r'drop_path_schedule'):
        _small(drop_path_schedule='cosine')


def test_no_weight_decay_follows_official_optimizer():
    model = _small()
    skip = model.no_weight_decay()
    names = dict(model.named_parameters())
    # official build_optimizer: 1-D parameters and '*.bias' skip decay; GRN (1, 1, 1, C) and the tables are decayed
    assert skip == {n for n, p in names.items() if p.ndim == 1}
    assert 'stages.0.blocks.0.token_mix.norm.weight' in skip
    assert not any(n.endswith(('grn.gamma', 'grn.beta', '.table')) for n in skip)


@torch.no_grad()
def test_grad_checkpointing_and_stop_early_give_the_same_features():
    model = _small().eval()
    x = torch.randn(2, 3, 64, 96)
    ref = model.forward_intermediates(x, indices=(1,), intermediates_only=True)
    early = model.forward_intermediates(x, indices=(1,), intermediates_only=True, stop_early=True)
    torch.testing.assert_close(early, ref)
    feats = model.forward_features(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model.forward_features(x), feats)


@torch.no_grad()
def test_deploy_is_the_same_model(tmp_path):
    model = _small().eval()
    x = torch.randn(1, 3, 64, 96)
    deployed = mlpvision.reparameterize(model)
    torch.testing.assert_close(deployed(x), model(x), rtol=0, atol=0)
    direct = _small(deploy=True)
    direct.load_state_dict(deployed.state_dict(), strict=True)
