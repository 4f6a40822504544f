"""Export (issue 15): ONNX (both exporters), torch.export programs and torch.jit.trace for every family, train and
deploy form, each checked against the eager model; the causes of the wrong or failing exports the issue found.

The default suite exports small configurations of each family's smallest variant (the same code as the registered
models, a fraction of the capture time); every registered model goes through the default ONNX exporter and
torch.export in the slow suite. The default ONNX exporter translates a torch.export program, which the pt2 tests
capture for every family; the translation itself is checked on the fastest family here and on all in the slow suite.
"""
import io
import warnings
from pathlib import Path

import pytest
import torch

import mlpvision
from mlpvision.export import ExportError, export_model, load_model
from mlpvision.layers.axial_shift import AxialShift
from mlpvision.layers.fast_linear import tracing

from conftest import assert_one_error_line, cli

onnx = pytest.importorskip('onnx', reason='onnx is in the dev extra (pip install -e .[dev])')
ort = pytest.importorskip('onnxruntime', reason='onnxruntime is in the dev extra (pip install -e .[dev])')

# the smallest variant of each family, made small enough to capture in seconds (the family's code, fewer and
# narrower blocks, a reduced input size where the family allows one), and the example's input size
SMALL = {
    'as_mlp_tiny': (dict(embed_dim=16, depths=(1, 1, 1, 1)), (64, 64)),
    'hire_mlp_tiny': (dict(embed_dims=(16, 32, 32, 32), depths=(1, 1, 1, 1)), (96, 96)),
    'strip_mlp_tiny_light': (dict(img_size=64, depths=(1, 1, 1, 1)), (64, 64)),
    'repmlp_cifar_pure': (dict(depths=(1, 1, 1)), (32, 32)),
    'repmlpnet_t224': (dict(img_size=64, embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1)), (64, 64)),
    'resmlp_s12': (dict(img_size=64, depth=2, embed_dim=64), (64, 64)),
    'wave_mlp_t_dw': (dict(embed_dims=(16, 32, 32, 32), depths=(1, 1, 1, 1)), (64, 64)),
}
ANY_SIZE = {'as_mlp_tiny', 'hire_mlp_tiny', 'wave_mlp_t_dw'}
# the families with a deploy form
DEPLOY = {'hire_mlp_tiny', 'repmlp_cifar_pure', 'repmlpnet_t224', 'resmlp_s12', 'wave_mlp_t_dw'}
FORMS = [(n, d) for n in SMALL for d in ((False, True) if n in DEPLOY else (False,))]
# torch.export takes seconds per model: the default suite captures each family once, in its deploy form where it has
# one (what int8 quantization exports), the train forms of those in the slow suite
PT2_FORMS = [pytest.param(n, d, marks=[pytest.mark.slow] if n in DEPLOY and not d else [],
                          id=f'{n}-{"deploy" if d else "train"}') for n, d in FORMS]


def _small(name: str, deploy: bool = False) -> torch.nn.Module:
    kwargs, _ = SMALL[name]
    model = mlpvision.create_model(name, **kwargs)
    if deploy:
        model = mlpvision.reparameterize(model.eval())
    return model.eval()


def _ids(forms):
    return [f'{n}-{"deploy" if d else "train"}' for n, d in forms]


# --- the causes --------------------------------------------------------------------------------------------------

def test_axial_shift_legacy_onnx_keeps_every_channel():
    """The legacy exporter recorded AS-MLP's group size ceil(C / s), written -(-C // s) on the input's shape, as
    ONNX's truncating Div: an exported AxialShift(16, 5, 3) returned 12 channels. The groups now come from the
    channel count at construction."""
    shift = AxialShift(16, 5, 3)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(shift, (torch.randn(2, 16, 8, 8),), buf, dynamo=False, input_names=['x'],
                          dynamic_axes={'x': {0: 'b', 2: 'h', 3: 'w'}})
    sess = ort.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])
    for shape in ((2, 16, 8, 8), (3, 16, 5, 12)):
        x = torch.randn(shape)
        (y,) = sess.run(None, {'x': x.numpy()})
        assert y.shape == shape
        assert torch.equal(torch.from_numpy(y), shift(x))  # copies only: exact


def test_axial_shift_names_a_wrong_channel_count():
    with pytest.raises(ValueError, match=r'built for \(B, 16, H, W\) input, got shape \(1, 12, 4, 4\)'):
        AxialShift(16, 5, 3)(torch.randn(1, 12, 4, 4))


def test_tracing_is_seen_by_every_capture():
    """The oneDNN fast paths and Hire-MLP's size-dependent shortcut ask ``tracing()``: true under torch.jit.trace
    (and the legacy ONNX exporter), torch.export (and the dynamo one) and torch.fx."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(tracing())
            return x + 1

    x = torch.randn(2)
    Probe()(x)
    torch.jit.trace(Probe(), x, check_trace=False)
    torch.export.export(Probe(), (x,))
    torch.fx.symbolic_trace(Probe())
    assert seen == [False, True, True, True]


@pytest.mark.parametrize('name', SMALL)
@pytest.mark.parametrize('deploy', [False, pytest.param(True, marks=pytest.mark.slow)], ids=['train', 'deploy'])
def test_jit_trace_with_default_checks(name, deploy):
    """torch.jit.trace's default check (it traces again and compares) failed on the oneDNN fast path
    ('unsupported input list type'); traced graphs now hold the plain ops."""
    model = _small(name, deploy)
    size = SMALL[name][1]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings: shapes become constants (the input checks)
        traced = torch.jit.trace(model, torch.randn(2, 3, *size))
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=1e-5 * model(x).abs().max().item())


# --- export_model --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,deploy', FORMS, ids=_ids(FORMS))
def test_legacy_onnx_dynamic_batch_and_size(name, deploy, tmp_path):
    model = _small(name, deploy)
    any_size = name in ANY_SIZE
    r = export_model(model, tmp_path / 'm.onnx', 'onnx', dynamic_batch=True, dynamic_size=any_size,
                     input_size=SMALL[name][1], onnx_exporter='legacy')
    assert r.exporter == 'legacy' and r.path.is_file()
    assert {c.batch for c in r.checks} == {1, 3}
    assert len({c.size for c in r.checks}) >= (2 if any_size else 1)
    assert r.max_rel_diff < 1e-5
    # the file serves what the report says: another batch and, where the family allows, another size
    sess = ort.InferenceSession(str(r.path), providers=['CPUExecutionProvider'])
    h, w = SMALL[name][1]
    x = torch.randn(5, 3, *((h + 32, w + 32) if any_size else (h, w)))
    (y,) = sess.run(None, {'input': x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert (torch.from_numpy(y) - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize('name,deploy', PT2_FORMS)
def test_pt2_dynamic_batch(name, deploy, tmp_path):
    model = _small(name, deploy)
    r = export_model(model, tmp_path / 'm.pt2', 'pt2', dynamic_batch=True, input_size=SMALL[name][1])
    assert r.exporter == 'torch.export' and r.size_range == {'batch': (1, None)}
    assert [c.batch for c in r.checks] == [1, 3] and r.max_rel_diff < 1e-5
    program = torch.export.load(r.path)
    x = torch.randn(4, 3, *SMALL[name][1])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-5 * model(x).abs().max().item())


@pytest.mark.parametrize('mode', ['circular', 'zero', 'replicate'])
def test_region_mlp_exports_for_every_size(mode):
    """Hire-MLP's region padding was worked out in Python from the example's size, so a graph served only sizes
    with the example's padding pattern. A captured region MLP now serves every size in its range, whatever the
    remainder by the region size (the eager model on channels-last maps, as in the model, the graph on NCHW)."""
    from mlpvision.models.hire_mlp import RegionMlp

    for dim in (2, 3):
        mlp = RegionMlp(8, dim, region_size=3, step=2, step_pad_mode=mode, region_pad_mode=mode).eval()
        auto = torch.export.Dim.AUTO
        program = torch.export.export(mlp, (torch.randn(2, 8, 20, 23),),
                                      dynamic_shapes=({0: torch.export.Dim('b', min=1), 2: auto, 3: auto},))
        module = program.module()
        for size in range(4, 14):  # every remainder by 3, from the smallest the graph serves (2 regions)
            x = torch.randn(1, 8, size, size + 1).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                torch.testing.assert_close(module(x), mlp(x), rtol=0, atol=1e-6)
        with pytest.raises(Exception, match='Guard failed'):  # one region: refused, not silently wrong
            module(torch.randn(1, 8, 3, 3) if dim == 2 else torch.randn(1, 8, 5, 3))


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(ANY_SIZE))
def test_pt2_dynamic_size(name, tmp_path):
    """The whole model: the exported program serves every size in its range."""
    model = _small(name)
    r = export_model(model, tmp_path / 'm.pt2', 'pt2', dynamic_batch=True, dynamic_size=True,
                     input_size=SMALL[name][1])
    lo, hi = r.size_range['height']
    assert hi is None and r.size_range['width'][1] is None
    assert lo <= {'as_mlp_tiny': 64, 'hire_mlp_tiny': 67, 'wave_mlp_t_dw': 35}[name]  # every stage map >= 2 (Hire:
    # >= 2 regions)
    assert len({c.size for c in r.checks}) >= 2 and r.max_rel_diff < 1e-5
    module = torch.export.load(r.path).module()
    x = torch.randn(2, 3, 128, 160) if name == 'as_mlp_tiny' else torch.randn(2, 3, 101, 77)  # Hire: odd sizes
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), rtol=0, atol=1e-5 * model(x).abs().max().item())
    with pytest.raises(Exception, match='Guard failed'):  # outside the range: refused, not silently wrong
        module(torch.randn(1, 3, lo - 1, lo))


def test_hire_legacy_onnx_serves_small_and_odd_sizes(tmp_path):
    """The legacy exporter's Hire-MLP graph has no size range: it serves every size the model takes, from 3 px."""
    model = _small('hire_mlp_tiny')
    r = export_model(model, tmp_path / 'm.onnx', 'onnx', dynamic_batch=True, dynamic_size=True,
                     input_size=(96, 96), onnx_exporter='legacy')
    sess = ort.InferenceSession(str(r.path), providers=['CPUExecutionProvider'])
    for size in ((3, 5), (19, 21), (50, 62), (70, 93), (200, 250)):  # 200x250 failed before (issue 15)
        x = torch.randn(2, 3, *size)
        (y,) = sess.run(None, {'input': x.numpy()})
        with torch.no_grad():
            ref = model(x)
        assert (torch.from_numpy(y) - ref).abs().max() <= 1e-5 * ref.abs().max(), size


def test_dynamo_onnx_dynamic_batch(tmp_path):
    """The default ONNX exporter end to end on the fastest family (every family in the slow suite)."""
    model = _small('resmlp_s12', deploy=True)
    r = export_model(model, tmp_path / 'm.onnx', 'onnx', dynamic_batch=True, input_size=(64, 64))
    assert r.exporter == 'dynamo' and [c.batch for c in r.checks] == [1, 3] and r.max_rel_diff < 1e-5


@pytest.mark.inductor
def test_aoti_package(tmp_path):
    """An AOTInductor package compiled for this CPU (half a minute for this small model: the inductor suite)."""
    model = _small('resmlp_s12', deploy=True)
    r = export_model(model, tmp_path / 'm.pt2', 'aoti', dynamic_batch=True, input_size=(64, 64))
    assert r.exporter == 'AOTInductor' and [c.batch for c in r.checks] == [1, 3] and r.max_rel_diff < 1e-5
    package = torch._inductor.aoti_load_package(str(r.path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(package(x), model(x), rtol=0, atol=1e-5 * model(x).abs().max().item())


def test_a_failed_check_writes_nothing(tmp_path):
    out = tmp_path / 'm.onnx'
    out.write_bytes(b'previous')
    with pytest.raises(ExportError, match=r'differs from the model by .* of the largest logit at batch 1, 64x64 '
                                          r'\(tolerance -1\); nothing was written'):
        export_model(_small('resmlp_s12'), out, 'onnx', onnx_exporter='legacy', tolerance=-1)
    assert out.read_bytes() == b'previous' and [p.name for p in tmp_path.iterdir()] == ['m.onnx']


def test_option_errors(tmp_path):
    model = _small('resmlp_s12')
    with pytest.raises(mlpvision.errors.UsageError, match='built for 64x64 input only'):
        export_model(model, tmp_path / 'm.onnx', 'onnx', dynamic_size=True)
    with pytest.raises(mlpvision.errors.UsageError, match='format must be one of onnx, pt2, aoti'):
        export_model(model, tmp_path / 'm.tflite', 'tflite')
    with pytest.raises(mlpvision.errors.UsageError, match="onnx_exporter must be 'dynamo' or 'legacy'"):
        export_model(model, tmp_path / 'm.onnx', 'onnx', onnx_exporter='tvm')
    with pytest.raises(ValueError, match='was built for 64x64 input but got 32x32'):
        export_model(model, tmp_path / 'm.onnx', 'onnx', input_size=(32, 32))
    assert not list(tmp_path.iterdir())


# --- the command ---------------------------------------------------------------------------------------------------

def test_cli_export_of_a_training_run(capsys, tmp_path):
    """``mlpvision export best.pth``: the run's model, weights and input size, verified and reported."""
    run = tmp_path / 'run'
    rc, _, err = cli(capsys, 'train', '--recipe', 'digits', '--epochs', '1', '--model', 'resmlp_s12',
                     '--model-kwargs', 'embed_dim=16', 'depth=1', 'patch_size=8', '--img-size', '32',
                     '--output', run, '--workers', '0', '--no-tensorboard', '--no-plot', '--no-progress')
    assert rc == 0, err
    out = tmp_path / 'digits.onnx'
    rc, stdout, err = cli(capsys, 'export', run / 'best.pth', '--format', 'onnx', '--onnx-exporter', 'legacy',
                          '--dynamic-batch', '--deploy', '-o', out)
    assert rc == 0, err
    # the digits are grey: the run's model takes one channel
    assert f'resmlp_s12 (deploy form, {run / "best.pth"}) -> {out}: onnx, legacy, input (batch, 1, 32, 32)' in stdout
    assert 'verified against eager, max |diff| / max |logit| (tolerance 0.0001): batch 1 32x32: ' in stdout
    model, name, size = load_model(str(run / 'best.pth'), deploy=True)
    assert name == 'resmlp_s12' and size == (32, 32) and model.num_classes == 10
    sess = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(sess.run(None, {'input': x.numpy()})[0]), model(x),
                                   rtol=0, atol=1e-5)


def test_cli_export_errors(capsys, tmp_path):
    rc, _, err = cli(capsys, 'export', 'resmlp_s12', '--format', 'onnx', '--dynamic-size', '-o', tmp_path / 'm')
    assert_one_error_line(rc, err, 'export', 'resmlp_s12 is built for 224x224 input only', 'without --dynamic-size')
    rc, _, err = cli(capsys, 'export', 'resmlp_s13', '--format', 'pt2', '-o', tmp_path / 'm')
    assert_one_error_line(rc, err, 'export', 'resmlp_s13')
    assert not list(tmp_path.iterdir())


# --- every registered model (slow) -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('name', mlpvision.list_models())
@pytest.mark.parametrize('fmt,deploy', [('pt2', False), ('pt2', True), ('onnx', True)], ids=['pt2-train', 'pt2-deploy',
                                                                                            'onnx-deploy'])
def test_every_model_exports(name, fmt, deploy, tmp_path):
    """Every registered model in torch.export (train and deploy form) and the default ONNX exporter (the deploy form,
    what one ships; a minute or two per model on 2 cores): dynamic batch, and dynamic H / W where the family takes
    any size."""
    model, _, _ = load_model(name, deploy=deploy)
    any_size = not model.pretrained_cfg.get('fixed_input_size', True)
    r = export_model(model, tmp_path / f'{name}.{fmt}', fmt, dynamic_batch=True, dynamic_size=any_size)
    assert r.max_rel_diff < 1e-4, r.checks
    assert Path(r.path).is_file() and {c.batch for c in r.checks} == {1, 3}
