//! Super-resolution inference: a UNet that reads the low-resolution image's latent (upsampled x4,
//! encoded by the first stage) concatenated to the noisy latent, with a fixed empty-prompt
//! context and no guidance, as the paper samples SR.
//!
//! Optionally (off by default) the LR latent is noise-augmented as in diffusers' x4 upscaler:
//! noised to a level of [`low_res_schedule`], the level fed to a noise-level (class) embedding;
//! a UNet with `num_class_embeds` is sampled at [`SuperResolution::noise_level`].

use burn::tensor::{Int, Tensor, TensorData};
use ldmscale_diffusion::objective::add_noise;
use ldmscale_diffusion::{
    BetaSchedule, Denoiser, NoiseSchedule, NoiseSource, SamplerId, SchedulerConfig, SeededNoise,
    sample,
};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, ExtraConditioning, UNet, UNetConfig};

use crate::{Generated, PipelineError};

/// The noise schedule of the LR augmentation: Stable Diffusion's x4 upscaler's, as diffusers'
/// single-file loader builds its `low_res_scheduler` (1000 levels, `scaled_linear` betas from
/// 1e-4 to 0.02).
pub fn low_res_schedule() -> SchedulerConfig {
    SchedulerConfig {
        num_train_timesteps: 1000,
        beta_start: 0.0001,
        beta_end: 0.02,
        beta_schedule: BetaSchedule::ScaledLinear,
        ..SchedulerConfig::default()
    }
}

/// `lr` noised with `noise` to one level of [`low_res_schedule`] per sample.
pub fn noise_lr(
    lr: Tensor<4>,
    noise: Tensor<4>,
    levels: &[usize],
) -> Result<Tensor<4>, PipelineError> {
    let schedule = NoiseSchedule::new(&low_res_schedule())?;
    Ok(add_noise(&schedule, lr, noise, levels)?)
}

/// Noise levels as the class labels of a UNet's noise-level embedding.
pub fn level_labels(levels: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    let values: Vec<i64> = levels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(values, [levels.len()]), device)
}

/// The SR UNet as the denoiser samplers drive: `eps([x, lr], t, context)`.
pub struct SrDenoiser<'a> {
    unet: &'a UNet,
    /// LR latents `[B, C, h, w]`, fixed for the whole trajectory.
    lr: Tensor<4>,
    /// `[B, L, D]`.
    context: Tensor<3>,
    /// The noise level of the LR latents, for a UNet with a noise-level embedding.
    extra: ExtraConditioning,
}

impl<'a> SrDenoiser<'a> {
    /// `unet` conditioned on LR latents `lr` (`[B, C, h, w]`) and one context `[1, L, D]` (or
    /// `[B, L, D]`) for every sample.
    pub fn new(unet: &'a UNet, lr: Tensor<4>, context: &Tensor<3>) -> Self {
        let [b, ..] = lr.dims();
        let [n, l, d] = context.dims();
        let context = if n == b {
            context.clone()
        } else {
            context.clone().expand([b, l, d])
        };
        Self {
            unet,
            lr,
            context,
            extra: ExtraConditioning::default(),
        }
    }

    /// Tells a UNet with a noise-level embedding that the LR latents carry noise of `level`
    /// (they must already be noised to it, see [`noise_lr`]).
    pub fn at_noise_level(mut self, level: usize) -> Self {
        let [b, ..] = self.lr.dims();
        self.extra.class_labels = Some(level_labels(&vec![level; b], &self.lr.device()));
        self
    }
}

impl Denoiser for SrDenoiser<'_> {
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        let input = Tensor::cat(vec![x, self.lr.clone()], 1);
        let context = self.context.clone();
        self.unet
            .forward_with(input, timesteps, context, &self.extra)
    }
}

/// A super-resolution latent diffusion model for inference.
pub struct SuperResolution<'a> {
    /// The SR UNet (`in_channels` = 2 x the latent channels).
    pub unet: &'a UNet,
    /// The first-stage autoencoder (the LR latents were encoded by it).
    pub vae: &'a AutoencoderKL,
    /// Its config (latent scaling factor).
    pub vae_config: &'a AutoencoderKLConfig,
    /// The empty prompt's text states `[1, L, D]`.
    pub context: Tensor<3>,
    /// The noise schedule and prediction type the UNet was trained with.
    pub scheduler: SchedulerConfig,
    /// Noise level of the LR augmentation at sampling (diffusers' default 20); used only by a
    /// UNet with a noise-level embedding (`num_class_embeds`).
    pub noise_level: usize,
    /// Size of the UNet's noise-level embedding, if it has one.
    levels: Option<usize>,
}

/// How to sample SR: the sampler, its steps and the seed of the noise (no guidance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SrSampling {
    /// The sampler.
    pub sampler: SamplerId,
    /// Sampling steps (one network evaluation each).
    pub steps: u32,
    /// Seed of the initial noise (and of DDPM's step noise).
    pub seed: u64,
}

/// LR images sampled at once; each batch's noise is seeded by its first image's index, so an
/// image gets the same noise whatever the batch it is in.
const BATCH: usize = 32;

impl<'a> SuperResolution<'a> {
    /// The bundle, checking that `unet_config` reads the LR latent beside its own (`in_channels`
    /// = 2 x `out_channels` = 2 x the first stage's latent channels).
    pub fn new(
        unet: &'a UNet,
        unet_config: &UNetConfig,
        vae: &'a AutoencoderKL,
        vae_config: &'a AutoencoderKLConfig,
        context: Tensor<3>,
    ) -> Result<Self, PipelineError> {
        let c = vae_config.latent_channels;
        if unet_config.in_channels != 2 * c || unet_config.out_channels != c {
            return Err(PipelineError::UNetConfig(format!(
                "in_channels {} / out_channels {}: a super-resolution UNet over {c}-channel \
                 latents reads {} and predicts {c}",
                unet_config.in_channels,
                unet_config.out_channels,
                2 * c
            )));
        }
        Ok(Self {
            unet,
            vae,
            vae_config,
            context,
            scheduler: SchedulerConfig::sd(),
            noise_level: 20,
            levels: unet_config.num_class_embeds,
        })
    }

    /// The HR latents of LR latents `lr` (`[N, C, h, w]`), and the evaluations per image.
    pub fn generate_latents(
        &self,
        lr: &Tensor<4>,
        spec: &SrSampling,
    ) -> Result<(Tensor<4>, usize), PipelineError> {
        let [n, ..] = lr.dims();
        let mut latents = Vec::new();
        let mut evaluations = 0;
        for start in (0..n).step_by(BATCH) {
            let batch = lr.clone().narrow(0, start, BATCH.min(n - start));
            let (out, evals) = self.generate_batch(batch, spec, start)?;
            latents.push(out);
            evaluations = evals;
        }
        Ok((Tensor::cat(latents, 0), evaluations))
    }

    /// HR images `[N, 3, H, W]` in [-1, 1] of LR latents `lr`.
    pub fn generate(&self, lr: &Tensor<4>, spec: &SrSampling) -> Result<Generated, PipelineError> {
        let (latents, evaluations) = self.generate_latents(lr, spec)?;
        let [n, ..] = latents.dims();
        let mut images = Vec::new();
        for start in (0..n).step_by(BATCH) {
            let chunk = latents.clone().narrow(0, start, BATCH.min(n - start));
            let decoded = self.vae.decode(self.vae_config.latents_to_vae(chunk));
            images.push(decoded.clamp(-1.0, 1.0));
        }
        Ok(Generated {
            images: Tensor::cat(images, 0),
            evaluations,
        })
    }

    /// The denoiser over `lr` noised to [`SuperResolution::noise_level`] (seeded by `seed`).
    fn augmented(
        &self,
        lr: Tensor<4>,
        levels: usize,
        seed: u64,
    ) -> Result<SrDenoiser<'a>, PipelineError> {
        let level = self.noise_level;
        if level >= levels.min(low_res_schedule().num_train_timesteps) {
            return Err(PipelineError::UNetConfig(format!(
                "noise level {level}: the UNet's num_class_embeds is {levels}"
            )));
        }
        let [b, ..] = lr.dims();
        let noise = SeededNoise::new(seed ^ 0x10_5e5).noise(lr.dims(), &lr.device())?;
        let lr = noise_lr(lr, noise, &vec![level; b])?;
        Ok(SrDenoiser::new(self.unet, lr, &self.context).at_noise_level(level))
    }

    fn generate_batch(
        &self,
        lr: Tensor<4>,
        spec: &SrSampling,
        start: usize,
    ) -> Result<(Tensor<4>, usize), PipelineError> {
        let mut sampler = spec
            .sampler
            .kind()
            .build(&self.scheduler, spec.steps as usize)?;
        let seed = spec.seed.wrapping_mul(1000).wrapping_add(start as u64);
        let mut noise = SeededNoise::new(seed);
        let init = noise.noise(lr.dims(), &lr.device())?;
        let mut denoiser = match self.levels {
            None => SrDenoiser::new(self.unet, lr, &self.context),
            Some(levels) => self.augmented(lr, levels, seed)?,
        };
        let out = sample(sampler.as_mut(), &mut denoiser, init, &mut noise, None)?;
        Ok((out.latents, out.evaluations))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use burn::tensor::{Device, Distribution};
    use ldmscale_diffusion::Cfg;
    use ldmscale_model::weights::load_unet;

    use super::*;
    use crate::UNetDenoiser;

    fn fixture() -> (UNetConfig, UNet) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/unet/sd_like_linear");
        load_unet(&dir, &Device::flex()).unwrap()
    }

    fn normal<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn at_step_zero_sr_sampling_equals_unguided_text_to_image_sampling() {
        let device = Device::flex();
        let (config, t2i) = fixture();
        let (sr_config, sr) = t2i.clone().into_super_res(&config, 4).unwrap();
        let vae_config = AutoencoderKLConfig::small(2, 8);
        let vae = AutoencoderKL::new(&vae_config, &device);
        let context = normal([1, 5, 32], &device);
        let lr = normal([3, 4, 16, 16], &device) * 3.0;
        let bundle = SuperResolution::new(&sr, &sr_config, &vae, &vae_config, context.clone());
        let aug_context = context.clone();
        let spec = SrSampling {
            sampler: SamplerId::Ddim,
            steps: 3,
            seed: 5,
        };
        let (ours, evaluations) = bundle.unwrap().generate_latents(&lr, &spec).unwrap();
        assert_eq!(evaluations, 3, "no guidance: one evaluation per step");

        let mut sampler = SamplerId::Ddim
            .kind()
            .build(&SchedulerConfig::sd(), 3)
            .unwrap();
        let mut noise = SeededNoise::new(5000);
        let init = noise.noise([3, 4, 16, 16], &device).unwrap();
        let cond = context.clone().expand([3, 5, 32]);
        let mut plain = Cfg::new(UNetDenoiser(&t2i), cond, context, 1.0).unwrap();
        let reference = sample(sampler.as_mut(), &mut plain, init, &mut noise, None).unwrap();
        let diff: f32 = (ours - reference.latents.clone()).abs().max().into_scalar();
        assert!(diff <= 1e-5, "{diff}");

        // With a (zero) noise-level embedding the noised LR cannot matter either.
        let aug_config = sr_config.with_noise_level_embedding(1000);
        let aug = sr.with_noise_level_embedding(1000);
        let mut bundle = SuperResolution::new(&aug, &aug_config, &vae, &vae_config, aug_context);
        let bundle = bundle.as_mut().unwrap();
        let (augmented, _) = bundle.generate_latents(&lr, &spec).unwrap();
        let diff: f32 = (augmented - reference.latents).abs().max().into_scalar();
        assert!(diff <= 1e-5, "{diff}");
        bundle.noise_level = 1000;
        let err = bundle.generate_latents(&lr, &spec).expect_err("refused");
        assert!(err.to_string().contains("noise level 1000"), "{err}");
    }

    #[test]
    fn a_text_to_image_unet_is_refused_naming_in_channels() {
        let device = Device::flex();
        let (config, t2i) = fixture();
        let vae_config = AutoencoderKLConfig::small(2, 8);
        let vae = AutoencoderKL::new(&vae_config, &device);
        let context = Tensor::zeros([1, 5, 32], &device);
        let err = SuperResolution::new(&t2i, &config, &vae, &vae_config, context)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("in_channels 4"), "{err}");
    }
}
