"""`mlpvision viz` and mlpvision.viz: every picture on the smallest variant of each family (the small configurations
of tests/test_models.py at 64x64), the ERF against a single conv's analytic support, checkpoints (class names from the
'mlpvision' entry, `predict --cam`) and one clear error line for each kind of bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import mlpvision
from mlpvision import viz
from mlpvision.cli.main import main
from mlpvision.errors import UsageError
from test_models import SMALL

from conftest import assert_one_error_line, cli

# the smallest registered variant of each family; (number of trunk units, viz weights' array shape or None)
FAMILIES = {
    'as_mlp_tiny': (4, None),  # AS-MLP mixes tokens by axial shifts: no token-mixing weights
    'hire_mlp_tiny': (4, None),  # Hire-MLP: region rearrangement and 1x1 convs, no token-mixing weights
    'strip_mlp_tiny_light': (4, (2, 16, 16)),  # stage 0 CGSMM at 64 / 4 = 16 tokens a row: rows and columns
    'repmlp_res50_light_224': (4, (4, 4, 4, 4)),  # first RepMLP block, SMALL partition: a 4x4 fc3 map per output
    'repmlpnet_t224': (4, (16, 16, 16, 16)),  # stage 0 at 64 / 4 = 16: one 16x16 partition
    'resmlp_s12': (2, (4, 4, 4, 4)),  # SMALL depth 2; 64 / 16-pixel patches = 4x4 patches
}


def _small_args(name):
    return ['--model-kwargs', json.dumps(SMALL[mlpvision.model_family(name)]), '--img-size', '64', '--threads', '1']


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp('img') / 'photo.png'
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)  # resized and cropped to 64x64
    return path


def test_erf_of_a_3x3_conv_is_its_support():
    """The ERF of one 3x3 conv (padding 1) at the centre of a 9x9 input is non-zero exactly in the 3x3
    neighbourhood of the centre and equals |sum over output channels of the kernel|, summed over input channels."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    erf = viz.effective_receptive_field(conv, torch.randn(3, 2, 9, 9))
    assert erf.shape == (9, 9)
    support = np.zeros((9, 9), dtype=bool)
    support[3:6, 3:6] = True
    assert (erf[~support] == 0).all() and (erf[support] > 0).all()
    expected = conv.weight.detach().double().sum(0).abs().sum(0).numpy()  # 3, 3
    np.testing.assert_allclose(erf[3:6, 3:6], expected, rtol=1e-6)
    assert max(viz.erf_radii(erf).values()) == 1


def test_erf_radii_of_known_maps():
    """A centred 5x5 square of equal mass in a 9x9 map: radius 1 holds 9/25 = 36%, radius 2 all of it."""
    m = np.zeros((9, 9))
    m[2:7, 2:7] = 1
    assert viz.erf_radii(m) == {0.2: 1, 0.5: 2, 0.9: 2}
    delta = np.zeros((9, 9))
    delta[4, 4] = 1
    assert viz.erf_radii(delta) == {0.2: 0, 0.5: 0, 0.9: 0}


@pytest.mark.parametrize('name', FAMILIES)
def test_every_picture_on_the_smallest_variant(name, image, tmp_path, capsys):
    units, weights_shape = FAMILIES[name]
    args = _small_args(name)
    rc, out, err = cli(capsys, 'viz', 'erf', name, '--random', '2', '-o', tmp_path, *args)
    assert rc == 0, err
    assert (tmp_path / 'erf.png').read_bytes()[:4] == b'\x89PNG'
    for s in range(units):
        assert np.load(tmp_path / f'erf_{name}_stage{s}.npy').shape == (64, 64)
        assert f'{name} stage {s}: ERF radius 20%: ' in out
    assert not (tmp_path / f'erf_{name}_stage{units}.npy').exists()

    rc, out, err = cli(capsys, 'viz', 'features', name, image, '-o', tmp_path, *args)
    assert rc == 0, err
    vm = viz.load_model(name, model_kwargs=SMALL[mlpvision.model_family(name)], img_size=64)
    for s, info in enumerate(vm.model.feature_info):
        side = 64 // info['reduction']
        assert np.load(tmp_path / f'features_photo_stage{s}.npy').shape == (side, side, 3)
    assert (tmp_path / 'features_photo.png').is_file()

    rc, out, err = cli(capsys, 'viz', 'cam', name, image, '-o', tmp_path, *args)
    assert rc == 0, err
    cam = np.load(tmp_path / 'cam_photo.npy')
    assert cam.shape == (64, 64) and cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert (tmp_path / 'cam_photo.png').is_file() and out.count('%)') == 5

    rc, out, err = cli(capsys, 'viz', 'weights', name, '-o', tmp_path, *args)
    if weights_shape is None:
        assert_one_error_line(rc, err, 'viz', name, 'no cross-patch token-mixing weights', 'viz erf')
    else:
        assert rc == 0, err
        assert np.load(tmp_path / f'weights_{name}_layer0.npy').shape == weights_shape
        assert (tmp_path / f'weights_{name}_layer0.png').is_file()


def test_erf_models_side_by_side(tmp_path):
    """Several models: one panel each at the stage asked for."""
    models = [viz.load_model(n, model_kwargs=SMALL[mlpvision.model_family(n)], img_size=64)
              for n in ('as_mlp_tiny', 'hire_mlp_tiny')]
    res = viz.plot_erf(models, tmp_path, stage=1, random=1)
    assert set(k for k in res if k != 'png') == {('as_mlp_tiny', 1), ('hire_mlp_tiny', 1)}
    assert res[('as_mlp_tiny', 1)]['erf'].shape == (64, 64)


def test_resmlp_weights_are_linear_tokens_rows():
    """Map (i, j) of viz weights is row i * w + j of the block's linear_tokens weight, reshaped to the patch grid."""
    vm = viz.load_model('resmlp_s12', model_kwargs=SMALL['resmlp'], img_size=64)
    arr, _, layer = viz.token_mixing_weights(vm, 1)
    assert layer == 'blocks.1'
    w = vm.model.blocks[1].linear_tokens.weight.detach()
    np.testing.assert_array_equal(arr[1, 2], w[1 * 4 + 2].reshape(4, 4).numpy())


def test_repmlp_weights_are_the_reparameterized_fc3():
    """RepMLPNet's map is the fc3 after reparameterize (Local Perceptron merged), and the model keeps its train form."""
    vm = viz.load_model('repmlpnet_t224', model_kwargs=SMALL['repmlpnet'], img_size=64)
    block = vm.model.stages[0].blocks[0].repmlp
    fused, _ = block.fused_fc3()
    arr, _, _ = viz.token_mixing_weights(vm, 0)
    np.testing.assert_allclose(arr.reshape(256, 256), fused[:256, :, 0, 0].detach().numpy(), rtol=1e-6)
    assert not mlpvision.is_reparameterized(vm.model)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A tiny digits model trained one epoch, its checkpoint's class names renamed to tell them from indices."""
    out = tmp_path_factory.mktemp('digits') / 'run'
    assert main(['train', '--recipe', 'digits', '--epochs', '1', '--model-kwargs', 'embed_dim=16', 'depth=1',
                 'patch_size=8', '--output', str(out), '--no-progress', '--no-tensorboard', '--no-plot',
                 '--threads', '1']) == 0
    obj = torch.load(out / 'best.pth', weights_only=True)
    obj['mlpvision']['classes'] = [f'digit-{i}' for i in range(10)]
    torch.save(obj, out / 'named.pth')
    return out


def test_cam_and_predict_cam_from_a_checkpoint(run_dir, image, tmp_path, capsys):
    """The checkpoint names its model and classes; `predict --cam` writes the same files beside the predictions."""
    rc, out, err = cli(capsys, 'viz', 'cam', '--checkpoint', run_dir / 'named.pth', image, '-o', tmp_path / 'a')
    assert rc == 0, err
    assert out.count('digit-') == 5
    assert np.load(tmp_path / 'a' / 'cam_photo.npy').shape == (32, 32)  # the digits recipe's 32x32 input
    (tmp_path / 'other').mkdir()
    twin = tmp_path / 'other' / 'photo.png'  # the same file name in another folder: its own output files
    twin.write_bytes(image.read_bytes())
    rc, out, err = cli(capsys, 'predict', run_dir / 'named.pth', image, twin, '--cam', tmp_path / 'b', '--threads', '1')
    assert rc == 0, err
    assert 'digit-' in out and '2 Grad-CAM overlays written' in out
    for stem in ('cam_photo', 'cam_photo_other'):
        assert np.load(tmp_path / 'b' / f'{stem}.npy').shape == (32, 32)
    rc, out, err = cli(capsys, 'viz', 'weights', run_dir / 'best.pth', '-o', tmp_path)  # WEIGHTS, the one form
    assert rc == 0, err
    assert np.load(tmp_path / 'weights_resmlp_s12_layer0.npy').shape == (4, 4, 4, 4)  # 32 / 8-pixel patches


def test_bad_input_is_one_clear_line(image, tmp_path, capsys):
    args = _small_args('as_mlp_tiny')
    rc, _, err = cli(capsys, 'viz', 'erf', 'as_mlp_tiny', '--stage', '4', '--random', '1', '-o', tmp_path, *args)
    assert_one_error_line(rc, err, 'viz', 'as_mlp_tiny has no stage 4', '--stage 0 to 3')
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png')
    rc, _, err = cli(capsys, 'viz', 'features', 'as_mlp_tiny', broken, '-o', tmp_path, *args)
    assert_one_error_line(rc, err, 'viz', 'broken.png', 'remove or replace it')
    assert '--skip-corrupt' not in err  # viz has no such flag
    rc, _, err = cli(capsys, 'viz', 'erf', 'as_mlp_tiny', '--images', tmp_path / 'missing.png', *args)
    assert_one_error_line(rc, err, 'viz', 'missing.png', 'does not exist')
    rc, _, err = cli(capsys, 'viz', 'weights', 'resmlp_s12', '--block', '5', *_small_args('resmlp_s12'))
    assert_one_error_line(rc, err, 'viz', 'no token-mixing block 5', '--block 0 to 1')
    rc, _, err = cli(capsys, 'viz', 'erf', 'no_such_model')
    assert_one_error_line(rc, err, 'viz', 'no_such_model')
    with pytest.raises(UsageError, match='no stage -5'):
        viz.stage_erf(viz.load_model('resmlp_s12', model_kwargs=SMALL['resmlp'], img_size=64), -5,
                      torch.randn(1, 3, 64, 64))


def test_official_format_checkpoint_needs_the_model_name(tmp_path, capsys):
    """A bare state dict (the official repositories' format) loads with MODEL named; its weights are the ones drawn."""
    kwargs = SMALL['resmlp']
    net = mlpvision.create_model('resmlp_s12', **kwargs)
    torch.save(net.state_dict(), tmp_path / 'official.pth')
    args = ['--checkpoint', tmp_path / 'official.pth', '--model-kwargs', json.dumps(kwargs), '-o', tmp_path]
    rc, out, err = cli(capsys, 'viz', 'weights', 'resmlp_s12', *args)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / 'weights_resmlp_s12_layer0.npy'),
                                  net.blocks[0].linear_tokens.weight.detach().reshape(4, 4, 4, 4).numpy())
    rc, _, err = cli(capsys, 'viz', 'weights', *args)
    assert_one_error_line(rc, err, 'viz', 'does not name its model', 'pass --model NAME')


def test_missing_matplotlib_is_one_clear_error(monkeypatch):
    import sys

    from mlpvision import viz
    from mlpvision.errors import UsageError
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'mlpvision\[train\]'"):
        viz._plt()
