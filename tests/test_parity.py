"""Official-output parity: official-format weights (shared reference fixtures, copied into tests/fixtures/parity)
loaded through each family's checkpoint_filter_fn reproduce the official model's logits, in train and deploy form."""
import pytest
import torch

import mlpvision
from mlpvision._checkpoint import save_state_dict

from conftest import parity_models, parity_record
from fill import fill_state_dict, make_input

TOL = 1e-4  # relative to the largest logit, as the fixtures README prescribes

# heavy variants (> ~50 GMACs or > 100M params) run in the slow suite
SLOW = {'resmlp_b24_p8', 'repmlpnet_l256', 'hire_mlp_large', 'hire_mlp_base', 'as_mlp_base', 'strip_mlp_base',
        # RepMLP variants of 68M-96M params (4-5x the time of resmlp_s12); T224, T256, Light-g8 and Bottleneck-224
        # keep both RepMLP families, both block types and the deploy paths in the default suite
        'repmlpnet_b224', 'repmlpnet_b256', 'repmlpnet_d256', 'repmlp_res50_light_224', 'repmlp_res50_g8_16_320',
        'repmlp_res50_g4_8_320'}


def _params(name):
    marks = [pytest.mark.slow] if name in SLOW else []
    if not mlpvision.is_model(name):
        marks.append(pytest.mark.skip(reason=f'{name} is not implemented yet'))
    return pytest.param(name, marks=marks)


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
