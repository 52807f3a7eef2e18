//! UNet configuration, read from and written to diffusers' `config.json`.
//!
//! Field names follow diffusers' `UNet2DConditionModel` so real Stable Diffusion configs load
//! unchanged; [`UNetConfig::validate`] rejects what this implementation does not support with a
//! message naming the field.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// A value given either once for every level or once per level (diffusers accepts both).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerLevel<T> {
    /// The same value at every level.
    All(T),
    /// One value per level, from the highest resolution down.
    Each(Vec<T>),
}

impl<T: Clone> PerLevel<T> {
    /// The value at `level`, or `None` when a list is too short.
    pub fn at(&self, level: usize) -> Option<T> {
        match self {
            PerLevel::All(v) => Some(v.clone()),
            PerLevel::Each(list) => list.get(level).cloned(),
        }
    }

    fn len_matches(&self, levels: usize) -> bool {
        match self {
            PerLevel::All(_) => true,
            PerLevel::Each(list) => list.len() == levels,
        }
    }
}

/// Down, mid and up block kinds this implementation knows.
pub const DOWN_CROSS_ATTN: &str = "CrossAttnDownBlock2D";
/// A down block of residual blocks only.
pub const DOWN_PLAIN: &str = "DownBlock2D";
/// An up block with cross-attention after each residual block.
pub const UP_CROSS_ATTN: &str = "CrossAttnUpBlock2D";
/// An up block of residual blocks only.
pub const UP_PLAIN: &str = "UpBlock2D";
/// The middle block: residual, attention, residual.
pub const MID_CROSS_ATTN: &str = "UNetMidBlock2DCrossAttn";

fn default_channels() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_scale() -> f64 {
    1.0
}
fn default_kernel() -> usize {
    3
}
fn default_silu() -> String {
    "silu".into()
}
fn default_time_shift() -> String {
    "default".into()
}
fn default_positional() -> String {
    "positional".into()
}
fn default_mid() -> Option<String> {
    Some(MID_CROSS_ATTN.into())
}
fn default_layers() -> PerLevel<usize> {
    PerLevel::All(2)
}
fn default_heads() -> PerLevel<usize> {
    PerLevel::All(8)
}
fn default_cross_dim() -> PerLevel<usize> {
    PerLevel::All(1280)
}
fn default_false_levels() -> PerLevel<bool> {
    PerLevel::All(false)
}
fn default_transformer_layers() -> PerLevel<usize> {
    PerLevel::All(1)
}

/// Configuration of a Stable-Diffusion-style conditional UNet (diffusers `UNet2DConditionModel`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Latent size the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Input channels (4 latent channels, plus any concatenated conditioning).
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    /// Output channels.
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Puts cos before sin in the timestep sinusoid.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep sinusoid (diffusers `downscale_freq_shift`).
    #[serde(default)]
    pub freq_shift: f64,
    /// Down block kinds, highest resolution first.
    pub down_block_types: Vec<String>,
    /// Middle block kind, or none.
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    /// Up block kinds, lowest resolution first.
    pub up_block_types: Vec<String>,
    /// Self-attention replaced by attention to the context, per level.
    #[serde(default = "default_false_levels")]
    pub only_cross_attention: PerLevel<bool>,
    /// Channels per level; the first is the model's base width.
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per down level (up levels have one more).
    #[serde(default = "default_layers")]
    pub layers_per_block: PerLevel<usize>,
    /// Padding of the strided downsampling convolution.
    #[serde(default = "default_one")]
    pub downsample_padding: usize,
    /// Output scale of the middle block's residual blocks.
    #[serde(default = "default_scale")]
    pub mid_block_scale_factor: f64,
    /// Activation; only "silu" is supported.
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// GroupNorm groups everywhere.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of residual blocks and the output norm.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Width of the text states (context) the cross-attention reads.
    #[serde(default = "default_cross_dim")]
    pub cross_attention_dim: PerLevel<usize>,
    /// Transformer layers per attention block, per level.
    #[serde(default = "default_transformer_layers")]
    pub transformer_layers_per_block: PerLevel<usize>,
    /// diffusers' historical name for the NUMBER OF HEADS when `num_attention_heads` is unset
    /// (SD 1.5's `attention_head_dim: 8` means 8 heads of 40 channels).
    #[serde(default = "default_heads")]
    pub attention_head_dim: PerLevel<usize>,
    /// Heads per level; overrides `attention_head_dim` when present.
    #[serde(default)]
    pub num_attention_heads: Option<PerLevel<usize>>,
    /// Linear (true) or 1x1-convolution (false) projections into and out of attention.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Attention scores in f32 even for half-precision inputs (always true here: we run in f32).
    #[serde(default)]
    pub upcast_attention: bool,
    /// "default" only (adds the time embedding; "scale_shift" is not supported).
    #[serde(default = "default_time_shift")]
    pub resnet_time_scale_shift: String,
    /// Class embedding kind: none (an embedding table when `num_class_embeds` is set).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Size of the class embedding table (SD x4 upscaler: noise level 0..999).
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// "positional" only.
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    /// Width of an extra condition added to the timestep sinusoid (LCM guidance embedding).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel of the input convolution.
    #[serde(default = "default_kernel")]
    pub conv_in_kernel: usize,
    /// Kernel of the output convolution.
    #[serde(default = "default_kernel")]
    pub conv_out_kernel: usize,
    /// Whether the UNet carries an encoder adapter (a CoDi adapter student): never in
    /// config.json, set by [`crate::weights::load_unet`] when the directory has `adapter/`.
    #[serde(skip)]
    pub encoder_adapter: bool,
    /// Everything else in config.json that has no effect here (kept so a saved config
    /// round-trips); unsupported settings among them are rejected by `validate`.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The most resolution levels a config may have.
pub const MAX_LEVELS: usize = 8;
/// The most channels (or context width, or heads) anywhere.
pub const MAX_CHANNELS: usize = 1 << 14;
/// The most residual or transformer layers per level.
pub const MAX_LAYERS: usize = 64;
/// The widest input / output convolution kernel.
pub const MAX_KERNEL: usize = 15;
/// The largest latent side (1024 pixels per side is 128; 512 latents are 4096-pixel images).
pub const MAX_SAMPLE_SIZE: usize = 512;
/// The largest class-embedding table.
pub const MAX_CLASS_EMBEDS: usize = 1 << 20;

/// Settings of one level, resolved from the per-level lists.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelConfig {
    /// Output channels of the level.
    pub channels: usize,
    /// Residual blocks in the down half.
    pub layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Transformer layers per attention block.
    pub transformer_layers: usize,
    /// Context width for cross-attention.
    pub cross_attention_dim: usize,
    /// Self-attention replaced by attention to the context.
    pub only_cross_attention: bool,
}

impl UNetConfig {
    /// Reads and validates a diffusers `config.json`.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, ModelError> {
        crate::error::read_json_config(path, Self::validate)
    }

    /// The config as diffusers writes it.
    pub fn to_json(&self) -> String {
        crate::error::json_config_with(self, "_class_name", "UNet2DConditionModel")
    }

    /// Number of resolution levels.
    pub fn num_levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Base width (the paper's "filters").
    pub fn base_channels(&self) -> usize {
        self.block_out_channels[0]
    }

    /// Width of the timestep embedding (4x the base width, as in SD).
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// Resolved settings of `level` (0 = highest resolution).
    pub fn level(&self, level: usize) -> LevelConfig {
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        LevelConfig {
            channels: self.block_out_channels[level],
            layers: self.layers_per_block.at(level).expect("validated"),
            num_heads: heads.at(level).expect("validated"),
            transformer_layers: self
                .transformer_layers_per_block
                .at(level)
                .expect("validated"),
            cross_attention_dim: self.cross_attention_dim.at(level).expect("validated"),
            only_cross_attention: self.only_cross_attention.at(level).expect("validated"),
        }
    }

    /// Checks every setting this implementation relies on; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.num_levels();
        if levels == 0 {
            return Err("block_out_channels: expected at least one level".into());
        }
        self.validate_sizes()?;
        if self.down_block_types.len() != levels {
            return Err(format!(
                "down_block_types: expected {levels} entries (one per block_out_channels), got {}",
                self.down_block_types.len()
            ));
        }
        if self.up_block_types.len() != levels {
            return Err(format!(
                "up_block_types: expected {levels} entries (one per block_out_channels), got {}",
                self.up_block_types.len()
            ));
        }
        for (i, kind) in self.down_block_types.iter().enumerate() {
            if kind != DOWN_CROSS_ATTN && kind != DOWN_PLAIN {
                return Err(format!(
                    "down_block_types[{i}]: unsupported block {kind:?}; expected {DOWN_CROSS_ATTN} or {DOWN_PLAIN}"
                ));
            }
        }
        for (i, kind) in self.up_block_types.iter().enumerate() {
            if kind != UP_CROSS_ATTN && kind != UP_PLAIN {
                return Err(format!(
                    "up_block_types[{i}]: unsupported block {kind:?}; expected {UP_CROSS_ATTN} or {UP_PLAIN}"
                ));
            }
        }
        if let Some(mid) = &self.mid_block_type
            && mid != MID_CROSS_ATTN
        {
            return Err(format!(
                "mid_block_type: unsupported block {mid:?}; expected {MID_CROSS_ATTN} or null"
            ));
        }
        let lists: [(&str, bool); 6] = [
            (
                "layers_per_block",
                self.layers_per_block.len_matches(levels),
            ),
            (
                "attention_head_dim",
                self.attention_head_dim.len_matches(levels),
            ),
            (
                "num_attention_heads",
                self.num_attention_heads
                    .as_ref()
                    .is_none_or(|h| h.len_matches(levels)),
            ),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.len_matches(levels),
            ),
            (
                "cross_attention_dim",
                self.cross_attention_dim.len_matches(levels),
            ),
            (
                "only_cross_attention",
                self.only_cross_attention.len_matches(levels),
            ),
        ];
        for (field, ok) in lists {
            if !ok {
                return Err(format!(
                    "{field}: a list must have one entry per level ({levels})"
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
            let level = self.level(i);
            if level.num_heads == 0 || c % level.num_heads != 0 {
                return Err(format!(
                    "attention heads at level {i}: {} heads do not divide {c} channels",
                    level.num_heads
                ));
            }
            if level.layers == 0 {
                return Err(format!("layers_per_block[{i}]: must be at least 1"));
            }
        }
        if self.act_fn != "silu" {
            return Err(format!(
                "act_fn: unsupported {:?}; expected \"silu\"",
                self.act_fn
            ));
        }
        if self.resnet_time_scale_shift != "default" {
            return Err(format!(
                "resnet_time_scale_shift: unsupported {:?}; expected \"default\"",
                self.resnet_time_scale_shift
            ));
        }
        if self.time_embedding_type != "positional" {
            return Err(format!(
                "time_embedding_type: unsupported {:?}; expected \"positional\"",
                self.time_embedding_type
            ));
        }
        if let Some(kind) = &self.class_embed_type {
            return Err(format!(
                "class_embed_type: unsupported {kind:?}; only null (with num_class_embeds) is supported"
            ));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return Err("conv_in_kernel / conv_out_kernel: must be odd".into());
        }
        // Settings that change the architecture and have no implementation here: each must be
        // absent or hold diffusers' default.
        use serde_json::{Value, json};
        let defaults: [(&str, Value); 17] = [
            ("encoder_hid_dim", Value::Null),
            ("encoder_hid_dim_type", Value::Null),
            ("addition_embed_type", Value::Null),
            ("addition_time_embed_dim", Value::Null),
            ("projection_class_embeddings_input_dim", Value::Null),
            ("time_embedding_dim", Value::Null),
            ("time_embedding_act_fn", Value::Null),
            ("timestep_post_act", Value::Null),
            ("attention_type", json!("default")),
            ("reverse_transformer_layers_per_block", Value::Null),
            ("class_embeddings_concat", json!(false)),
            ("dual_cross_attention", json!(false)),
            ("resnet_skip_time_act", json!(false)),
            ("resnet_out_scale_factor", json!(1.0)),
            ("mid_block_only_cross_attention", Value::Null),
            ("cross_attention_norm", Value::Null),
            ("dropout", json!(0.0)),
        ];
        for (key, default) in defaults {
            let Some(value) = self.other.get(key) else {
                continue;
            };
            let same = match (value, &default) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (Value::Bool(false), Value::Null) => true,
                (a, b) => a == b,
            };
            if !same {
                return Err(format!(
                    "{key}: {value} is not supported by this implementation (only {default})"
                ));
            }
        }
        Ok(())
    }

    /// Sizes within which every count a model is built from stays far from overflow and a model
    /// fits in memory (SD 2.1: 1280 channels, 4 levels, 1024-wide context).
    fn validate_sizes(&self) -> Result<(), String> {
        let in_range = |field: String, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("{field} = {value}: expected {min}..={max}"))
            }
        };
        in_range(
            "block_out_channels (levels)".into(),
            self.num_levels(),
            1,
            MAX_LEVELS,
        )?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            in_range(format!("block_out_channels[{i}]"), c, 1, MAX_CHANNELS)?;
        }
        in_range("in_channels".into(), self.in_channels, 1, MAX_CHANNELS)?;
        in_range("out_channels".into(), self.out_channels, 1, MAX_CHANNELS)?;
        in_range("conv_in_kernel".into(), self.conv_in_kernel, 1, MAX_KERNEL)?;
        in_range(
            "conv_out_kernel".into(),
            self.conv_out_kernel,
            1,
            MAX_KERNEL,
        )?;
        in_range("downsample_padding".into(), self.downsample_padding, 0, 1)?;
        if let Some(size) = self.sample_size {
            in_range("sample_size".into(), size, 1, MAX_SAMPLE_SIZE)?;
        }
        if let Some(n) = self.num_class_embeds {
            in_range("num_class_embeds".into(), n, 1, MAX_CLASS_EMBEDS)?;
        }
        if let Some(d) = self.time_cond_proj_dim {
            in_range("time_cond_proj_dim".into(), d, 1, MAX_CHANNELS)?;
        }
        let per_level: [(&str, &PerLevel<usize>, usize, usize); 5] = [
            ("layers_per_block", &self.layers_per_block, 1, MAX_LAYERS),
            (
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
                1,
                MAX_LAYERS,
            ),
            (
                "cross_attention_dim",
                &self.cross_attention_dim,
                1,
                MAX_CHANNELS,
            ),
            (
                "attention_head_dim",
                &self.attention_head_dim,
                1,
                MAX_CHANNELS,
            ),
            (
                "num_attention_heads",
                self.num_attention_heads
                    .as_ref()
                    .unwrap_or(&PerLevel::All(1)),
                1,
                MAX_CHANNELS,
            ),
        ];
        for (field, values, min, max) in per_level {
            for level in 0..self.num_levels() {
                if let Some(v) = values.at(level) {
                    in_range(format!("{field}[{level}]"), v, min, max)?;
                }
            }
        }
        let finite = [
            ("norm_eps", self.norm_eps, self.norm_eps > 0.0),
            ("freq_shift", self.freq_shift, true),
            ("mid_block_scale_factor", self.mid_block_scale_factor, true),
        ];
        for (field, value, ok) in finite {
            if !value.is_finite() || !ok {
                return Err(format!(
                    "{field} = {value}: expected a finite number{}",
                    if field == "norm_eps" { " > 0" } else { "" }
                ));
            }
        }
        Ok(())
    }

    /// Checks a latent size `h x w` the model is to run at; the error names `field` (e.g.
    /// `--latent-size`). Every size from 1 works (skips are upsampled to fit); the bound keeps
    /// activations and attention within memory.
    pub fn check_latent_size(&self, field: &str, h: usize, w: usize) -> Result<(), String> {
        for side in [h, w] {
            if !(1..=MAX_SAMPLE_SIZE).contains(&side) {
                return Err(format!("{field} = {side}: expected 1..={MAX_SAMPLE_SIZE}"));
            }
        }
        Ok(())
    }

    /// The paper's family member with base width `c` (Table 1; see shared/reference/table1.md):
    /// SD layout, widths [c, 2c, 4c, 4c], 8 heads everywhere, 1024-wide text context,
    /// linear projections.
    pub fn paper(c: usize) -> Self {
        Self::sd_layout(
            vec![c, 2 * c, 4 * c, 4 * c],
            1024,
            PerLevel::All(8),
            true,
            false,
        )
    }

    /// Stable Diffusion 1.5's UNet.
    pub fn sd15() -> Self {
        Self::sd_layout(
            vec![320, 640, 1280, 1280],
            768,
            PerLevel::All(8),
            false,
            false,
        )
    }

    /// Stable Diffusion 2.1's UNet (heads 5/10/20/20 through diffusers' `attention_head_dim` quirk).
    pub fn sd21() -> Self {
        let mut c = Self::sd_layout(
            vec![320, 640, 1280, 1280],
            1024,
            PerLevel::Each(vec![5, 10, 20, 20]),
            true,
            true,
        );
        c.sample_size = Some(96);
        c
    }

    /// A small model of the SD layout for CPU work: widths [c, 2c, 2c], attention at the two
    /// highest-resolution levels, `heads` heads, context width `context_dim`.
    pub fn small(c: usize, context_dim: usize, heads: usize) -> Self {
        let mut config = Self::sd_layout(
            vec![c, 2 * c, 2 * c],
            context_dim,
            PerLevel::All(heads),
            true,
            false,
        );
        config.down_block_types = vec![
            DOWN_CROSS_ATTN.into(),
            DOWN_CROSS_ATTN.into(),
            DOWN_PLAIN.into(),
        ];
        config.up_block_types = vec![UP_PLAIN.into(), UP_CROSS_ATTN.into(), UP_CROSS_ATTN.into()];
        config.norm_num_groups = (c / 4).clamp(1, 32);
        config.sample_size = Some(16);
        config
    }

    fn sd_layout(
        block_out_channels: Vec<usize>,
        cross_attention_dim: usize,
        attention_head_dim: PerLevel<usize>,
        use_linear_projection: bool,
        upcast_attention: bool,
    ) -> Self {
        let levels = block_out_channels.len();
        let mut down_block_types = vec![DOWN_CROSS_ATTN.to_string(); levels - 1];
        down_block_types.push(DOWN_PLAIN.into());
        let mut up_block_types = vec![UP_PLAIN.to_string()];
        up_block_types.extend(vec![UP_CROSS_ATTN.to_string(); levels - 1]);
        Self {
            sample_size: Some(64),
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types,
            mid_block_type: default_mid(),
            up_block_types,
            only_cross_attention: PerLevel::All(false),
            block_out_channels,
            layers_per_block: PerLevel::All(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: default_silu(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerLevel::All(cross_attention_dim),
            transformer_layers_per_block: PerLevel::All(1),
            attention_head_dim,
            num_attention_heads: None,
            use_linear_projection,
            upcast_attention,
            resnet_time_scale_shift: default_time_shift(),
            class_embed_type: None,
            num_class_embeds: None,
            time_embedding_type: default_positional(),
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            encoder_adapter: false,
            other: serde_json::Map::new(),
        }
    }
}
