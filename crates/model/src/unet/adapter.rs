//! A ControlNet-style encoder adapter on a frozen UNet (the CoDi student of Mei et al.): a
//! trainable copy of the UNet's encoder (conv_in, time embedding, down blocks, mid block)
//! whose skip outputs and mid output go through zero-initialised 1x1 convolutions and are
//! added to the frozen UNet's skips and mid output. At step 0 the fusion convolutions are
//! zero, so the student equals its teacher exactly.
//!
//! Parameter names follow diffusers' `ControlNetModel` (`controlnet_down_blocks.N`,
//! `controlnet_mid_block`), without its conditioning-image embedding: the adapter reads the
//! same noisy latents as the UNet. Saved beside the UNet's own files as `adapter/`
//! (`config.json` + `diffusion_pytorch_model.safetensors`), so the directory is still the
//! frozen teacher for diffusers and the student for [`crate::weights::load_unet`].

use std::path::Path;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::blocks::{DownBlock, MidBlock};
use super::embeddings::TimestepEmbedding;
use super::layers::{conv, conv_cost};
use super::{Encoder, UNet, UNetConfig};
use crate::cost::Cost;
use crate::error::ModelError;
use crate::ops::conv2d;

/// The subdirectory of a UNet directory that holds its adapter.
pub const ADAPTER_DIR: &str = "adapter";
/// `_class_name` of an adapter's config.json.
pub const ADAPTER_CLASS: &str = "EncoderAdapter";

/// The trainable encoder copy and its zero-initialised fusion convolutions.
#[derive(Module, Debug)]
pub struct EncoderAdapter {
    pub(crate) conv_in: Conv2d,
    pub(crate) time_embedding: TimestepEmbedding,
    pub(crate) down_blocks: Vec<DownBlock>,
    pub(crate) mid_block: Option<MidBlock>,
    pub(crate) controlnet_down_blocks: Vec<Conv2d>,
    pub(crate) controlnet_mid_block: Option<Conv2d>,
}

/// What the adapter adds to the UNet: one residual per skip, and one to the mid output.
pub struct Residuals {
    pub down: Vec<Tensor<4>>,
    pub mid: Option<Tensor<4>>,
}

impl UNetConfig {
    /// This config with an encoder adapter; the error names the field that rules it out
    /// (the adapter copies a plain text-to-image encoder).
    pub fn with_encoder_adapter(&self) -> Result<UNetConfig, String> {
        if self.encoder_adapter {
            return Err("this UNet already has an encoder adapter".into());
        }
        if let Some(d) = self.time_cond_proj_dim {
            return Err(format!(
                "time_cond_proj_dim: {d}: an encoder adapter copies a plain UNet's encoder"
            ));
        }
        if let Some(n) = self.num_class_embeds {
            return Err(format!(
                "num_class_embeds: {n}: an encoder adapter copies a plain UNet's encoder"
            ));
        }
        let mut config = self.clone();
        config.encoder_adapter = true;
        Ok(config)
    }

    /// Channels of every skip the down path pushes (conv_in's, then each level's).
    fn skip_channels(&self) -> Vec<usize> {
        let levels = self.num_levels();
        let mut channels = vec![self.base_channels()];
        for i in 0..levels {
            let level = self.level(i);
            let pushes = level.layers + usize::from(i + 1 < levels);
            channels.extend(std::iter::repeat_n(level.channels, pushes));
        }
        channels
    }
}

impl EncoderAdapter {
    /// The adapter of `config` with lazily initialised parameters (to load or count).
    pub(crate) fn new(config: &UNetConfig, device: &Device) -> Self {
        let encoder = Encoder::new(config, device);
        let fusion = |c: usize| conv(c, c, 1, 1, 0, device);
        let bottom = config.level(config.num_levels() - 1).channels;
        Self {
            conv_in: encoder.conv_in,
            time_embedding: encoder.time_embedding,
            down_blocks: encoder.down_blocks,
            controlnet_mid_block: encoder.mid_block.as_ref().map(|_| fusion(bottom)),
            mid_block: encoder.mid_block,
            controlnet_down_blocks: config.skip_channels().into_iter().map(fusion).collect(),
        }
    }

    /// A copy of `unet`'s encoder (its own parameter ids, so gradients stay apart) with zero
    /// fusion convolutions.
    fn copied_from(config: &UNetConfig, unet: &UNet) -> Self {
        let device = unet.conv_in.weight.device();
        let fusion = |c: usize| zeroed(conv(c, c, 1, 1, 0, &device));
        let bottom = config.level(config.num_levels() - 1).channels;
        Self {
            conv_in: unet.conv_in.clone().map(&mut FreshIds),
            time_embedding: unet.time_embedding.clone().map(&mut FreshIds),
            down_blocks: unet.down_blocks.clone().map(&mut FreshIds),
            mid_block: unet.mid_block.clone().map(|m| m.map(&mut FreshIds)),
            controlnet_down_blocks: config.skip_channels().into_iter().map(fusion).collect(),
            controlnet_mid_block: unet.mid_block.as_ref().map(|_| fusion(bottom)),
        }
    }

    /// The residuals for latents `sample` (centred as the UNet's) at the timestep features
    /// `sinusoid`, reading `context`.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        sinusoid: Tensor<2>,
        context: &Tensor<3>,
    ) -> Residuals {
        let time = silu(self.time_embedding.forward(sinusoid, None));
        let mut x = conv2d(&self.conv_in, sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &time, context, &mut skips);
        }
        let mid = self
            .mid_block
            .as_ref()
            .map(|m| m.forward(x, &time, context));
        let fuse = self.controlnet_down_blocks.iter();
        Residuals {
            down: skips
                .into_iter()
                .zip(fuse)
                .map(|(s, c)| conv2d(c, s))
                .collect(),
            mid: mid
                .zip(self.controlnet_mid_block.as_ref())
                .map(|(m, c)| conv2d(c, m)),
        }
    }

    /// Cost of one forward for one sample at `[h, w]` latents reading `keys` tokens,
    /// the additions to the UNet's skips included.
    pub fn cost(&self, h: usize, w: usize, keys: usize, cost: &mut Cost) {
        self.time_embedding.cost(cost);
        let (mut h, mut w) = conv_cost(&self.conv_in, h, w, cost);
        let [c0, _, _, _] = self.conv_in.weight.lazy_shape().dims();
        let mut skips = vec![(c0, h, w)];
        for block in &self.down_blocks {
            (h, w) = block.cost(h, w, keys, &mut skips, cost);
        }
        if let Some(mid) = &self.mid_block {
            mid.cost(h, w, keys, cost);
        }
        for (&(c, h, w), fusion) in skips.iter().zip(&self.controlnet_down_blocks) {
            conv_cost(fusion, h, w, cost);
            cost.elementwise(c * h * w);
        }
        if let Some(fusion) = &self.controlnet_mid_block {
            let [c, _, _, _] = fusion.weight.lazy_shape().dims();
            conv_cost(fusion, h, w, cost);
            cost.elementwise(c * h * w);
        }
    }
}

/// A 1x1 convolution set to zero (weight and bias).
fn zeroed(mut conv: Conv2d) -> Conv2d {
    // The device of a lazy parameter, not its value: reading the value would draw it from the
    // process's generator, unseeded, in the middle of another thread's seeded draws.
    let device = conv.weight.lazy_device();
    let shape = conv.weight.lazy_shape();
    conv.weight = Param::from_tensor(Tensor::zeros(shape, &device));
    if let Some(bias) = &conv.bias {
        let shape = bias.lazy_shape();
        conv.bias = Some(Param::from_tensor(Tensor::zeros(shape, &device)));
    }
    conv
}

impl UNet {
    /// This UNet with an encoder adapter: a copy of its encoder and zero fusion convolutions,
    /// so its output is unchanged (see [`UNetConfig::with_encoder_adapter`] for the config).
    /// Panics if it has one already.
    pub fn with_encoder_adapter(mut self, config: &UNetConfig) -> UNet {
        assert!(self.adapter.is_none(), "this UNet has an adapter already");
        self.adapter = Some(EncoderAdapter::copied_from(config, &self));
        self
    }

    /// Whether the UNet carries an encoder adapter.
    pub fn has_encoder_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// This UNet with every parameter outside its adapter excluded from gradients (the
    /// frozen teacher under a trained adapter); a UNet without an adapter is returned as is.
    pub fn with_frozen_base(self) -> UNet {
        if self.adapter.is_none() {
            return self;
        }
        UNet {
            conv_in: self.conv_in.no_grad(),
            time_embedding: self.time_embedding.no_grad(),
            class_embedding: self.class_embedding.map(Module::no_grad),
            down_blocks: self.down_blocks.no_grad(),
            mid_block: self.mid_block.map(Module::no_grad),
            up_blocks: self.up_blocks.no_grad(),
            conv_norm_out: self.conv_norm_out.no_grad(),
            conv_out: self.conv_out.no_grad(),
            ..self
        }
    }

    /// The adapter's parameter count (0 without one).
    pub fn adapter_params(&self) -> usize {
        self.adapter.as_ref().map_or(0, Module::num_params)
    }
}

/// Gives every parameter a new id, keeping its value.
struct FreshIds;

impl ModuleMapper for FreshIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (_, tensor, mapper) = param.consume();
        Param::from_mapped_value(ParamId::new(), tensor, mapper)
    }
}

/// The adapter config.json: the UNet's config it copies, under its own class name.
pub(crate) fn adapter_config_json(config: &UNetConfig) -> String {
    let mut base = config.clone();
    base.encoder_adapter = false;
    base.other.clear();
    let mut value = serde_json::to_value(&base).expect("a config serialises");
    value["_class_name"] = ADAPTER_CLASS.into();
    serde_json::to_string_pretty(&value).expect("a JSON value serialises")
}

/// Checks that `dir`'s adapter config describes the same encoder as the UNet config `base`
/// (the field that differs is named).
pub(crate) fn check_adapter_config(dir: &Path, base: &UNetConfig) -> Result<(), ModelError> {
    let file = dir.join(crate::weights::CONFIG_FILE);
    let adapter = UNetConfig::from_json_file(&file)?;
    let class = adapter.other.get("_class_name").and_then(|v| v.as_str());
    let bad = |message: String| ModelError::Config {
        file: file.display().to_string(),
        message,
    };
    if class != Some(ADAPTER_CLASS) {
        return Err(bad(format!(
            "_class_name: expected \"{ADAPTER_CLASS}\", found {class:?}"
        )));
    }
    let ours: serde_json::Value =
        serde_json::from_str(&adapter_config_json(&adapter)).expect("our own JSON parses");
    let theirs: serde_json::Value =
        serde_json::from_str(&adapter_config_json(base)).expect("our own JSON parses");
    let differing = ours
        .as_object()
        .into_iter()
        .flatten()
        .find(|(key, value)| key.as_str() != "sample_size" && theirs.get(key) != Some(value));
    match differing {
        Some((key, value)) => Err(bad(format!(
            "{key}: {value} differs from the UNet's {} (an adapter copies its UNet's encoder)",
            theirs.get(key).unwrap_or(&serde_json::Value::Null)
        ))),
        None => Ok(()),
    }
}
