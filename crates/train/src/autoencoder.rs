//! The first-stage autoencoder: one training loop and its calibration, shared by the study's
//! first stage and `ldmscale train-vae`.
//!
//! The objective is LDM's KL autoencoder without its GAN and perceptual terms: the L1 or
//! squared reconstruction error of a decoded posterior sample plus `kl_weight` times the KL
//! divergence of the posterior to N(0, I). The optimizer is our AdamW without weight decay,
//! after a linear warmup. Each step draws its batch and its posterior noise from one generator
//! seeded by (seed, step), so a run is a pure function of its recipe and its images.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ldmscale_model::init::seeded_init;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig};
use ldmscale_pipeline::values;
use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};

/// The step's generator, named here so batch sources outside this crate need no `rand`.
pub use rand::rngs::StdRng;

use crate::data::rng_for;
use crate::error::TrainError;
use crate::optimizer::{AdamW, AdamWConfig};
use crate::params;

/// Stream of the per-step generator (batch indices first, then posterior noise).
const STEP_STREAM: u64 = 0xAE;

/// How a pixel's reconstruction error is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconstructionLoss {
    /// Absolute error (LDM's choice).
    L1,
    /// Squared error.
    L2,
}

/// How the per-pixel errors of a batch become one number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The mean over every value of the batch.
    MeanPerValue,
    /// Summed over each image's values, averaged over the batch (LDM's scale, where the KL
    /// weight of 1e-6 was chosen).
    SumPerImage,
}

/// Everything that decides a training run besides its images and the architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoencoderRecipe {
    /// Reconstruction error per pixel.
    pub loss: ReconstructionLoss,
    /// Reduction of the reconstruction error over the batch.
    pub reduction: Reduction,
    /// Weight of the KL term (per image, averaged over the batch).
    pub kl_weight: f64,
    /// Learning rate after the warmup.
    pub learning_rate: f64,
    /// Steps of the linear warmup from 0 (0: none).
    pub warmup_steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Seed of the initial weights, the batches a sampler draws and the posterior noise.
    pub seed: u64,
}

impl AutoencoderRecipe {
    /// Refuses values a run cannot use; the error names the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let lr = self.learning_rate;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(TrainError::config(
                "learning_rate",
                lr,
                "expected a finite rate > 0",
            ));
        }
        let kl = self.kl_weight;
        if !(kl.is_finite() && kl >= 0.0) {
            return Err(TrainError::config(
                "kl_weight",
                kl,
                "expected a finite weight >= 0",
            ));
        }
        if self.batch_size == 0 {
            return Err(TrainError::config("batch_size", 0, "must be at least 1"));
        }
        if self.steps == 0 {
            return Err(TrainError::config("steps", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step` (from 1).
    fn learning_rate_at(&self, step: u64) -> f64 {
        // With no warmup, step / 0 is infinite and the minimum gives the full rate.
        self.learning_rate * (step as f64 / self.warmup_steps as f64).min(1.0)
    }
}

/// Where the training images come from.
pub trait ImageBatches {
    /// About `size` images `[b, 3, h, w]` in [-1, 1] on `device` for one step; a source that
    /// samples draws from `rng` (the step's generator, which then draws the posterior noise).
    fn draw(
        &mut self,
        size: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Tensor<4>, TrainError>;
}

/// Batches drawn with replacement from images held in memory (the study's first stage).
pub struct SampledImages<'a>(pub &'a Tensor<4>);

impl ImageBatches for SampledImages<'_> {
    fn draw(
        &mut self,
        size: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Tensor<4>, TrainError> {
        let [n, ..] = self.0.dims();
        if n == 0 {
            return Err(TrainError::NoData);
        }
        let batch = size.min(n);
        let idx: Vec<i64> = (0..batch).map(|_| rng.random_range(0..n) as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [batch]), device);
        Ok(self.0.clone().select(0, idx))
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoencoderStep {
    /// The optimizer step (from 1).
    pub step: u64,
    /// Reconstruction error per pixel value (mean absolute or squared error).
    pub reconstruction_per_value: f64,
    /// KL divergence per image.
    pub kl_per_image: f64,
}

/// Called after every step with what it measured and the updated (training-side) model.
pub type StepObserver<'a> =
    &'a mut dyn FnMut(&AutoencoderStep, &AutoencoderKL) -> Result<(), TrainError>;

/// Trains a fresh autoencoder of `config` by `recipe` on `batches`; returns it on `device`.
pub fn train_autoencoder(
    config: &AutoencoderKLConfig,
    recipe: &AutoencoderRecipe,
    batches: &mut dyn ImageBatches,
    device: &Device,
    observe: StepObserver<'_>,
) -> Result<AutoencoderKL, TrainError> {
    recipe.validate()?;
    let ad = device.clone().autodiff();
    let mut model = seeded_init(&ad, recipe.seed, || AutoencoderKL::new(config, &ad));
    let mut adam = AdamW::new(AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    });
    for step in 1..=recipe.steps {
        let mut rng = rng_for(recipe.seed, step, STEP_STREAM);
        let x = batches
            .draw(recipe.batch_size, &mut rng, device)?
            .autodiff();
        let (loss, measured) = objective(&model, recipe, x, &mut rng, step, &ad)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let grads = params::named_gradients(&model, grads);
        model = adam.step_module(model, grads, recipe.learning_rate_at(step));
        observe(&measured, &model)?;
    }
    Ok(model.valid())
}

/// The loss of one batch `x` (on the autodiff device `ad`) and what it measured; a loss that
/// is not finite stops the run.
fn objective(
    model: &AutoencoderKL,
    recipe: &AutoencoderRecipe,
    x: Tensor<4>,
    rng: &mut StdRng,
    step: u64,
    ad: &Device,
) -> Result<(Tensor<1>, AutoencoderStep), TrainError> {
    let posterior = model.encode(x.clone());
    let z = posterior.sample(standard_normal(posterior.mean.dims(), rng, ad));
    let error = model.decode(z) - x;
    let error = match recipe.loss {
        ReconstructionLoss::L1 => error.abs(),
        ReconstructionLoss::L2 => error.powi_scalar(2),
    };
    let [b, c, h, w] = error.dims();
    let rec = match recipe.reduction {
        Reduction::MeanPerValue => error.mean(),
        Reduction::SumPerImage => error.sum() / b as f32,
    };
    let kl = posterior.kl().mean();
    let rec_value = rec.clone().into_scalar::<f32>() as f64;
    let kl_value = kl.clone().into_scalar::<f32>() as f64;
    let total = rec_value + recipe.kl_weight * kl_value;
    if !total.is_finite() {
        return Err(TrainError::Diverged { step, loss: total });
    }
    let per_value = match recipe.reduction {
        Reduction::MeanPerValue => rec_value,
        Reduction::SumPerImage => rec_value / (c * h * w) as f64,
    };
    let measured = AutoencoderStep {
        step,
        reconstruction_per_value: per_value,
        kl_per_image: kl_value,
    };
    Ok((rec + kl * recipe.kl_weight as f32, measured))
}

/// Standard-normal noise of `shape` from `rng`, row-major.
fn standard_normal(shape: [usize; 4], rng: &mut StdRng, device: &Device) -> Tensor<4> {
    let noise: Vec<f32> = (0..shape.iter().product())
        .map(|_| StandardNormal.sample(rng))
        .collect();
    Tensor::from_data(TensorData::new(noise, shape), device)
}

/// The latent scaling factor: 1 / std of the posterior modes of `images` (as Stable Diffusion
/// measured its 0.18215), encoded `chunk` images at a time. `None` when the latents have no
/// finite spread, so no factor can make them unit-variance.
pub fn latent_scaling_factor(vae: &AutoencoderKL, images: &Tensor<4>, chunk: usize) -> Option<f64> {
    let mut z = Vec::new();
    for part in chunks(images, chunk) {
        z.extend(values(vae.encode(part).mode()));
    }
    let n = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    (std.is_finite() && std > 0.0).then(|| 1.0 / std.max(1e-6))
}

/// Reconstruction PSNR in dB (pixel values in [0, 1]) of the mean squared error over all of
/// `images`, reconstructed from posterior modes `chunk` images at a time; capped at 100 dB.
pub fn reconstruction_psnr(vae: &AutoencoderKL, images: &Tensor<4>, chunk: usize) -> f64 {
    let [n, ..] = images.dims();
    let mut weighted = 0.0;
    for part in chunks(images, chunk) {
        let [m, ..] = part.dims();
        let z = vae.encode(part.clone()).mode();
        let recon = vae.decode(z).clamp(-1.0, 1.0);
        let mse: f32 = (recon - part).powi_scalar(2).mean().into_scalar();
        // Exact for one chunk: an f32 times a count below 2^29 is exact in f64.
        weighted += mse as f64 * m as f64;
    }
    let mse = weighted / n as f64;
    // Values span 2 in [-1, 1], so the peak signal squared is 4.
    if mse <= 4e-10 {
        100.0
    } else {
        10.0 * (4.0 / mse).log10()
    }
}

/// `images` split along the batch into parts of at most `chunk` (at least one) images.
fn chunks(images: &Tensor<4>, chunk: usize) -> impl Iterator<Item = Tensor<4>> + '_ {
    let [n, ..] = images.dims();
    let chunk = chunk.max(1);
    (0..n)
        .step_by(chunk)
        .map(move |start| images.clone().narrow(0, start, chunk.min(n - start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that makes the recipe invalid.
    type Spoil = fn(&mut AutoencoderRecipe);

    fn recipe() -> AutoencoderRecipe {
        AutoencoderRecipe {
            loss: ReconstructionLoss::L2,
            reduction: Reduction::MeanPerValue,
            kl_weight: 1e-6,
            learning_rate: 1e-3,
            warmup_steps: 20,
            batch_size: 4,
            steps: 3,
            seed: 0,
        }
    }

    fn images(n: usize, device: &Device) -> Tensor<4> {
        let v: Vec<f32> = (0..n * 3 * 8 * 8)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(v, [n, 3, 8, 8]), device)
    }

    #[test]
    fn invalid_recipes_name_their_field() {
        let cases: [(Spoil, &str); 5] = [
            (|r| r.learning_rate = f64::NAN, "learning_rate"),
            (|r| r.learning_rate = 0.0, "learning_rate"),
            (|r| r.kl_weight = -1.0, "kl_weight"),
            (|r| r.batch_size = 0, "batch_size"),
            (|r| r.steps = 0, "steps"),
        ];
        for (spoil, field) in cases {
            let mut r = recipe();
            spoil(&mut r);
            match r.validate() {
                Err(TrainError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(recipe().validate().is_ok());
    }

    #[test]
    fn warmup_ramps_linearly_and_zero_means_none() {
        let mut r = recipe();
        assert_eq!(r.learning_rate_at(10), 5e-4);
        assert_eq!(r.learning_rate_at(40), 1e-3);
        r.warmup_steps = 0;
        assert_eq!(r.learning_rate_at(1), 1e-3);
    }

    #[test]
    fn a_run_is_a_function_of_its_recipe_and_reports_every_step() {
        let device = Device::flex();
        let config = AutoencoderKLConfig::small(2, 8);
        let x = images(6, &device);
        let run = |recipe: &AutoencoderRecipe| {
            let mut seen = Vec::new();
            let mut observe = |s: &AutoencoderStep, _: &AutoencoderKL| {
                seen.push(*s);
                Ok(())
            };
            let vae = train_autoencoder(
                &config,
                recipe,
                &mut SampledImages(&x),
                &device,
                &mut observe,
            )
            .unwrap();
            (values(vae.encode(x.clone()).mode()), seen)
        };
        let (a, steps) = run(&recipe());
        let (b, _) = run(&recipe());
        assert_eq!(a, b);
        assert_eq!(steps.iter().map(|s| s.step).collect::<Vec<_>>(), [1, 2, 3]);
        let mut other = recipe();
        other.seed = 1;
        assert_ne!(run(&other).0, a);
    }

    #[test]
    fn calibration_does_not_depend_on_the_chunk_size_beyond_rounding() {
        let device = Device::flex();
        let vae = seeded_init(&device, 0, || {
            AutoencoderKL::new(&AutoencoderKLConfig::small(2, 8), &device)
        });
        let x = images(5, &device);
        let (whole, parts) = (
            reconstruction_psnr(&vae, &x, 5),
            reconstruction_psnr(&vae, &x, 2),
        );
        assert!(
            whole.is_finite() && (whole - parts).abs() < 1e-4,
            "{whole} {parts}"
        );
        let s = latent_scaling_factor(&vae, &x, 5).unwrap();
        assert!((s - latent_scaling_factor(&vae, &x, 2).unwrap()).abs() < 1e-4 * s);
    }
}
