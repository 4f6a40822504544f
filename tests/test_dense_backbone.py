"""mlpvision.dense.backbone: the stride 4/8/16/32 pyramid of every family at non-square sizes, the size policies and
their errors, frozen stages / norm_eval / frozen BN, parameter groups and checkpoint loading."""
import pytest
import timm
import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

import mlpvision
from mlpvision import CheckpointError, save_state_dict
from mlpvision.dense import backbone, param_groups
from mlpvision.errors import UsageError

# one small configuration per family: the canvas families get a canvas covering the 100 x 150 test input
SMALL = {
    'as_mlp_tiny': dict(depths=(1, 1, 1, 1)),
    'cycle_mlp_b1': dict(depths=(1, 1, 1, 1)),
    'hire_mlp_tiny': dict(depths=(1, 1, 1, 1)),
    'strip_mlp_tiny': dict(depths=(1, 1, 1, 1), img_size=(128, 160)),
    'repmlpnet_t224': dict(depths=(1, 1, 1, 1)),
    'repmlp_res50_light_224': dict(depths=(1, 2, 2, 1), img_size=(112, 224)),
    'resmlp_s12': dict(depth=2, img_size=(112, 160)),
    'wave_mlp_t_dw': dict(depths=(1, 1, 1, 1)),
}


@pytest.mark.parametrize('name', list(SMALL))
def test_pyramid_at_a_non_square_size(name):
    b = backbone(name, **SMALL[name]).eval()
    with torch.no_grad():
        feats = b(torch.randn(1, 3, 100, 150))
    assert b.strides == [4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == b.out_channels
    assert [tuple(f.shape[-2:]) for f in feats] == [(-(-100 // s), -(-150 // s)) for s in b.strides]


def test_out_channels_per_family():
    chans = {n: backbone(n, **SMALL[n]).out_channels for n in SMALL}
    assert chans == {
        'as_mlp_tiny': [96, 192, 384, 768], 'cycle_mlp_b1': [64, 128, 320, 512], 'hire_mlp_tiny': [64, 128, 320, 512],
        'strip_mlp_tiny': [80, 160, 320, 640], 'repmlpnet_t224': [64, 128, 256, 512],
        'repmlp_res50_light_224': [256, 512, 1024, 2048],
        'resmlp_s12': [96, 192, 384, 384],  # ViTDet's pyramid: C/4, C/2 by transposed convs, C, C pooled
        'wave_mlp_t_dw': [64, 128, 320, 512],
    }


def test_out_indices_subset():
    b = backbone('hire_mlp_tiny', out_indices=(1, 3), depths=(1, 1, 1, 1)).eval()
    feats = b(torch.randn(1, 3, 64, 96))
    assert b.strides == [8, 32] and [f.shape[1] for f in feats] == [128, 512]
    assert len(b.model.stages) == 4 and isinstance(b.model.head.fc, nn.Identity)


def test_unpadded_size_is_the_model_itself():
    """At a multiple of 32 nothing is padded: the outputs are the model's stage outputs (AS-MLP: + its GroupNorm)."""
    torch.manual_seed(0)
    b = backbone('hire_mlp_tiny', depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 64, 96)
    ref = b.model.forward_intermediates(x, intermediates_only=True)
    for f, r in zip(b(x), ref, strict=True):
        torch.testing.assert_close(f, r)


def test_repmlpnet_pads_to_multiples_of_its_native_size():
    b = backbone('repmlpnet_t224', depths=(1, 1, 1, 1))
    assert b.padded_size(320, 416) == (448, 448) and b.padded_size(224, 100) == (224, 224)
    # the weights are the native model's: the same parameter count as at 224
    assert sum(p.numel() for p in b.model.stages.parameters()) == sum(
        p.numel() for p in mlpvision.create_model('repmlpnet_t224', depths=(1, 1, 1, 1)).stages.parameters())


@pytest.mark.parametrize('name', ['strip_mlp_tiny', 'resmlp_s12', 'repmlp_res50_light_224'])
def test_canvas_families_refuse_a_larger_input_naming_the_canvas(name):
    b = backbone(name, **SMALL[name])
    h, w = b.canvas
    with pytest.raises(ValueError, match=f'built for a {h}x{w} canvas.*got {h + 32}x{w}'):
        b(torch.randn(1, 3, h + 32, w))


def test_repmlpnet_features_only_wrong_size_is_a_clear_error():
    """The issue's ``shape '[2, 64, 1, 56, 1, 56]' is invalid``: timm's features_only now meets the size check."""
    feat = timm.create_model('repmlpnet_t224', features_only=True, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r'built for 224x224 input but got 320x416.*integer multiples'):
        feat(torch.randn(2, 3, 320, 416))


def test_repmlp_res50_features_only_takes_out_indices():
    """The issue's ``_create() got multiple values for argument 'out_indices'``."""
    with torch.device('meta'):
        feat = timm.create_model('repmlp_res50_light_224', features_only=True, out_indices=(1, 2))
    assert feat.feature_info.channels() == [512, 1024] and feat.feature_info.reduction() == [8, 16]


@pytest.mark.parametrize('kwargs, match', [
    (dict(output_stride=16), 'output_stride=16 is not supported'),
    (dict(out_indices=(2, 1)), 'out_indices must be increasing'),
    (dict(out_indices=(0, 4)), 'out_indices must be increasing'),
    (dict(frozen_stages=5), 'frozen_stages must be in -1..4'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(UsageError, match=match):
        backbone('as_mlp_tiny', depths=(1, 1, 1, 1), **kwargs)


def test_unsupported_models():
    with pytest.raises(UsageError, match='three-stage CIFAR model'):
        backbone('repmlp_cifar_pure')
    with pytest.raises(UsageError, match='Unknown mlpvision model'):
        backbone('as_mlp_tinyy')


def test_frozen_stages_and_norm_eval():
    b = backbone('hire_mlp_tiny', frozen_stages=2, norm_eval=True, depths=(1, 1, 1, 1)).train()
    frozen = [b.model.stem, b.model.stages[0], b.model.stages[1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in b.model.stages[2:] for p in m.parameters())
    assert all(not m.training for m in frozen)
    bns = [m for m in b.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    b(torch.randn(2, 3, 64, 64)).__len__()
    assert all(torch.equal(m.running_mean, r) for m, r in zip(bns, before, strict=True))
    assert b.model.stages[2].training  # what is not a norm still trains (dropout, drop-path)


def test_frozen_bn_and_sync_bn_conversion():
    b = backbone('repmlpnet_t224', frozen_bn=True, depths=(1, 1, 1, 1))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in b.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in b.modules())
    b(torch.randn(1, 3, 224, 224))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(backbone('hire_mlp_tiny', depths=(1, 1, 1, 1)))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())


def test_drop_path_reaches_the_model():
    b = backbone('as_mlp_tiny', drop_path_rate=0.3, depths=(1, 1, 1, 1))
    rates = [m.drop_prob for m in b.modules() if type(m).__name__ == 'DropPath']
    assert rates and max(rates) == pytest.approx(0.3)


def test_param_groups_exempt_norms_biases_and_position_tables():
    b = backbone('strip_mlp_tiny', **SMALL['strip_mlp_tiny'])
    decay, skip = param_groups(b, 0.05)
    assert decay['weight_decay'] == 0.05 and skip['weight_decay'] == 0.
    skip_ids = {id(p) for p in skip['params']}
    names = {n for n, p in b.named_parameters() if id(p) in skip_ids}
    assert names == {n for n, p in b.named_parameters()
                     if p.ndim <= 1 or n.endswith('.bias') or 'pos_row' in n or 'pos_col' in n}
    assert any('pos_row' in n for n in names) and any(p.ndim > 1 for n, p in b.named_parameters() if n in names)
    assert len(decay['params']) + len(skip['params']) == len(list(b.parameters()))


def test_classification_checkpoint_loads_into_the_backbone(tmp_path):
    model = mlpvision.create_model('as_mlp_tiny', depths=(1, 1, 1, 1))
    save_state_dict(model, tmp_path / 'cls.safetensors')
    b = backbone('as_mlp_tiny', checkpoint_path=tmp_path / 'cls.safetensors', depths=(1, 1, 1, 1))
    torch.testing.assert_close(b.model.stages[3].blocks[0].mlp.fc1.weight, model.stages[3].blocks[0].mlp.fc1.weight)


@pytest.mark.parametrize('name,small', [('strip_mlp_tiny', dict(depths=(1, 1, 1, 1))), ('resmlp_s12', dict(depth=2))])
def test_checkpoint_of_the_224_model_is_resampled_onto_another_canvas(tmp_path, name, small):
    cls = mlpvision.create_model(name, **small)
    save_state_dict(cls, tmp_path / 'cls.safetensors')
    b = backbone(name, checkpoint_path=tmp_path / 'cls.safetensors', **SMALL[name])
    ours, theirs = b.model.state_dict(), cls.state_dict()
    resized = [k for k in ours if ours[k].shape != theirs[k].shape]
    assert resized and all(torch.equal(ours[k], theirs[k]) for k in ours if k not in resized)  # the rest as saved
    with torch.no_grad():
        assert all(torch.isfinite(f).all() for f in b(torch.randn(1, 3, 100, 150)))


def test_resampled_token_mixing_keeps_a_mean_a_mean_and_a_same_size_table():
    from mlpvision.dense.adapt import resize_relative_table, resize_token_matrix
    mean = torch.full((196, 196), 1 / 196)  # every output token the mean of the 14 x 14 inputs
    torch.testing.assert_close(resize_token_matrix(mean, (14, 14), (7, 20)), torch.full((140, 140), 1 / 140))
    w = torch.randn(196, 196)
    torch.testing.assert_close(resize_token_matrix(w, (14, 14), (14, 14)), w)
    table = torch.randn(14 + 20 + 1, 8)
    torch.testing.assert_close(resize_relative_table(table, (14, 20), (14, 20)), table)
    # offsets scaled per side: the ends and the zero offset (row H) map onto the old ones
    t2 = resize_relative_table(table, (14, 20), (7, 40))
    torch.testing.assert_close(t2[[0, 7, 47]], table[[0, 14, 34]])


def test_repmlp_res50_checkpoint_of_another_canvas_is_refused(tmp_path):
    """Its Global Perceptron FCs are sized by the number of partitions: nothing to resample (mlpvision.dense.adapt)."""
    small = dict(depths=(1, 2, 2, 1))
    save_state_dict(mlpvision.create_model('repmlp_res50_light_224', **small), tmp_path / 'cls.safetensors')
    with pytest.raises(CheckpointError):
        backbone('repmlp_res50_light_224', checkpoint_path=tmp_path / 'cls.safetensors',
                 **SMALL['repmlp_res50_light_224'])


def test_backbone_param_count_is_the_trunk_plus_out_norms():
    """AS-MLP-T (official 28,282,696, official.md) less head (768 * 1000 + 1000) and final norm (2 * 768), plus
    the official detection backbone's four GroupNorm(1, C) outputs (2 * (96 + 192 + 384 + 768))."""
    with torch.device('meta'):
        b = backbone('as_mlp_tiny')
    assert sum(p.numel() for p in b.parameters()) == 28_282_696 - 769_000 - 1536 + 2880


# Canvas rounding: a requested img_size is rounded up per side to what the family's architecture takes.
@pytest.mark.parametrize('name, small, requested, canvas, multiple', [
    # RepMLP-Res50 at 224: 7x7 partitions of the stride-8 and -16 maps, lcm(56, 112) = 112 (the 320x416)
    ('repmlp_res50_light_224', dict(depths=(1, 2, 2, 1)), (320, 416), (336, 448), 112),
    ('repmlp_res50_g8_16_320', dict(depths=(1, 2, 2, 1)), (320, 416), (320, 480), 160),  # 10x10 partitions
    ('strip_mlp_tiny', dict(depths=(1, 1, 1, 1)), (100, 150), (128, 160), 32),  # the stride of the last stage
    ('resmlp_s12', dict(depth=2), (100, 150), (112, 160), 16),  # the patch
    ('resmlp_b24_p8', dict(depth=2), (100, 150), (104, 152), 8),
])
def test_canvas_is_rounded_up_to_what_the_family_takes(name, small, requested, canvas, multiple, caplog):
    with torch.device('meta'), caplog.at_level('INFO', logger='mlpvision.dense.backbone'):
        b = backbone(name, img_size=requested, **small)
        assert b.canvas == canvas == b.model.img_size and b.canvas_rule.multiple == (multiple, multiple)
        assert f'img_size {requested[0]}x{requested[1]} rounded up to the canvas {canvas[0]}x{canvas[1]}' in caplog.text
        caplog.clear()
        assert backbone(name, img_size=canvas, **small).canvas == canvas and not caplog.text  # taken as it is


def test_the_repmlp_res50_rule_is_the_models_own():
    """320x416 is what the model itself refuses (the issue's error), 336x448 the next size it builds at."""
    with torch.device('meta'):
        with pytest.raises(ValueError, match=r'input size \(40, 52\) must be a multiple of the partition size'):
            mlpvision.create_model('repmlp_res50_light_224', img_size=(320, 416))
        for size in ((280, 280), (308, 308), (336, 336)):  # multiples of 56 and 28 that are not of 112 fail too
            if size[0] % 112:
                with pytest.raises(ValueError, match='multiple of the partition size'):
                    mlpvision.create_model('repmlp_res50_light_224', img_size=size)
            else:
                mlpvision.create_model('repmlp_res50_light_224', img_size=size)


@pytest.mark.parametrize('img_size', [(0, 100), '224', (224, 224, 3)])
def test_a_bad_img_size_is_a_usage_error(img_size):
    with pytest.raises(UsageError, match=r'img_size must be a positive int or a pair of them \(H, W\)'):
        backbone('resmlp_s12', depth=2, img_size=img_size)


@pytest.fixture(scope='module')
def repmlp_320x416():
    """Mask R-CNN on a small RepMLP-Res50 asked for a 320x416 canvas (one RepMLP block in each of c3 and c4)."""
    torch.manual_seed(0)
    return mlpvision.dense.maskrcnn(
        'repmlp_res50_light_224', num_classes=2, backbone_kwargs=dict(depths=(1, 2, 2, 1), img_size=(320, 416)),
        min_size=320, max_size=416, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
        box_detections_per_img=5).eval()


def test_repmlp_res50_backbone_runs_at_320x416(repmlp_320x416):
    b = repmlp_320x416.backbone.body
    assert b.canvas == (336, 448)
    with torch.no_grad():
        feats = b(torch.randn(1, 3, 320, 416))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 80, 104), (512, 40, 52), (1024, 20, 26), (2048, 10, 13)]
    with pytest.raises(ValueError, match=r'got 352x448: .*img_size=\(448, 448\) \(RepMLP-Res50 needs sides that are '
                                         r'multiples of 112: 7x7 partitions at strides 8, 16; weights trained at '
                                         r'another size will not load\)\.$'):
        b.padded_size(352, 448)


def test_repmlp_res50_maskrcnn_and_upernet_at_320x416(repmlp_320x416):
    from mlpvision.dense.detection import _size_kwargs
    with torch.no_grad():
        (out,) = repmlp_320x416([torch.rand(3, 320, 416)])  # min_size / max_size keep it at 320x416
        assert out['masks'].shape[1:] == (1, 320, 416)
        seg = mlpvision.dense.upernet(repmlp_320x416.backbone.body, 2, channels=16, aux_channels=8).eval()
        assert {k: tuple(v.shape) for k, v in seg(torch.randn(1, 3, 320, 416)).items()} == {
            'out': (1, 2, 320, 416), 'aux': (1, 2, 320, 416)}
    # the default resize: the canvas's shorter side rounded down to a multiple of size_divisible, so that a square
    # image (resized to 320x320, not padded further) fits the 336x448 canvas too
    assert _size_kwargs(repmlp_320x416.backbone.body, {}) == dict(min_size=320, max_size=320)


def test_repmlp_res50_224_weights_load_where_the_request_rounds_up_to_224(tmp_path):
    small = dict(depths=(1, 2, 2, 1))
    model = mlpvision.create_model('repmlp_res50_light_224', **small)
    save_state_dict(model, tmp_path / 'cls.safetensors')
    b = backbone('repmlp_res50_light_224', checkpoint_path=tmp_path / 'cls.safetensors', img_size=(200, 180), **small)
    assert b.canvas == (224, 224)
    torch.testing.assert_close(b.model.stages[2].blocks[1].repmlp.gp.fc1.weight,
                               model.stages[2].blocks[1].repmlp.gp.fc1.weight)
