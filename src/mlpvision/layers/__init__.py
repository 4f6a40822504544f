from .conv_bn import ConvBN
from .fusion import bn_scale_shift, conv_to_fc, fold_affine_into_next_linear, fuse_conv_bn, pad_kernel
