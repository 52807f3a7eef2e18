//! Ancestral DDPM sampling (Ho et al. 2020), as diffusers' `DDPMScheduler.step`.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use crate::noise::NoiseSource;
use crate::sampler::Sampler;
use crate::schedule::{NoiseSchedule, SchedulerConfig};
use crate::threshold::process_x0;
use crate::timesteps::{TimestepSpacing, ddim_timesteps};

/// Variance of the reverse step (diffusers `variance_type`; the learned kinds need a model
/// with a variance head and are not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DdpmVariance {
    /// The posterior variance `(1 - abar_prev) / (1 - abar_t) * beta'`, floored at 1e-20.
    FixedSmall,
    /// Same variance, its std computed as `exp(0.5 * ln var)`.
    FixedSmallLog,
    /// `beta' = 1 - abar_t / abar_prev`.
    FixedLarge,
}

/// DDPM options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdpmOptions {
    /// Which reverse-step variance to use.
    pub variance_type: DdpmVariance,
}

impl Default for DdpmOptions {
    fn default() -> Self {
        Self {
            variance_type: DdpmVariance::FixedSmall,
        }
    }
}

/// DDPM over a fixed set of inference timesteps (strided DDPM when fewer than `T`).
#[derive(Debug, Clone)]
pub struct DdpmSampler {
    config: SchedulerConfig,
    options: DdpmOptions,
    schedule: NoiseSchedule,
    timesteps: Vec<i64>,
}

impl DdpmSampler {
    /// DDPM with `num_steps` steps; spacing defaults to `leading`.
    pub fn new(config: &SchedulerConfig, options: DdpmOptions, num_steps: usize) -> Result<Self> {
        let schedule = NoiseSchedule::new(config)?;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        let timesteps = ddim_timesteps(
            spacing,
            config.num_train_timesteps,
            num_steps,
            config.steps_offset,
        )?;
        Ok(Self {
            config: config.clone(),
            options,
            schedule,
            timesteps,
        })
    }

    /// One DDPM update from the step at `index`; returns `(x_prev, predicted x0)`.
    /// `noise` is required when the timestep is > 0 (diffusers adds noise exactly then).
    pub fn step_at(
        &self,
        index: usize,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        let t = *self.timesteps.get(index).ok_or_else(|| {
            DiffusionError::config("index", format!("step {index} is past the last step"))
        })?;
        // The previous timestep is the next one in the list; after the last step abar = 1.
        let alpha_prod_t = self.schedule.alpha_cumprod(t)?;
        let alpha_prod_t_prev = match self.timesteps.get(index + 1) {
            Some(&prev) => self.schedule.alpha_cumprod(prev)?,
            None => 1.0,
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        let x0 = self
            .config
            .prediction_type
            .x0(sample.clone(), model_output, alpha_prod_t);
        let x0 = process_x0(&self.config, x0, true);

        let x0_coeff = (alpha_prod_t_prev.sqrt() * current_beta_t) / beta_prod_t;
        let sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let mut prev = x0
            .clone()
            .mul_scalar(x0_coeff)
            .add(sample.mul_scalar(sample_coeff));

        if t > 0 {
            let noise = noise.ok_or_else(|| {
                DiffusionError::NoiseExhausted(format!("DDPM step at t = {t} needs noise"))
            })?;
            // diffusers' `_get_variance` recomputes beta' the same way.
            let variance =
                ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
            let std = match self.options.variance_type {
                DdpmVariance::FixedSmall => variance.sqrt(),
                DdpmVariance::FixedSmallLog => (0.5 * variance.ln()).exp(),
                DdpmVariance::FixedLarge => current_beta_t.sqrt(),
            };
            prev = prev.add(noise.mul_scalar(std));
        }
        Ok((prev, x0))
    }
}

impl Sampler for DdpmSampler {
    fn name(&self) -> &'static str {
        "ddpm"
    }

    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn reset(&mut self) {}

    fn step(
        &mut self,
        index: usize,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor<4>> {
        let t = self.timesteps.get(index).copied().unwrap_or(0);
        let z = if t > 0 {
            Some(noise.noise(sample.dims(), &sample.device())?)
        } else {
            None
        };
        Ok(self.step_at(index, model_output, sample, z)?.0)
    }
}
