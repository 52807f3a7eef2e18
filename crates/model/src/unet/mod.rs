//! The text-conditional UNet of Stable Diffusion (diffusers `UNet2DConditionModel`), the
//! denoiser of every model in the paper's family.

pub mod adapter;
pub mod attention;
pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod guidance;
mod layers;
pub mod resnet;
pub mod super_res;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};

use crate::cost::Cost;
use crate::ops::{self, conv2d};
use adapter::{EncoderAdapter, Residuals};
use blocks::{DownBlock, MidBlock, Shared, UpBlock};
use config::{DOWN_CROSS_ATTN, UP_CROSS_ATTN};
pub use config::{PerLevel, UNetConfig};
use embeddings::{TimestepEmbedding, timestep_sinusoid};
use layers::{conv, conv_cost, group_norm, norm_cost};

/// Optional inputs beyond latents, timesteps and text states.
#[derive(Clone, Debug, Default)]
pub struct ExtraConditioning {
    /// Class labels `[batch]` for a model with `num_class_embeds` (SD x4 upscaler: noise level).
    pub class_labels: Option<Tensor<1, Int>>,
    /// Extra timestep condition `[batch, time_cond_proj_dim]` (LCM guidance embedding).
    pub timestep_cond: Option<Tensor<2>>,
}

/// The encoder half of a UNet (conv_in, time embedding, down blocks, mid block), built one
/// way for the UNet and for its adapter's copy.
pub(crate) struct Encoder {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
}

impl Encoder {
    pub fn new(config: &UNetConfig, device: &Device) -> Self {
        let shared = Shared::new(config);
        let levels = config.num_levels();
        let base = config.base_channels();
        let mut down_blocks = Vec::with_capacity(levels);
        let mut c_prev = base;
        for i in 0..levels {
            let level = config.level(i);
            let with_attention = config.down_block_types[i] == DOWN_CROSS_ATTN;
            let downsample = i + 1 < levels;
            let block = DownBlock::new(&shared, &level, c_prev, with_attention, downsample, device);
            down_blocks.push(block);
            c_prev = level.channels;
        }
        let bottom = config.level(levels - 1);
        let scale = config.mid_block_scale_factor;
        let k_in = config.conv_in_kernel;
        let time_dim = config.time_embed_dim();
        Self {
            conv_in: conv(config.in_channels, base, k_in, 1, k_in / 2, device),
            time_embedding: TimestepEmbedding::new(
                base,
                time_dim,
                config.time_cond_proj_dim,
                device,
            ),
            down_blocks,
            mid_block: (config.mid_block_type.as_ref())
                .map(|_| MidBlock::new(&shared, &bottom, scale, device)),
        }
    }
}

/// The conditional UNet. Parameter names follow diffusers (see [`crate::weights`]).
#[derive(Module, Debug)]
pub struct UNet {
    pub(crate) conv_in: Conv2d,
    pub(crate) time_embedding: TimestepEmbedding,
    pub(crate) class_embedding: Option<Embedding>,
    pub(crate) down_blocks: Vec<DownBlock>,
    pub(crate) mid_block: Option<MidBlock>,
    pub(crate) up_blocks: Vec<UpBlock>,
    pub(crate) conv_norm_out: GroupNorm,
    pub(crate) conv_out: Conv2d,
    /// A trained encoder copy whose outputs are added to the skips (a CoDi adapter student).
    pub(crate) adapter: Option<EncoderAdapter>,
    base_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    center_input_sample: bool,
}

impl UNet {
    /// Builds the model for `config`. Parameters are initialised lazily, so building a 5B-parameter
    /// model to count it allocates nothing. Panics on an invalid config: call
    /// [`UNetConfig::validate`] first for user-supplied configs.
    pub fn new(config: &UNetConfig, device: &Device) -> Self {
        if let Err(message) = config.validate() {
            panic!("invalid UNet config: {message}");
        }
        let shared = Shared::new(config);
        let levels = config.num_levels();
        let base = config.base_channels();
        let time_dim = config.time_embed_dim();
        let encoder = Encoder::new(config, device);
        let bottom = config.level(levels - 1);

        let mut up_blocks = Vec::with_capacity(levels);
        let mut c_prev = bottom.channels;
        for i in 0..levels {
            let level_index = levels - 1 - i;
            let level = config.level(level_index);
            let c_skip_last = config.block_out_channels[level_index.saturating_sub(1)];
            let with_attention = config.up_block_types[i] == UP_CROSS_ATTN;
            up_blocks.push(UpBlock::new(
                &shared,
                &level,
                c_prev,
                c_skip_last,
                with_attention,
                i + 1 < levels,
                device,
            ));
            c_prev = level.channels;
        }

        let k_out = config.conv_out_kernel;
        Self {
            conv_in: encoder.conv_in,
            time_embedding: encoder.time_embedding,
            class_embedding: config
                .num_class_embeds
                .map(|n| EmbeddingConfig::new(n, time_dim).init(device)),
            down_blocks: encoder.down_blocks,
            mid_block: encoder.mid_block,
            up_blocks,
            adapter: config
                .encoder_adapter
                .then(|| EncoderAdapter::new(config, device)),
            conv_norm_out: group_norm(config.norm_num_groups, base, config.norm_eps, device),
            conv_out: conv(base, config.out_channels, k_out, 1, k_out / 2, device),
            base_channels: base,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            center_input_sample: config.center_input_sample,
        }
    }

    /// Predicts the model output for latents `sample` `[batch, in_channels, h, w]` at one timestep
    /// per sample, given text states `context` `[batch, tokens, cross_attention_dim]`.
    pub fn forward(&self, sample: Tensor<4>, timesteps: &[f32], context: Tensor<3>) -> Tensor<4> {
        self.forward_with(sample, timesteps, context, &ExtraConditioning::default())
    }

    /// [`forward`](Self::forward) with class labels or an extra timestep condition.
    pub fn forward_with(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        context: Tensor<3>,
        extra: &ExtraConditioning,
    ) -> Tensor<4> {
        let device = sample.device();
        let [batch, ..] = sample.dims();
        assert_eq!(timesteps.len(), batch, "one timestep per sample");
        let sinusoid = timestep_sinusoid(
            timesteps,
            self.base_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
            &device,
        );
        let mut time = self
            .time_embedding
            .forward(sinusoid.clone(), extra.timestep_cond.clone());
        if let Some(embedding) = &self.class_embedding {
            let labels = extra
                .class_labels
                .clone()
                .expect("this UNet has a class embedding: pass class_labels");
            time = time
                + embedding
                    .forward(labels.unsqueeze_dim::<2>(1))
                    .squeeze_dim::<2>(1);
        }
        // Every residual block applies SiLU to the embedding first: do it once.
        let time = silu(time);

        let sample = if self.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };
        let residuals = (self.adapter.as_ref())
            .map(|adapter| adapter.forward(sample.clone(), sinusoid, &context));
        let mut x = conv2d(&self.conv_in, sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &time, &context, &mut skips);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &time, &context);
        }
        if let Some(Residuals { down, mid }) = residuals {
            skips = skips.into_iter().zip(down).map(|(s, r)| s + r).collect();
            if let Some(r) = mid {
                x = x + r;
            }
        }
        for block in &self.up_blocks {
            x = block.forward(x, &time, &context, &mut skips);
        }
        conv2d(
            &self.conv_out,
            ops::group_norm(&self.conv_norm_out, x, true),
        )
    }

    /// Width of the extra timestep condition (`time_cond_proj_dim`: an LCM student's guidance
    /// embedding), if the model has one.
    pub fn time_cond_proj_dim(&self) -> Option<usize> {
        self.time_embedding.condition_dim()
    }

    /// Cost of one forward pass for one sample of `[h, w]` latents reading `keys` text tokens,
    /// without CFG (a guided step costs two).
    pub fn cost(&self, h: usize, w: usize, keys: usize) -> Cost {
        let mut cost = Cost::default();
        self.time_embedding.cost(&mut cost);
        if self.class_embedding.is_some() {
            cost.elementwise(4 * self.base_channels);
        }
        let [c_in_0, _, _, _] = self.conv_in.weight.lazy_shape().dims();
        let (mut h, mut w) = conv_cost(&self.conv_in, h, w, &mut cost);
        let _ = c_in_0;
        let mut skips = vec![(self.base_channels, h, w)];
        for block in &self.down_blocks {
            (h, w) = block.cost(h, w, keys, &mut skips, &mut cost);
        }
        if let Some(mid) = &self.mid_block {
            mid.cost(h, w, keys, &mut cost);
        }
        for block in &self.up_blocks {
            (h, w) = block.cost(h, w, keys, &mut skips, &mut cost);
        }
        norm_cost(self.base_channels * h * w, &mut cost);
        cost.activation(self.base_channels * h * w);
        conv_cost(&self.conv_out, h, w, &mut cost);
        if let Some(adapter) = &self.adapter {
            adapter.cost(h, w, keys, &mut cost);
        }
        cost
    }
}
