"""AS-MLP: the axial shift against plain references (exact, forward and backward, every pad mode and dilation), its
export, and the family's model facts (any size that is a multiple of 32, knobs, checkpoint mapping, recipe details).

Official parity (logits of svip-lab/AS-MLP for fixture weights) is in tests/test_parity.py."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import mlpvision
from mlpvision.layers.axial_shift import PAD_MODES, SHIFT_IMPLS, AxialShift, axial_shift, shift_offsets
from mlpvision.models.as_mlp import AxialShiftMLP, checkpoint_filter_fn


def roll_reference(x: torch.Tensor, dim: int, shift_size: int, dilation: int = 1, pad_mode: str = 'zero'):
    """The paper's Algorithm 1 (official ``torch_shift``): pad both axes, chunk the channels, roll chunk g by
    ``(g - s//2) * d``, concatenate, cut the padding off; generalised to F.pad's modes and to dilation."""
    h, w = x.shape[2:]
    pad = (shift_size // 2) * dilation
    x = F.pad(x, (pad, pad, pad, pad), mode='constant' if pad_mode == 'zero' else pad_mode)
    chunks = torch.chunk(x, shift_size, 1)
    x = torch.cat([torch.roll(c, (g - shift_size // 2) * dilation, dim) for g, c in enumerate(chunks)], 1)
    return x.narrow(2, pad, h).narrow(3, pad, w)


def kernel_reference(x: torch.Tensor, dim: int, shift_size: int) -> torch.Tensor:
    """The official CuPy kernel's rule, element by element: out[c, i] = in[c, i + s//2 - c // ceil(C/s)], else 0."""
    out = torch.zeros_like(x)
    c_total, size = x.shape[1], x.shape[dim]
    group = -(-c_total // shift_size)
    for c in range(c_total):
        s = shift_size // 2 - c // group
        for i in range(size):
            if 0 <= i + s < size:
                out[:, c].select(dim - 1, i).copy_(x[:, c].select(dim - 1, i + s))
    return out


# --- the shift ---------------------------------------------------------------------------------------------------

def test_shift_offsets_follow_official_groups():
    # C=96, s=5: groups of ceil(96/5) = 20, the last one 16; group g moves by s//2 - g
    assert shift_offsets(96, 5) == [(0, 20, 2), (20, 20, 1), (40, 20, 0), (60, 20, -1), (80, 16, -2)]
    # fewer groups than shift_size when C is small (as torch.chunk and the CUDA kernel): C=6, s=5 -> 2, 2, 2
    assert shift_offsets(6, 5) == [(0, 2, 2), (2, 2, 1), (4, 2, 0)]
    assert shift_offsets(10, 5, dilation=3) == [(0, 2, 6), (2, 2, 3), (4, 2, 0), (6, 2, -3), (8, 2, -6)]


@pytest.mark.parametrize('impl', SHIFT_IMPLS)
@pytest.mark.parametrize('channels,shift_size', [(10, 5), (7, 3), (6, 5), (3, 5)])
def test_shift_matches_official_kernel_rule(impl, channels, shift_size):
    x = torch.randn(2, channels, 6, 7)
    for dim in (2, 3):
        y = AxialShift(channels, shift_size, dim, impl=impl)(x)
        assert torch.equal(y, kernel_reference(x, dim, shift_size))


@pytest.mark.parametrize('impl', SHIFT_IMPLS)
@pytest.mark.parametrize('pad_mode', PAD_MODES)
@pytest.mark.parametrize('dilation', [1, 2, 3])
@pytest.mark.parametrize('shift_size,channels', [(5, 96), (3, 7), (7, 10)])
def test_shift_equals_roll_reference_forward_and_backward(impl, pad_mode, dilation, shift_size, channels):
    h, w = 9, 11  # w > the largest reach (9); h grows where F.pad's reflect / circular need it
    reach = (shift_size // 2) * dilation
    if pad_mode == 'reflect' and reach >= h or pad_mode == 'circular' and reach > h:
        h = reach + 1
    g = torch.Generator().manual_seed(channels * 100 + shift_size * 10 + dilation)
    x = torch.randn(2, channels, h, w, generator=g)
    grad = torch.randn(2, channels, h, w, generator=g)
    for dim in (2, 3):
        shift = AxialShift(channels, shift_size, dim, dilation=dilation, pad_mode=pad_mode, impl=impl)
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        ya = shift(xa)
        yb = roll_reference(xb, dim, shift_size, dilation, pad_mode)
        assert torch.equal(ya, yb), f'forward differs along dim {dim}'
        ya.backward(grad)
        yb.backward(grad)
        assert torch.equal(xa.grad, xb.grad), f'backward differs along dim {dim}'


def test_zero_shift_keeps_the_memory_layout_forward_and_backward():
    """The eager zero-filled shift (``_ZeroShift``) writes its output and its gradient in the input's layout: a
    channels-last map stays channels-last both ways (autograd's gradient of the pad-narrow-cat form came back NCHW),
    with the reference values, and the gradient is itself differentiable."""
    x = torch.randn(2, 23, 9, 11).to(memory_format=torch.channels_last)
    grad = torch.randn(2, 23, 9, 11).to(memory_format=torch.channels_last)
    for dim in (2, 3):
        xa = x.clone().requires_grad_()
        y = AxialShift(23, 5, dim, dilation=3)(xa)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, roll_reference(x, dim, 5, 3, 'zero'))
        (gx,) = torch.autograd.grad(y, xa, grad)
        assert gx.is_contiguous(memory_format=torch.channels_last)
        xb = x.clone().requires_grad_()
        roll_reference(xb, dim, 5, 3, 'zero').backward(grad)
        assert torch.equal(gx, xb.grad)
    x64 = torch.randn(1, 7, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: AxialShift(7, 3, 3, dilation=2)(t), (x64,))


def test_shift_reaching_beyond_the_map_is_zero_filled():
    x = torch.randn(1, 5, 3, 3)
    y = axial_shift(x, 3, 5, dilation=4)  # every group but the middle one moves by >= 4 > W
    assert torch.equal(y[:, 2], x[:, 2]) and not y[:, [0, 1, 3, 4]].any()


def test_shift_size_one_is_identity_and_bad_arguments_are_named():
    x = torch.randn(1, 4, 5, 5)
    assert AxialShift(4, 1, 2)(x) is x
    with pytest.raises(ValueError, match='shift_size must be a positive odd'):
        AxialShift(4, 4, 2)
    with pytest.raises(ValueError, match='pad_mode must be one of'):
        AxialShift(4, 5, 2, pad_mode='mirror')
    with pytest.raises(ValueError, match='dim must be 2'):
        AxialShift(4, 5, 1)
    with pytest.raises(ValueError, match='impl must be one of'):
        AxialShift(4, 5, 2, impl='cuda')
    with pytest.raises(ValueError, match=r"pad_mode='reflect' with shift reach 2 needs .* at least 3 wide"):
        AxialShift(4, 5, 2, pad_mode='reflect')(torch.randn(1, 4, 2, 5))


def test_conv_shift_kernel_is_a_non_persistent_buffer():
    shift = AxialShift(8, 5, 3, impl='conv')
    assert not list(shift.parameters()) and not shift.state_dict()
    assert shift.kernel.shape == (8, 1, 1, 5) and shift.kernel.sum() == 8
    assert shift.count_macs is False


def test_shift_exports_with_dynamic_spatial_size():
    # torch.export is the graph capture under torch.onnx.export(dynamo=True); the export must not bake in H, W
    shift = AxialShift(16, 5, 3)
    dims = {'x': {0: torch.export.Dim('b'), 2: torch.export.Dim('h', min=2), 3: torch.export.Dim('w', min=3)}}
    prog = torch.export.export(shift, (torch.randn(2, 16, 2, 3),), dynamic_shapes=dims)  # offsets reach past W
    x = torch.randn(3, 16, 12, 20)
    assert torch.equal(prog.module()(x), shift(x))


def _onnx_roundtrip(module: nn.Module, example: torch.Tensor, x: torch.Tensor, path) -> torch.Tensor:
    """Export with dynamic batch, H and W; run ``x`` (another size) in onnxruntime."""
    pytest.importorskip('onnx', reason='onnx is not installed: torch.onnx.export needs onnx and onnxscript, and tests '
                                       'never download')
    pytest.importorskip('onnxscript', reason='onnxscript is not installed: torch.onnx.export(dynamo=True) needs it')
    dims = {'x': {0: torch.export.Dim('b'), 2: torch.export.Dim('h', min=2), 3: torch.export.Dim('w', min=3)}}
    torch.onnx.export(module.eval(), (example,), path, dynamo=True, dynamic_shapes=dims)
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed: exported, not run')
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(y)


@pytest.mark.parametrize('impl', SHIFT_IMPLS)
def test_shift_onnx_export(impl, tmp_path):
    shift = AxialShift(16, 5, 2, impl=impl)
    x = torch.randn(3, 16, 12, 20)
    assert torch.equal(_onnx_roundtrip(shift, torch.randn(2, 16, 8, 8), x, tmp_path / 'shift.onnx'), shift(x))


@pytest.mark.slow
def test_model_onnx_export_any_size(tmp_path):
    model = mlpvision.create_model('as_mlp_tiny', embed_dim=16, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 96, 160)
    y = _onnx_roundtrip(model, torch.randn(2, 3, 64, 64), x, tmp_path / 'model.onnx')
    with torch.no_grad():
        torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-5)


# --- the model ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny():
    return mlpvision.create_model('as_mlp_tiny').eval()


def test_any_multiple_of_32_with_the_same_weights(tiny):
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 256, 320)).shape == (1, 1000)
        _, feats = tiny.forward_intermediates(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(96, 16, 24), (192, 8, 12), (384, 4, 6), (768, 2, 3)]
    with pytest.raises(ValueError, match=r'multiple of 32.*got 224x200.*224x224'):
        tiny(torch.randn(1, 3, 224, 200))
    with pytest.raises(ValueError, match='3-channel input but got 1'):
        tiny(torch.randn(1, 1, 224, 224))


def test_features_only_non_square():
    feat = timm.create_model('as_mlp_tiny', features_only=True).eval()
    assert feat.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = feat(torch.randn(1, 3, 64, 128))
    assert [tuple(o.shape[1:]) for o in outs] == [(96, 16, 32), (192, 8, 16), (384, 4, 8), (768, 2, 4)]


def test_structure_follows_the_official_code(tiny):
    norms = [m for m in tiny.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in norms)
    n_blocks = 2 + 2 + 6 + 2
    assert len(norms) == 1 + 4 * n_blocks + 3 + 1  # stem, 4 per block, 3 mergings, final
    assert all(s.downsample.reduction.bias is None for s in tiny.stages[1:])
    assert tiny.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.2)  # linear 0 -> 0.2 (tiny config)
    # the Swin-based official optimizer: no weight decay for 1-D tensors and biases
    nwd = tiny.no_weight_decay()
    assert nwd == {n for n, p in tiny.named_parameters() if p.ndim == 1}
    assert 'head.fc.bias' in nwd and 'stages.1.downsample.norm.weight' in nwd and 'head.fc.weight' not in nwd


def test_patch_merging_channel_order():
    merging = mlpvision.create_model('as_mlp_tiny').stages[1].downsample
    x = torch.randn(2, 96, 6, 4)
    official = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], 1)
    with torch.no_grad():
        ref = merging.reduction(merging.norm(official))
        assert torch.equal(merging(x), ref)
        y = merging(x.contiguous(memory_format=torch.channels_last))  # the layout the model runs in
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_checkpoint_filter_maps_official_names_and_keeps_ours(tiny):
    ours = tiny.state_dict()
    assert checkpoint_filter_fn(ours, tiny).keys() == ours.keys()
    official = {'patch_embed.proj.weight': 0, 'layers.0.blocks.1.axial_shift.conv2_1.bias': 0,
                'layers.2.downsample.reduction.weight': 0, 'layers.3.blocks.0.mlp.fc2.weight': 0, 'norm.bias': 0,
                'head.weight': 0, 'head.bias': 0}
    mapped = checkpoint_filter_fn({'model': official}, tiny)
    assert set(mapped) == {'stem.proj.weight', 'stages.0.blocks.1.axial_shift.conv2_1.bias',
                           'stages.3.downsample.reduction.weight', 'stages.3.blocks.0.mlp.fc2.weight', 'norm.bias',
                           'head.fc.weight', 'head.fc.bias'}
    assert set(mapped) <= set(ours)


def test_conv_shift_model_is_identical_and_profiles_the_same(tiny):
    conv = mlpvision.create_model('as_mlp_tiny', shift_impl='conv').eval()
    conv.load_state_dict(tiny.state_dict())  # the one-hot kernels are not in the state_dict
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(conv(x), tiny(x))
    # the paper counts the shift as free: MACs the same with either implementation, within 3% of 4.4 G
    macs = mlpvision.profile(tiny).gmacs
    assert mlpvision.profile(conv).gmacs == macs
    assert macs == pytest.approx(4.4, rel=0.03)


@pytest.mark.parametrize('knobs', [
    dict(shift_size=7), dict(dilation=2), dict(pad_mode='circular'), dict(pad_mode='reflect'),
    dict(pad_mode='replicate'), dict(connection='serial'), dict(shift_size=3, dilation=2, pad_mode='replicate'),
])
def test_paper_knobs_keep_the_parameters(knobs):
    small = dict(embed_dim=16, depths=(1, 1, 1, 1))
    default = mlpvision.create_model('as_mlp_tiny', **small)
    model = mlpvision.create_model('as_mlp_tiny', **small, **knobs)
    model.load_state_dict(default.state_dict())  # same parameters, same names
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 128, 96)).shape == (1, 1000)


def test_serial_connection_definition():
    torch.manual_seed(0)
    parallel = AxialShiftMLP(12, 5).eval()
    serial = AxialShiftMLP(12, 5, connection='serial').eval()
    serial.load_state_dict(parallel.state_dict())
    x = torch.randn(2, 12, 6, 5)
    m = serial
    with torch.no_grad():
        u = m.act(m.norm1(m.conv1(x)))
        y = m.act(m.conv2_2(kernel_reference(m.act(m.conv2_1(kernel_reference(u, 3, 5))), 2, 5)))
        torch.testing.assert_close(serial(x), m.conv3(m.norm2(y)), rtol=0, atol=0)
        y = m.act(m.conv2_1(kernel_reference(u, 3, 5))) + m.act(m.conv2_2(kernel_reference(u, 2, 5)))
        torch.testing.assert_close(parallel(x), m.conv3(m.norm2(y)), rtol=0, atol=0)


def test_bad_knobs_are_named():
    small = dict(embed_dim=16, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="connection must be one of .*'cascade'"):
        mlpvision.create_model('as_mlp_tiny', connection='cascade', **small)
    with pytest.raises(ValueError, match="pad_mode must be one of .*'wrap'"):
        mlpvision.create_model('as_mlp_tiny', pad_mode='wrap', **small)
    model = mlpvision.create_model('as_mlp_tiny', pad_mode='reflect', **small).eval()
    with pytest.raises(ValueError, match=r"pad_mode='reflect' with shift reach 2 needs every feature map at least 3"):
        model(torch.randn(1, 3, 64, 64))  # the last stage is 2x2
