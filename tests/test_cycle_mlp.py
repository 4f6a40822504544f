"""CycleMLP: Cycle FC against torchvision's deform_conv2d (the official layer), the official outputs at a second,
non-square size, the structure, input sizes and checkpoint layouts. Official 224x224 parity of every variant lives in
test_parity.py."""
import pytest
import torch
import torch.nn as nn
from torchvision.ops import deform_conv2d

import mlpvision
from mlpvision.models.cycle_mlp import CycleFC, CycleMLP, checkpoint_filter_fn, cycle_offsets, cycle_shift

from conftest import by_weight, on_meta, parity_record
from fill import fill_state_dict, make_input

TOL = 1e-4  # relative to the largest logit, as the parity fixtures prescribe
VARIANTS = [f'cycle_mlp_b{i}' for i in range(1, 6)]


def _official_model(name: str, **kwargs) -> CycleMLP:
    model = mlpvision.create_model(name, **kwargs).eval()
    sd = fill_state_dict(parity_record(name)['schema'])
    model.load_state_dict(checkpoint_filter_fn({'model': sd}, model))
    return model


def _assert_close(y: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    err, scale = (y - ref).abs().max().item(), ref.abs().max().item()
    assert err <= tol * scale, f'max |diff| {err:.3g} > {tol} x {scale:.3g}'


# --- Cycle FC = deform_conv2d with the official fixed offsets --------------------------------------------------

@pytest.mark.parametrize('dim', [1, 2])
@pytest.mark.parametrize('channels, stepsize, hw', [(64, 3, (7, 9)), (67, 3, (5, 4)), (20, 5, (6, 3)),
                                                   (9, 7, (2, 3)), (8, 4, (5, 5)), (6, 1, (3, 4))])
def test_cycle_fc_equals_deform_conv2d(dim, channels, stepsize, hw):
    """CycleFC (shift + one GEMM) is the official layer: ``deform_conv2d`` with a 1x1 kernel and the official offsets
    (one offset group per channel) broadcast over the map, in float64 to machine precision, including channel counts
    that are not multiples of the stepsize, displacements as large as the map and even stepsizes."""
    torch.manual_seed(0)
    fc = CycleFC(channels, channels + 3, dim=dim, stepsize=stepsize).double()
    nn.init.normal_(fc.bias)
    x = torch.randn(2, channels, *hw, dtype=torch.float64)
    offset = cycle_offsets(channels, stepsize, dim).double().expand(2, -1, *hw)
    ref = deform_conv2d(x, offset, fc.weight, fc.bias)  # B, out, H, W
    y = fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_cycle_offsets_are_the_official_pattern():
    # official gen_offset for kernel (1, 3): dx = (i + 1) % 3 - 1, dy = 0; for (3, 1) the same along y
    off = cycle_offsets(5, 3, dim=2).flatten().tolist()
    assert off == [0, 0, 0, 1, 0, -1, 0, 0, 0, 1]
    assert cycle_offsets(5, 3, dim=1).flatten().tolist() == [0, 0, 1, 0, -1, 0, 0, 0, 1, 0]


def test_cycle_shift_keeps_autograd_and_dtype():
    x = torch.randn(1, 4, 5, 6, dtype=torch.bfloat16, requires_grad=True)
    y = cycle_shift(x, 2, 3)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    y.float().sum().backward()
    # every input value reaches the output once, except the W column (4 rows) each of the 4 shifted channels
    # (1, 2, 4, 5 of 6) loses at the border
    assert x.grad.sum().item() == x.numel() - 4 * 4


@pytest.mark.parametrize('dim', [1, 2])
@pytest.mark.parametrize('channels, stepsize, hw', [(64, 3, (7, 9)), (67, 3, (5, 4)), (20, 5, (6, 3)),
                                                   (9, 7, (2, 3)), (2, 3, (1, 1)), (6, 1, (3, 4))])
def test_captured_shift_is_the_buffer_shift(monkeypatch, dim, channels, stepsize, hw):
    """The form a captured graph gets (padded windows scattered into zeros, no writes into a buffer) gives the
    buffer form's values exactly, including displacements as large as the map and fewer channels than the
    stepsize."""
    import mlpvision.models.cycle_mlp as cm
    x = torch.randn(2, *hw, channels)
    ref = cycle_shift(x, dim, stepsize)
    monkeypatch.setattr(cm, 'tracing', lambda: True)
    assert torch.equal(cycle_shift(x, dim, stepsize), ref)


def test_exported_graph_has_no_in_place_shift():
    """torch.export captures the mixer without ``empty_like`` buffers or in-place copies: the int8 quantizer observes
    a GEMM's input where the graph defines it, which for a buffer is before the copies fill it (measured: 133% of
    the largest logit off before, 2% after)."""
    model = mlpvision.create_model('cycle_mlp_b1', embed_dims=(8, 16, 16, 16), depths=(1, 1, 1, 1)).eval()
    x = torch.randn(2, 3, 32, 48)
    program = torch.export.export(model, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == 'call_function'}
    assert not {t for t in targets if t.endswith('_.default') or 'empty_like' in t}, sorted(targets)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


# --- official outputs at a second size ------------------------------------------------------------------------

@pytest.mark.parametrize('name', by_weight(VARIANTS))
def test_official_output_non_square(name):
    """The official logits at 192x256 (a batch of one; the 224x224 batch is test_parity.py's)."""
    rec = parity_record(name)
    model = _official_model(name)
    for case in rec['more_inputs']:
        with torch.no_grad():
            y = model(make_input(**case['input']))
        _assert_close(y, torch.tensor(case['logits']))


def test_official_output_channels_first_storage():
    rec = parity_record('cycle_mlp_b1')
    model = _official_model('cycle_mlp_b1', channels_last=False)
    case = rec['more_inputs'][0]
    with torch.no_grad():
        _, feats = model.forward_intermediates(make_input(**case['input']))
        y = model(make_input(**case['input']))
    assert all(f.is_contiguous() for f in feats)
    _assert_close(y, torch.tensor(case['logits']))


# --- checkpoints ------------------------------------------------------------------------------------------------

def _release_like(name: str) -> dict[str, torch.Tensor]:
    """An official-format state_dict as the release files hold it: the fixture's weights plus the offset buffers."""
    sd = fill_state_dict(parity_record(name)['schema'])
    for k in [k for k in sd if k.endswith('.sfc_h.weight') or k.endswith('.sfc_w.weight')]:
        dim = 2 if '.sfc_h.' in k else 1
        sd[k.replace('.weight', '.offset')] = cycle_offsets(sd[k].shape[1], 3, dim)
    return sd


def test_release_checkpoint_with_offsets_loads(tmp_path):
    sd = _release_like('cycle_mlp_b1')
    torch.save({'model': sd, 'epoch': 299}, tmp_path / 'CycleMLP_B1.pth')
    model = mlpvision.create_model('cycle_mlp_b1', checkpoint_path=tmp_path / 'CycleMLP_B1.pth').eval()
    rec = parity_record('cycle_mlp_b1')
    case = rec['more_inputs'][0]
    with torch.no_grad():
        _assert_close(model(make_input(**case['input'])), torch.tensor(case['logits']))


def test_other_offsets_are_refused():
    sd = _release_like('cycle_mlp_b1')
    key = next(k for k in sd if k.endswith('.sfc_w.offset'))
    sd[key] = sd[key].clone()
    sd[key][0, 0] = 0.5
    model = on_meta('cycle_mlp_b1')
    with pytest.raises(mlpvision.CheckpointError, match=r'sfc_w\.offset.*not the fixed CycleMLP offsets'):
        checkpoint_filter_fn(sd, model)


def test_own_state_dict_passes_through_unchanged():
    model = on_meta('cycle_mlp_b1')
    sd = model.state_dict()
    assert list(checkpoint_filter_fn(sd, model)) == list(sd)


def test_key_mapping_covers_every_official_key():
    rec = parity_record('cycle_mlp_b5')
    model = on_meta('cycle_mlp_b5')
    mapped = checkpoint_filter_fn({k: torch.empty(s, device='meta') for k, s, _ in rec['schema']}, model)
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


# --- structure and behaviour ------------------------------------------------------------------------------------

def test_structure_follows_official():
    model = on_meta('cycle_mlp_b3')
    assert [len(s.blocks) for s in model.stages] == [3, 4, 18, 3]
    assert [s.blocks[0].mlp.fc1.out_features for s in model.stages] == [512, 1024, 1280, 2048]  # ratios 8, 8, 4, 4
    mixer = model.stages[2].blocks[0].token_mixer
    assert mixer.mlp_c.bias is None and mixer.reweight.fc2.out_features == 3 * 320
    assert (mixer.sfc_h.dim, mixer.sfc_w.dim) == (2, 1)  # official kernels (1, 3) and (3, 1)
    assert model.stem.proj.kernel_size == (7, 7) and model.stem.proj.stride == (4, 4)
    assert model.stages[1].downsample.proj.kernel_size == (3, 3) and model.stages[1].downsample.proj.stride == (2, 2)


def test_drop_path_linear_over_all_blocks():
    model = on_meta('cycle_mlp_b1', drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0. for s in model.stages
             for b in s.blocks]
    assert rates == pytest.approx([0.3 * k / 9 for k in range(10)])


def test_no_output_on_construction(capsys):
    on_meta('cycle_mlp_b1')
    assert capsys.readouterr().out == ''


@pytest.mark.parametrize('hw', [(3, 3), (33, 17), (97, 130)])
def test_any_input_size(hw):
    model = mlpvision.create_model('cycle_mlp_b1', embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        _, feats = model.forward_intermediates(x)
        assert model(x).shape == (1, 1000)
    h, w = ((s + 4 - 7) // 4 + 1 for s in hw)  # the stem: 7x7, stride 4, padding 2
    for f in feats:
        assert f.shape[2:] == (h, w)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # each downsampling: 3x3, stride 2, padding 1


def test_bad_input_is_a_clear_error():
    model = on_meta('cycle_mlp_b1')
    with pytest.raises(ValueError, match='at least 3x3'):
        model(torch.empty(1, 3, 2, 64, device='meta'))


def test_training_matches_inference_path():
    """The in-place fusion of the branches (inference) and the autograd one (training, no dropout) agree."""
    model = mlpvision.create_model('cycle_mlp_b1', embed_dims=(16, 32, 32, 64), depths=(1, 1, 2, 1))
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref = model.eval()(x)
    y = model.train()(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


# --- dense backbones --------------------------------------------------------------------------------------------

def test_dense_backbone_at_320x416_with_the_official_output_norms(tmp_path):
    """``mlpvision.dense.backbone('cycle_mlp_b1')`` is the official ``CycleNet(fork_feat=True)``: the stage outputs,
    each through a LayerNorm over the channels (its ``norm0`` .. ``norm6``; eps 1e-5), at ``ceil(side / stride)``;
    a classification checkpoint loads into it."""
    from mlpvision.dense import backbone

    sd = fill_state_dict(parity_record('cycle_mlp_b1')['schema'])
    torch.save({'model': sd}, tmp_path / 'b1.pth')
    b = backbone('cycle_mlp_b1', checkpoint_path=tmp_path / 'b1.pth').eval()
    assert all(isinstance(n, nn.LayerNorm) and n.eps == 1e-5 for n in b.out_norms)
    x = make_input(seed=2, shape=[1, 3, 320, 416])
    with torch.no_grad():
        feats = b(x)
        _, ref = _official_model('cycle_mlp_b1').forward_intermediates(x)
    assert b.out_channels == [64, 128, 320, 512] and b.strides == [4, 8, 16, 32]
    assert [tuple(f.shape[-2:]) for f in feats] == [(80, 104), (40, 52), (20, 26), (10, 13)]
    for f, r, norm in zip(feats, ref, b.out_norms, strict=True):
        torch.testing.assert_close(f, norm(r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('head', ['maskrcnn', 'retinanet', 'upernet'])
def test_dense_heads_run_at_320x416(head):
    from mlpvision import dense

    torch.manual_seed(0)
    if head == 'upernet':
        model = dense.upernet('cycle_mlp_b1', 150).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 320, 416))
        assert out['out'].shape == (1, 150, 320, 416)
        return
    model = getattr(dense, head)('cycle_mlp_b1', 80, min_size=320, max_size=416).eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 320, 416)])
    assert det['boxes'].shape[1] == 4


@pytest.mark.slow
@pytest.mark.parametrize('fmt', ['pt2', 'onnx'])
def test_export_serves_any_size(fmt, tmp_path):
    """torch.export / the dynamo ONNX exporter with dynamic batch and size, verified by export_model against eager
    (batches 1 and 3, square and non-square sizes; about a minute each on 2 cores)."""
    from mlpvision.export import export_model

    model = mlpvision.create_model('cycle_mlp_b1', embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1)).eval()
    result = export_model(model, tmp_path / f'm.{fmt}', format=fmt, dynamic_batch=True, dynamic_size=True)
    assert max(c.rel_diff for c in result.checks) < 1e-4
    assert {c.size for c in result.checks} >= {(224, 224), (256, 288)}
