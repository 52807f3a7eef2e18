//! Parts of the autoencoder: residual blocks without time conditioning, the middle block's
//! single-head self-attention, resampling, and the encoder and decoder stacks (diffusers'
//! `Encoder` / `Decoder` of `AutoencoderKL`).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::module::{attention, interpolate};
use burn::tensor::ops::{AttentionModuleOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::config::AutoencoderKLConfig;
use crate::cost::Cost;
use crate::ops::{self, conv2d, linear};

/// diffusers fixes every norm epsilon of the VAE at 1e-6.
const NORM_EPS: f64 = 1e-6;

/// A convolution with bias and `(top, left, bottom, right)` zero padding.
fn conv(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: [usize; 4],
    device: &Device,
) -> Conv2d {
    let [top, left, bottom, right] = padding;
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
        .init(device)
}

/// A 3x3 convolution keeping the size.
fn conv3(c_in: usize, c_out: usize, device: &Device) -> Conv2d {
    conv(c_in, c_out, 3, 1, [1; 4], device)
}

fn group_norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(NORM_EPS)
        .init(device)
}

/// Output length and kernel taps (summed over outputs) that land inside an input of `len`
/// padded by `before` and `after`: taps on the zero padding are not counted (cost.rs convention).
fn valid_taps(
    len: usize,
    kernel: usize,
    stride: usize,
    before: usize,
    after: usize,
) -> (usize, u64) {
    let out = (len + before + after - kernel) / stride + 1;
    let mut taps = 0u64;
    for o in 0..out {
        let start = (o * stride) as isize - before as isize;
        taps += (start..start + kernel as isize)
            .filter(|&i| i >= 0 && (i as usize) < len)
            .count() as u64;
    }
    (out, taps)
}

/// Cost of `conv` on one `[c_in, h, w]` sample; returns the output size.
pub(crate) fn conv_cost(conv: &Conv2d, h: usize, w: usize, cost: &mut Cost) -> (usize, usize) {
    let [c_out, c_in, k, _] = conv.weight.lazy_shape().dims();
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
        _ => (0, 0, 0, 0),
    };
    let (h_out, rows) = valid_taps(h, k, conv.stride[0], top, bottom);
    let (w_out, cols) = valid_taps(w, k, conv.stride[1], left, right);
    cost.conv_macs += rows * cols * (c_in * c_out) as u64;
    cost.elementwise(c_out * h_out * w_out); // bias
    (h_out, w_out)
}

/// GroupNorm, SiLU, 3x3 conv, GroupNorm, SiLU, 3x3 conv, plus a (1x1-projected where the width
/// changes) skip: diffusers' `ResnetBlock2D` with no time embedding.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub(crate) norm1: GroupNorm,
    pub(crate) conv1: Conv2d,
    pub(crate) norm2: GroupNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    /// A block from `c_in` to `c_out` channels.
    pub fn new(c_in: usize, c_out: usize, groups: usize, device: &Device) -> Self {
        Self {
            norm1: group_norm(groups, c_in, device),
            conv1: conv3(c_in, c_out, device),
            norm2: group_norm(groups, c_out, device),
            conv2: conv3(c_out, c_out, device),
            conv_shortcut: (c_in != c_out).then(|| conv(c_in, c_out, 1, 1, [0; 4], device)),
        }
    }

    /// `x`: `[batch, c_in, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = conv2d(&self.conv1, ops::group_norm(&self.norm1, x.clone(), true));
        let h = conv2d(&self.conv2, ops::group_norm(&self.norm2, h, true));
        let skip = match &self.conv_shortcut {
            Some(shortcut) => conv2d(shortcut, x),
            None => x,
        };
        skip + h
    }

    fn out_channels(&self) -> usize {
        self.conv1.weight.lazy_shape().dims::<4>()[0]
    }

    /// Cost for one `[c_in, h, w]` sample.
    pub fn cost(&self, h: usize, w: usize, cost: &mut Cost) {
        let [c_out, c_in, _, _] = self.conv1.weight.lazy_shape().dims();
        cost.norm(c_in * h * w);
        cost.activation(c_in * h * w);
        conv_cost(&self.conv1, h, w, cost);
        cost.norm(c_out * h * w);
        cost.activation(c_out * h * w);
        conv_cost(&self.conv2, h, w, cost);
        if let Some(shortcut) = &self.conv_shortcut {
            conv_cost(shortcut, h, w, cost);
        }
        cost.elementwise(c_out * h * w); // residual add
    }
}

/// Single-head self-attention over the pixels of a feature map with a GroupNorm in front and a
/// residual around it (diffusers `Attention` with `group_norm`, `residual_connection` and one
/// head of the full width, as `UNetMidBlock2D` builds it for the VAE).
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub(crate) group_norm: GroupNorm,
    pub(crate) to_q: Linear,
    pub(crate) to_k: Linear,
    pub(crate) to_v: Linear,
    pub(crate) to_out: Linear,
}

impl SelfAttention {
    /// Attention over a `channels`-wide map.
    pub fn new(channels: usize, groups: usize, device: &Device) -> Self {
        let linear = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: group_norm(groups, channels, device),
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            to_out: linear(),
        }
    }

    /// `x`: `[batch, channels, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, channels, h, w] = x.dims();
        let tokens = ops::group_norm(&self.group_norm, x.clone(), false)
            .reshape([batch, channels, h * w])
            .swap_dims(1, 2);
        // One head: [batch, 1, pixels, channels]; the scale is 1/sqrt(channels).
        let q = linear(&self.to_q, tokens.clone()).unsqueeze_dim::<4>(1);
        let k = linear(&self.to_k, tokens.clone()).unsqueeze_dim::<4>(1);
        let v = linear(&self.to_v, tokens).unsqueeze_dim::<4>(1);
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        let out = linear(&self.to_out, out.squeeze_dim::<3>(1));
        out.swap_dims(1, 2).reshape([batch, channels, h, w]) + x
    }

    /// Cost for one `[channels, h, w]` sample.
    pub fn cost(&self, h: usize, w: usize, cost: &mut Cost) {
        let [channels, _] = self.to_q.weight.lazy_shape().dims();
        let pixels = h * w;
        cost.norm(channels * pixels);
        for _ in 0..3 {
            cost.linear(pixels, channels, channels);
        }
        cost.attention(1, pixels, pixels, channels);
        cost.linear(pixels, channels, channels);
        cost.elementwise(channels * pixels); // residual add
    }
}

/// Halves the resolution: zero-pads one row at the bottom and one column at the right, then a
/// stride-2 3x3 convolution without padding (diffusers `Downsample2D` with `padding=0`).
#[derive(Module, Debug)]
pub struct Downsample {
    pub(crate) conv: Conv2d,
}

/// Doubles the resolution: nearest-neighbour copy, then a 3x3 convolution (diffusers `Upsample2D`).
#[derive(Module, Debug)]
pub struct Upsample {
    pub(crate) conv: Conv2d,
}

impl Upsample {
    /// `x`: `[batch, c, h, w]` to `[batch, c, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let mut options = InterpolateOptions::new(InterpolateMode::Nearest);
        options.output_size = Some([2 * h, 2 * w]);
        conv2d(&self.conv, interpolate(x, options))
    }
}

/// The middle block: residual block, then (attention, residual block), at the lowest resolution.
#[derive(Module, Debug)]
pub struct MidBlock {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) attentions: Vec<SelfAttention>,
}

impl MidBlock {
    fn new(channels: usize, groups: usize, with_attention: bool, device: &Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| ResnetBlock::new(channels, channels, groups, device))
                .collect(),
            attentions: if with_attention {
                vec![SelfAttention::new(channels, groups, device)]
            } else {
                Vec::new()
            },
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x);
        if let Some(attention) = self.attentions.first() {
            x = attention.forward(x);
        }
        self.resnets[1].forward(x)
    }

    fn cost(&self, h: usize, w: usize, cost: &mut Cost) {
        self.resnets[0].cost(h, w, cost);
        if let Some(attention) = self.attentions.first() {
            attention.cost(h, w, cost);
        }
        self.resnets[1].cost(h, w, cost);
    }
}

/// One encoder level: residual blocks, then a downsampler except at the lowest level.
#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) downsampler: Option<Downsample>,
}

/// One decoder level: residual blocks, then an upsampler except at the highest level.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) upsampler: Option<Upsample>,
}

/// Image to `2 * latent_channels` maps (mean and log-variance), before `quant_conv`.
#[derive(Module, Debug)]
pub struct Encoder {
    pub(crate) conv_in: Conv2d,
    pub(crate) down_blocks: Vec<EncoderBlock>,
    pub(crate) mid_block: MidBlock,
    pub(crate) conv_norm_out: GroupNorm,
    pub(crate) conv_out: Conv2d,
}

impl Encoder {
    /// The encoder of `config` (validated by the caller).
    pub fn new(config: &AutoencoderKLConfig, device: &Device) -> Self {
        let widths = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let levels = widths.len();
        let mut c_prev = widths[0];
        let down_blocks = widths
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let resnets = (0..config.layers_per_block)
                    .map(|j| ResnetBlock::new(if j == 0 { c_prev } else { c }, c, groups, device))
                    .collect();
                c_prev = c;
                EncoderBlock {
                    resnets,
                    downsampler: (i + 1 < levels).then(|| Downsample {
                        conv: conv(c, c, 3, 2, [0, 0, 1, 1], device),
                    }),
                }
            })
            .collect();
        let bottom = widths[levels - 1];
        Self {
            conv_in: conv3(config.in_channels, widths[0], device),
            down_blocks,
            mid_block: MidBlock::new(bottom, groups, config.mid_block_add_attention, device),
            conv_norm_out: group_norm(groups, bottom, device),
            conv_out: conv3(bottom, 2 * config.latent_channels, device),
        }
    }

    /// `x`: `[batch, in_channels, h, w]` to `[batch, 2 * latent_channels, h/f, w/f]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = conv2d(&self.conv_in, x);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            if let Some(down) = &block.downsampler {
                x = conv2d(&down.conv, x);
            }
        }
        let x = self.mid_block.forward(x);
        conv2d(
            &self.conv_out,
            ops::group_norm(&self.conv_norm_out, x, true),
        )
    }

    /// Cost for one sample of `[h, w]` pixels; returns the output size.
    pub fn cost(&self, h: usize, w: usize, cost: &mut Cost) -> (usize, usize) {
        let (mut h, mut w) = conv_cost(&self.conv_in, h, w, cost);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                resnet.cost(h, w, cost);
            }
            if let Some(down) = &block.downsampler {
                (h, w) = conv_cost(&down.conv, h, w, cost);
            }
        }
        self.mid_block.cost(h, w, cost);
        let c_bottom = self.conv_norm_out.num_channels;
        cost.norm(c_bottom * h * w);
        cost.activation(c_bottom * h * w);
        conv_cost(&self.conv_out, h, w, cost)
    }
}

/// `latent_channels` maps (after `post_quant_conv`) to an image.
#[derive(Module, Debug)]
pub struct Decoder {
    pub(crate) conv_in: Conv2d,
    pub(crate) mid_block: MidBlock,
    pub(crate) up_blocks: Vec<DecoderBlock>,
    pub(crate) conv_norm_out: GroupNorm,
    pub(crate) conv_out: Conv2d,
}

impl Decoder {
    /// The decoder of `config` (validated by the caller).
    pub fn new(config: &AutoencoderKLConfig, device: &Device) -> Self {
        let widths = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let levels = widths.len();
        let bottom = widths[levels - 1];
        let mut c_prev = bottom;
        let up_blocks = (0..levels)
            .map(|i| {
                let c = widths[levels - 1 - i];
                let resnets = (0..config.layers_per_block + 1)
                    .map(|j| ResnetBlock::new(if j == 0 { c_prev } else { c }, c, groups, device))
                    .collect();
                c_prev = c;
                DecoderBlock {
                    resnets,
                    upsampler: (i + 1 < levels).then(|| Upsample {
                        conv: conv3(c, c, device),
                    }),
                }
            })
            .collect();
        Self {
            conv_in: conv3(config.latent_channels, bottom, device),
            mid_block: MidBlock::new(bottom, groups, config.mid_block_add_attention, device),
            up_blocks,
            conv_norm_out: group_norm(groups, widths[0], device),
            conv_out: conv3(widths[0], config.out_channels, device),
        }
    }

    /// `z`: `[batch, latent_channels, h, w]` to `[batch, out_channels, h*f, w*f]`.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.mid_block.forward(conv2d(&self.conv_in, z));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            if let Some(up) = &block.upsampler {
                x = up.forward(x);
            }
        }
        conv2d(
            &self.conv_out,
            ops::group_norm(&self.conv_norm_out, x, true),
        )
    }

    /// Cost for one latent of `[h, w]`; returns the image size.
    pub fn cost(&self, h: usize, w: usize, cost: &mut Cost) -> (usize, usize) {
        let (mut h, mut w) = conv_cost(&self.conv_in, h, w, cost);
        self.mid_block.cost(h, w, cost);
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                resnet.cost(h, w, cost);
            }
            if let Some(up) = &block.upsampler {
                let c = block.resnets.last().expect("a resnet").out_channels();
                (h, w) = (2 * h, 2 * w);
                cost.elementwise(c * h * w); // nearest copy
                conv_cost(&up.conv, h, w, cost);
            }
        }
        let c_top = self.conv_norm_out.num_channels;
        cost.norm(c_top * h * w);
        cost.activation(c_top * h * w);
        conv_cost(&self.conv_out, h, w, cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_padding_counts_only_real_taps() {
        // 4 wide, pad (0, 1), stride 2, kernel 3: outputs read 0..3 (3 taps) and 2..5 (2 real).
        assert_eq!(valid_taps(4, 3, 2, 0, 1), (2, 5));
        // Symmetric padding agrees with the UNet's counting (cost.rs): 3 wide pad 1 = 2+3+2.
        assert_eq!(valid_taps(3, 3, 1, 1, 1), (3, 7));
        // Odd input: 5 wide padded to 6 gives 2 outputs, the last reading 2..5 (3 real).
        assert_eq!(valid_taps(5, 3, 2, 0, 1), (2, 6));
    }
}
