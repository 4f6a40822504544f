"""Checkpoint reading and loading: formats, strictness, clear errors for bad files, the family filter registry and
the train-to-deploy policy."""
import pytest
import torch
import torch.nn as nn

import mlpvision
from mlpvision import CheckpointError
from mlpvision._checkpoint import (
    atomic_save,
    checkpoint_filter,
    load_checkpoint,
    load_weights,
    read_state_dict,
    register_checkpoint_filter,
    save_state_dict,
    unwrap_state_dict,
)

from conftest import parity_record
from fill import fill_state_dict, make_input

TOL = 1e-4  # relative to the largest logit, as the parity fixtures' README prescribes


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


def test_features_only_with_checkpoint(s12, tmp_path):
    path = save_state_dict(s12, tmp_path / 's12.safetensors')
    feat = mlpvision.create_model('resmlp_s12', features_only=True, checkpoint_path=path, out_indices=(11,)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        (f,) = feat(x)
        _, (ref,) = s12.forward_intermediates(x, indices=[11])
    torch.testing.assert_close(f, ref)
    # a train-form checkpoint is folded before timm wraps the deploy model as a feature extractor
    feat = mlpvision.create_model('resmlp_s12', deploy=True, features_only=True, checkpoint_path=path,
                                  out_indices=(11,)).eval()
    deployed = mlpvision.create_model('resmlp_s12', deploy=True, checkpoint_path=path).eval()
    with torch.no_grad():
        (f,) = feat(x)
        _, (ref,) = deployed.forward_intermediates(x, indices=[11])
    torch.testing.assert_close(f, ref)


# --- the family filter registry --------------------------------------------------------------------------------

def checkpoint_filter_fn(state_dict, model):
    """A module-level filter next to the classes below, as in a family file: only registration makes it count."""
    return {k.replace('official.', ''): v for k, v in state_dict.items()}


class _Registered(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


class _Subclass(_Registered):
    pass


class _Unregistered(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


register_checkpoint_filter(_Registered, checkpoint_filter_fn)


def test_registered_filter_is_used_and_only_for_its_class():
    official = {'official.fc.weight': torch.ones(2, 2), 'official.fc.bias': torch.zeros(2)}
    model = load_weights(_Registered(), official)
    assert torch.equal(model.fc.weight, torch.ones(2, 2))
    # neither a subclass nor a class merely defined next to a module-level checkpoint_filter_fn picks it up
    for cls in (_Subclass, _Unregistered):
        assert checkpoint_filter(cls()) is None
        with pytest.raises(CheckpointError, match=r'missing keys: fc\.weight, fc\.bias; unexpected keys: official'):
            load_weights(cls(), official)
        ours = cls().state_dict()
        assert torch.equal(load_weights(cls(), ours).fc.weight, ours['fc.weight'])  # keys load as they are


def test_every_family_registers_its_filter():
    from mlpvision.models import as_mlp, cycle_mlp, hire_mlp, repmlp, repmlpnet, resmlp, strip_mlp, wave_mlp
    expected = {as_mlp.ASMLP: as_mlp, hire_mlp.HireMLPNet: hire_mlp, repmlp.RepMLPResNet: repmlp,
                repmlp.RepMLPCifarNet: repmlp, repmlpnet.RepMLPNet: repmlpnet, resmlp.ResMLP: resmlp,
                strip_mlp.StripMLP: strip_mlp, cycle_mlp.CycleMLP: cycle_mlp, wave_mlp.WaveMLP: wave_mlp}
    for name in mlpvision.list_models():
        with torch.device('meta'):
            model = mlpvision.create_model(name)
        assert checkpoint_filter(model) is expected[type(model)].checkpoint_filter_fn, name


def test_failing_filter_names_the_file_and_the_model(tmp_path):
    def broken(state_dict, model):
        return {k: state_dict['no such key'] for k in state_dict}

    class _Broken(_Unregistered):
        pass

    register_checkpoint_filter(_Broken, broken)
    path = tmp_path / 'w.pth'
    torch.save(_Broken().state_dict(), path)
    with pytest.raises(CheckpointError, match=rf"Checkpoint {str(path)!r} could not be mapped onto _Broken by .*"
                                              rf"broken \(KeyError: 'no such key'\)"):
        load_checkpoint(_Broken(), path)


# --- train form into deploy form -------------------------------------------------------------------------------

def _assert_logits(model, rec):
    with torch.no_grad():
        y = model.eval()(make_input(**rec['input']))
    ref = torch.tensor(rec['logits'])
    assert (y - ref).abs().max() <= TOL * ref.abs().max()


def _assert_same_state_dict(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# the smallest variant of every family with a deploy form that has a parity fixture (repmlp_cifar_pure has none)
@pytest.mark.parametrize('name', ['repmlpnet_t224', 'repmlp_res50_light_g8_224', 'resmlp_s12', 'hire_mlp_tiny'])
def test_train_form_checkpoint_folds_on_load_into_deploy(name, tmp_path):
    rec = parity_record(name)
    path = tmp_path / 'official.pth'
    torch.save({'model': fill_state_dict(rec['schema'])}, path)  # official train-form weights
    deployed = mlpvision.create_model(name, deploy=True, checkpoint_path=path)
    assert mlpvision.is_reparameterized(deployed)
    if 'deploy_params' in rec:
        assert mlpvision.count_params(deployed) == rec['deploy_params']
    if name.startswith('resmlp'):
        assert not any(type(m).__name__ == 'Affine' for m in deployed.modules())
    _assert_logits(deployed, rec)
    folded = mlpvision.reparameterize(mlpvision.create_model(name, checkpoint_path=path), inplace=True)
    _assert_same_state_dict(deployed, folded)


def test_repmlp_cifar_train_form_folds_and_deploy_form_loads(tmp_path):
    name = 'repmlp_cifar_pure'
    with torch.device('meta'):
        own = mlpvision.create_model(name).state_dict()
    schema = [(k, v.shape, str(v.dtype).split('.')[-1]) for k, v in own.items()]
    torch.save(fill_state_dict(schema), tmp_path / 'train.pth')  # non-trivial BatchNorm statistics everywhere
    train = mlpvision.create_model(name, checkpoint_path=tmp_path / 'train.pth').eval()
    x = make_input(0, (2, 3, 32, 32))
    with torch.no_grad():
        ref = train(x)
    deployed = mlpvision.create_model(name, deploy=True, checkpoint_path=tmp_path / 'train.pth').eval()
    with torch.no_grad():
        assert (deployed(x) - ref).abs().max() <= TOL * ref.abs().max()
    _assert_same_state_dict(deployed, mlpvision.reparameterize(train))
    save_state_dict(deployed, tmp_path / 'deploy.safetensors')  # a deploy-form checkpoint loads as it is
    _assert_same_state_dict(mlpvision.create_model(name, deploy=True, checkpoint_path=tmp_path / 'deploy.safetensors'),
                            deployed)


@pytest.mark.parametrize('name', ['as_mlp_tiny', 'strip_mlp_tiny_light'])
def test_deploy_is_the_same_model_where_there_is_no_deploy_form(name):
    with torch.device('meta'):
        train, deploy = mlpvision.create_model(name), mlpvision.create_model(name, deploy=True)
    shapes = lambda m: [(k, v.shape) for k, v in m.state_dict().items()]  # noqa: E731
    assert shapes(train) == shapes(deploy)


def test_checkpoint_of_another_variant_into_deploy_names_the_train_form(s12, tmp_path):
    path = save_state_dict(s12, tmp_path / 's12.safetensors')
    with pytest.raises(CheckpointError, match=r'resmlp_s24 in its train form .*missing keys: blocks\.12\.'):
        mlpvision.create_model('resmlp_s24', deploy=True, checkpoint_path=path)


@pytest.mark.parametrize('name', ['resmlp_s12', 'hire_mlp_tiny', 'repmlpnet_t224'])
def test_pretrained_train_form_weights_fold_into_deploy_form(name, tmp_path):
    """pretrained=True with deploy=True (mlpvision's and timm's create_model): the released train-form weights are
    folded on load, and the deploy model gives the official logits."""
    import timm

    rec = parity_record(name)
    path = tmp_path / 'official.pth'
    torch.save({'model': fill_state_dict(rec['schema'])}, path)
    x, ref = make_input(**rec['input']), torch.tensor(rec['logits'])
    for create in (mlpvision.create_model, timm.create_model):
        model = create(name, pretrained=True, deploy=True, pretrained_cfg_overlay=dict(file=str(path)))
        assert mlpvision.is_reparameterized(model)
        with torch.no_grad():
            err = (model.eval()(x) - ref).abs().max()
        assert err <= 1e-4 * ref.abs().max()
