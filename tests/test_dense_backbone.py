"""mlpvision.dense.backbone: the stride 4/8/16/32 pyramid of every family at non-square sizes."""
import pytest
import torch

from mlpvision.dense import backbone


@pytest.mark.parametrize('name', ['as_mlp_tiny', 'hire_mlp_tiny'])
def test_any_size_pyramid_is_cropped_to_ceil_of_stride(name):
    b = backbone(name, depths=(1, 1, 1, 1)).eval()
    feats = b(torch.randn(1, 3, 100, 150))
    assert b.strides == [4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == b.out_channels
    assert [tuple(f.shape[-2:]) for f in feats] == [(-(-100 // s), -(-150 // s)) for s in b.strides]
