"""Dense prediction on mlpvision backbones: feature pyramids at any input size and the heads built on them."""
from .backbone import DenseBackbone, backbone
from .upernet import upernet

__all__ = ['DenseBackbone', 'backbone', 'upernet']
