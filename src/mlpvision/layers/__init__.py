from .conv_bn import ConvBN
from .fast_linear import derived_weights, pointwise_conv
from .fusion import bn_scale_shift, conv_to_fc, fold_affine_into_next_linear, fuse_conv_bn, pad_kernel
from .grn import GRN
from .linear import GroupedLinear, Linear, Mlp, PointwiseConv, ProjectedMixer, pointwise_conv_mean
from .precision import autocast_input, mean_hw
