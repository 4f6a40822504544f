"""Checkpoint reading and loading: formats, strictness, and clear errors for bad files."""
import pytest
import torch

import mlpvision
from mlpvision import CheckpointError
from mlpvision._checkpoint import atomic_save, read_state_dict, save_state_dict, unwrap_state_dict


@pytest.fixture(scope='module')
def s12():
    return mlpvision.create_model('resmlp_s12').eval()


@pytest.mark.parametrize('fmt', ['bare', 'model', 'state_dict', 'model_ema', 'ddp', 'safetensors'])
def test_formats_round_trip(s12, tmp_path, fmt):
    sd = s12.state_dict()
    if fmt == 'safetensors':
        path = save_state_dict(s12, tmp_path / 'w.safetensors')
    else:
        obj = {'bare': sd, 'model': {'model': sd, 'epoch': 3}, 'state_dict': {'state_dict': sd},
               'model_ema': {'model_ema': sd}, 'ddp': {f'module.{k}': v for k, v in sd.items()}}[fmt]
        path = tmp_path / 'w.pth'
        torch.save(obj, path)
    model = mlpvision.create_model('resmlp_s12', checkpoint_path=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_checkpoint_of_another_model_names_the_keys(s12, tmp_path):
    path = save_state_dict(s12, tmp_path / 's12.safetensors')
    with pytest.raises(CheckpointError) as e:
        mlpvision.create_model('resmlp_s24', checkpoint_path=path)
    msg = str(e.value)
    assert 'does not fit resmlp_s24' in msg and 'missing keys: blocks.12.' in msg
    with pytest.raises(CheckpointError, match=r'mis-shaped: .*checkpoint \(384, 3, 16, 16\) vs model \(768, 3, 8, 8\)'):
        mlpvision.create_model('resmlp_b24_p8', checkpoint_path=path)


def test_unexpected_keys_are_named(s12, tmp_path):
    sd = dict(s12.state_dict(), extra_thing=torch.zeros(1))
    torch.save(sd, tmp_path / 'x.pth')
    with pytest.raises(CheckpointError, match='unexpected keys: extra_thing'):
        mlpvision.create_model('resmlp_s12', checkpoint_path=tmp_path / 'x.pth')


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_file_is_a_clear_error(s12, tmp_path, suffix):
    path = tmp_path / f'w{suffix}'
    save_state_dict(s12, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r'could not be read'):
        mlpvision.create_model('resmlp_s12', checkpoint_path=path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        read_state_dict(tmp_path / 'nope.pth')


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ('executed',))

    path = tmp_path / 'evil.pth'
    torch.save({'model': Evil()}, path)
    with pytest.raises(CheckpointError, match='weights_only'):
        read_state_dict(path)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / 'ckpt.pth'
    atomic_save({'a': torch.ones(2)}, path)

    def failing_writer(obj, p):
        with open(p, 'wb') as f:
            f.write(b'partial')
        raise OSError('disk full')

    with pytest.raises(OSError):
        atomic_save({'a': torch.zeros(2)}, path, writer=failing_writer)
    assert torch.equal(read_state_dict(path)['a'], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pth']  # no temporary file left behind


def test_unwrap_prefers_model_and_strips_module():
    sd = {'module.a': torch.ones(1)}
    assert list(unwrap_state_dict({'model': sd, 'optimizer': {}})) == ['a']


def test_timm_format_resmlp_loads(s12, tmp_path):
    """timm's resmlp_12_224 names and (1, 1, C) Affine shapes map onto ours (same architecture)."""
    import timm
    ref = timm.create_model('resmlp_12_224').eval()
    torch.save(ref.state_dict(), tmp_path / 'timm.pth')
    model = mlpvision.create_model('resmlp_s12', checkpoint_path=tmp_path / 'timm.pth').eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


def test_official_checkpoint_loads_into_deploy_form(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent / 'fixtures' / 'parity'))
    import json

    from fill import fill_state_dict, make_input
    rec = json.loads((Path(__file__).parent / 'fixtures' / 'parity' / 'resmlp_s12.json').read_text())
    torch.save(fill_state_dict(rec['schema']), tmp_path / 'official.pth')
    model = mlpvision.create_model('resmlp_s12', deploy=True, checkpoint_path=tmp_path / 'official.pth').eval()
    assert not any(type(m).__name__ == 'Affine' for m in model.modules())
    with torch.no_grad():
        y = model(make_input(**rec['input']))
    ref = torch.tensor(rec['logits'])
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_features_only_with_checkpoint(s12, tmp_path):
    path = save_state_dict(s12, tmp_path / 's12.safetensors')
    feat = mlpvision.create_model('resmlp_s12', features_only=True, checkpoint_path=path, out_indices=(11,)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        (f,) = feat(x)
        _, (ref,) = s12.forward_intermediates(x, indices=[11])
    torch.testing.assert_close(f, ref)
