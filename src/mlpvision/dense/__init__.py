"""Dense prediction on mlpvision backbones: feature pyramids at any input size and the heads built on them."""
from .backbone import DenseBackbone, backbone

__all__ = ['DenseBackbone', 'backbone']
