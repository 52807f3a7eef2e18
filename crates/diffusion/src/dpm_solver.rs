//! Multistep DPM-Solver++ (Lu et al. 2022), the paper's higher-order sampler, as diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type` `dpmsolver++` or `sde-dpmsolver++`.
//!
//! Coefficients are computed in f32 scalars in diffusers' order; `sigma = sqrt((1-a)/a)`,
//! `alpha_t = 1/sqrt(sigma^2+1)`, `sigma_t = sigma alpha_t`, `lambda = ln alpha_t - ln sigma_t`.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use crate::noise::NoiseSource;
use crate::sampler::Sampler;
use crate::schedule::{NoiseSchedule, PredictionType, SchedulerConfig};
use crate::threshold::process_x0;
use crate::timesteps::{TimestepSpacing, dpm_solver_timesteps};

/// The ODE or SDE form of the solver (diffusers `algorithm_type`; the deprecated
/// noise-prediction forms `dpmsolver` / `sde-dpmsolver` are not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DpmAlgorithm {
    /// Deterministic DPM-Solver++ (data prediction).
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    /// Stochastic DPM-Solver++ (SDE form); draws noise every step.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
}

/// How the second-order term is formed (diffusers `solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpmSolverType {
    /// The paper's multistep midpoint rule (diffusers default).
    Midpoint,
    /// Heun-like rule.
    Heun,
}

/// The noise level after the last step (diffusers `final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    /// End at sigma 0 (the last step returns the x0 prediction; forces a first-order final step).
    Zero,
    /// End at the smallest training sigma.
    SigmaMin,
}

/// DPM-Solver options, deserialisable from a `DPMSolverMultistepScheduler` config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpmSolverOptions {
    /// 1, 2 (2M, the default) or 3 (3M).
    pub solver_order: usize,
    /// ODE or SDE form.
    pub algorithm_type: DpmAlgorithm,
    /// Midpoint or Heun second-order term.
    pub solver_type: DpmSolverType,
    /// Use lower orders on the last steps when there are fewer than 15 (stabilises few-step
    /// sampling, k-diffusion#43).
    pub lower_order_final: bool,
    /// Always take the last step with first order.
    pub euler_at_final: bool,
    /// Final noise level.
    pub final_sigmas_type: FinalSigmas,
    /// Drop timesteps whose log-SNR lambda is below this (None = keep all, diffusers' -inf).
    pub lambda_min_clipped: Option<f32>,
    /// Karras sigmas are not implemented; true is rejected rather than silently ignored.
    pub use_karras_sigmas: bool,
    /// Not implemented; true is rejected.
    pub use_exponential_sigmas: bool,
    /// Not implemented; true is rejected.
    pub use_beta_sigmas: bool,
    /// Not implemented; true is rejected.
    pub use_lu_lambdas: bool,
    /// Not implemented; true is rejected.
    pub use_flow_sigmas: bool,
}

impl Default for DpmSolverOptions {
    /// diffusers' class defaults: DPM-Solver++ 2M, midpoint, lower_order_final, final sigma 0.
    fn default() -> Self {
        Self {
            solver_order: 2,
            algorithm_type: DpmAlgorithm::DpmSolverPlusPlus,
            solver_type: DpmSolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            final_sigmas_type: FinalSigmas::Zero,
            lambda_min_clipped: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
        }
    }
}

impl DpmSolverOptions {
    /// DPM-Solver++ 2M (the diffusers default).
    pub fn dpm_pp_2m() -> Self {
        Self::default()
    }

    /// DPM-Solver++ 3M.
    pub fn dpm_pp_3m() -> Self {
        Self {
            solver_order: 3,
            ..Self::default()
        }
    }

    /// SDE-DPM-Solver++ 2M.
    pub fn dpm_pp_2m_sde() -> Self {
        Self {
            algorithm_type: DpmAlgorithm::SdeDpmSolverPlusPlus,
            ..Self::default()
        }
    }

    /// Parses a diffusers scheduler config; Python's `-Infinity` (how diffusers writes the
    /// default `lambda_min_clipped`) is read as "no clipping".
    pub fn from_json(json: &str) -> Result<Self> {
        let options: Self = serde_json::from_str(&crate::schedule::python_json_to_json(json))?;
        options.validate()?;
        Ok(options)
    }

    /// Rejects unsupported or out-of-range settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=3).contains(&self.solver_order) {
            return Err(DiffusionError::config(
                "solver_order",
                format!("{} must be 1, 2 or 3", self.solver_order),
            ));
        }
        for (field, on) in [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("use_lu_lambdas", self.use_lu_lambdas),
            ("use_flow_sigmas", self.use_flow_sigmas),
        ] {
            if on {
                return Err(DiffusionError::config(field, "is not supported"));
            }
        }
        if self.lambda_min_clipped.is_some_and(f32::is_nan) {
            return Err(DiffusionError::config("lambda_min_clipped", "is NaN"));
        }
        Ok(())
    }
}

/// Multistep DPM-Solver++ over fixed inference timesteps.
#[derive(Debug, Clone)]
pub struct DpmSolverSampler {
    config: SchedulerConfig,
    options: DpmSolverOptions,
    timesteps: Vec<i64>,
    /// sigma at each timestep, then the final sigma (`len = steps + 1`).
    sigmas: Vec<f32>,
    /// The last `solver_order` x0 predictions, oldest first.
    history: Vec<Tensor<4>>,
    lower_order_nums: usize,
    /// The step index the next `step` call must have.
    next_index: usize,
}

impl DpmSolverSampler {
    /// DPM-Solver++ with `num_steps` steps; spacing defaults to `linspace`.
    pub fn new(
        config: &SchedulerConfig,
        options: DpmSolverOptions,
        num_steps: usize,
    ) -> Result<Self> {
        options.validate()?;
        let mut alphas_cumprod = NoiseSchedule::new(config)?.alphas_cumprod;
        if config.rescale_betas_zero_snr {
            // diffusers keeps the terminal sigma finite.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let t = config.num_train_timesteps;
        let last_timestep = match options.lambda_min_clipped {
            None => t,
            Some(min) => {
                // torch.searchsorted(flip(lambda_t), min): count of ascending lambdas below min.
                let below = alphas_cumprod
                    .iter()
                    .filter(|&&a| a.sqrt().ln() - (1.0 - a).sqrt().ln() < min)
                    .count();
                t - below
            }
        };
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let timesteps =
            dpm_solver_timesteps(spacing, t, last_timestep, num_steps, config.steps_offset)?;
        let sigma_of = |a: f32| ((1.0 - a) / a).sqrt();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&ts| sigma_of(alphas_cumprod[ts as usize]))
            .collect();
        sigmas.push(match options.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => sigma_of(alphas_cumprod[0]),
        });
        Ok(Self {
            config: config.clone(),
            options,
            timesteps,
            sigmas,
            history: Vec::new(),
            lower_order_nums: 0,
            next_index: 0,
        })
    }

    /// The noise levels (`steps + 1` values, the last one being the final sigma).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// diffusers `convert_model_output` for the ++ algorithms: the x0 prediction.
    fn convert_model_output(
        &self,
        index: usize,
        output: Tensor<4>,
        sample: Tensor<4>,
    ) -> Tensor<4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index]);
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => sample.sub(output.mul_scalar(sigma_t)).div_scalar(alpha_t),
            PredictionType::Sample => output,
            PredictionType::VPrediction => {
                sample.mul_scalar(alpha_t).sub(output.mul_scalar(sigma_t))
            }
        };
        process_x0(&self.config, x0, false)
    }

    fn first_order(&self, index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let m0 = self.history[self.history.len() - 1].clone();
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[index]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        match noise {
            None => sample
                .mul_scalar(sigma_t / sigma_s)
                .sub(m0.mul_scalar(alpha_t * ((-h).exp() - 1.0))),
            Some(z) => {
                let e2 = (-2.0 * h).exp();
                sample
                    .mul_scalar(sigma_t / sigma_s * (-h).exp())
                    .add(m0.mul_scalar(alpha_t * (1.0 - e2)))
                    .add(z.mul_scalar(sigma_t * (1.0 - e2).sqrt()))
            }
        }
    }

    fn second_order(&self, index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let n = self.history.len();
        let (m0, m1) = (self.history[n - 1].clone(), self.history[n - 2].clone());
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[index]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[index - 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d1 = m0.clone().sub(m1).mul_scalar(1.0 / r0);
        let d0 = m0;
        let midpoint = self.options.solver_type == DpmSolverType::Midpoint;
        match noise {
            None => {
                let c = alpha_t * ((-h).exp() - 1.0);
                let x = sample.mul_scalar(sigma_t / sigma_s0).sub(d0.mul_scalar(c));
                if midpoint {
                    x.sub(d1.mul_scalar(0.5 * c))
                } else {
                    x.add(d1.mul_scalar(alpha_t * (((-h).exp() - 1.0) / h + 1.0)))
                }
            }
            Some(z) => {
                let e2 = (-2.0 * h).exp();
                let c = alpha_t * (1.0 - e2);
                let c1 = if midpoint {
                    0.5 * c
                } else {
                    alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0)
                };
                sample
                    .mul_scalar(sigma_t / sigma_s0 * (-h).exp())
                    .add(d0.mul_scalar(c))
                    .add(d1.mul_scalar(c1))
                    .add(z.mul_scalar(sigma_t * (1.0 - e2).sqrt()))
            }
        }
    }

    fn third_order(&self, index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let n = self.history.len();
        let m0 = self.history[n - 1].clone();
        let m1 = self.history[n - 2].clone();
        let m2 = self.history[n - 3].clone();
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[index]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[index - 1]);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[index - 2]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let lambda_s2 = lambda(alpha_s2, sigma_s2);
        let (h, h_0, h_1) = (
            lambda_t - lambda_s0,
            lambda_s0 - lambda_s1,
            lambda_s1 - lambda_s2,
        );
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = m0.clone().sub(m1.clone()).mul_scalar(1.0 / r0);
        let d1_1 = m1.sub(m2).mul_scalar(1.0 / r1);
        let diff = d1_0.clone().sub(d1_1);
        let d1 = d1_0.add(diff.clone().mul_scalar(r0 / (r0 + r1)));
        let d2 = diff.mul_scalar(1.0 / (r0 + r1));
        let d0 = m0;
        match noise {
            None => {
                let em = (-h).exp() - 1.0;
                sample
                    .mul_scalar(sigma_t / sigma_s0)
                    .sub(d0.mul_scalar(alpha_t * em))
                    .add(d1.mul_scalar(alpha_t * (em / h + 1.0)))
                    .sub(d2.mul_scalar(alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5)))
            }
            Some(z) => {
                let e2 = (-2.0 * h).exp();
                let h2 = 2.0 * h;
                sample
                    .mul_scalar(sigma_t / sigma_s0 * (-h).exp())
                    .add(d0.mul_scalar(alpha_t * (1.0 - e2)))
                    .add(d1.mul_scalar(alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0)))
                    .add(d2.mul_scalar(alpha_t * ((1.0 - e2 - 2.0 * h) / (h2 * h2) - 0.5)))
                    .add(z.mul_scalar(sigma_t * (1.0 - e2).sqrt()))
            }
        }
    }
}

/// diffusers `_sigma_to_alpha_sigma_t`: `alpha_t = 1/sqrt(sigma^2 + 1)`, `sigma_t = sigma alpha_t`.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha_t, sigma * alpha_t)
}

/// Half log-SNR. At sigma 0 this is +inf, which the update formulas turn into `x = x0`.
fn lambda(alpha_t: f32, sigma_t: f32) -> f32 {
    alpha_t.ln() - sigma_t.ln()
}

impl Sampler for DpmSolverSampler {
    fn name(&self) -> &'static str {
        "dpm_solver"
    }

    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn reset(&mut self) {
        self.history.clear();
        self.lower_order_nums = 0;
        self.next_index = 0;
    }

    fn step(
        &mut self,
        index: usize,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor<4>> {
        let steps = self.timesteps.len();
        if index >= steps {
            return Err(DiffusionError::config(
                "index",
                format!("step {index} is past the last step"),
            ));
        }
        if index != self.next_index {
            return Err(DiffusionError::config(
                "index",
                format!(
                    "DPM-Solver is multistep: expected step {} (steps run in order after reset())",
                    self.next_index
                ),
            ));
        }
        let o = &self.options;
        let lower_order_final = index == steps - 1
            && (o.euler_at_final
                || (o.lower_order_final && steps < 15)
                || o.final_sigmas_type == FinalSigmas::Zero);
        let lower_order_second = index + 2 == steps && o.lower_order_final && steps < 15;

        let x0 = self.convert_model_output(index, model_output, sample.clone());
        if self.history.len() == o.solver_order {
            self.history.remove(0);
        }
        self.history.push(x0);

        let z = match o.algorithm_type {
            DpmAlgorithm::SdeDpmSolverPlusPlus => {
                Some(noise.noise(sample.dims(), &sample.device())?)
            }
            DpmAlgorithm::DpmSolverPlusPlus => None,
        };
        let order = o.solver_order;
        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(index, sample, z)
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(index, sample, z)
        } else {
            self.third_order(index, sample, z)
        };
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.next_index += 1;
        Ok(prev)
    }
}
