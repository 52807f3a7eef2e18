//! First-stage autoencoder configuration, read from and written to diffusers' `config.json`
//! (`AutoencoderKL`), so Stable Diffusion's VAE directory loads unchanged.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The only down block kind of diffusers' `AutoencoderKL` encoder.
pub const DOWN_ENCODER_BLOCK: &str = "DownEncoderBlock2D";
/// The only up block kind of diffusers' `AutoencoderKL` decoder.
pub const UP_DECODER_BLOCK: &str = "UpDecoderBlock2D";

fn default_image_channels() -> usize {
    3
}
fn default_down_types() -> Vec<String> {
    vec![DOWN_ENCODER_BLOCK.into()]
}
fn default_up_types() -> Vec<String> {
    vec![UP_DECODER_BLOCK.into()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_one() -> usize {
    1
}
fn default_silu() -> String {
    "silu".into()
}
fn default_latent_channels() -> usize {
    4
}
fn default_groups() -> usize {
    32
}
fn default_sample_size() -> SampleSize {
    SampleSize::Square(32)
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}

/// Image size the autoencoder was trained at: one side, or `[height, width]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// A square image.
    Square(usize),
    /// `[height, width]`.
    Rect(Vec<usize>),
}

/// Configuration of a KL-regularised autoencoder (diffusers `AutoencoderKL`). Field names are
/// diffusers'; settings this implementation has no use for are kept in `other` so a config
/// round-trips.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels read by the encoder.
    #[serde(default = "default_image_channels")]
    pub in_channels: usize,
    /// Image channels written by the decoder.
    #[serde(default = "default_image_channels")]
    pub out_channels: usize,
    /// Encoder levels, highest resolution first; all `DownEncoderBlock2D`.
    #[serde(default = "default_down_types")]
    pub down_block_types: Vec<String>,
    /// Decoder levels, lowest resolution first; all `UpDecoderBlock2D`.
    #[serde(default = "default_up_types")]
    pub up_block_types: Vec<String>,
    /// Channels per level, highest resolution first.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per encoder level (decoder levels have one more).
    #[serde(default = "default_one")]
    pub layers_per_block: usize,
    /// Activation; only "silu" is supported.
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Channels of the latent (the encoder outputs twice as many: mean and log-variance).
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    /// GroupNorm groups everywhere.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// Image size the model was trained at (informational).
    #[serde(default = "default_sample_size")]
    pub sample_size: SampleSize,
    /// Latents are multiplied by this before the diffusion model sees them (0.18215 for SD's
    /// VAE; 1 / std of training latents for one trained here).
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Subtracted from latents before scaling (SD3-style VAEs); none for SD's.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean, subtracted before scaling (SDXL-era VAEs that publish it).
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent std, divided out before scaling.
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs the VAE in f32 under half-precision pipelines when set; we always run f32.
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    /// A 1x1 convolution after the encoder.
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// A 1x1 convolution before the decoder.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Self-attention in the encoder's and decoder's middle blocks.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    /// Everything else in config.json (`_class_name`, versions, ...), kept so it round-trips.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl AutoencoderKLConfig {
    /// Stable Diffusion's VAE (1.x and 2.x share it): widths 128/256/512/512, two residual blocks
    /// per encoder level, 4 latent channels, downsampling factor 8.
    pub fn sd() -> Self {
        Self::with_widths(vec![128, 256, 512, 512], 2, 4, 32, 512, 0.18215)
    }

    /// A small KL autoencoder for CPU work with downsampling factor `factor` (a power of two):
    /// widths `[c, 2c, 2c, ...]`, one residual block per level, 4 latent channels, scaling factor
    /// 1 until training measures it.
    pub fn small(factor: usize, base_channels: usize) -> Self {
        assert!(
            factor.is_power_of_two(),
            "downsampling factor {factor} is not a power of two"
        );
        let levels = factor.trailing_zeros() as usize + 1;
        let widths = (0..levels)
            .map(|i| {
                if i == 0 {
                    base_channels
                } else {
                    2 * base_channels
                }
            })
            .collect();
        let groups = (base_channels / 4).clamp(1, 32);
        Self::with_widths(widths, 1, 4, groups, 32, 1.0)
    }

    /// [`small`](Self::small) with factor 4 and 32 base channels (LDM's KL-f4 in miniature).
    pub fn kl_f4() -> Self {
        Self::small(4, 32)
    }

    /// [`small`](Self::small) with factor 8 and 32 base channels (SD's factor in miniature).
    pub fn kl_f8() -> Self {
        Self::small(8, 32)
    }

    fn with_widths(
        block_out_channels: Vec<usize>,
        layers_per_block: usize,
        latent_channels: usize,
        norm_num_groups: usize,
        sample_size: usize,
        scaling_factor: f64,
    ) -> Self {
        let levels = block_out_channels.len();
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN_ENCODER_BLOCK.into(); levels],
            up_block_types: vec![UP_DECODER_BLOCK.into(); levels],
            block_out_channels,
            layers_per_block,
            act_fn: default_silu(),
            latent_channels,
            norm_num_groups,
            sample_size: SampleSize::Square(sample_size),
            scaling_factor,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            other: serde_json::Map::new(),
        }
    }

    /// Number of resolution levels.
    pub fn num_levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Image pixels per latent pixel along each side: 2^(levels - 1).
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.num_levels().saturating_sub(1))
    }

    /// Reads and validates a diffusers `config.json`.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, ModelError> {
        crate::error::read_json_config(path, Self::validate)
    }

    /// The config as diffusers writes it.
    pub fn to_json(&self) -> String {
        crate::error::json_config_with(self, "_class_name", "AutoencoderKL")
    }

    /// Checks every setting this implementation relies on; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.num_levels();
        if levels == 0 {
            return Err("block_out_channels: expected at least one level".into());
        }
        for (field, kinds, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                DOWN_ENCODER_BLOCK,
            ),
            ("up_block_types", &self.up_block_types, UP_DECODER_BLOCK),
        ] {
            if kinds.len() != levels {
                return Err(format!(
                    "{field}: expected {levels} entries (one per block_out_channels), got {}",
                    kinds.len()
                ));
            }
            if let Some((i, kind)) = kinds.iter().enumerate().find(|(_, k)| *k != want) {
                return Err(format!(
                    "{field}[{i}]: unsupported block {kind:?}; expected {want:?}"
                ));
            }
        }
        let groups = self.norm_num_groups;
        if groups == 0 {
            return Err("norm_num_groups: must be positive".into());
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || c % groups != 0 {
                return Err(format!(
                    "block_out_channels[{i}] = {c}: must be a positive multiple of norm_num_groups ({groups})"
                ));
            }
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block: must be at least 1".into());
        }
        self.validate_sizes()?;
        for (field, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if value == 0 {
                return Err(format!("{field}: must be positive"));
            }
        }
        if self.act_fn != "silu" {
            return Err(format!(
                "act_fn: unsupported {:?}; expected \"silu\"",
                self.act_fn
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!(
                "scaling_factor: {} must be a positive number",
                self.scaling_factor
            ));
        }
        match (&self.latents_mean, &self.latents_std) {
            (None, None) => {}
            (Some(mean), Some(std)) => {
                for (field, list) in [("latents_mean", mean), ("latents_std", std)] {
                    if list.len() != self.latent_channels {
                        return Err(format!(
                            "{field}: expected {} entries (latent_channels), got {}",
                            self.latent_channels,
                            list.len()
                        ));
                    }
                }
                if std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
                    return Err("latents_std: entries must be positive finite numbers".into());
                }
                if mean.iter().any(|m| !m.is_finite()) {
                    return Err("latents_mean: entries must be finite numbers".into());
                }
            }
            _ => return Err("latents_mean / latents_std: give both or neither".into()),
        }
        if let Some(kind) = self.other.get("norm_type")
            && kind != "group"
        {
            return Err(format!(
                "norm_type: unsupported {kind}; only \"group\" (AutoencoderKL) is supported"
            ));
        }
        Ok(())
    }

    /// Upper bounds that keep a hostile config from aborting on allocation when the model is
    /// built (the same limits as the UNet's).
    fn validate_sizes(&self) -> Result<(), String> {
        use crate::unet::config::{MAX_CHANNELS, MAX_LAYERS, MAX_LEVELS};
        let at_most = |field: String, value: usize, max: usize| {
            if value <= max {
                Ok(())
            } else {
                Err(format!("{field} = {value}: expected at most {max}"))
            }
        };
        at_most(
            "block_out_channels (levels)".into(),
            self.num_levels(),
            MAX_LEVELS,
        )?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            at_most(format!("block_out_channels[{i}]"), c, MAX_CHANNELS)?;
        }
        at_most("layers_per_block".into(), self.layers_per_block, MAX_LAYERS)?;
        at_most("in_channels".into(), self.in_channels, MAX_CHANNELS)?;
        at_most("out_channels".into(), self.out_channels, MAX_CHANNELS)?;
        at_most("latent_channels".into(), self.latent_channels, MAX_CHANNELS)?;
        if let Some(shift) = self.shift_factor
            && !shift.is_finite()
        {
            return Err(format!("shift_factor: {shift} must be a finite number"));
        }
        Ok(())
    }
}
