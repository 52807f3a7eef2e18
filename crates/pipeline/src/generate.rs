//! Sampling with classifier-free guidance and decoding to images.

use burn::tensor::Tensor;
use ldmscale_diffusion::{
    Cfg, Denoiser, NoiseSource, SamplerId, SchedulerConfig, SeededNoise, sample,
};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNet};

use crate::{LcmDenoiser, PipelineError, UNetDenoiser};

/// A latent diffusion model for inference: a UNet over the latents of a first-stage
/// autoencoder, conditioned on text states.
pub struct LatentDiffusion<'a> {
    /// The denoiser network.
    pub unet: &'a UNet,
    /// The first-stage autoencoder.
    pub vae: &'a AutoencoderKL,
    /// Its config (latent scaling factor).
    pub vae_config: &'a AutoencoderKLConfig,
    /// `[channels, height, width]` of one latent.
    pub latent_shape: [usize; 3],
}

/// How to sample: the sampler, its steps, the guidance rate and the seed of the noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingSpec {
    /// The sampler.
    pub sampler: SamplerId,
    /// Sampling steps.
    pub steps: u32,
    /// Guidance rate w (<= 1: the conditional model alone; LCM: the student's guidance
    /// embedding of w - 1).
    pub cfg: f64,
    /// Seed of the initial noise (and of DDPM's step noise).
    pub seed: u64,
}

/// Images and what they cost.
pub struct Generated {
    /// `[N, 3, H, W]` images in [-1, 1].
    pub images: Tensor<4>,
    /// Network evaluations per image.
    pub evaluations: usize,
}

/// Prompts sampled at once; each batch's noise is seeded by its first prompt's index, so a
/// prompt gets the same noise in every setting.
const BATCH: usize = 32;

impl LatentDiffusion<'_> {
    /// Samples one image per row of `cond` (text states `[N, L, D]`; `null` the empty
    /// caption's `[1, L, D]`) and decodes them.
    pub fn generate(
        &self,
        spec: &SamplingSpec,
        cond: &Tensor<3>,
        null: &Tensor<3>,
    ) -> Result<Generated, PipelineError> {
        let [n, _, _] = cond.dims();
        let mut images = Vec::new();
        let mut evaluations = 0;
        for start in (0..n).step_by(BATCH) {
            let prompts = cond.clone().narrow(0, start, BATCH.min(n - start));
            let (latents, evals) = generate_batch(self, spec, start, prompts, null)?;
            evaluations = evals;
            let decoded = self.vae.decode(self.vae_config.latents_to_vae(latents));
            images.push(decoded.clamp(-1.0, 1.0));
        }
        Ok(Generated {
            images: Tensor::cat(images, 0),
            evaluations,
        })
    }
}

/// Latents for one batch of prompts starting at prompt index `start`, and the evaluations
/// per image.
pub fn generate_batch(
    model: &LatentDiffusion<'_>,
    spec: &SamplingSpec,
    start: usize,
    prompts: Tensor<3>,
    null: &Tensor<3>,
) -> Result<(Tensor<4>, usize), PipelineError> {
    let [len, _, _] = prompts.dims();
    let [c, h, w] = model.latent_shape;
    let mut sampler = spec
        .sampler
        .kind()
        .build(&SchedulerConfig::sd(), spec.steps as usize)?;
    let mut noise = SeededNoise::new(spec.seed.wrapping_mul(1000).wrapping_add(start as u64));
    let init = noise.noise([len, c, h, w], &prompts.device())?;
    let mut denoiser: Box<dyn Denoiser + '_> = if spec.sampler.uses_guidance_embedding() {
        Box::new(LcmDenoiser::new(model.unet, prompts, spec.cfg)?)
    } else {
        let cfg = spec.cfg as f32;
        Box::new(Cfg::new(
            UNetDenoiser(model.unet),
            prompts,
            null.clone(),
            cfg,
        )?)
    };
    let out = sample(sampler.as_mut(), &mut denoiser, init, &mut noise, None)?;
    Ok((out.latents, out.evaluations))
}
