from .fusion import bn_scale_shift, fuse_conv_bn
