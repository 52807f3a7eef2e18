//! The UNet's levels: down blocks (residual blocks, optional attention, strided conv), the middle
//! block, and up blocks (skip concatenation, residual blocks, optional attention, upsampling).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::attention::SpatialTransformer;
use super::config::{LevelConfig, UNetConfig};
use super::layers::{conv, conv_cost};
use super::resnet::ResnetBlock;
use crate::cost::Cost;
use crate::ops::conv2d;

/// Settings every block of one UNet shares.
#[derive(Clone, Debug)]
pub(crate) struct Shared {
    pub time_dim: usize,
    pub groups: usize,
    pub eps: f64,
    pub linear_projection: bool,
    pub downsample_padding: usize,
}

impl Shared {
    pub fn new(config: &UNetConfig) -> Self {
        Self {
            time_dim: config.time_embed_dim(),
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            linear_projection: config.use_linear_projection,
            downsample_padding: config.downsample_padding,
        }
    }

    fn resnet(&self, c_in: usize, c_out: usize, scale: f64, device: &Device) -> ResnetBlock {
        ResnetBlock::new(
            c_in,
            c_out,
            self.time_dim,
            self.groups,
            self.eps,
            scale,
            device,
        )
    }

    fn transformer(
        &self,
        level: &LevelConfig,
        only_cross: bool,
        device: &Device,
    ) -> SpatialTransformer {
        SpatialTransformer::new(
            level.channels,
            level.cross_attention_dim,
            level.num_heads,
            level.transformer_layers,
            self.groups,
            self.linear_projection,
            only_cross,
            device,
        )
    }
}

/// Strided 3x3 convolution halving the resolution.
#[derive(Module, Debug)]
pub struct Downsample {
    pub(crate) conv: Conv2d,
}

/// Nearest 2x upsampling then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample {
    pub(crate) conv: Conv2d,
}

impl Upsample {
    /// Upsamples to `size` (twice the input unless the down path met an odd size).
    pub fn forward(&self, x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
        let mut options = InterpolateOptions::new(InterpolateMode::Nearest);
        options.output_size = Some(size);
        conv2d(&self.conv, interpolate(x, options))
    }
}

/// One level of the down path.
#[derive(Module, Debug)]
pub struct DownBlock {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) attentions: Vec<SpatialTransformer>,
    pub(crate) downsampler: Option<Downsample>,
}

impl DownBlock {
    pub(crate) fn new(
        shared: &Shared,
        level: &LevelConfig,
        c_in: usize,
        with_attention: bool,
        downsample: bool,
        device: &Device,
    ) -> Self {
        let resnets = (0..level.layers)
            .map(|i| {
                let c = if i == 0 { c_in } else { level.channels };
                shared.resnet(c, level.channels, 1.0, device)
            })
            .collect();
        let attentions = if with_attention {
            (0..level.layers)
                .map(|_| shared.transformer(level, level.only_cross_attention, device))
                .collect()
        } else {
            Vec::new()
        };
        let downsampler = downsample.then(|| Downsample {
            conv: conv(
                level.channels,
                level.channels,
                3,
                2,
                shared.downsample_padding,
                device,
            ),
        });
        Self {
            resnets,
            attentions,
            downsampler,
        }
    }

    /// Returns the output and pushes every intermediate onto `skips` for the up path.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        time: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, time);
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(x, context);
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = conv2d(&down.conv, x);
            skips.push(x.clone());
        }
        x
    }

    /// Cost for one sample at `[h, w]`; pushes the skip shapes and returns the output size.
    pub fn cost(
        &self,
        h: usize,
        w: usize,
        keys: usize,
        skips: &mut Vec<(usize, usize, usize)>,
        cost: &mut Cost,
    ) -> (usize, usize) {
        for (i, resnet) in self.resnets.iter().enumerate() {
            resnet.cost(h, w, cost);
            if let Some(attention) = self.attentions.get(i) {
                attention.cost(h, w, keys, cost);
            }
            skips.push((out_channels(resnet), h, w));
        }
        match &self.downsampler {
            Some(down) => {
                let (h2, w2) = conv_cost(&down.conv, h, w, cost);
                let [c, _, _, _] = down.conv.weight.lazy_shape().dims();
                skips.push((c, h2, w2));
                (h2, w2)
            }
            None => (h, w),
        }
    }
}

fn out_channels(resnet: &ResnetBlock) -> usize {
    resnet.conv1.weight.lazy_shape().dims::<4>()[0]
}

/// The bottom of the UNet: residual block, then (attention, residual block) pairs.
#[derive(Module, Debug)]
pub struct MidBlock {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) attentions: Vec<SpatialTransformer>,
}

impl MidBlock {
    pub(crate) fn new(shared: &Shared, level: &LevelConfig, scale: f64, device: &Device) -> Self {
        let c = level.channels;
        Self {
            resnets: (0..2).map(|_| shared.resnet(c, c, scale, device)).collect(),
            // The middle block never uses only_cross_attention in diffusers' UNetMidBlock2DCrossAttn.
            attentions: vec![shared.transformer(level, false, device)],
        }
    }

    /// Runs the block.
    pub fn forward(&self, x: Tensor<4>, time: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, time);
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attention.forward(x, context), time);
        }
        x
    }

    /// Cost for one sample at `[h, w]`.
    pub fn cost(&self, h: usize, w: usize, keys: usize, cost: &mut Cost) {
        self.resnets[0].cost(h, w, cost);
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            attention.cost(h, w, keys, cost);
            resnet.cost(h, w, cost);
        }
    }
}

/// One level of the up path.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) attentions: Vec<SpatialTransformer>,
    pub(crate) upsampler: Option<Upsample>,
}

impl UpBlock {
    /// `c_prev`: channels coming from below; `c_skip_last`: channels of the skip that the last
    /// residual block reads (the output of the down level one step higher).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: &Shared,
        level: &LevelConfig,
        c_prev: usize,
        c_skip_last: usize,
        with_attention: bool,
        upsample: bool,
        device: &Device,
    ) -> Self {
        let layers = level.layers + 1;
        let c = level.channels;
        let resnets = (0..layers)
            .map(|i| {
                let c_skip = if i == layers - 1 { c_skip_last } else { c };
                let c_in = if i == 0 { c_prev } else { c };
                shared.resnet(c_in + c_skip, c, 1.0, device)
            })
            .collect();
        let attentions = if with_attention {
            (0..layers)
                .map(|_| shared.transformer(level, level.only_cross_attention, device))
                .collect()
        } else {
            Vec::new()
        };
        let upsampler = upsample.then(|| Upsample {
            conv: conv(c, c, 3, 1, 1, device),
        });
        Self {
            resnets,
            attentions,
            upsampler,
        }
    }

    /// Pops one skip per residual block; upsamples to the size of the next skip, if any.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        time: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip per up residual block");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), time);
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(x, context);
            }
        }
        if let Some(up) = &self.upsampler {
            let [_, _, h, w] = skips.last().expect("a skip above an upsampler").dims();
            x = up.forward(x, [h, w]);
        }
        x
    }

    /// Cost for one sample at `[h, w]`, consuming skip shapes; returns the output size.
    pub fn cost(
        &self,
        h: usize,
        w: usize,
        keys: usize,
        skips: &mut Vec<(usize, usize, usize)>,
        cost: &mut Cost,
    ) -> (usize, usize) {
        for (i, resnet) in self.resnets.iter().enumerate() {
            skips.pop();
            resnet.cost(h, w, cost);
            if let Some(attention) = self.attentions.get(i) {
                attention.cost(h, w, keys, cost);
            }
        }
        match &self.upsampler {
            Some(up) => {
                let &(c, h2, w2) = skips.last().expect("a skip above an upsampler");
                let _ = c;
                cost.elementwise(out_channels(&self.resnets[0]) * h2 * w2); // nearest copy
                conv_cost(&up.conv, h2, w2, cost);
                (h2, w2)
            }
            None => (h, w),
        }
    }
}
