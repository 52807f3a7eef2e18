//! Small constructors shared by the UNet's parts, so every conv and norm is built one way.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::Device;

use crate::cost::Cost;

/// A square convolution with bias, padding `kernel / 2` unless given.
pub fn conv(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .init(device)
}

/// GroupNorm with affine scale and shift.
pub fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// Cost of `conv` applied to `[c_in, h, w]`; returns the output size.
pub fn conv_cost(conv: &Conv2d, h: usize, w: usize, cost: &mut Cost) -> (usize, usize) {
    let [c_out, c_in, k, _] = conv.weight.lazy_shape().dims();
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(p, ..) => p,
        _ => 0,
    };
    cost.conv2d(c_in, c_out, k, conv.stride[0], padding, h, w)
}

/// Cost of a normalisation over `n` elements.
pub fn norm_cost(n: usize, cost: &mut Cost) {
    cost.norm(n);
}
