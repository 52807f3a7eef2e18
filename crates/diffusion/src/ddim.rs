//! DDIM (Song et al. 2021), as diffusers' `DDIMScheduler.step`.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use crate::noise::NoiseSource;
use crate::sampler::Sampler;
use crate::schedule::{NoiseSchedule, SchedulerConfig};
use crate::threshold::process_x0;
use crate::timesteps::{TimestepSpacing, ddim_timesteps};

/// DDIM step options (arguments of diffusers' `step`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdimOptions {
    /// Stochasticity: 0 is deterministic DDIM, 1 is DDPM-like ancestral noise.
    pub eta: f32,
    /// Recompute eps from the clipped/thresholded x0.
    pub use_clipped_model_output: bool,
}

impl Default for DdimOptions {
    fn default() -> Self {
        Self {
            eta: 0.0,
            use_clipped_model_output: false,
        }
    }
}

/// DDIM over a fixed set of inference timesteps.
#[derive(Debug, Clone)]
pub struct DdimSampler {
    config: SchedulerConfig,
    options: DdimOptions,
    schedule: NoiseSchedule,
    timesteps: Vec<i64>,
    /// `T // N`: diffusers' previous timestep is `t - T // N` for every spacing
    /// (wrong for trailing/linspace, diffusers#12633, but that is what we match).
    step_ratio: i64,
    final_alpha_cumprod: f32,
}

impl DdimSampler {
    /// DDIM with `num_steps` steps; spacing defaults to `leading`.
    pub fn new(config: &SchedulerConfig, options: DdimOptions, num_steps: usize) -> Result<Self> {
        if options.eta.is_nan() || options.eta < 0.0 {
            return Err(DiffusionError::config(
                "eta",
                format!("{} must be >= 0", options.eta),
            ));
        }
        let schedule = NoiseSchedule::new(config)?;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        let t = config.num_train_timesteps;
        let timesteps = ddim_timesteps(spacing, t, num_steps, config.steps_offset)?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            config: config.clone(),
            options,
            schedule,
            timesteps,
            step_ratio: (t / num_steps) as i64,
            final_alpha_cumprod,
        })
    }

    /// One DDIM update from timestep `t`; returns `(x_prev, predicted x0)`.
    /// `noise` is required when `eta > 0` and ignored otherwise.
    pub fn step_at(
        &self,
        t: i64,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        let prev_t = t - self.step_ratio;
        let alpha_prod_t = self.schedule.alpha_cumprod(t)?;
        let alpha_prod_t_prev = if prev_t >= 0 {
            self.schedule.alpha_cumprod(prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;

        let (x0, eps) =
            self.config
                .prediction_type
                .x0_and_eps(sample.clone(), model_output, alpha_prod_t);
        let x0 = process_x0(&self.config, x0, true);

        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.options.eta * variance.sqrt();

        let eps = if self.options.use_clipped_model_output {
            sample
                .sub(x0.clone().mul_scalar(alpha_prod_t.sqrt()))
                .div_scalar(beta_prod_t.sqrt())
        } else {
            eps
        };
        let direction = eps.mul_scalar((1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt());
        let mut prev = x0
            .clone()
            .mul_scalar(alpha_prod_t_prev.sqrt())
            .add(direction);
        if self.options.eta > 0.0 {
            let noise = noise.ok_or_else(|| {
                DiffusionError::NoiseExhausted("DDIM with eta > 0 needs noise".to_string())
            })?;
            prev = prev.add(noise.mul_scalar(std_dev_t));
        }
        Ok((prev, x0))
    }
}

impl Sampler for DdimSampler {
    fn name(&self) -> &'static str {
        "ddim"
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
        let t = *self.timesteps.get(index).ok_or_else(|| {
            DiffusionError::config("index", format!("step {index} is past the last step"))
        })?;
        // diffusers draws noise on every step when eta > 0, including the last.
        let z = if self.options.eta > 0.0 {
            Some(noise.noise(sample.dims(), &sample.device())?)
        } else {
            None
        };
        Ok(self.step_at(t, model_output, sample, z)?.0)
    }
}
