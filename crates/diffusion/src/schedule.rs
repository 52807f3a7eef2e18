//! Noise schedules (betas, cumulative alphas) and the scheduler configuration.
//!
//! Everything here copies diffusers 0.42.1 bit for bit where it matters: betas are built with
//! torch's two-sided `linspace` in f32, and `alphas_cumprod` with torch's CPU `cumprod`
//! (see `/work/shared/reference/numerics.md`). Computing in f64 instead moves sigmas by ~1e-5.

use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use crate::timesteps::TimestepSpacing;

/// How the betas of the forward process are laid out (diffusers `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)`.
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end), T)^2`, the Stable Diffusion schedule.
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal, betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the network predicts (diffusers `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise.
    Epsilon,
    /// The velocity `sqrt(a) eps - sqrt(1-a) x0` (Salimans & Ho).
    VPrediction,
    /// The clean sample `x0`.
    Sample,
}

/// The fields of a diffusers `scheduler_config.json` that define the noise schedule and how
/// model outputs are interpreted. Unknown fields (`_class_name`, `skip_prk_steps`, ...) are
/// ignored; missing fields take the diffusers class defaults (DDIM/DDPM/DPM-Solver agree on all
/// of them except `timestep_spacing`, which is therefore optional).
///
/// Sampler-specific fields (`solver_order`, `variance_type`, ...) live in the sampler option
/// structs, which deserialise from the same JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Number of diffusion steps the model was trained with (`T`).
    pub num_train_timesteps: usize,
    /// First beta (for `scaled_linear`, its square root is interpolated).
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// Layout of the betas.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding `beta_schedule` when present.
    pub trained_betas: Option<Vec<f32>>,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// How inference timesteps are chosen; `None` means the sampler's diffusers default
    /// (`leading` for DDIM and DDPM, `linspace` for DPM-Solver), which is what diffusers does
    /// with a config that lacks the key (Stable Diffusion 1.x's does).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to `leading` timesteps (SD uses 1).
    pub steps_offset: usize,
    /// DDIM: use alpha_cumprod = 1 after the last step (else `alphas_cumprod[0]`).
    pub set_alpha_to_one: bool,
    /// DDIM/DDPM: clamp the predicted `x0` to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// Range of `clip_sample`.
    pub clip_sample_range: f32,
    /// Dynamic thresholding of the predicted `x0` (Imagen); takes precedence over clipping.
    pub thresholding: bool,
    /// Quantile of |x0| used by dynamic thresholding.
    pub dynamic_thresholding_ratio: f32,
    /// Upper bound of the dynamic threshold.
    pub sample_max_value: f32,
    /// Rescale betas to zero terminal SNR (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
}

impl Default for SchedulerConfig {
    /// The diffusers class defaults shared by `DDIMScheduler`, `DDPMScheduler` and
    /// `DPMSolverMultistepScheduler` (linear 1e-4..0.02, epsilon, clip_sample on).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: true,
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl SchedulerConfig {
    /// Stable Diffusion 1.x's `scheduler_config.json`: scaled_linear 0.00085..0.012,
    /// `steps_offset` 1, `set_alpha_to_one` false, no clipping, epsilon prediction.
    pub fn sd() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: false,
            ..Self::default()
        }
    }

    /// Parses a diffusers `scheduler_config.json` and validates it.
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(&python_json_to_json(json))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the fields for values the schedule cannot be built from.
    pub fn validate(&self) -> Result<()> {
        let t = self.num_train_timesteps;
        if t == 0 {
            return Err(DiffusionError::config(
                "num_train_timesteps",
                "must be at least 1",
            ));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != t {
                return Err(DiffusionError::config(
                    "trained_betas",
                    format!("has {} entries, num_train_timesteps is {t}", betas.len()),
                ));
            }
            if let Some(b) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
                return Err(DiffusionError::config(
                    "trained_betas",
                    format!("{b} is outside (0, 1)"),
                ));
            }
        } else if self.beta_schedule != BetaSchedule::SquaredcosCapV2 {
            for (field, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                if !(v > 0.0 && v < 1.0) {
                    return Err(DiffusionError::config(
                        field,
                        format!("{v} is outside (0, 1)"),
                    ));
                }
            }
        }
        if !(self.dynamic_thresholding_ratio > 0.0 && self.dynamic_thresholding_ratio <= 1.0) {
            return Err(DiffusionError::config(
                "dynamic_thresholding_ratio",
                format!("{} is outside (0, 1]", self.dynamic_thresholding_ratio),
            ));
        }
        if self.sample_max_value.is_nan() || self.sample_max_value < 1.0 {
            return Err(DiffusionError::config(
                "sample_max_value",
                format!(
                    "{} must be >= 1 (the threshold is clamped to [1, sample_max_value])",
                    self.sample_max_value
                ),
            ));
        }
        if self.clip_sample_range.is_nan() || self.clip_sample_range <= 0.0 {
            return Err(DiffusionError::config(
                "clip_sample_range",
                format!("{} must be positive", self.clip_sample_range),
            ));
        }
        Ok(())
    }
}

/// The discrete forward process: per-timestep betas and cumulative alphas, in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// `beta_t` for t in 0..T.
    pub betas: Vec<f32>,
    /// `alphabar_t = prod_{s<=t} (1 - beta_s)`.
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// Builds the schedule exactly as the diffusers schedulers' constructors do.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let t = config.num_train_timesteps;
        let mut betas = match &config.trained_betas {
            Some(b) => b.clone(),
            None => match config.beta_schedule {
                BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, t),
                BetaSchedule::ScaledLinear => {
                    torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), t)
                        .into_iter()
                        .map(|b| b * b)
                        .collect()
                }
                BetaSchedule::SquaredcosCapV2 => cosine_betas(t, 0.999),
            },
        };
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas_cumprod = torch_cumprod(betas.iter().map(|b| 1.0 - b));
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    /// Number of training timesteps `T`.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// True when the schedule has no timesteps (never for a validated config).
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// `alphabar_t`, or an error naming the timestep when it is out of range.
    pub fn alpha_cumprod(&self, t: i64) -> Result<f32> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.alphas_cumprod.get(i).copied())
            .ok_or_else(|| {
                DiffusionError::config(
                    "timestep",
                    format!("{t} is outside 0..{}", self.alphas_cumprod.len()),
                )
            })
    }
}

/// torch.linspace(start, end, n, dtype=float32) on CPU: the ends are rounded to f32, the step
/// is computed in f32, and the second half is measured back from `end` (two-sided). torch's
/// vectorised (AVX2/AVX-512) kernel forms `start + step * i` with a fused multiply-add, so each
/// value is rounded once; checked bit for bit against torch 2.15.
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// torch.cumprod on a CPU f32 tensor. torch accumulates in the CPU accumulation type of f32,
/// which is f64, and rounds each partial product to f32 (a plain f32 running product differs
/// in ~900 of SD's 1000 values).
pub fn torch_cumprod(values: impl IntoIterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .into_iter()
        .map(|v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers `betas_for_alpha_bar` with the cosine transform: computed in f64, stored as f32.
fn cosine_betas(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// diffusers `rescale_zero_terminal_snr`, in f32 like the torch original.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas_cumprod = torch_cumprod(betas.iter().map(|b| 1.0 - b));
    let mut sqrt_ab: Vec<f32> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let first = sqrt_ab[0];
    let last = sqrt_ab[sqrt_ab.len() - 1];
    // Shift so the last value is zero, then scale so the first one is unchanged.
    let scale = first / (first - last);
    for v in &mut sqrt_ab {
        *v -= last;
        *v *= scale;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    out.extend(ab.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// diffusers writes configs with Python's json module, which emits the non-standard tokens
/// `Infinity`, `-Infinity` and `NaN` (e.g. DPM-Solver's `lambda_min_clipped`). They become
/// `null`, which the config reads as "unset" (diffusers' default of -inf).
pub fn python_json_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .iter()
            .find(|t| rest.starts_with(**t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_tokens_become_null() {
        let text = r#"{"a": -Infinity, "b": "x -Infinity NaN", "c": [NaN, Infinity], "d": "q\\"}"#;
        assert_eq!(
            python_json_to_json(text),
            r#"{"a": null, "b": "x -Infinity NaN", "c": [null, null], "d": "q\\"}"#
        );
    }

    #[test]
    fn linspace_is_two_sided() {
        let v = torch_linspace_f32(0.1, 0.7, 7);
        assert_eq!(v[0], 0.1f32);
        assert_eq!(v[6], 0.7f32);
        assert_eq!(v.len(), 7);
    }

    #[test]
    fn sd_schedule_endpoints() {
        let s = NoiseSchedule::new(&SchedulerConfig::sd()).unwrap();
        assert_eq!(s.len(), 1000);
        assert!((s.betas[0] - 0.00085).abs() < 1e-9);
        assert!((s.betas[999] - 0.012).abs() < 1e-8);
        // Known value of SD's final alphabar.
        assert!((s.alphas_cumprod[999] - 0.004_660_095).abs() < 1e-8);
    }

    #[test]
    fn bad_config_names_the_field() {
        let mut c = SchedulerConfig::sd();
        c.beta_end = 1.5;
        let err = NoiseSchedule::new(&c).unwrap_err().to_string();
        assert!(err.contains("beta_end"), "{err}");
        let err = SchedulerConfig::from_json(r#"{"trained_betas": [0.1, 0.2]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trained_betas"), "{err}");
    }

    #[test]
    fn parses_sd_scheduler_config_json() {
        let json = r#"{
          "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
          "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
          "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
          "steps_offset": 1, "trained_betas": null, "clip_sample": false
        }"#;
        assert_eq!(
            SchedulerConfig::from_json(json).unwrap(),
            SchedulerConfig::sd()
        );
        let v = SchedulerConfig::from_json(
            r#"{"prediction_type": "v_prediction", "timestep_spacing": "trailing"}"#,
        )
        .unwrap();
        assert_eq!(v.prediction_type, PredictionType::VPrediction);
        assert_eq!(v.timestep_spacing, Some(TimestepSpacing::Trailing));
    }
}
