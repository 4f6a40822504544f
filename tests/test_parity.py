"""Official-output parity: official-format weights (shared reference fixtures, copied into tests/fixtures/parity)
loaded through each family's checkpoint_filter_fn reproduce the official model's logits, in train and deploy form."""
import pytest
import torch

import mlpvision
from mlpvision._checkpoint import save_state_dict

from conftest import by_weight, parity_models, parity_record
from fill import fill_state_dict, make_input

TOL = 1e-4  # relative to the largest logit, as the fixtures README prescribes

def _params(name):
    (param,) = by_weight([name])  # heavy variants run in the slow suite (conftest.is_heavy, the one rule)
    if not mlpvision.is_model(name):
        return pytest.param(name, marks=[*param.marks, pytest.mark.skip(reason=f'{name} is not implemented yet')])
    return param


def _check(model, rec):
    x = make_input(**rec['input'])
    with torch.no_grad():
        y = model.eval()(x)
    ref = torch.tensor(rec['logits'])
    scale = ref.abs().max().item()
    err = (y - ref).abs().max().item()
    assert err <= TOL * scale, f'max |diff| {err:.3g} > {TOL} x {scale:.3g}'


@pytest.mark.parametrize('name', [n for n in parity_models() if mlpvision.is_model(n)])
def test_model_meta_counts_are_the_official_ones(name):
    """ModelMeta.params (the count test_models.py's test_param_count_and_macs asserts for every model, on the meta
    device) and ModelMeta.deploy_params are the official implementation's counts as the fixture recorded them."""
    rec, meta = parity_record(name), mlpvision.model_meta(name)
    assert meta.params == rec['params']
    assert meta.deploy_params == rec.get('deploy_params')


@pytest.mark.parametrize('name', [_params(n) for n in parity_models()])
def test_parity_train_and_deploy(name, tmp_path):
    rec = parity_record(name)
    sd = fill_state_dict(rec['schema'])
    path = tmp_path / 'official.pth'
    torch.save({'model': sd}, path)  # the official training scripts' layout
    model = mlpvision.create_model(name, checkpoint_path=path)  # count: test_param_count_and_macs and the test above
    _check(model, rec)
    deployed = mlpvision.reparameterize(model)
    if 'deploy_params' in rec:  # the one check of the deploy forms' counts
        assert mlpvision.count_params(deployed) == rec['deploy_params']
    _check(deployed, rec)
    # the deploy form's state_dict loads into a model built with deploy=True
    save_state_dict(deployed, tmp_path / 'deploy.safetensors')
    direct = mlpvision.create_model(name, deploy=True, checkpoint_path=tmp_path / 'deploy.safetensors')
    _check(direct, rec)
