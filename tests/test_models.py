"""The model contract, checked for every registered model (parametrised over mlpvision.list_models(), so each new
family is covered by adding it to the registry)."""
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import mlpvision
from mlpvision.models._registry import model_meta

from conftest import by_weight, smallest_per_family
from conftest import on_meta as _on_meta
from conftest import randomise_norm_stats as _randomise_norm_stats

ALL = mlpvision.list_models()


def _params(names):
    return by_weight(names)


def _input(model, batch=2, dtype=torch.float32):
    c, h, w = model.pretrained_cfg['input_size']
    return torch.randn(batch, c, h, w, dtype=dtype)


def test_registry_lists_only_mlpvision_models():
    assert ALL, 'no model registered'
    assert 'resnet50' not in ALL and 'resmlp_12_224' not in ALL
    assert set(ALL) <= set(timm.list_models())
    assert mlpvision.list_models('resmlp_s*') == ['resmlp_s12', 'resmlp_s24', 'resmlp_s36']


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match=r"Unknown mlpvision model 'resmlp_s13'.*resmlp_s12"):
        mlpvision.create_model('resmlp_s13')


def test_create_any_model_takes_ours_first_then_timm():
    from mlpvision.models import create_any_model

    ours = create_any_model('resmlp_s12', num_classes=3, embed_dim=48, depth=1, patch_size=16, device='meta')
    assert type(ours).__module__ == 'mlpvision.models.resmlp' and ours.num_classes == 3
    theirs = create_any_model('resnet10t', num_classes=3, deploy=True)  # no deploy form in timm: dropped
    assert type(theirs).__module__ == 'timm.models.resnet' and theirs.num_classes == 3
    with pytest.raises(ValueError, match=r"Unknown mlpvision model 'resmlp_s13'.*resmlp_s12"):
        create_any_model('resmlp_s13')


@pytest.mark.parametrize('name', ALL)
def test_param_count_and_macs(name):
    meta = model_meta(name)
    model = _on_meta(name).eval()
    n_params = mlpvision.count_params(model)
    if meta.params is not None:
        assert n_params == meta.params, f'{name}: {n_params:,} params, official {meta.params:,}'
    else:
        assert meta.notes, f'{name} has no official parameter count; ModelMeta.notes must say why'

    # MACs within 3% of the paper's figure, counted on the inference (deploy) form that the papers count (RepMLP:
    # "FLOPs ... after the conversion"), or of the official code's count (fvcore, train form) where the paper gives none
    if meta.gmacs_paper is not None:
        ref = meta.gmacs_paper
        prof = mlpvision.profile(_on_meta(name, deploy=True) if _has_reparam(model) else model)
    else:
        ref, prof = meta.gmacs, mlpvision.profile(model)
    assert ref is not None
    assert math.isclose(prof.gmacs, ref, rel_tol=0.03), f'{name}: {prof.gmacs:.3f} GMACs vs {ref}'


@pytest.mark.parametrize('name', _params(ALL))
def test_contract(name):
    model = timm.create_model(name).eval()  # registered into timm
    cfg = model.pretrained_cfg
    for key in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv', 'classifier'):
        assert cfg.get(key) is not None, f'{name} cfg lacks {key}'

    x = _input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
        full = model(x)
        final, inter = model.forward_intermediates(x)
    assert logits.shape == (2, cfg['num_classes'])  # 1000 for ImageNet models, 10 for CIFAR ones
    assert pre.shape == (2, model.num_features)
    torch.testing.assert_close(full, logits)
    torch.testing.assert_close(final, feats)
    assert len(inter) == len(model.feature_info)
    for t, info in zip(inter, model.feature_info, strict=True):
        assert t.shape[1] == info['num_chs']
        assert t.shape[-1] == x.shape[-1] // info['reduction']

    # classifier reset
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)

    # no_weight_decay names real parameters; group_matcher covers every parameter
    names = dict(model.named_parameters())
    assert set(model.no_weight_decay()) <= set(names)
    from timm.models import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert sum(len(v) for v in groups.values()) == len(names)


@pytest.mark.parametrize('name', _params(ALL))
def test_backward_reaches_every_parameter(name):
    model = mlpvision.create_model(name, num_classes=10, drop_path_rate=0.1).train()
    model.set_grad_checkpointing(True)
    out = model(_input(model))
    out.float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'


@pytest.mark.parametrize('name', _params(ALL))
def test_features_only(name):
    info = _on_meta(name).feature_info
    feat = timm.create_model(name, features_only=True).eval()
    taken = feat.feature_info.out_indices
    assert len(taken) > 0
    assert feat.feature_info.channels() == [info[i]['num_chs'] for i in taken]
    assert feat.feature_info.reduction() == [info[i]['reduction'] for i in taken]
    x = _input(feat, batch=1)
    with torch.no_grad():
        outs = feat(x)
    assert [o.shape[1] for o in outs] == feat.feature_info.channels()
    assert [x.shape[-1] // o.shape[-1] for o in outs] == feat.feature_info.reduction()


def _has_reparam(model: nn.Module) -> bool:
    return any(hasattr(m, 'reparameterize') for m in model.modules())


@pytest.mark.parametrize('name', _params(ALL))
@torch.no_grad()
def test_deploy_equivalence_float64(name):
    model = mlpvision.create_model(name).double().eval()
    if not _has_reparam(model):
        pytest.skip(f'{name} has no re-parameterisable part')
    _randomise_norm_stats(model)
    for p in model.parameters():  # move LayerScale / Affine / GRN off their trivial init
        if p.ndim == 1:
            p.add_(torch.randn_like(p) * 0.05)
    x = _input(model, batch=1, dtype=torch.float64)
    ref = model(x)
    deployed = mlpvision.reparameterize(model)
    assert deployed is not model
    torch.testing.assert_close(deployed(x), ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())
    sd = deployed.state_dict()
    again = mlpvision.reparameterize(deployed)  # re-parameterising twice is harmless
    assert again.state_dict().keys() == sd.keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sd.items())
    direct = mlpvision.create_model(name, deploy=True).double()
    direct.load_state_dict(deployed.state_dict(), strict=True)


@pytest.mark.parametrize('name', ALL)
def test_wrong_channel_count_is_a_clear_error(name):
    model = _on_meta(name).eval()
    c, h, w = model.pretrained_cfg['input_size']
    with pytest.raises(ValueError, match=rf'built for {c}-channel input but got {c + 1} channels'):
        model(torch.randn(1, c + 1, h, w, device='meta'))


@pytest.mark.parametrize('name', [n for n in ALL if timm.models.get_pretrained_cfg(n).fixed_input_size])
def test_fixed_size_model_rejects_other_sizes(name):
    model = _on_meta(name).eval()
    c, h, w = model.pretrained_cfg['input_size']
    with pytest.raises(ValueError, match=rf'built for {h}x{w} input but got {h + 32}x{w}'):
        model(torch.randn(1, c, h + 32, w, device='meta'))


@pytest.mark.parametrize('name, kw, size', [
    ('as_mlp_tiny', dict(embed_dim=32, depths=(1, 2, 1, 1)), (64, 96)),
    ('hire_mlp_tiny', dict(depths=(1, 2, 1, 1), embed_dims=(16, 32, 32, 64)), (70, 90)),  # regions padded
])
def test_channels_last_only_changes_the_storage(name, kw, size):
    """channels_last=True (the default of these families) stores the maps channels-last and, in CPU inference, runs
    the 1x1 convs through oneDNN with activations / residual sums fused: the same logits and features as NCHW
    storage and, in training, the same gradients."""
    ref = mlpvision.create_model(name, channels_last=False, drop_path_rate=0., **kw)
    cl = mlpvision.create_model(name, drop_path_rate=0., **kw)
    cl.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        y_ref, feats_ref = ref.eval().forward_intermediates(x)
        y, feats = cl.eval().forward_intermediates(x)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)
    assert all(f.is_contiguous() for f in feats_ref)
    for a, b in zip([y, *feats], [y_ref, *feats_ref], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    target = torch.tensor([1, 2])
    for m in (ref.train(), cl.train()):
        F.cross_entropy(m(x), target).backward()
    # a conv bias right before a training-mode BatchNorm has zero gradient (the BN subtracts the batch mean): both
    # sides hold rounding noise there, which only has to be noise
    zero = {f'{n}.conv.bias' for n, m in ref.named_modules()
            if isinstance(getattr(m, 'bn', None), nn.BatchNorm2d) and getattr(m.conv, 'bias', None) is not None}
    for (pname, a), b in zip(cl.named_parameters(), ref.parameters(), strict=True):
        if pname in zero:
            assert max(a.grad.abs().max(), b.grad.abs().max()) <= 1e-5 * a.grad.numel() ** 0.5, pname
        else:
            assert (a.grad - b.grad).norm() <= 1e-4 * b.grad.norm() + 1e-7, pname


# --- timm 1.0's model contract: factory arguments, dtypes, FX, TorchScript ------------------------------------------
# Small configurations of each family (same code as the registered variants, a fraction of the cost): merged over a
# variant's own arguments, so each registered name keeps its knobs (block type, groups, kernels) at a small size.
SMALL = {
    'as_mlp': dict(embed_dim=32, depths=(1, 1, 1, 1)),
    'cycle_mlp': dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1)),
    'hire_mlp': dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1)),
    'strip_mlp': dict(embed_dim=16, depths=(1, 1, 1, 1), img_size=64),
    'repmlp': dict(img_size=64, partition=4, local_kernels=(1, 3), depths=(1, 2, 2, 1)),
    'repmlpnet': dict(img_size=64, embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), sharesets=(1, 2, 4, 8)),
    'resmlp': dict(img_size=64, embed_dim=32, depth=2),
    'wave_mlp': dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1)),
}
SMALL_INPUT = (64, 64)  # every SMALL configuration runs at 64x64 (a multiple of 32; the fixed-size ones are built so)

# Where a point of the contract cannot apply to a family, why (also said in the family's module docstring)
NOT_SCRIPTABLE = {
    'as_mlp': 'AS-MLP blocks hand their conv modules to the oneDNN dispatch of mlpvision.layers.fast_linear; '
              'TorchScript cannot pass a module as an argument',
    'cycle_mlp': 'CycleMLP blocks hand their layers to the oneDNN dispatch of mlpvision.layers.fast_linear; '
                 'TorchScript cannot pass a module as an argument',
    'hire_mlp': 'Hire-MLP blocks hand their conv modules to the oneDNN dispatch of mlpvision.layers.fast_linear; '
                'TorchScript cannot pass a module as an argument',
    'repmlp': 'the Local Perceptron convs are attributes named by kernel size (repconv{k}, the official keys), which '
              'TorchScript cannot look up by a computed name; the conv-BN layers hand their conv modules to the '
              'oneDNN dispatch of mlpvision.layers.fast_linear, and TorchScript cannot pass a module as an argument',
    'repmlpnet': 'the Local Perceptron convs are attributes named by kernel size (repconv{k}, the official keys), '
                 'which TorchScript cannot look up by a computed name; the Global Perceptron hands its activation '
                 'module to the oneDNN dispatch of mlpvision.layers.fast_linear',
    'resmlp': "ResMLP's channel MLPs (mlpvision.layers.Mlp) hand themselves to the oneDNN dispatch of "
              'mlpvision.layers.fast_linear (mlp_forward); TorchScript cannot pass a module as an argument',
    'wave_mlp': 'Wave-MLP blocks hand their modules to the oneDNN dispatch of mlpvision.layers.fast_linear; '
                'TorchScript cannot pass a module as an argument',
}


def _small(name: str, **kwargs) -> nn.Module:
    cfg = dict(SMALL.get(mlpvision.model_family(name), {}))
    if name == 'repmlp_cifar_pure':  # already small (32x32 CIFAR input, 16-64 channels)
        cfg = {}
    return mlpvision.create_model(name, **cfg, **kwargs)


def _small_input(model: nn.Module, batch: int = 1, **kwargs) -> torch.Tensor:
    size = getattr(model, 'img_size', None) or SMALL_INPUT
    return torch.randn(batch, model.in_chans, *size, **kwargs)


def _tensors(model: nn.Module):
    yield from model.parameters()
    yield from model.buffers()


@pytest.mark.parametrize('name', ALL)
def test_factory_device_meta_builds_nothing(name):
    """timm 1.0's ``device=`` factory argument (through timm.create_model and build_model_with_cfg): on the meta
    device every parameter and buffer is a meta tensor, none is allocated on the CPU."""
    model = timm.create_model(name, device='meta')
    devices = {t.device.type for t in _tensors(model)}
    assert devices == {'meta'}, f'{name}: tensors on {devices}'
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize('name', ALL)
def test_factory_dtype_builds_in_that_dtype(name, dtype):
    """``dtype=``: every floating-point parameter and buffer is built in it (no float32 copy first) and a forward in
    it runs (on the meta device: shapes and dtypes without compute; Strip-MLP's reduced-precision GRN branch used to
    open autocast there). torch's default dtype is restored afterwards."""
    model = timm.create_model(name, device='meta', dtype=dtype).eval()
    assert torch.get_default_dtype() == torch.float32
    dtypes = {t.dtype for t in _tensors(model) if t.is_floating_point()}
    assert dtypes == {dtype}, f'{name}: {dtypes}'
    c, h, w = model.pretrained_cfg['input_size']
    out = model(torch.empty(1, c, h, w, device='meta', dtype=dtype))
    assert out.dtype == dtype and out.shape == (1, model.num_classes)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize('name', smallest_per_family())
def test_reduced_precision_init_runs_in_that_dtype(name, dtype):
    """Building for real in bf16 / float16 / float64 (the initialisers run in that dtype: RepMLP's orthogonal fc3 is
    computed in float32 and rounded, since there is no half-precision Cholesky) gives finite parameters; in float64
    the model runs and its logits are float64."""
    model = _small(name, dtype=dtype).eval()
    assert torch.get_default_dtype() == torch.float32
    for pname, p in model.named_parameters():
        assert p.dtype == dtype and torch.isfinite(p).all(), pname
    if dtype == torch.float64:
        with torch.no_grad():
            out = model(_small_input(model, dtype=dtype))
        assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_factory_scope_restores_the_default_dtype_on_error():
    with pytest.raises(ValueError, match='pad_mode must be one of'):
        mlpvision.create_model('as_mlp_tiny', device='meta', dtype=torch.bfloat16, pad_mode='mirror')
    assert torch.get_default_dtype() == torch.float32
    with pytest.raises(ValueError, match='dtype must be a floating-point dtype'):
        mlpvision.create_model('as_mlp_tiny', device='meta', dtype=torch.int8)


@pytest.mark.parametrize('name', ALL)
def test_reset_classifier_keeps_device_dtype_and_mode(name):
    """A new head is built on the model's device, in its dtype and in its mode (timm's contract; ResMLP's head was
    left in training mode under an eval model), also after ``reset_classifier(0)`` removed the old one (whose
    parameters the head used to take them from) and after ``.double()``."""
    model = _on_meta(name).double().eval()
    for n in (7, 0, 5):
        model.reset_classifier(n)
        assert model.num_classes == n
        dd = {(t.device.type, t.dtype) for t in _tensors(model) if t.is_floating_point()}
        assert dd == {('meta', torch.float64)}, f'{name} after reset_classifier({n}): {dd}'
        training = [m for m in model.modules() if m.training]  # the new head in the model's (eval) mode too
        assert training == [], f'{name} after reset_classifier({n}): {training[0]} is in training mode'
    c, h, w = model.pretrained_cfg['input_size']
    assert model(torch.empty(2, c, h, w, device='meta', dtype=torch.float64)).shape == (2, 5)


def _fx_tracer_kwargs() -> dict:
    # what timm's own FX feature extraction (timm.models._features_fx) hands torchvision's tracer
    return dict(leaf_modules=timm.layers.get_notrace_modules(), autowrap_functions=timm.layers.get_notrace_functions())


def _check_fx(model: nn.Module, x: torch.Tensor) -> None:
    from timm.models._features_fx import FeatureGraphNet
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    kwargs = _fx_tracer_kwargs()
    model.eval()
    with torch.inference_mode():
        ref = model(x)
        _, ref_feats = model.forward_intermediates(x)
        _, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
        graph = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=kwargs)
        out = next(iter(graph(x).values()))
        feats = FeatureGraphNet(model, out_indices=tuple(range(len(model.feature_info))))(x)
    # the leaves run the model's own code, so the traced graph computes exactly the same numbers
    assert torch.equal(out, ref)
    assert len(feats) == len(ref_feats)
    for a, b in zip(feats, ref_feats, strict=True):
        if a.ndim == 3:  # an isotropic model's block outputs are tokens (B, N, C); forward_intermediates gives NCHW
            a = a.transpose(1, 2).reshape(b.shape)
        assert torch.equal(a, b)
    # the input check stays in the graph: a wrong channel count still raises the model's error
    with pytest.raises(ValueError, match='-channel input but got'):
        graph(torch.randn(1, x.shape[1] + 1, *x.shape[2:]))

    # training graph: backward reaches every parameter
    model.train()
    train_nodes, _ = get_graph_node_names(model, tracer_kwargs=kwargs)
    graph = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                     tracer_kwargs=kwargs).train()
    next(iter(graph(torch.cat([x, x])).values())).float().pow(2).mean().backward()
    missing = [n for n, p in graph.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'


@pytest.mark.parametrize('name', ALL)
def test_fx_forward_and_features_small(name):
    """``torch.fx``: forward and features trace (input checks and the blocks that dispatch on the input's shape,
    layout or dtype are FX leaves: timm's register_notrace_function / register_notrace_module), the traced graph
    gives identical outputs, and timm builds an FX feature extractor (``feature_cls='fx'``)."""
    model = _small(name)
    _check_fx(model, _small_input(model))
    cfg = dict(SMALL.get(mlpvision.model_family(name), {})) if name != 'repmlp_cifar_pure' else {}
    feat = timm.create_model(name, features_only=True, feature_cls='fx', **cfg).eval()
    x = _small_input(model)
    with torch.inference_mode():
        outs = feat(x)
    assert [o.shape[-1] if o.ndim == 3 else o.shape[1] for o in outs] == feat.feature_info.channels()  # NLC or NCHW


@pytest.mark.slow
@pytest.mark.parametrize('name', ALL)
def test_fx_forward_and_features_full_size(name):
    model = mlpvision.create_model(name)
    _check_fx(model, _input(model, batch=1))


def _script(model: nn.Module, x: torch.Tensor) -> None:
    with timm.layers.set_layer_config(scriptable=True):
        scripted = torch.jit.script(model.eval())
    with torch.no_grad():
        # the scripted forms take the plain layers where the eager ones take oneDNN: equal up to float rounding
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
        # the input check runs in the scripted model too (called back in Python)
        with pytest.raises(Exception, match='-channel input but got'):
            scripted(torch.randn(1, x.shape[1] + 1, *x.shape[2:]))
    # a traced FX graph scripts too (the leaves are scripted modules or ignored functions)
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    kwargs = _fx_tracer_kwargs()
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    with timm.layers.set_layer_config(scriptable=True):
        graph = torch.jit.script(create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=kwargs))
    with torch.no_grad():
        torch.testing.assert_close(next(iter(graph(x).values())), model(x), rtol=1e-5, atol=1e-5)


def _script_params(names):
    return [pytest.param(n, marks=pytest.mark.xfail(reason=NOT_SCRIPTABLE[mlpvision.model_family(n)], strict=True))
            if mlpvision.model_family(n) in NOT_SCRIPTABLE else n for n in names]


@pytest.mark.parametrize('name', _script_params(ALL))
def test_torchscript(name):
    """TorchScript where it can work; where it cannot, a strict xfail with the reason (NOT_SCRIPTABLE), so a family
    that becomes scriptable must say so here and in its docstring."""
    model = _small(name)
    _script(model, _small_input(model))


def test_not_scriptable_reasons_name_registered_families():
    assert set(NOT_SCRIPTABLE) <= {mlpvision.model_family(n) for n in ALL}


# --- names ---------------------------------------------------------------------------------------------------------
def _norm(s: str) -> str:
    return s.lower().replace('_', '').replace('-', '')


@pytest.mark.parametrize('name', smallest_per_family())
def test_model_class_carries_the_family_name_and_no_block_does(name):
    """timm's convention (``ConvNeXt`` with ``ConvNeXtBlock``): the model class is named after the family; no block
    or mixer inside is named just the family (``HireMLP`` and ``RepMLP`` used to be blocks)."""
    model = _on_meta(name)
    family = _norm(mlpvision.model_family(name))
    assert _norm(type(model).__name__).startswith(family), type(model).__name__
    inner = {type(m).__name__ for m in model.modules() if m is not model}
    assert not [c for c in inner if _norm(c) == family], inner


def _model_class(name: str) -> type:
    return type(_on_meta(name))


# one argument name per meaning across families (timm's names: ``embed_dim`` for a first / only width,
# ``embed_dims`` for widths per stage, ``depths`` for blocks per stage, ``depth`` for an isotropic model's blocks)
_FORBIDDEN_ARGS = {'layers', 'channels', 'dims', 'num_blocks', 'widths'}


@pytest.mark.parametrize('name', smallest_per_family() + ['repmlp_res50_light_224'])
def test_one_argument_name_per_meaning(name):
    import inspect
    params = set(inspect.signature(_model_class(name).__init__).parameters)
    assert not params & _FORBIDDEN_ARGS, params & _FORBIDDEN_ARGS
    assert params & {'depths', 'depth'}  # (RepMLPResNet's widths are ResNet-50's, not an argument)
    assert {'device', 'dtype', 'num_classes', 'in_chans', 'global_pool', 'drop_rate', 'drop_path_rate'} <= params


@pytest.mark.parametrize('name, new, alias, value', [
    ('repmlp_res50_light_224', 'depths', 'layers', (3, 4, 2, 3)),
    ('repmlp_res50_light_224', 'depths', 'num_blocks', (3, 4, 2, 3)),
    ('repmlp_cifar_pure', 'embed_dims', 'channels', (8, 16, 32)),
    ('repmlpnet_t224', 'embed_dims', 'channels', (32, 64, 128, 256)),
])
def test_official_argument_names_are_aliases(name, new, alias, value):
    """The official code's (or a former) argument name builds the same model as mlpvision's; both at once is an
    error naming the one to keep."""
    def shapes(**kwargs):
        return [(k, v.shape) for k, v in _on_meta(name, **kwargs).state_dict().items()]

    assert shapes(**{alias: value}) == shapes(**{new: value}) != shapes()
    a = _on_meta(name, **{alias: value})
    with pytest.raises(TypeError, match=rf'got both {new}= and {alias}=.*pass only {new}='):
        _on_meta(name, **{alias: value, new: value})
    cls = type(a)
    with torch.device('meta'), pytest.raises(TypeError, match=rf'got both {new}= and {alias}='):
        cls(**{alias: value, new: value})
