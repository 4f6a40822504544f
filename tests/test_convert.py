"""`mlpvision convert` / mlpvision.hub: checkpoints to the Hugging Face Hub folder format timm uses
(model.safetensors + config.json), loaded back by mlpvision.create_model(DIR) and timm's 'local-dir:' source."""
import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import mlpvision
from mlpvision.cli.main import main
from mlpvision.hub import convert, push_to_hub, save_pretrained

from conftest import assert_one_error_line, cli, parity_record
from fill import fill_state_dict, make_input

TOL = 1e-4


def _assert_official(model, name='resmlp_s12'):
    rec = parity_record(name)
    with torch.no_grad():
        y = model.eval()(make_input(**rec['input']))
    ref = torch.tensor(rec['logits'])
    assert (y - ref).abs().max().item() <= TOL * ref.abs().max().item()


@pytest.fixture(scope='module')
def official(tmp_path_factory):
    """resmlp_s12 in the official format (deit key names, under 'model')."""
    path = tmp_path_factory.mktemp('official') / 'resmlp_12_no_dist.pth'
    torch.save({'model': fill_state_dict(parity_record('resmlp_s12')['schema'])}, path)
    return path


@pytest.mark.parametrize('deploy', [False, True])
def test_official_checkpoint_to_folder_both_loaders(official, tmp_path, capsys, deploy):
    out = tmp_path / 'resmlp_s12'
    rc, stdout, err = cli(capsys, 'convert', official, '--model', 'resmlp_s12', '-o', out,
                          *(['--deploy'] if deploy else []))
    assert rc == 0, err
    assert f'({"deploy" if deploy else "train"} form, 1000 classes)' in stdout
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['architecture'] == 'resmlp_s12' and cfg['num_classes'] == 1000
    assert cfg['model_args'].get('deploy', False) is deploy
    assert cfg['pretrained_cfg']['crop_pct'] == 0.9 and cfg['pretrained_cfg']['interpolation'] == 'bicubic'
    keys = load_file(out / 'model.safetensors')
    assert ('blocks.0.norm1.alpha' in keys) is not deploy  # the deploy form has its Affines folded away
    ours = mlpvision.create_model(str(out))
    theirs = timm.create_model(f'local-dir:{out}', pretrained=True)
    for model in (ours, theirs):
        assert mlpvision.is_reparameterized(model) is deploy
        _assert_official(model)


def test_training_checkpoint_keeps_model_args_classes_and_preprocessing(tmp_path, capsys):
    run = tmp_path / 'run'
    assert main(['train', '--dataset', 'digits', '--epochs', '1', '--model', 'resmlp_s12', '--model-kwargs',
                 'embed_dim=16', 'depth=1', 'patch_size=8', '--img-size', '32', '--workers', '0', '--no-tensorboard',
                 '--no-plot', '--no-progress', '--threads', '1', '--output', str(run)]) == 0
    capsys.readouterr()
    meta = torch.load(run / 'best.pth', weights_only=True)['mlpvision']
    rc, _, err = cli(capsys, 'convert', run / 'best.pth', '-o', tmp_path / 'digits', '--deploy')
    assert rc == 0, err
    cfg = json.loads((tmp_path / 'digits' / 'config.json').read_text())
    assert cfg['label_names'] == list(meta['classes']) and cfg['num_classes'] == 10
    assert {k: cfg['model_args'][k] for k in ('embed_dim', 'depth', 'patch_size', 'in_chans', 'deploy')} == dict(
        embed_dim=16, depth=1, patch_size=8, in_chans=1, deploy=True)
    assert tuple(cfg['pretrained_cfg']['mean']) == tuple(meta['data_config']['mean'])
    assert cfg['pretrained_cfg']['input_size'] == [1, 32, 32]
    # not the registered ImageNet release: no tag, URL, license or release notes carried over
    assert not {'tag', 'url', 'license', 'origin_url'} & set(cfg['pretrained_cfg'])
    assert cfg['pretrained_cfg']['notes'] == ['weights: an mlpvision train checkpoint (best.pth), not a released tag']
    # the folder stands in for a model name in `mlpvision export`
    rc, stdout, err = cli(capsys, 'export', tmp_path / 'digits', '--format', 'pt2', '--dynamic-batch',
                          '-o', tmp_path / 'digits.pt2')
    assert rc == 0, err
    assert f'resmlp_s12 (deploy form, {tmp_path / "digits"}) -> {tmp_path / "digits.pt2"}: pt2' in stdout
    assert 'input (batch, 1, 32, 32)' in stdout
    trained = mlpvision.create_model('resmlp_s12', checkpoint_path=run / 'best.pth', **meta['model_kwargs']).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        ref = trained(x)
        for model in (mlpvision.create_model(str(tmp_path / 'digits')),
                      timm.create_model(f'local-dir:{tmp_path / "digits"}', pretrained=True)):
            assert torch.allclose(model.eval()(x), ref, atol=1e-5, rtol=1e-4)
            assert list(model.pretrained_cfg['label_names']) == list(meta['classes'])
            assert tuple(model.pretrained_cfg['mean']) == tuple(meta['data_config']['mean'])


def test_convert_errors_are_one_line(official, tmp_path, capsys):
    rc, _, err = cli(capsys, 'convert', official, '-o', tmp_path / 'x')
    assert_one_error_line(rc, err, 'convert', 'does not name its model', '--model')
    rc, _, err = cli(capsys, 'convert', official, '--model', 'resmlp_s24', '-o', tmp_path / 'x')
    assert_one_error_line(rc, err, 'convert', 'does not fit resmlp_s24')
    assert not (tmp_path / 'x' / 'config.json').exists()


def test_python_api_and_push_to_hub_reuse_timms_writer(official, tmp_path, monkeypatch):
    """convert() is the command's API; push_to_hub is timm's push_to_hf_hub as it is (its Hub client replaced here
    by a recorder: the folder it would upload is the same format)."""
    out = convert(official, tmp_path / 'api', 'resmlp_s12')
    model = mlpvision.create_model(out)
    uploaded = {}

    class FakeApi:
        def __init__(self, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type('Url', (), {'repo_id': repo_id})()

        def file_exists(self, **kwargs):
            return False

        def upload_folder(self, repo_id, folder_path, **kwargs):
            from pathlib import Path
            uploaded.update(repo=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()),
                            config=json.loads((Path(folder_path) / 'config.json').read_text()))

    import timm.models._hub as hub
    monkeypatch.setattr(hub, 'HfApi', FakeApi)
    push_to_hub(model, 'someone/resmlp_s12-test')
    assert uploaded['repo'] == 'someone/resmlp_s12-test'
    assert uploaded['files'] == ['README.md', 'config.json', 'model.safetensors']  # no pickle file
    assert uploaded['config']['architecture'] == 'resmlp_s12'
    with pytest.raises(mlpvision.errors.UsageError, match='3 label names for a model with 1000 classes'):
        save_pretrained(model, tmp_path / 'bad', label_names=['a', 'b', 'c'])
