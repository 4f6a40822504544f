"""mlpvision.layers.fast_linear in training: float32 linears under autograd run oneDNN's GEMM forward and backward
(``_OneDNNLinear``); values and gradients equal the plain PyTorch path (``set_onednn_linear(False)``: F.linear and
autograd's MKL GEMMs) up to float summation order, and every case it does not cover keeps the plain path."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mlpvision
from mlpvision.layers import fast_linear
from mlpvision.layers.fast_linear import linear, set_onednn_linear

pytestmark = pytest.mark.skipif(not fast_linear._onednn_available(), reason='this torch has no oneDNN linear op')

TOL = 1e-5  # relative to the largest value: float32 rounding of another summation order


def _close(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL * b.abs().max().item()


def _grads(fn, tensors, grad_out, onednn):
    for t in tensors:
        t.grad = None
    previous = set_onednn_linear(onednn)
    try:
        y = fn()
        y.backward(grad_out)
    finally:
        set_onednn_linear(previous)
    return y.detach(), [None if t.grad is None else t.grad.clone() for t in tensors]


@pytest.mark.parametrize('shape', [(5, 48), (2, 7, 48), (2, 3, 4, 48)])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('act, residual', [(None, False), (nn.GELU(), False), (None, True), (nn.ReLU(), True)])
def test_gradients_equal_the_plain_path(shape, bias, act, residual):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = (torch.randn(96, 48, generator=g) * 0.1).requires_grad_()
    b = torch.randn(96, generator=g, requires_grad=True) if bias else None
    r = torch.randn(*shape[:-1], 96, generator=g, requires_grad=True) if residual else None
    grad_out = torch.randn(*shape[:-1], 96, generator=g)
    tensors = [t for t in (x, w, b, r) if t is not None]
    y, grads = _grads(lambda: linear(x, w, b, act, r), tensors, grad_out, True)
    y_ref, grads_ref = _grads(lambda: linear(x, w, b, act, r), tensors, grad_out, False)
    _close(y, y_ref)
    for a, ref in zip(grads, grads_ref, strict=True):
        _close(a, ref)


def test_non_contiguous_input_and_frozen_parts():
    """A transposed input, an input that needs no gradient (the first layer) and a frozen weight."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, 48, generator=g).transpose(0, 1)
    w = torch.randn(96, 48, generator=g) * 0.1
    b = torch.randn(96, generator=g, requires_grad=True)
    grad_out = torch.randn(2, 7, 96, generator=g)
    y, (gb,) = _grads(lambda: linear(x, w, b), [b], grad_out, True)
    y_ref, (gb_ref,) = _grads(lambda: linear(x, w, b), [b], grad_out, False)
    _close(y, y_ref)
    _close(gb, gb_ref)
    x.requires_grad_()
    _, (gx,) = _grads(lambda: linear(x, w, b), [x], grad_out, True)
    _, (gx_ref,) = _grads(lambda: linear(x, w, b), [x], grad_out, False)
    _close(gx, gx_ref)


def test_path_taken_only_where_it_applies():
    x = torch.randn(4, 48, requires_grad=True)
    w = torch.randn(16, 48, requires_grad=True)

    def backward_node(y):
        return type(y.grad_fn).__name__

    assert backward_node(linear(x, w)) == '_OneDNNLinearBackward'
    with torch.autocast('cpu', dtype=torch.bfloat16):  # autocast's bf16 matmul, already oneDNN's
        assert backward_node(linear(x, w)) != '_OneDNNLinearBackward'
    assert backward_node(linear(x.double(), w.double())) != '_OneDNNLinearBackward'
    previous = set_onednn_linear(False)
    try:
        assert backward_node(linear(x, w)) != '_OneDNNLinearBackward'
    finally:
        set_onednn_linear(previous)


@pytest.mark.parametrize('name, kwargs', [
    ('resmlp_s12', dict(img_size=32, patch_size=8, embed_dim=32, depth=2)),
    ('strip_mlp_tiny_light', dict(img_size=64)),
])
def test_model_training_gradients_equal_the_plain_path(name, kwargs):
    """A training step's parameter gradients (train mode, cross-entropy) with and without the oneDNN paths."""
    torch.manual_seed(0)
    model = mlpvision.create_model(name, num_classes=10, **kwargs).train()
    x = torch.randn(2, 3, kwargs['img_size'], kwargs['img_size'])
    target = torch.tensor([1, 7])
    params = [p for p in model.parameters() if p.requires_grad]

    def loss():
        torch.manual_seed(1)  # the same dropout / drop-path draws in both runs
        return F.cross_entropy(model(x), target)

    loss_val, grads = _grads(loss, params, None, True)
    loss_ref, grads_ref = _grads(loss, params, None, False)
    assert abs(loss_val.item() - loss_ref.item()) <= 1e-5 * abs(loss_ref.item())
    scale = max(g.abs().max().item() for g in grads_ref)
    worst = max((a - b).abs().max().item() for a, b in zip(grads, grads_ref, strict=True))
    assert worst <= 1e-4 * scale, f'{name}: largest gradient difference {worst:.3g} of {scale:.3g}'
