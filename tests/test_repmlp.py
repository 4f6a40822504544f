"""RepMLP family: the first paper's RepMLP block, RepMLP-ResNet-50 and pure-MLP CIFAR model (models/repmlp.py), and
RepMLPNet (models/repmlpnet.py). Official-output parity in both forms is in test_parity.py (native size) and here
(RepMLPNet at larger inputs, official_partition_order)."""
import json
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mlpvision
from mlpvision import CheckpointError
from mlpvision._checkpoint import load_weights
from mlpvision.layers import conv_to_fc
from mlpvision.models import repmlp, repmlpnet
from mlpvision.models.repmlp import RepMLPBlock, RepMLPResNet
from mlpvision.models.repmlpnet import RepMLPNet, RepMLPNetBlock

from conftest import FIXTURES, on_meta, parity_record, randomise_norm_stats
from fill import fill_state_dict, make_input

F64 = dict(rtol=1e-9, atol=1e-10)


def _perturb(model: nn.Module) -> nn.Module:
    """float64, eval, non-trivial BatchNorm statistics and affine parameters."""
    model = model.double().eval()
    randomise_norm_stats(model)
    return model


def _check_reparam(model: nn.Module, deployed_cls_kwargs: dict, cls: type, x: torch.Tensor) -> None:
    """Deploy form equal in float64; re-parameterising twice changes nothing; state_dict loads into deploy=True."""
    with torch.no_grad():
        ref = model(x)
        model.reparameterize()
        torch.testing.assert_close(model(x), ref, **F64)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        model.reparameterize()
        assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
        direct = cls(**deployed_cls_kwargs, deploy=True).double().eval()
        direct.load_state_dict(sd, strict=True)
        torch.testing.assert_close(direct(x), ref, **F64)


# --- conv -> FC --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('groups, k', [(1, 1), (1, 3), (2, 5), (4, 3)])
def test_conv_to_fc_equals_zero_padded_conv_on_one_partition(groups, k):
    c, o, h, w = 8, 12, 5, 7
    kernel = torch.randn(o, c // groups, k, k, dtype=torch.float64)
    x = torch.randn(3, c, h, w, dtype=torch.float64)
    conv = F.conv2d(x, kernel, padding=k // 2, groups=groups)  # 3, O, h, w
    fc = conv_to_fc(kernel, h, w)
    assert fc.shape == (o * h * w, c // groups * h * w)
    via_fc = F.conv2d(x.reshape(3, c * h * w, 1, 1), fc[:, :, None, None], groups=groups)  # 3, O*h*w, 1, 1
    torch.testing.assert_close(via_fc.reshape(3, o, h, w), conv, **F64)


def test_fast_orthogonal_init_matches_torch():
    for shape in [(1568, 392, 1, 1), (64, 300, 1, 1), (100, 100)]:
        torch.manual_seed(0)
        ref = nn.init.orthogonal_(torch.empty(shape))
        torch.manual_seed(0)
        ours = repmlp.orthogonal_(torch.empty(shape))
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


# --- RepMLP block (first paper) ----------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs', [
    dict(),                                            # Global + Partition + Local Perceptron
    dict(global_perceptron=False),                     # paper ablation "w/o Global"
    dict(local_kernels=()),                            # "w/o Local"
    dict(fc3_kernel=9, local_kernels=(1, 3, 5, 7)),    # "FC3 as conv9"
    dict(gp_reduction=4, groups=4),
], ids=['full', 'no_global', 'no_local', 'fc3_conv9', 'grouped'])
def test_repmlp_block_deploy_is_exact_in_float64(kwargs):
    args = dict(in_chs=8, out_chs=12, size=(16, 24), partition=(8, 8), local_kernels=(1, 3, 5), groups=2)
    args.update(kwargs)
    block = _perturb(RepMLPBlock(**args))
    _check_reparam(block, args, RepMLPBlock, torch.randn(2, 8, 16, 24, dtype=torch.float64))
    assert not any(n.startswith('repconv') for n, _ in block.named_children())


@torch.no_grad()
def test_repmlp_partitions_do_not_see_each_other_without_global_perceptron():
    # the Local Perceptron zero-pads at the partition borders, so partitions are independent without fc1/fc2
    block = RepMLPBlock(4, 4, (16, 16), (8, 8), (1, 3, 5), groups=2, global_perceptron=False).eval()
    x = torch.randn(1, 4, 16, 16)
    y = x.clone()
    y[..., :8, :8] += 1  # change the top-left partition only
    diff = (block(y) - block(x)).abs().amax(1)[0]  # H, W
    assert diff[:8, :8].min() > 0 and diff[8:, :].max() == 0 and diff[:, 8:].max() == 0
    with_gp = RepMLPBlock(4, 4, (16, 16), (8, 8), (1, 3, 5), groups=2).eval()
    assert (with_gp(y) - with_gp(x))[..., 8:, 8:].abs().max() > 0  # the Global Perceptron carries it across


def test_repmlp_rejects_bad_configurations():
    with pytest.raises(ValueError, match='multiple of the partition'):
        RepMLPBlock(8, 8, (14, 14), (8, 8))
    with pytest.raises(ValueError, match='multiples of groups'):
        RepMLPBlock(6, 8, (8, 8), (8, 8), groups=4)
    with pytest.raises(ValueError, match='odd and at most the partition'):
        RepMLPBlock(8, 8, (7, 7), (7, 7), local_kernels=(1, 9))


# --- RepMLP-ResNet-50 --------------------------------------------------------------------------------------------

def test_res50_replaces_only_stride1_blocks_of_c3_c4_with_per_stage_groups():
    model = on_meta('repmlp_res50_g8_16_320')
    kinds = [[type(b).__name__ for b in s.blocks] for s in model.stages]
    assert kinds[0] == ['ResNetBottleneck'] * 3 and kinds[3] == ['ResNetBottleneck'] * 3
    assert kinds[1] == ['ResNetBottleneck'] + ['RepMLPBottleneckBlock'] * 3
    assert kinds[2] == ['ResNetBottleneck'] + ['RepMLPBottleneckBlock'] * 5
    assert model.stages[1].blocks[1].repmlp.groups == 8 and model.stages[2].blocks[1].repmlp.groups == 16
    assert model.stages[2].blocks[1].repmlp.local_kernels == (1, 3, 5, 7)
    assert model.stages[1].blocks[1].repmlp.fc3.in_channels == 64 * 100  # r = 2: 512/4/2 channels, h = w = 10
    light = on_meta('repmlp_res50_light_224')
    assert type(light.stages[1].blocks[1]).__name__ == 'RepMLPLightBlock'
    assert light.stages[1].blocks[1].repmlp.groups == 4
    with pytest.raises(ValueError, match='one value per RepMLP stage'):
        RepMLPResNet(fc3_groups=(8, 16, 32))
    # paper Table 3: RepMLP in all four stages (r = 2, 2, 4, 4); each stage keeps its first bottleneck, and c5's
    # 7x7 map is a single partition, so it has no Global Perceptron
    with torch.device('meta'):
        every = RepMLPResNet(block_type='bottleneck', repmlp_stages=(0, 1, 2, 3), fc3_groups=8,
                             bottleneck_r=(2, 2, 4, 4))
    assert [type(b).__name__ for b in every.stages[0].blocks] == ['ResNetBottleneck'] + ['RepMLPBottleneckBlock'] * 2
    assert every.stages[3].blocks[1].repmlp.gp is None and every.stages[0].blocks[1].repmlp.parts == (8, 8)
    assert every.eval()(torch.zeros(1, 3, 224, 224, device='meta')).shape == (1, 1000)


def test_res50_fixed_input_size():
    model = on_meta('repmlp_res50_light_224')
    with pytest.raises(ValueError, match='built for 224x224 input but got 256x320'):
        model(torch.zeros(1, 3, 256, 320, device='meta'))


# --- pure-MLP CIFAR model ----------------------------------------------------------------------------------------

def test_cifar_pure_mlp_macs_match_the_paper():
    model = on_meta('repmlp_cifar_pure', deploy=True)
    prof = mlpvision.profile(model)
    assert prof.macs == 52_806_272  # paper Table 1 / §4.1: 52.8M FLOPs (one multiply-add each) after conversion
    assert round(prof.macs / 1e6, 1) == 52.8
    assert prof.params == 22_376_666
    train = mlpvision.profile(on_meta('repmlp_cifar_pure'))
    assert train.params == 22_844_858 and train.macs == 118_866_560  # the "before conversion" model (ablation A)
    # the paper's layout: FC(3->16); per stage [RepMLP g=2, h=w=8, FC] x 2 whose last FC widens; no Global
    # Perceptron in stage 3 (one 8x8 partition); 10 classes at 32x32
    assert [i['num_chs'] for i in model.feature_info] == [32, 64, 64]
    blocks = [u for s in model.stages for u in s.blocks]
    assert all(u.repmlp.groups == 2 and (u.repmlp.h, u.repmlp.w) == (8, 8) for u in blocks)
    assert [u.repmlp.gp is None for u in blocks] == [False] * 4 + [True] * 2
    assert model.num_classes == 10


@pytest.mark.parametrize('kwargs', [dict(), dict(local_kernels=()), dict(global_perceptron=False),
                                    dict(fc3_kernel=9)], ids=['paper', 'no_local', 'no_global', 'fc3_conv9'])
def test_cifar_pure_mlp_ablations_reparameterize_exactly(kwargs):
    kwargs = dict(kwargs, embed_dims=(4, 8, 16))  # narrower than the paper's 16/32/64 (same code) to keep this fast
    model = _perturb(mlpvision.create_model('repmlp_cifar_pure', **kwargs))
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        deployed = mlpvision.reparameterize(model)
        torch.testing.assert_close(deployed(x), ref, **F64)
    direct = mlpvision.create_model('repmlp_cifar_pure', deploy=True, **kwargs)
    direct.load_state_dict(deployed.state_dict(), strict=True)
    if kwargs.get('fc3_kernel'):
        assert deployed.stages[0].blocks[0].repmlp.fc3.kernel_size == (9, 9)


# --- RepMLPNet ---------------------------------------------------------------------------------------------------

def _small_repmlpnet(**kwargs) -> RepMLPNet:
    return RepMLPNet(img_size=64, embed_dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), sharesets=(1, 2, 4, 8), **kwargs)


@torch.no_grad()
def test_repmlpnet_channel_c_uses_shareset_c_mod_s():
    block = RepMLPNetBlock(8, (4, 4), num_sharesets=4, local_kernels=()).eval()
    block.gp.fc2.weight.zero_()
    block.gp.fc2.bias.zero_()  # gate = sigmoid(0) = 1/2 for every channel
    z = torch.randn(4, 4)
    for c in range(4):
        x = torch.zeros(1, 8, 4, 4)
        x[0, c] = x[0, c + 4] = z
        out = block(x)[0]
        torch.testing.assert_close(out[c], out[c + 4])  # same share-set, same transform
        others = [i for i in range(8) if i not in (c, c + 4)]
        assert out[others].abs().max() == 0  # channels do not mix (fc3's BN is the identity at init)
        assert not torch.allclose(out[c], block(torch.roll(x, 1, 1))[0][c + 1])  # the next set differs


def test_repmlpnet_block_deploy_is_exact_in_float64():
    args = dict(channels=16, partition=(6, 6), num_sharesets=4, local_kernels=(1, 3), gp_reduction=4)
    block = _perturb(RepMLPNetBlock(**args))
    _check_reparam(block, args, RepMLPNetBlock, torch.randn(2, 16, 12, 18, dtype=torch.float64))


def test_repmlpnet_runs_at_integer_multiples_of_the_native_size():
    model = on_meta('repmlpnet_t224').eval()
    for h, w in [(448, 448), (224, 448), (448, 224)]:
        assert model(torch.zeros(1, 3, h, w, device='meta')).shape == (1, 1000)
    for h, w in [(256, 256), (224, 320), (192, 192)]:
        with pytest.raises(ValueError, match=rf'built for 224x224 input but got {h}x{w}.*224x448, 448x224, 448x448'):
            model(torch.zeros(1, 3, h, w, device='meta'))
    # numerically, at a multiple of the native size, the deploy form still equals the train form
    small = _perturb(_small_repmlpnet())
    x = torch.randn(1, 3, 128, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mlpvision.reparameterize(small)(x), small(x), **F64)


# the official RepMLPNet-T224 at 448x224 and 224x448 (two partitions per map), train and deploy form; recipe inside
MULTI_PARTITION = json.loads((FIXTURES / 'repmlpnet' / 'repmlpnet_t224_multi_partition.json').read_text())


@pytest.fixture(scope='module')
def official_t224_checkpoint(tmp_path_factory):
    """The parity fixture's official-format T224 weights, saved as the official training scripts do."""
    path = tmp_path_factory.mktemp('repmlpnet') / 'official.pth'
    torch.save({'model': fill_state_dict(parity_record('repmlpnet_t224')['schema'])}, path)
    return path


def _max_rel_err(model: nn.Module, case: dict, key: str) -> float:
    with torch.no_grad():
        y = model.eval()(make_input(**case['input']))
    ref = torch.tensor(case[key])
    return ((y - ref).abs().max() / ref.abs().max()).item()


def test_repmlpnet_official_partition_order_reproduces_the_official_code_at_larger_inputs(official_t224_checkpoint):
    assert MULTI_PARTITION['official'] == repmlpnet._OFFICIAL
    model = mlpvision.create_model('repmlpnet_t224', official_partition_order=True,
                                   checkpoint_path=official_t224_checkpoint)
    blocks = [u.repmlp for s in model.stages for u in s.blocks]
    assert all(b.official_partition_order for b in blocks)  # create_model's kwarg reaches every block
    deployed = mlpvision.reparameterize(model)  # the deploy form's biased fc3 in the official order
    direct = mlpvision.create_model('repmlpnet_t224', deploy=True, official_partition_order=True)
    direct.load_state_dict(deployed.state_dict(), strict=True)
    default = mlpvision.create_model('repmlpnet_t224', checkpoint_path=official_t224_checkpoint)
    for case in MULTI_PARTITION['cases']:
        assert _max_rel_err(model, case, 'logits') <= 1e-4, case['name']
        assert _max_rel_err(deployed, case, 'deploy_logits') <= 1e-4, case['name']
        assert _max_rel_err(direct, case, 'deploy_logits') <= 1e-4, case['name']
        # the fixture tells the orders apart: ours is 0.05 (about 12% of the largest logit) away from it
        assert _max_rel_err(default, case, 'logits') > 0.05, case['name']


@torch.no_grad()
def test_repmlpnet_identical_halves_give_identical_halves_only_in_our_partition_order(official_t224_checkpoint):
    """Two identical 224x224 halves stacked to 448x224: with one FC per partition (the default) the first RepMLP
    block's output on each half is its 224x224 output, and so are the logits; the official order mixes the halves'
    channel groups, so it has neither property."""
    x = make_input(0, [1, 3, 224, 224])
    stacked = torch.cat([x, x], 2)  # 1, 3, 448, 224
    for official_order in (False, True):
        model = mlpvision.create_model('repmlpnet_t224', official_partition_order=official_order,
                                       checkpoint_path=official_t224_checkpoint).eval()
        unit = model.stages[0].blocks[0]
        ref = unit.repmlp(unit.norm1(model.stem(x)))  # 1, 64, 56, 56: a single partition, both orders agree
        out = unit.repmlp(unit.norm1(model.stem(stacked)))  # 1, 64, 112, 56: two partitions
        half_err = max((out[..., :56, :] - ref).abs().max(), (out[..., 56:, :] - ref).abs().max()).item()
        logit_err = (model(stacked) - model(x)).abs().max().item()
        if official_order:
            assert half_err > 0.1 and logit_err > 0.01  # measured 0.41 (largest output 0.73) and 0.052
        else:
            assert half_err <= 1e-5 and logit_err <= 1e-5


def test_repmlpnet_official_partition_order_changes_nothing_at_the_native_size_and_stays_exact_in_deploy():
    torch.manual_seed(0)
    ours = _perturb(_small_repmlpnet())
    official = _perturb(_small_repmlpnet(official_partition_order=True))
    official.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    large = torch.randn(1, 3, 128, 192, dtype=torch.float64)  # 2 x 3 partitions per map
    with torch.no_grad():
        torch.testing.assert_close(official(x), ours(x), rtol=0, atol=0)
        assert (official(large) - ours(large)).abs().max() > 1e-3
        torch.testing.assert_close(mlpvision.reparameterize(official)(large), official(large), **F64)


def test_repmlpnet_deploy_keeps_the_ffn_and_pre_norms():
    model = mlpvision.reparameterize(_small_repmlpnet())
    unit = model.stages[0].blocks[0]
    assert isinstance(unit.norm1, nn.BatchNorm2d) and isinstance(unit.ffn.fc1.bn, nn.BatchNorm2d)
    assert isinstance(model.norm, nn.BatchNorm2d) and isinstance(model.stem.bn, nn.BatchNorm2d)
    assert unit.repmlp.fc3.bias is not None and not hasattr(unit.repmlp, 'repconv3')


def test_repmlpnet_no_weight_decay_is_every_1d_parameter():
    # official optimizer.py (Swin's set_weight_decay): 1-D parameters and biases; the model defines no extra names
    model = on_meta('repmlpnet_t224')
    nwd = model.no_weight_decay()
    assert nwd == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert 'stages.0.blocks.0.repmlp.fc3.weight' not in nwd and 'stages.0.blocks.0.norm1.weight' in nwd


# --- checkpoints -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['repmlpnet_t224', 'repmlp_res50_light_224'])
def test_filter_passes_mlpvision_state_dicts_through(name):
    for deploy in (False, True):
        model = on_meta(name, deploy=deploy)
        sd = model.state_dict()
        filt = repmlpnet.checkpoint_filter_fn if name.startswith('repmlpnet') else repmlp.checkpoint_filter_fn
        assert list(filt(sd, model)) == list(sd)
    # the filters map names only; a train-form state_dict loaded into a model already built with deploy=True (no
    # train form at hand to fold it in) is a clear error that names the way that folds it
    with pytest.raises(CheckpointError, match='train-form .* deploy=True'):
        load_weights(on_meta(name, deploy=True), on_meta(name).state_dict())


def _official_deploy_keys(schema_keys: list[str], family: str) -> set[str]:
    """The official conversion's output key names, from the official train-form names (``local_inject`` for
    RepMLPNet; ``switch_to_deploy`` of every RepMLP and ConvBN, i.e. ``repmlp_model_convert``, for RepMLP-ResNet)."""
    out = set()
    for k in schema_keys:
        if re.search(r'\.repconv\d+\.|\.fc3_bn\.', k) or (family == 'res50' and '.avg.bn.' in k):
            continue  # Local Perceptron, fc3's BN and (RepMLP-ResNet) the BN after the pool are merged away
        if family == 'res50' and '.bn.' in k:
            k = k[:k.index('.bn.')] + '.conv.bias'  # a ConvBN becomes a biased conv
        out.add(k)
        if k.endswith('.fc3.weight'):
            out.add(k[:-len('weight')] + 'bias')
    return out


def _ours_to_official(k: str, family: str, repmlp_blocks: set[str], prefix: str) -> str:
    """Inverse of the key mapping, written from the official names (independently of the models' filters)."""
    if family == 'repmlpnet':
        k = re.sub(r'^stem\.', 'conv_embedding.', k)
        k = re.sub(r'^stages\.(\d+)\.downsample\.', lambda m: f'embeds.{int(m[1]) - 1}.', k)
        k = re.sub(r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.', k)
        k = k.replace('.norm1.', '.prebn1.').replace('.norm2.', '.prebn2.').replace('.repmlp.', '.repmlp_block.')
        k = k.replace('.ffn.fc', '.ffn_block.ffn_fc').replace('head.fc.', 'head.')
        return re.sub(r'^norm\.', 'head_norm.', k)
    k = re.sub(r'^stem\.0\.', 'stage0.0.', k).replace('head.fc.', 'linear.')
    m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.*)$', k)
    if m is None:
        return k
    rest = m[3]
    if f'stages.{m[1]}.blocks.{m[2]}.' in repmlp_blocks:  # light_* / btnk_* names in the RepMLP blocks only
        rest = re.sub(r'^(conv\d|repmlp)\.', prefix + r'\1.', rest).replace('repmlp.gp.fc', 'repmlp.fc1_fc2.fc')
    return f'stage{int(m[1]) + 1}.{m[2]}.{rest}'


@pytest.mark.parametrize('name', ['repmlpnet_t224', 'repmlp_res50_bottleneck_224',
                                  pytest.param('repmlp_res50_light_224', marks=pytest.mark.slow)])
def test_official_deploy_checkpoint_loads_into_deploy_model(name, tmp_path):
    """A state_dict in the official convert.py output format reproduces the official logits in a deploy=True model."""
    rec = parity_record(name)
    family = 'repmlpnet' if name.startswith('repmlpnet') else 'res50'
    torch.save({'model': fill_state_dict(rec['schema'])}, tmp_path / 'train.pth')
    deployed = mlpvision.reparameterize(mlpvision.create_model(name, checkpoint_path=tmp_path / 'train.pth'),
                                        inplace=True).state_dict()
    blocks = {re.match(r'^stages\.\d+\.blocks\.\d+\.', k)[0] for k in deployed if '.repmlp.' in k}
    prefix = 'light_' if 'light' in name else 'btnk_'
    official = {_ours_to_official(k, family, blocks, prefix): v for k, v in deployed.items()}
    assert set(official) == _official_deploy_keys([k for k, _, _ in rec['schema']], family)
    torch.save(official, tmp_path / 'official_deploy.pth')  # convert.py saves the bare state_dict
    del deployed, official
    model = mlpvision.create_model(name, deploy=True, checkpoint_path=tmp_path / 'official_deploy.pth').eval()
    with torch.no_grad():
        y = model(make_input(**rec['input']))
    ref = torch.tensor(rec['logits'])
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()
