//! The first stage of a latent diffusion model: a KL-regularised autoencoder with diffusers'
//! `AutoencoderKL` architecture and parameter names, so Stable Diffusion's VAE directory
//! (`config.json` + `diffusion_pytorch_model.safetensors`) loads unchanged and ours load in
//! diffusers.

pub mod blocks;
pub mod config;

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Tensor, TensorData};

use crate::cost::Cost;
use crate::error::ModelError;
use crate::weights::{
    CONFIG_FILE, Naming, WEIGHTS_FILE, load_safetensors_named, save_safetensors_named, write_atomic,
};
use blocks::{Decoder, Encoder};
pub use config::{AutoencoderKLConfig, SampleSize};

/// Where our struct fields are named differently from diffusers', and the names diffusers'
/// deprecated attention blocks (`AttentionBlock`, still in SD VAE files of the 0.x era) used.
pub const VAE_NAMING: Naming = Naming {
    prefix: "",
    renames: &[
        ("Struct:EncoderBlock", "downsampler", "downsamplers.0"),
        ("Struct:DecoderBlock", "upsampler", "upsamplers.0"),
        ("Struct:SelfAttention", "to_out", "to_out.0"),
    ],
    ignored: &[],
    legacy: &[
        ("to_q", "query"),
        ("to_k", "key"),
        ("to_v", "value"),
        ("to_out.0", "proj_attn"),
    ],
};

/// The posterior of the encoder: a diagonal Gaussian per latent element (diffusers
/// `DiagonalGaussianDistribution`).
#[derive(Clone, Debug)]
pub struct DiagonalGaussian {
    /// Mean, `[batch, latent_channels, h, w]`.
    pub mean: Tensor<4>,
    /// Log-variance, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<4>,
}

impl DiagonalGaussian {
    /// Splits encoder moments `[batch, 2 * c, h, w]` into mean and (clamped) log-variance.
    pub fn from_moments(moments: Tensor<4>) -> Self {
        let [mean, logvar] = moments.chunk(2, 1).try_into().expect("two halves");
        Self {
            mean,
            logvar: logvar.clamp(-30.0, 20.0),
        }
    }

    /// Standard deviation `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<4> {
        (self.logvar.clone() * 0.5).exp()
    }

    /// A sample `mean + std * noise` for the given standard-normal `noise` (explicit, so callers
    /// control the randomness).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std() * noise
    }

    /// The most likely latent: the mean.
    pub fn mode(&self) -> Tensor<4> {
        self.mean.clone()
    }

    /// KL divergence to the standard normal per sample, summed over latent elements: `[batch]`.
    pub fn kl(&self) -> Tensor<1> {
        let terms = self.mean.clone() * self.mean.clone() + self.logvar.clone().exp()
            - 1.0
            - self.logvar.clone();
        terms.flatten::<2>(1, 3).sum_dim(1).squeeze_dim::<1>(1) * 0.5
    }
}

/// A KL autoencoder (diffusers `AutoencoderKL`). Parameter names follow diffusers.
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub(crate) encoder: Encoder,
    pub(crate) decoder: Decoder,
    pub(crate) quant_conv: Option<Conv2d>,
    pub(crate) post_quant_conv: Option<Conv2d>,
    downsampling_factor: usize,
}

impl AutoencoderKL {
    /// Builds the model for `config` with lazily initialised parameters. Panics on an invalid
    /// config: call [`AutoencoderKLConfig::validate`] first for user-supplied configs.
    pub fn new(config: &AutoencoderKLConfig, device: &Device) -> Self {
        if let Err(message) = config.validate() {
            panic!("invalid AutoencoderKL config: {message}");
        }
        let c = config.latent_channels;
        let pointwise = |c: usize| Conv2dConfig::new([c, c], [1, 1]).init(device);
        Self {
            encoder: Encoder::new(config, device),
            decoder: Decoder::new(config, device),
            quant_conv: config.use_quant_conv.then(|| pointwise(2 * c)),
            post_quant_conv: config.use_post_quant_conv.then(|| pointwise(c)),
            downsampling_factor: config.downsampling_factor(),
        }
    }

    /// Image pixels per latent pixel along each side.
    pub fn downsampling_factor(&self) -> usize {
        self.downsampling_factor
    }

    /// Encodes images `[batch, in_channels, h, w]` (values in [-1, 1]) to the posterior over
    /// latents `[batch, latent_channels, h/f, w/f]`.
    pub fn encode(&self, images: Tensor<4>) -> DiagonalGaussian {
        let mut moments = self.encoder.forward(images);
        if let Some(quant) = &self.quant_conv {
            moments = quant.forward(moments);
        }
        DiagonalGaussian::from_moments(moments)
    }

    /// Decodes latents `[batch, latent_channels, h, w]` (unscaled: divide a diffusion model's
    /// latents by the scaling factor first, see [`AutoencoderKLConfig::latents_to_vae`]) to
    /// images `[batch, out_channels, h*f, w*f]`.
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let latents = match &self.post_quant_conv {
            Some(post) => post.forward(latents),
            None => latents,
        };
        self.decoder.forward(latents)
    }

    /// Reconstructs images through the posterior mode (diffusers' `forward` without sampling).
    pub fn reconstruct(&self, images: Tensor<4>) -> Tensor<4> {
        self.decode(self.encode(images).mode())
    }

    /// Cost of encoding one image of `[h, w]` pixels (to the posterior moments).
    pub fn encode_cost(&self, h: usize, w: usize) -> Cost {
        let mut cost = Cost::default();
        let (h, w) = self.encoder.cost(h, w, &mut cost);
        if let Some(quant) = &self.quant_conv {
            blocks::conv_cost(quant, h, w, &mut cost);
        }
        cost
    }

    /// Cost of decoding one latent of `[h, w]`.
    pub fn decode_cost(&self, h: usize, w: usize) -> Cost {
        let mut cost = Cost::default();
        if let Some(post) = &self.post_quant_conv {
            blocks::conv_cost(post, h, w, &mut cost);
        }
        self.decoder.cost(h, w, &mut cost);
        cost
    }
}

impl AutoencoderKLConfig {
    /// Latents as the diffusion model sees them: `(z - shift) * scaling_factor`, or with
    /// per-channel statistics `(z - mean) * scaling_factor / std` (diffusers' pipelines).
    pub fn vae_to_latents(&self, z: Tensor<4>) -> Tensor<4> {
        let z = match (&self.latents_mean, &self.latents_std) {
            (Some(mean), Some(std)) => {
                let (mean, std) = (channel_vector(mean, &z), channel_vector(std, &z));
                (z - mean) / std
            }
            _ => z - self.shift_factor.unwrap_or(0.0),
        };
        z * self.scaling_factor
    }

    /// The inverse of [`vae_to_latents`](Self::vae_to_latents): what [`AutoencoderKL::decode`]
    /// takes.
    pub fn latents_to_vae(&self, latents: Tensor<4>) -> Tensor<4> {
        let z = latents / self.scaling_factor;
        match (&self.latents_mean, &self.latents_std) {
            (Some(mean), Some(std)) => {
                let (mean, std) = (channel_vector(mean, &z), channel_vector(std, &z));
                z * std + mean
            }
            _ => z + self.shift_factor.unwrap_or(0.0),
        }
    }
}

/// `values` as a `[1, c, 1, 1]` tensor on `like`'s device.
fn channel_vector(values: &[f64], like: &Tensor<4>) -> Tensor<4> {
    let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::<1>::from_data(TensorData::new(data, [values.len()]), &like.device()).reshape([
        1,
        values.len(),
        1,
        1,
    ])
}

/// Loads an autoencoder from a diffusers directory (`config.json` +
/// `diffusion_pytorch_model.safetensors`), e.g. Stable Diffusion's `vae/`.
pub fn load_vae(
    dir: &Path,
    device: &Device,
) -> Result<(AutoencoderKLConfig, AutoencoderKL), ModelError> {
    let config = AutoencoderKLConfig::from_json_file(&dir.join(CONFIG_FILE))?;
    let model = AutoencoderKL::new(&config, device);
    let model = load_safetensors_named(model, &dir.join(WEIGHTS_FILE), device, &VAE_NAMING)?;
    Ok((config, model))
}

/// Saves an autoencoder as a diffusers directory, creating it if needed; both files are
/// written atomically.
pub fn save_vae(
    dir: &Path,
    config: &AutoencoderKLConfig,
    model: &AutoencoderKL,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    save_safetensors_named(model, &dir.join(WEIGHTS_FILE), &VAE_NAMING)?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())
}
