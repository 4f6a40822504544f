"""Dense prediction on mlpvision backbones: feature pyramids at any input size and the heads built on them."""
from .backbone import SIZE_POLICY, DenseBackbone, SimpleFeaturePyramid, backbone, param_groups
from .detection import BackboneWithFPN, maskrcnn, retinanet
from .upernet import upernet

__all__ = ['DenseBackbone', 'SimpleFeaturePyramid', 'SIZE_POLICY', 'backbone', 'param_groups', 'BackboneWithFPN',
           'maskrcnn', 'retinanet', 'upernet']
