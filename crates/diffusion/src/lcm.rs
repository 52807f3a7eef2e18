//! Latent Consistency Model sampling (Luo et al. 2023), as diffusers' `LCMScheduler` (>= 0.24)
//! and the guidance embedding of its `LatentConsistencyModelPipeline`.
//!
//! A distilled student maps `z_t` straight to a clean estimate (`denoised`, the boundary-scaled
//! x0); each step but the last re-noises that estimate to the next timestep with FRESH noise.
//! Guidance is not applied here: the student takes the guidance scale as an input
//! ([`guidance_embedding`], passed as the UNet's `timestep_cond`), so a step costs one network
//! evaluation and no unconditional half.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use crate::noise::NoiseSource;
use crate::sampler::Sampler;
use crate::schedule::{NoiseSchedule, SchedulerConfig};
use crate::threshold::process_x0;

/// `sigma_data` of the boundary scalings (diffusers hard-codes it).
const SIGMA_DATA: f64 = 0.5;

/// LCM settings beyond the noise schedule (fields of `LCMScheduler`'s config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LcmOptions {
    /// Length of the distillation schedule the inference timesteps are taken from (skip
    /// `k = T / original_inference_steps`).
    pub original_inference_steps: usize,
    /// Multiplies the timestep inside the boundary scalings `c_skip`, `c_out`.
    pub timestep_scaling: f64,
}

impl Default for LcmOptions {
    /// diffusers' defaults: 50 original steps, timestep scaling 10.
    fn default() -> Self {
        Self {
            original_inference_steps: 50,
            timestep_scaling: 10.0,
        }
    }
}

impl LcmOptions {
    /// Reads the LCM fields of a diffusers scheduler config (others are ignored).
    pub fn from_json(json: &str) -> Result<Self> {
        let options: Self = serde_json::from_str(&crate::schedule::python_json_to_json(json))?;
        options.validate()?;
        Ok(options)
    }

    /// Rejects values diffusers would divide by zero with or that make the scalings meaningless.
    pub fn validate(&self) -> Result<()> {
        if self.original_inference_steps == 0 {
            return Err(DiffusionError::config(
                "original_inference_steps",
                "must be at least 1",
            ));
        }
        if !(self.timestep_scaling.is_finite() && self.timestep_scaling > 0.0) {
            return Err(DiffusionError::config(
                "timestep_scaling",
                format!("{} must be a positive number", self.timestep_scaling),
            ));
        }
        Ok(())
    }
}

/// `LCMScheduler.set_timesteps(num_steps)`: the distillation schedule `[k-1, 2k-1, ..]` of
/// `original_steps` entries (`k = T // original_steps`), reversed, sampled at
/// `floor(linspace(0, original_steps, num_steps, endpoint=False))`.
pub fn lcm_timesteps(
    num_train_timesteps: usize,
    original_steps: usize,
    num_steps: usize,
) -> Result<Vec<i64>> {
    if original_steps == 0 || original_steps > num_train_timesteps {
        return Err(DiffusionError::config(
            "original_inference_steps",
            format!("{original_steps} must be in 1..={num_train_timesteps} (num_train_timesteps)"),
        ));
    }
    if num_steps == 0 || num_steps > original_steps {
        return Err(DiffusionError::config(
            "num_inference_steps",
            format!(
                "{num_steps}: LCM takes 1..={original_steps} steps (a subset of its \
                 original_inference_steps schedule)"
            ),
        ));
    }
    let k = (num_train_timesteps / original_steps) as i64;
    let n = original_steps as i64;
    // numpy's linspace without endpoint is `i * (stop / num)` in f64; floor as numpy does.
    let spacing = original_steps as f64 / num_steps as f64;
    Ok((0..num_steps)
        .map(|i| {
            let index = (i as f64 * spacing).floor() as i64;
            (n - index) * k - 1
        })
        .collect())
}

/// `(c_skip, c_out)` at timestep `t` (diffusers' `get_scalings_for_boundary_condition_discrete`,
/// in f64 like its Python floats, then rounded to f32 as torch does when scaling a tensor).
pub fn boundary_scalings(t: i64, timestep_scaling: f64) -> (f32, f32) {
    let scaled = t as f64 * timestep_scaling;
    let denominator = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
    let c_skip = SIGMA_DATA * SIGMA_DATA / denominator;
    let c_out = scaled / denominator.sqrt();
    (c_skip as f32, c_out as f32)
}

/// The guidance embedding of `LatentConsistencyModelPipeline.get_guidance_scale_embedding` for
/// guidance scale `guidance_scale` (the student is told `w = scale - 1`), `dim` wide: with
/// `w' = 1000 w` and `half = dim / 2`, `[sin(w' f_j), cos(w' f_j)]` over
/// `f_j = exp(-j ln(10000) / (half - 1))`, a zero appended when `dim` is odd.
///
/// Computed in f32 in torch's order, with exp, sin and cos evaluated in f64 and rounded. That
/// equals torch up to an ulp wherever its vectorised f32 exp is correctly rounded (all 8
/// frequencies of dim 16; for dim 256 torch is an ulp off at one frequency, which moves that
/// entry by up to 5e-4 at w' = 7000).
pub fn guidance_embedding(guidance_scale: f64, dim: usize) -> Result<Vec<f32>> {
    if dim < 4 {
        return Err(DiffusionError::config(
            "time_cond_proj_dim",
            format!(
                "{dim}: the guidance embedding needs at least 4 entries (2 or 3 give NaN in diffusers)"
            ),
        ));
    }
    let w = (guidance_scale - 1.0) as f32 * 1000.0;
    let half = dim / 2;
    let decay = 10000f32.ln() / (half - 1) as f32;
    let args: Vec<f32> = (0..half)
        .map(|j| w * ((j as f32 * -decay) as f64).exp() as f32)
        .collect();
    let mut embedding: Vec<f32> = args.iter().map(|&a| (a as f64).sin() as f32).collect();
    embedding.extend(args.iter().map(|&a| (a as f64).cos() as f32));
    embedding.resize(dim, 0.0);
    Ok(embedding)
}

/// LCM multistep sampling over a fixed set of timesteps.
#[derive(Debug, Clone)]
pub struct LcmSampler {
    config: SchedulerConfig,
    options: LcmOptions,
    schedule: NoiseSchedule,
    timesteps: Vec<i64>,
}

impl LcmSampler {
    /// LCM with `num_steps` steps (1..=`original_inference_steps`). `timestep_spacing` and
    /// `steps_offset` of the config are ignored, as `LCMScheduler` ignores them.
    pub fn new(config: &SchedulerConfig, options: LcmOptions, num_steps: usize) -> Result<Self> {
        options.validate()?;
        let schedule = NoiseSchedule::new(config)?;
        let timesteps = lcm_timesteps(
            config.num_train_timesteps,
            options.original_inference_steps,
            num_steps,
        )?;
        Ok(Self {
            config: config.clone(),
            options,
            schedule,
            timesteps,
        })
    }

    /// The `denoised` estimate at step `index` (boundary-scaled x0), as `LCMScheduler.step`.
    pub fn denoised(
        &self,
        index: usize,
        model_output: Tensor<4>,
        sample: Tensor<4>,
    ) -> Result<Tensor<4>> {
        let t = self.timestep(index)?;
        let alpha_prod = self.schedule.alpha_cumprod(t)?;
        let (c_skip, c_out) = boundary_scalings(t, self.options.timestep_scaling);
        let x0 = self
            .config
            .prediction_type
            .x0(sample.clone(), model_output, alpha_prod);
        let x0 = process_x0(&self.config, x0, true);
        Ok(x0.mul_scalar(c_out).add(sample.mul_scalar(c_skip)))
    }

    /// `denoised` re-noised to the timestep of step `index + 1` with `noise`.
    pub fn renoise(
        &self,
        index: usize,
        denoised: Tensor<4>,
        noise: Tensor<4>,
    ) -> Result<Tensor<4>> {
        let alpha_prev = self.schedule.alpha_cumprod(self.timestep(index + 1)?)?;
        Ok(denoised
            .mul_scalar(alpha_prev.sqrt())
            .add(noise.mul_scalar((1.0 - alpha_prev).sqrt())))
    }

    fn timestep(&self, index: usize) -> Result<i64> {
        self.timesteps.get(index).copied().ok_or_else(|| {
            DiffusionError::config("index", format!("step {index} is past the last step"))
        })
    }
}

impl Sampler for LcmSampler {
    fn name(&self) -> &'static str {
        "lcm"
    }

    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn reset(&mut self) {}

    /// The last step returns `denoised` itself and draws no noise (diffusers' output).
    fn step(
        &mut self,
        index: usize,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor<4>> {
        let denoised = self.denoised(index, model_output, sample)?;
        if index + 1 == self.timesteps.len() {
            return Ok(denoised);
        }
        let z = noise.noise(denoised.dims(), &denoised.device())?;
        self.renoise(index, denoised, z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_follow_the_formula() {
        assert_eq!(lcm_timesteps(1000, 50, 4).unwrap(), [999, 759, 499, 259]);
        assert_eq!(lcm_timesteps(1000, 50, 1).unwrap(), [999]);
        assert_eq!(lcm_timesteps(1000, 50, 2).unwrap(), [999, 499]);
        for n in 1..=50 {
            let origin: Vec<i64> = (1..=50).rev().map(|i| i * 20 - 1).collect();
            let want: Vec<i64> = (0..n)
                .map(|i| origin[(i as f64 * (50.0 / n as f64)).floor() as usize])
                .collect();
            assert_eq!(lcm_timesteps(1000, 50, n).unwrap(), want, "{n} steps");
        }
        assert_eq!(lcm_timesteps(1000, 50, 50).unwrap().last(), Some(&19));
    }

    #[test]
    fn bad_step_counts_name_the_field() {
        for (original, n, field) in [
            (50, 0, "num_inference_steps"),
            (50, 51, "num_inference_steps"),
            (0, 4, "original_inference_steps"),
            (1001, 4, "original_inference_steps"),
        ] {
            match lcm_timesteps(1000, original, n) {
                Err(DiffusionError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("({original}, {n}): {other:?}"),
            }
        }
    }

    #[test]
    fn boundary_scalings_are_the_consistency_parameterisation() {
        let (skip, out) = boundary_scalings(0, 10.0);
        assert_eq!((skip, out), (1.0, 0.0));
        for t in [1i64, 19, 259, 999] {
            let s = 10.0 * t as f64;
            let (skip, out) = boundary_scalings(t, 10.0);
            assert_eq!(skip, (0.25 / (s * s + 0.25)) as f32);
            assert_eq!(out, (s / (s * s + 0.25).sqrt()) as f32);
            // c_skip = sd^2 / (s^2 + sd^2) and c_out^2 = s^2 / (s^2 + sd^2) sum to 1.
            assert!((skip as f64 + (out as f64).powi(2) - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn guidance_embedding_layout() {
        let e = guidance_embedding(1.0, 16).unwrap();
        // w = 0: sines 0, cosines 1.
        assert!(e[..8].iter().all(|&v| v == 0.0) && e[8..].iter().all(|&v| v == 1.0));
        let odd = guidance_embedding(8.0, 15).unwrap();
        assert_eq!(odd.len(), 15);
        assert_eq!(odd[14], 0.0);
        assert_eq!(odd[0], 7000f32.sin());
        assert_ne!(guidance_embedding(8.0, 16).unwrap(), e);
        assert!(guidance_embedding(8.0, 3).is_err());
    }

    #[test]
    fn options_read_from_a_scheduler_config() {
        let o = LcmOptions::from_json(
            r#"{"_class_name": "LCMScheduler", "original_inference_steps": 25, "timestep_scaling": 5.0, "trained_betas": null}"#,
        )
        .unwrap();
        assert_eq!((o.original_inference_steps, o.timestep_scaling), (25, 5.0));
        assert_eq!(LcmOptions::from_json("{}").unwrap(), LcmOptions::default());
        let err = LcmOptions::from_json(r#"{"timestep_scaling": 0}"#).unwrap_err();
        assert!(err.to_string().contains("timestep_scaling"), "{err}");
    }
}
