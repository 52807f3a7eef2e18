//! A training run's configuration (TOML). Unknown keys are errors, so a typo never silently
//! falls back to a default.

use serde::{Deserialize, Serialize};

use ldmscale_model::UNetConfig;

use crate::ema::EmaConfig;
use crate::error::TrainError;
use crate::optimizer::{AdamWConfig, LrSchedule};

/// Which layout a width is scaled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// The paper's layout: widths [c, 2c, 4c, 4c], attention at three levels, 8 heads.
    Paper,
    /// The CPU layout: widths [c, 2c, 2c], attention at two levels (`UNetConfig::small`).
    Small,
}

/// Micro-batches (and accumulation counts) above this are refused: the paper's batch is 2048,
/// and a larger number would only stall allocating it.
pub const MAX_BATCH: usize = 65_536;

/// The denoiser to train: a family member of a given base width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Layout.
    pub family: Family,
    /// Base width (the paper's "filters").
    pub width: usize,
    /// Attention heads at every level.
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// GroupNorm groups (32 in the paper; smaller for tiny CPU models).
    #[serde(default = "default_groups")]
    pub norm_groups: usize,
}

fn default_heads() -> usize {
    8
}
fn default_groups() -> usize {
    32
}

impl ModelConfig {
    /// The UNet for latents of `latent_channels` x `latent_size`^2 and `context_dim`-wide text.
    pub fn unet(
        &self,
        latent_channels: usize,
        latent_size: usize,
        context_dim: usize,
    ) -> UNetConfig {
        let mut c = match self.family {
            Family::Paper => {
                let mut c = UNetConfig::paper(self.width);
                c.cross_attention_dim = ldmscale_model::unet::PerLevel::All(context_dim);
                c
            }
            Family::Small => UNetConfig::small(self.width, context_dim, self.heads),
        };
        c.attention_head_dim = ldmscale_model::unet::PerLevel::All(self.heads);
        c.norm_num_groups = self.norm_groups;
        c.in_channels = latent_channels;
        c.out_channels = latent_channels;
        c.sample_size = Some(latent_size);
        c
    }

    /// Checks the width against the group count and heads, naming the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.width == 0 || self.norm_groups == 0 || !self.width.is_multiple_of(self.norm_groups)
        {
            return Err(TrainError::config(
                "model.width",
                self.width,
                format!(
                    "must be a positive multiple of model.norm_groups ({})",
                    self.norm_groups
                ),
            ));
        }
        if self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return Err(TrainError::config(
                "model.heads",
                self.heads,
                format!("must divide model.width ({})", self.width),
            ));
        }
        // The built UNet's own limits: a width beyond them would panic when the model is made.
        if let Err(e) = self.unet(4, 8, 64).validate() {
            return Err(TrainError::config("model.width", self.width, e));
        }
        Ok(())
    }
}

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The added noise (SD 1.x).
    Epsilon,
    /// The velocity (SD 2.x 768).
    VPrediction,
}

/// A whole training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The denoiser.
    pub model: ModelConfig,
    /// Optimizer steps.
    pub steps: u64,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Peak learning rate (the paper: 1e-4).
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Linear warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// After warmup.
    #[serde(default = "constant")]
    pub lr_schedule: LrSchedule,
    /// AdamW settings.
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Exponential moving average of the weights (saved beside them).
    #[serde(default)]
    pub ema: Option<EmaConfig>,
    /// Probability of replacing a caption by the null caption (for classifier-free guidance).
    #[serde(default = "default_dropout")]
    pub text_dropout: f64,
    /// What the network predicts.
    #[serde(default = "epsilon")]
    pub objective: Objective,
    /// Min-SNR-gamma loss weighting (Hang et al.), e.g. 5.
    #[serde(default)]
    pub snr_gamma: Option<f32>,
    /// Seed of initialisation, data order, timesteps, noise and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Steps between checkpoints (the last step always gets one).
    #[serde(default = "default_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are deleted).
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    /// Steps whose models are kept for good in `snapshots/step-N/` (e.g. the finetune
    /// checkpoints of quality against finetune compute, Fig. 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_steps: Vec<u64>,
    /// Steps between metric lines.
    #[serde(default = "one_u64")]
    pub log_every: u64,
    /// Steps between calls of the evaluation hook (0: never), e.g. FID on a small sample set
    /// for the quality-against-training-compute curves (Fig. 3).
    #[serde(default)]
    pub eval_every: u64,
    /// Where the steps run: `["cpu"]`, `["cuda:0"]`, or several for data parallelism (each
    /// micro-batch is split across them; the first holds the weights and optimizer state).
    /// Empty: the device the caller passes (`--device`, default `cpu`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

fn one() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
fn default_lr() -> f64 {
    1e-4
}
fn constant() -> LrSchedule {
    LrSchedule::Constant
}
fn default_dropout() -> f64 {
    0.1
}
fn epsilon() -> Objective {
    Objective::Epsilon
}
fn default_every() -> u64 {
    500
}
fn default_keep() -> usize {
    3
}

impl TrainConfig {
    /// Parses TOML; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TrainError> {
        let config: Self = toml::from_str(text).map_err(|source| TrainError::ParseConfig {
            origin: origin.into(),
            source,
        })?;
        config.validate().map_err(|e| TrainError::ConfigFile {
            origin: origin.into(),
            source: Box::new(e),
        })?;
        Ok(config)
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Range checks, naming the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.model.validate()?;
        if self.steps == 0 {
            return Err(TrainError::settings("steps", "must be at least 1"));
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return Err(TrainError::settings(
                "batch_size, grad_accum",
                "must be at least 1",
            ));
        }
        for (field, n) in [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
        ] {
            if n > MAX_BATCH {
                let message = format!("must be at most {MAX_BATCH}");
                return Err(TrainError::config(field, n, message));
            }
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            let lr = self.learning_rate;
            return Err(TrainError::config("learning_rate", lr, "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.text_dropout) {
            let p = self.text_dropout;
            return Err(TrainError::config("text_dropout", p, "must be in [0, 1]"));
        }
        if self.checkpoint_every == 0 || self.keep_last == 0 || self.log_every == 0 {
            return Err(TrainError::settings(
                "checkpoint_every, keep_last, log_every",
                "must be at least 1",
            ));
        }
        self.validate_snapshot_steps()?;
        self.validate_averages()?;
        if let Some(c) = self.grad_clip
            && c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(TrainError::config("grad_clip", c, "must be positive"));
        }
        crate::parallel::parse_devices(&self.devices, "devices")?;
        Ok(())
    }

    /// AdamW's and the EMA's rates: a decay of 2 or NaN would silently ruin the weights.
    fn validate_averages(&self) -> Result<(), TrainError> {
        let a = &self.adamw;
        in_range("adamw.beta1", a.beta1, 0.0, 1.0, false)?;
        in_range("adamw.beta2", a.beta2, 0.0, 1.0, false)?;
        positive("adamw.eps", a.eps)?;
        in_range("adamw.weight_decay", a.weight_decay, 0.0, 1e6, true)?;
        if let Some(g) = self.snr_gamma {
            positive("snr_gamma", g.into())?;
        }
        let Some(e) = &self.ema else { return Ok(()) };
        in_range("ema.max_decay", e.max_decay, 0.0, 1.0, true)?;
        in_range("ema.min_decay", e.min_decay, 0.0, e.max_decay, true)?;
        positive("ema.inv_gamma", e.inv_gamma)?;
        positive("ema.power", e.power)
    }

    fn validate_snapshot_steps(&self) -> Result<(), TrainError> {
        let mut previous = 0;
        for (i, &step) in self.snapshot_steps.iter().enumerate() {
            // Steps beyond `steps` are kept for a resumed run that goes further.
            if step <= previous {
                return Err(TrainError::config(
                    format!("snapshot_steps[{i}]"),
                    step,
                    "must be at least 1 and above the previous entry",
                ));
            }
            previous = step;
        }
        Ok(())
    }
}

/// A finite `value` above zero, naming the field.
fn positive(field: &str, value: f64) -> Result<(), TrainError> {
    if value > 0.0 && value.is_finite() {
        return Ok(());
    }
    Err(TrainError::config(
        field,
        value,
        "must be a finite number above 0",
    ))
}

/// `value` in `[low, high]` (`[low, high)` unless `closed`), NaN refused, naming the field.
fn in_range(field: &str, value: f64, low: f64, high: f64, closed: bool) -> Result<(), TrainError> {
    let below_high = value < high || (closed && value == high);
    if value >= low && below_high {
        return Ok(());
    }
    let end = if closed { ']' } else { ')' };
    Err(TrainError::config(
        field,
        value,
        format!("must be in [{low}, {high}{end}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DeviceProblem;

    const MINIMAL: &str = "steps = 10\nbatch_size = 4\n[model]\nfamily = \"small\"\nwidth = 32\nheads = 4\nnorm_groups = 8\n";

    #[test]
    fn averages_outside_their_ranges_are_named() {
        for (ema, field) in [
            ("max_decay = 2.0", "ema.max_decay"),
            ("max_decay = nan", "ema.max_decay"),
            ("min_decay = 0.99999", "ema.min_decay"),
            ("power = -1.0", "ema.power"),
        ] {
            let text = format!("{MINIMAL}[ema]\n{ema}\n");
            let err = TrainConfig::from_toml(&text, "run.toml").unwrap_err();
            assert!(format!("{err:?}").contains(field), "{ema}: {err:?}");
        }
        let ok = format!("{MINIMAL}[ema]\nmax_decay = 0.999\n");
        assert!(TrainConfig::from_toml(&ok, "run.toml").is_ok());
    }

    #[test]
    fn parses_and_round_trips() {
        let c = TrainConfig::from_toml(MINIMAL, "run.toml").unwrap();
        assert_eq!(c.learning_rate, 1e-4);
        assert_eq!(TrainConfig::from_toml(&c.to_toml(), "again").unwrap(), c);
    }

    #[test]
    fn unknown_keys_and_bad_widths_are_named() {
        let err = TrainConfig::from_toml(&format!("{MINIMAL}learning_rat = 1.0\n"), "run.toml");
        // The typo sits in [model] (last table), so the parser names that key.
        assert!(
            matches!(&err, Err(TrainError::ParseConfig { origin, .. }) if origin == "run.toml"),
            "{err:?}"
        );
        let err = TrainConfig::from_toml(&MINIMAL.replace("width = 32", "width = 36"), "run.toml")
            .unwrap_err();
        let TrainError::ConfigFile { origin, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(origin, "run.toml");
        assert!(
            matches!(&**source, TrainError::InvalidConfig { field, value: Some(v), .. } if field == "model.width" && v == "36"),
            "{err:?}"
        );
    }

    #[test]
    fn devices_are_optional_and_checked() {
        let c = TrainConfig::from_toml(MINIMAL, "run.toml").unwrap();
        assert!(c.devices.is_empty() && !c.to_toml().contains("devices"));
        let text = MINIMAL.replace("steps = 10", "steps = 10\ndevices = [\"cpu\", \"cpu\"]");
        let c = TrainConfig::from_toml(&text, "run.toml").unwrap();
        assert_eq!(c.devices, ["cpu", "cpu"]);
        assert_eq!(TrainConfig::from_toml(&c.to_toml(), "again").unwrap(), c);
        let err = TrainConfig::from_toml(&text.replace("\"cpu\", \"cpu\"", "\"tpu\""), "run.toml")
            .unwrap_err();
        let TrainError::ConfigFile { origin, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(origin, "run.toml");
        assert!(
            matches!(&**source, TrainError::Device { field, reason: DeviceProblem::UnknownName, .. } if field == "devices[0]"),
            "{err:?}"
        );
    }
}
