//! A super-resolution UNet made from a text-to-image one (the paper's Fig. 2): `conv_in` widened
//! to read the low-resolution image's latent concatenated to the noisy latent.
//!
//! The new input weights are zero and the old weights and the bias are kept, so before any
//! finetuning the SR model's output equals the text-to-image model's whatever the LR latent is
//! (diffusers' instruct-pix2pix script drops the bias, diffusers issue 4960).

use burn::module::Param;
use burn::nn::EmbeddingConfig;
use burn::tensor::Tensor;

use super::{UNet, UNetConfig};

impl UNetConfig {
    /// The super-resolution config of this text-to-image config over `latent_channels`-channel
    /// latents: `in_channels` doubled (noisy latent, then LR latent). The error names the field
    /// that rules the conversion out.
    pub fn super_res(&self, latent_channels: usize) -> Result<UNetConfig, String> {
        if self.in_channels != latent_channels {
            return Err(format!(
                "in_channels: {} does not match the first stage's {latent_channels} latent channels \
                 (a text-to-image UNet reads exactly the latent; an SR UNet already reads {})",
                self.in_channels,
                2 * latent_channels
            ));
        }
        if self.out_channels != latent_channels {
            return Err(format!(
                "out_channels: {} does not match the first stage's {latent_channels} latent channels",
                self.out_channels
            ));
        }
        if let Some(n) = self.num_class_embeds {
            return Err(format!(
                "num_class_embeds: {n}: a UNet with a class embedding needs class labels the \
                 super-resolution task does not provide"
            ));
        }
        let mut config = self.clone();
        config.in_channels = 2 * latent_channels;
        Ok(config)
    }

    /// This SR config with a noise-level embedding of `levels` entries (diffusers' x4 upscaler:
    /// `num_class_embeds` 1000, the level of the noise added to the LR input as the class).
    pub fn with_noise_level_embedding(&self, levels: usize) -> UNetConfig {
        let mut config = self.clone();
        config.num_class_embeds = Some(levels);
        config.class_embed_type = None;
        config
    }

    /// Latent channels of the LR conditioning a super-resolution config reads (`in_channels -
    /// out_channels`); `None` for a UNet that reads only its own latent.
    pub fn concat_channels(&self) -> Option<usize> {
        (self.in_channels > self.out_channels).then(|| self.in_channels - self.out_channels)
    }
}

impl UNet {
    /// This UNet reading `extra` more input channels after its own: the new `conv_in` weights
    /// are zero, the old weights and the bias are kept.
    pub fn with_extra_inputs(mut self, extra: usize) -> UNet {
        let weight = self.conv_in.weight.val();
        let [out, _, kh, kw] = weight.dims();
        let zeros = Tensor::zeros([out, extra, kh, kw], &weight.device());
        self.conv_in.weight = Param::from_tensor(Tensor::cat(vec![weight, zeros], 1));
        self
    }

    /// This UNet with a noise-level embedding of `levels` entries added to the time embedding,
    /// zero so that the output does not depend on the level until trained.
    pub fn with_noise_level_embedding(mut self, levels: usize) -> UNet {
        let width = 4 * self.base_channels;
        let device = self.conv_in.weight.device();
        let mut embedding = EmbeddingConfig::new(levels, width).init(&device);
        embedding.weight = Param::from_tensor(Tensor::zeros([levels, width], &device));
        self.class_embedding = Some(embedding);
        self
    }

    /// The super-resolution model of this text-to-image `config` over `latent_channels`-channel
    /// latents: its config and the widened UNet (see [`UNetConfig::super_res`]).
    pub fn into_super_res(
        self,
        config: &UNetConfig,
        latent_channels: usize,
    ) -> Result<(UNetConfig, UNet), String> {
        let sr = config.super_res(latent_channels)?;
        Ok((sr, self.with_extra_inputs(latent_channels)))
    }
}
