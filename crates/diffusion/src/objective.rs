//! Training objectives: forward noising, eps / v / x0 targets, min-SNR-gamma weighting and
//! text dropout for classifier-free guidance, following diffusers (`add_noise`,
//! `get_velocity`, `training_utils.compute_snr`, `examples/text_to_image/train_text_to_image.py`).

use burn::tensor::Tensor;
use rand::{Rng, RngExt};

use crate::error::{DiffusionError, Result};
use crate::prediction::per_sample_coefficient;
use crate::schedule::{NoiseSchedule, PredictionType};

/// Per-sample `(sqrt(abar_t), sqrt(1 - abar_t))` as `[B, 1, 1, 1]` tensors.
fn signal_noise_coefficients(
    schedule: &NoiseSchedule,
    like: &Tensor<4>,
    timesteps: &[usize],
) -> Result<(Tensor<4>, Tensor<4>)> {
    let alphas = alphas_at(schedule, timesteps)?;
    let sqrt_a = per_sample_coefficient(like, alphas.iter().map(|a| a.sqrt()))?;
    let sqrt_b = per_sample_coefficient(like, alphas.iter().map(|a| (1.0 - a).sqrt()))?;
    Ok((sqrt_a, sqrt_b))
}

fn alphas_at(schedule: &NoiseSchedule, timesteps: &[usize]) -> Result<Vec<f32>> {
    timesteps
        .iter()
        .map(|&t| schedule.alpha_cumprod(t as i64))
        .collect()
}

/// Forward process `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, one timestep per sample.
pub fn add_noise(
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    noise: Tensor<4>,
    timesteps: &[usize],
) -> Result<Tensor<4>> {
    let (sqrt_a, sqrt_b) = signal_noise_coefficients(schedule, &x0, timesteps)?;
    Ok(x0.mul(sqrt_a).add(noise.mul(sqrt_b)))
}

/// The v-prediction target `sqrt(abar_t) noise - sqrt(1 - abar_t) x0`.
pub fn velocity(
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    noise: Tensor<4>,
    timesteps: &[usize],
) -> Result<Tensor<4>> {
    let (sqrt_a, sqrt_b) = signal_noise_coefficients(schedule, &x0, timesteps)?;
    Ok(noise.mul(sqrt_a).sub(x0.mul(sqrt_b)))
}

/// Signal-to-noise ratio `(sqrt(abar) / sqrt(1 - abar))^2` per timestep (diffusers
/// `compute_snr`).
pub fn snr(schedule: &NoiseSchedule, timesteps: &[usize]) -> Result<Vec<f32>> {
    Ok(alphas_at(schedule, timesteps)?
        .into_iter()
        .map(|a| {
            let r = a.sqrt() / (1.0 - a).sqrt();
            r * r
        })
        .collect())
}

/// Min-SNR-gamma loss weights (Hang et al. 2023) as train_text_to_image.py computes them:
/// `min(snr, gamma) / snr` for eps, `min(snr, gamma) / (snr + 1)` for v, `min(snr, gamma)`
/// for x0 prediction.
pub fn min_snr_weights(prediction: PredictionType, snr: &[f32], gamma: f32) -> Vec<f32> {
    snr.iter()
        .map(|&s| {
            let w = s.min(gamma);
            match prediction {
                PredictionType::Epsilon => w / s,
                PredictionType::VPrediction => w / (s + 1.0),
                PredictionType::Sample => w,
            }
        })
        .collect()
}

/// The noisy model input and regression target of one training batch.
#[derive(Debug, Clone)]
pub struct TrainingPair {
    /// `x_t`, the model input.
    pub noisy: Tensor<4>,
    /// What the model should output: noise, velocity or x0.
    pub target: Tensor<4>,
    /// Per-sample loss weights (all 1 without min-SNR weighting).
    pub weights: Vec<f32>,
}

/// The denoising objective of a model with a given prediction type and schedule.
#[derive(Debug, Clone)]
pub struct DiffusionObjective {
    /// Schedule the model is trained on.
    pub schedule: NoiseSchedule,
    /// What the model predicts.
    pub prediction: PredictionType,
    /// Min-SNR-gamma (diffusers' `--snr_gamma`, commonly 5); `None` = plain MSE.
    pub snr_gamma: Option<f32>,
}

impl DiffusionObjective {
    /// Objective for `prediction` on `schedule`; `snr_gamma` must be positive when set.
    pub fn new(
        schedule: NoiseSchedule,
        prediction: PredictionType,
        snr_gamma: Option<f32>,
    ) -> Result<Self> {
        if let Some(g) = snr_gamma
            && (g.is_nan() || g <= 0.0)
        {
            return Err(DiffusionError::config(
                "snr_gamma",
                format!("{g} must be positive"),
            ));
        }
        Ok(Self {
            schedule,
            prediction,
            snr_gamma,
        })
    }

    /// Noises `x0` with `noise` at per-sample `timesteps` and builds the target.
    pub fn pair(
        &self,
        x0: Tensor<4>,
        noise: Tensor<4>,
        timesteps: &[usize],
    ) -> Result<TrainingPair> {
        if x0.dims() != noise.dims() {
            return Err(DiffusionError::Shape(format!(
                "latents {:?} and noise {:?} differ",
                x0.dims(),
                noise.dims()
            )));
        }
        let noisy = add_noise(&self.schedule, x0.clone(), noise.clone(), timesteps)?;
        let target = match self.prediction {
            PredictionType::Epsilon => noise,
            PredictionType::VPrediction => velocity(&self.schedule, x0, noise, timesteps)?,
            PredictionType::Sample => x0,
        };
        let weights = match self.snr_gamma {
            None => vec![1.0; timesteps.len()],
            Some(gamma) => {
                min_snr_weights(self.prediction, &snr(&self.schedule, timesteps)?, gamma)
            }
        };
        Ok(TrainingPair {
            noisy,
            target,
            weights,
        })
    }

    /// The loss of `model_output` against `pair`: mean squared error, or with min-SNR weights
    /// the per-sample MSE times its weight, averaged over the batch. Returns a `[1]` tensor
    /// that keeps the autodiff graph of `model_output`.
    pub fn loss(&self, model_output: Tensor<4>, pair: &TrainingPair) -> Result<Tensor<1>> {
        weighted_mse(model_output, pair.target.clone(), &pair.weights)
    }
}

/// `mean_b(w_b * mean_{chw}((pred - target)^2))`.
pub fn weighted_mse(pred: Tensor<4>, target: Tensor<4>, weights: &[f32]) -> Result<Tensor<1>> {
    if pred.dims() != target.dims() {
        return Err(DiffusionError::Shape(format!(
            "prediction {:?} and target {:?} differ",
            pred.dims(),
            target.dims()
        )));
    }
    let [b, c, h, w] = pred.dims();
    let weights = per_sample_coefficient(&pred, weights.iter().copied())?.reshape([b, 1]);
    let per_sample = pred
        .sub(target)
        .square()
        .reshape([b, c * h * w])
        .mean_dim(1);
    Ok(per_sample.mul(weights).mean())
}

/// Uniform training timesteps in `0..num_train_timesteps`, one per sample.
pub fn sample_timesteps(
    rng: &mut impl Rng,
    batch: usize,
    num_train_timesteps: usize,
) -> Vec<usize> {
    (0..batch)
        .map(|_| rng.random_range(0..num_train_timesteps))
        .collect()
}

/// Replaces each sample's context by the null (empty-prompt) context with probability `p`,
/// so one model learns both the conditional and unconditional predictions CFG needs.
///
/// `null_context` is `[1, L, D]` or `[B, L, D]`. Returns the new contexts and which samples
/// were dropped.
pub fn drop_text(
    context: Tensor<3>,
    null_context: &Tensor<3>,
    p: f32,
    rng: &mut impl Rng,
) -> Result<(Tensor<3>, Vec<bool>)> {
    if !(0.0..=1.0).contains(&p) {
        return Err(DiffusionError::config(
            "text_dropout",
            format!("probability {p} is outside [0, 1]"),
        ));
    }
    let [b, l, d] = context.dims();
    let [nb, nl, nd] = null_context.dims();
    if (nl, nd) != (l, d) || (nb != 1 && nb != b) {
        return Err(DiffusionError::Shape(format!(
            "null context {:?} does not fit contexts {:?}",
            null_context.dims(),
            context.dims()
        )));
    }
    let dropped: Vec<bool> = (0..b).map(|_| rng.random::<f32>() < p).collect();
    if !dropped.iter().any(|&x| x) {
        return Ok((context, dropped));
    }
    let rows = dropped
        .iter()
        .enumerate()
        .map(|(i, &drop)| {
            if drop {
                null_context
                    .clone()
                    .narrow(0, if nb == 1 { 0 } else { i }, 1)
            } else {
                context.clone().narrow(0, i, 1)
            }
        })
        .collect();
    Ok((Tensor::cat(rows, 0), dropped))
}
