//! A study's configuration (TOML) and the built-in presets.

use std::fmt;
use std::str::FromStr;

use ldmscale_data::{DatasetSpec, STUDY_SPLIT, Split};
use ldmscale_diffusion::SamplerId;
pub use ldmscale_train::Family;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod adaptive;
pub mod distill;
pub mod dreambooth;
pub mod super_res;
pub mod validate;

pub use adaptive::AdaptiveSampling;
pub use distill::{DistillConfig, DistillMethod};
pub use dreambooth::DreamBoothConfig;
pub use super_res::{SrDegradation, SuperResConfig};

/// The frozen text encoder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TextEncoderSpec {
    /// A small BERT over the captions' words, randomly initialised and frozen (no asset).
    TinyRandom,
    /// all-MiniLM-L6-v2 from the asset cache.
    MiniLm,
    /// A transformers directory (`dir:DIR`).
    Dir(String),
    /// A transformers CLIP text model directory (`clip:DIR`).
    Clip(String),
}

impl TextEncoderSpec {
    /// The directory of a `dir:` or `clip:` encoder.
    pub fn path(&self) -> Option<&str> {
        match self {
            TextEncoderSpec::Dir(p) | TextEncoderSpec::Clip(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for TextEncoderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextEncoderSpec::TinyRandom => f.write_str("tiny-random"),
            TextEncoderSpec::MiniLm => f.write_str("minilm"),
            TextEncoderSpec::Dir(p) => write!(f, "dir:{p}"),
            TextEncoderSpec::Clip(p) => write!(f, "clip:{p}"),
        }
    }
}

impl FromStr for TextEncoderSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "tiny-random" => TextEncoderSpec::TinyRandom,
            "minilm" => TextEncoderSpec::MiniLm,
            _ => match (text.strip_prefix("dir:"), text.strip_prefix("clip:")) {
                (Some(p), _) => TextEncoderSpec::Dir(p.into()),
                (_, Some(p)) => TextEncoderSpec::Clip(p.into()),
                _ => {
                    return Err(format!(
                        "text_encoder = {text:?}: expected tiny-random, minilm, dir:DIR or clip:DIR"
                    ));
                }
            },
        })
    }
}

/// Whether the latent cache keeps the text encoder's states of each caption, or its token ids
/// (the frozen encoder then runs on every batch read from the cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CacheTextStates {
    /// States while all of them fit [`CACHED_TEXT_STATES_BUDGET`]: in f32 when f32 fits (every
    /// study before this choice existed), else f16; token ids when neither fits.
    #[default]
    Auto,
    /// States: f32 within the budget, else f16.
    Yes,
    /// Token ids.
    No,
}

/// Bytes the latent cache may spend on text states under `cache_text_states = "auto"`
/// (64 GiB: the paper's 600M captions of CLIP states are ~40 TB in f16, so they are kept as
/// token ids; every CPU-sized study keeps f32 states).
pub const CACHED_TEXT_STATES_BUDGET: u64 = 64 << 30;

impl CacheTextStates {
    /// True for the default.
    pub fn is_auto(&self) -> bool {
        *self == CacheTextStates::Auto
    }
}

// TOML spelling: "auto", true or false.
impl Serialize for CacheTextStates {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CacheTextStates::Auto => s.serialize_str("auto"),
            CacheTextStates::Yes => s.serialize_bool(true),
            CacheTextStates::No => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for CacheTextStates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelling {
            Bool(bool),
            Text(String),
        }
        let expected = "expected \"auto\", true or false";
        match Spelling::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("cache_text_states: {expected}")))?
        {
            Spelling::Bool(true) => Ok(CacheTextStates::Yes),
            Spelling::Bool(false) => Ok(CacheTextStates::No),
            Spelling::Text(t) if t == "auto" => Ok(CacheTextStates::Auto),
            Spelling::Text(t) => Err(serde::de::Error::custom(format!(
                "cache_text_states = {t:?}: {expected}"
            ))),
        }
    }
}

/// What FID is computed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FidFeaturesKind {
    /// The FID Inception's pool3 features (pytorch-fid mode; needs its weights).
    Inception,
    /// The in-domain CLIP's image features (trained by the study: no asset).
    InDomain,
}

// Serde through `Display` / `FromStr`, so the typed field keeps its TOML spelling.
impl Serialize for TextEncoderSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TextEncoderSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One sweep cell of a width: a sampler, its steps, a guidance rate and a noise seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepCell {
    /// The sampler.
    pub sampler: SamplerId,
    /// Sampling steps.
    pub steps: u32,
    /// Guidance rate.
    pub cfg: f64,
    /// Seed of the initial noise.
    pub seed: u64,
}

/// How the first-stage autoencoder is obtained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FirstStage {
    /// Train a small KL autoencoder on the training split.
    Train {
        /// Spatial downsampling factor (4 or 8).
        factor: usize,
        /// Latent channels.
        latent_channels: usize,
        /// Base width of the autoencoder.
        width: usize,
        /// Optimizer steps.
        steps: u64,
    },
    /// A diffusers AutoencoderKL directory (e.g. the SD VAE).
    Pretrained {
        /// Directory with config.json + diffusion_pytorch_model.safetensors.
        path: String,
    },
}

/// The sweep grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Samplers: ddim, ddpm, dpmpp-2m, dpmpp-3m.
    pub samplers: Vec<SamplerId>,
    /// Step counts.
    pub steps: Vec<u32>,
    /// Guidance rates.
    pub cfg: Vec<f64>,
    /// DPM-Solver++ is not designed for more steps than this (the paper stops at 20).
    #[serde(default = "twenty")]
    pub dpm_max_steps: u32,
    /// Seeds of the initial noise per cell.
    #[serde(default = "one_seed")]
    pub seeds: Vec<u64>,
    /// Images generated per cell.
    pub samples_per_cell: u32,
    /// Bootstrap replicates of each cell's FID interval (generated and reference features
    /// resampled; seeded by the cell); 0 = no interval.
    #[serde(default = "hundred")]
    pub bootstrap: u32,
    /// Budgets of the equal-cost sample grids (Fig. 10), in normalised cost x steps: the
    /// largest width's evaluations at those steps, guidance doubling counted. Each width gets
    /// the DDIM step count whose cost matches. Empty: none.
    #[serde(default)]
    pub grid_budgets: Vec<f64>,
    /// More samples, in rounds, for the budget frontier's undecided winners; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveSampling>,
}

fn hundred() -> u32 {
    100
}

fn twenty() -> u32 {
    20
}
fn one_seed() -> Vec<u64> {
    vec![0]
}

/// Training recipe shared by every width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeConfig {
    /// Optimizer steps per width.
    pub steps: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Caption dropout for guidance.
    #[serde(default = "dropout")]
    pub text_dropout: f64,
    /// EMA max decay (none: no EMA).
    #[serde(default)]
    pub ema_max_decay: Option<f64>,
    /// Steps between FID measurements during training (Fig. 3); 0 = only at the end.
    #[serde(default)]
    pub eval_every: u64,
}

fn dropout() -> f64 {
    0.1
}

/// A whole study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// Preset or user name.
    pub name: String,
    /// One dataset for both roles, split into training (90%) and held-out (10%) examples:
    /// shapes, fashion-mnist, mnist, emoji, folder:DIR, coco:CAPTIONS.json:IMAGES_DIR,
    /// wds:PATTERN (ldmscale-data's `DatasetSpec`: the string or a table with `kind`). Absent
    /// when `train_dataset` and `eval_dataset` are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetSpec>,
    /// The training source, read whole (the paper: LAION-style WebDataset shards); with
    /// `eval_dataset`, in place of `dataset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_dataset: Option<DatasetSpec>,
    /// The evaluation source, read whole: FID reference set, evaluation prompts (the paper:
    /// COCO 2014 val); with `train_dataset`, in place of `dataset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_dataset: Option<DatasetSpec>,
    /// Image side in pixels.
    pub resolution: usize,
    /// Training examples used.
    pub train_examples: usize,
    /// Held-out examples (FID reference set and evaluation prompts).
    pub val_examples: usize,
    /// First stage.
    pub first_stage: FirstStage,
    /// Text encoder (frozen): "tiny-random" (a small BERT over the captions' words, randomly
    /// initialised and frozen: no asset needed), "minilm" (all-MiniLM-L6-v2 from the asset
    /// cache), "dir:DIR" or "clip:DIR" (a transformers directory).
    pub text_encoder: TextEncoderSpec,
    /// What the latent cache keeps of each training caption: "auto" (the default: the text
    /// encoder's states while all of them fit 64 GiB, in f32, else in f16; else token ids),
    /// true (states, f16 past 64 GiB) or false (token ids: the frozen encoder runs on every
    /// training batch, and the cache holds a few bytes per token instead of a state).
    #[serde(default, skip_serializing_if = "CacheTextStates::is_auto")]
    pub cache_text_states: CacheTextStates,
    /// Model family layout: "small" or "paper".
    pub family: Family,
    /// Base widths to train.
    pub widths: Vec<usize>,
    /// Attention heads.
    pub heads: usize,
    /// GroupNorm groups.
    pub norm_groups: usize,
    /// Training recipe.
    pub recipe: RecipeConfig,
    /// Sweep grid.
    pub sweep: SweepConfig,
    /// Features FID is computed on: "inception" (pytorch-fid) or "in-domain".
    pub fid_features: FidFeaturesKind,
    /// Super-resolution finetuning of every width (Secs. 3.2, 3.5); absent: not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub super_res: Option<SuperResConfig>,
    /// Consistency distillation of the widths to few-step students (Sec. 3.6); absent: not
    /// run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
    /// DreamBooth finetuning of the widths on the `shapes` subjects (Sec. 3.2, Fig. 6);
    /// absent: not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dreambooth: Option<DreamBoothConfig>,
}

/// Where one role's examples (training or evaluation) come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DataSource<'a> {
    /// The dataset.
    pub spec: &'a DatasetSpec,
    /// The part read: a shared `dataset`'s train or val split, or all of a separate one.
    pub split: Split,
    /// The config field naming it, for messages.
    pub field: &'static str,
}

impl DataSource<'_> {
    /// The part read, in words (cache keys and logs; a shared dataset's wording predates
    /// separate sources, so its caches are still found).
    pub fn part(&self) -> String {
        match self.split {
            Split::All => "all".into(),
            s => format!(
                "{s} (val fraction {}, salt {})",
                STUDY_SPLIT.val_fraction, STUDY_SPLIT.salt
            ),
        }
    }
}

impl fmt::Display for DataSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.split {
            Split::All => write!(f, "{}", self.spec),
            s => write!(f, "{} ({s} split)", self.spec),
        }
    }
}

/// The quick preset's dataset: Fashion-MNIST when `tools/fetch-assets.sh fashion-mnist` has
/// put it in the asset cache (real images, ten captioned classes), else the procedural
/// `shapes` (no files needed).
pub fn quick_dataset() -> DatasetSpec {
    let dir = ldmscale_data::assets_dir().join("fashion-mnist");
    let present = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if present {
        presets::dataset("fashion-mnist")
    } else {
        presets::dataset("shapes")
    }
}

impl StudyConfig {
    /// A built-in preset: tiny, quick, full or paper.
    pub fn preset(name: &str) -> Result<Self, String> {
        match name {
            "tiny" => Ok(presets::tiny()),
            "quick" => Ok(presets::quick()),
            "full" => Ok(presets::full()),
            "paper" => Ok(presets::paper()),
            other => Err(format!(
                "unknown preset {other:?}; expected tiny, quick, full or paper"
            )),
        }
    }

    /// Parses TOML; unknown keys are errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let c: Self = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        c.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(c)
    }

    /// TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// The training and evaluation sources: the train and val splits of `dataset`, or all of
    /// `train_dataset` and all of `eval_dataset`. The error names the fields to set.
    pub fn sources(&self) -> Result<[DataSource<'_>; 2], String> {
        let source = |spec, split, field| DataSource { spec, split, field };
        match (&self.dataset, &self.train_dataset, &self.eval_dataset) {
            (Some(d), None, None) => Ok([
                source(d, Split::Train, "dataset"),
                source(d, Split::Val, "dataset"),
            ]),
            (None, Some(t), Some(e)) => Ok([
                source(t, Split::All, "train_dataset"),
                source(e, Split::All, "eval_dataset"),
            ]),
            (Some(_), _, _) => Err("dataset: give either `dataset` (split into training and \
                 evaluation examples) or `train_dataset` and `eval_dataset`, not both"
                .into()),
            (None, t, _) => {
                let missing = if t.is_none() {
                    "train_dataset"
                } else {
                    "eval_dataset"
                };
                Err(format!(
                    "{missing}: missing; give `train_dataset` and `eval_dataset`, or one \
                     `dataset` split into both"
                ))
            }
        }
    }

    /// Where the training examples come from (see [`StudyConfig::sources`]).
    pub fn train_source(&self) -> Result<DataSource<'_>, String> {
        self.sources().map(|[train, _]| train)
    }

    /// Where the evaluation examples come from (see [`StudyConfig::sources`]).
    pub fn eval_source(&self) -> Result<DataSource<'_>, String> {
        self.sources().map(|[_, eval]| eval)
    }

    /// The sources in words, for titles and logs.
    pub fn describe_data(&self) -> String {
        match self.sources() {
            Ok([t, e]) if t.spec == e.spec => t.spec.to_string(),
            Ok([t, e]) => format!("{t} (training) / {e} (evaluation)"),
            Err(e) => e,
        }
    }

    /// Every range and consistency check, before any work: all problems at once, one a line,
    /// each naming its field (`sweep.cfg[0]: NaN is not a number in [0, 1000]`).
    pub fn validate(&self) -> Result<(), String> {
        let problems = validate::problems(self);
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems[0].clone()),
            n => Err(format!("{n} problems:\n  {}", problems.join("\n  "))),
        }
    }

    /// The sweep's cells for one width, DPM-Solver++ capped at its max steps.
    pub fn cells(&self) -> Vec<SweepCell> {
        let mut out = Vec::new();
        for &sampler in &self.sweep.samplers {
            for &steps in &self.sweep.steps {
                if sampler.is_dpm_solver() && steps > self.sweep.dpm_max_steps {
                    continue;
                }
                for &cfg in &self.sweep.cfg {
                    for &seed in &self.sweep.seeds {
                        out.push(SweepCell {
                            sampler,
                            steps,
                            cfg,
                            seed,
                        });
                    }
                }
            }
        }
        out
    }

    /// `[channels, side, side]` of the latents and the first stage's downsampling factor, as
    /// the config asks (a pretrained first stage: the SD VAE's KL-f8 with 4 channels).
    pub fn latent_layout(&self) -> ([usize; 3], usize) {
        let (factor, channels) = match &self.first_stage {
            FirstStage::Train {
                factor,
                latent_channels,
                ..
            } => (*factor, *latent_channels),
            FirstStage::Pretrained { .. } => (8, 4),
        };
        let side = self.resolution / factor;
        ([channels, side, side], factor)
    }
}

/// The built-in presets, one function each.
mod presets {
    use super::*;

    /// A preset's dataset from its spec string.
    pub(super) fn dataset(spec: &str) -> DatasetSpec {
        spec.parse().expect("a preset's dataset spec parses")
    }

    /// The quick preset's base, sized for a 2-core CPU in minutes: 16x16 images, a KL-f2 first
    /// stage (8x8 latents), four widths of the small layout.
    fn base(name: &str) -> StudyConfig {
        StudyConfig {
            name: name.into(),
            dataset: Some(dataset("shapes")),
            train_dataset: None,
            eval_dataset: None,
            resolution: 16,
            train_examples: 2048,
            val_examples: 256,
            first_stage: FirstStage::Train {
                factor: 2,
                latent_channels: 4,
                width: 32,
                steps: 300,
            },
            text_encoder: TextEncoderSpec::TinyRandom,
            cache_text_states: CacheTextStates::Auto,
            family: Family::Small,
            widths: vec![8, 16, 24, 32],
            heads: 4,
            norm_groups: 4,
            recipe: RecipeConfig {
                steps: 400,
                batch_size: 16,
                learning_rate: 1e-3,
                warmup_steps: 40,
                text_dropout: 0.1,
                ema_max_decay: Some(0.995),
                eval_every: 100,
            },
            sweep: SweepConfig {
                samplers: vec![SamplerId::Ddim, SamplerId::Ddpm, SamplerId::DpmSolver2M],
                steps: vec![1, 2, 4, 8, 16],
                cfg: vec![1.0, 2.0, 3.0, 5.0],
                dpm_max_steps: 20,
                seeds: vec![0],
                samples_per_cell: 32,
                bootstrap: 100,
                grid_budgets: vec![4.0, 16.0],
                adaptive: Some(AdaptiveSampling::quick()),
            },
            fid_features: FidFeaturesKind::InDomain,
            super_res: Some(SuperResConfig::quick()),
            distill: Some(DistillConfig::quick()),
            dreambooth: None,
        }
    }

    /// CI: two widths, a few cells, about a minute.
    pub fn tiny() -> StudyConfig {
        let mut c = base("tiny");
        c.train_examples = 256;
        c.val_examples = 64;
        c.resolution = 16;
        c.first_stage = FirstStage::Train {
            factor: 4,
            latent_channels: 4,
            width: 16,
            steps: 150,
        };
        c.widths = vec![8, 16];
        c.heads = 2;
        c.norm_groups = 4;
        c.recipe.steps = 120;
        c.recipe.batch_size = 8;
        c.recipe.warmup_steps = 10;
        c.recipe.eval_every = 60;
        c.sweep.samplers = vec![SamplerId::Ddim, SamplerId::DpmSolver2M];
        c.sweep.steps = vec![2, 8];
        c.sweep.cfg = vec![1.0, 3.0];
        c.sweep.samples_per_cell = 16;
        c.sweep.bootstrap = 20;
        c.sweep.grid_budgets = vec![8.0];
        c.sweep.adaptive = Some(AdaptiveSampling::tiny());
        c.super_res = Some(SuperResConfig::tiny());
        c.distill = Some(DistillConfig::tiny());
        c.dreambooth = Some(DreamBoothConfig::tiny());
        c
    }

    /// A 2-core CPU in minutes.
    pub fn quick() -> StudyConfig {
        let mut c = base("quick");
        c.dataset = Some(quick_dataset());
        // 400 steps left the largest width's FID still falling fast (Fig. 3 curve).
        c.recipe.steps = 800;
        c.recipe.eval_every = 200;
        // The subjects are shapes: no DreamBooth section on Fashion-MNIST.
        if matches!(c.dataset, Some(DatasetSpec::Shapes(_))) {
            c.dreambooth = Some(DreamBoothConfig::quick());
        }
        c
    }

    /// Hours on a CPU: Fashion-MNIST at 32 px, five widths, Inception FID.
    pub fn full() -> StudyConfig {
        let mut c = base("full");
        c.dataset = Some(dataset("fashion-mnist"));
        c.resolution = 32;
        c.first_stage = FirstStage::Train {
            factor: 4,
            latent_channels: 4,
            width: 32,
            steps: 3000,
        };
        c.heads = 4;
        c.norm_groups = 8;
        c.train_examples = 60000;
        c.val_examples = 2000;
        c.widths = vec![16, 24, 32, 48, 64];
        c.recipe.steps = 20000;
        c.recipe.batch_size = 32;
        c.recipe.eval_every = 2000;
        c.sweep.steps = vec![4, 8, 16, 25, 50];
        c.sweep.cfg = vec![1.0, 1.5, 2.0, 3.0, 5.0, 7.5];
        c.sweep.seeds = vec![0, 1];
        c.sweep.samples_per_cell = 1000;
        c.sweep.bootstrap = 30;
        c.sweep.grid_budgets = vec![8.0, 25.0];
        c.sweep.adaptive = Some(AdaptiveSampling {
            max_samples_per_cell: 2000,
            ..AdaptiveSampling::quick()
        });
        c.fid_features = FidFeaturesKind::Inception;
        c.super_res = Some(SuperResConfig {
            train_pairs: 8192,
            eval_pairs: 1000,
            steps: 2000,
            batch_size: 32,
            learning_rate: 2e-4,
            warmup_steps: 100,
            snapshot_steps: vec![250, 500, 1000],
            sample_steps: vec![5, 10, 20, 50],
            ..SuperResConfig::quick()
        });
        c.distill = Some(DistillConfig::full());
        c
    }

    /// The paper's setup: trained on LAION-style WebDataset shards, evaluated on 30k images of
    /// COCO 2014 val; the SD VAE, a CLIP text encoder, Table 1's widths.
    pub fn paper() -> StudyConfig {
        StudyConfig {
            name: "paper".into(),
            dataset: None,
            train_dataset: Some(dataset("wds:laion/{00000..09999}.tar")),
            eval_dataset: Some(dataset("coco:annotations/captions_val2014.json:val2014")),
            resolution: 512,
            train_examples: 600_000_000,
            val_examples: 30_000,
            first_stage: FirstStage::Pretrained {
                path: "sd-vae".into(),
            },
            text_encoder: TextEncoderSpec::Clip("text_encoder".into()),
            cache_text_states: CacheTextStates::Auto,
            family: Family::Paper,
            widths: vec![64, 96, 128, 160, 192, 224, 256, 288, 320, 512, 768],
            heads: 8,
            norm_groups: 32,
            recipe: RecipeConfig {
                steps: 500_000,
                batch_size: 2048,
                learning_rate: 1e-4,
                warmup_steps: 10_000,
                text_dropout: 0.1,
                ema_max_decay: Some(0.9999),
                eval_every: 50_000,
            },
            sweep: SweepConfig {
                samplers: vec![SamplerId::Ddim, SamplerId::Ddpm, SamplerId::DpmSolver2M],
                steps: vec![4, 8, 10, 15, 20, 25, 30, 40, 50],
                cfg: vec![1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.5, 8.0],
                dpm_max_steps: 20,
                seeds: vec![0],
                samples_per_cell: 30_000,
                bootstrap: 20,
                grid_budgets: vec![10.0, 25.0],
                adaptive: None,
            },
            fid_features: FidFeaturesKind::Inception,
            super_res: Some(SuperResConfig::paper()),
            distill: Some(DistillConfig::paper()),
            dreambooth: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip() {
        for p in ["tiny", "quick", "full", "paper"] {
            let c = StudyConfig::preset(p).unwrap();
            c.validate().unwrap();
            assert_eq!(StudyConfig::from_toml(&c.to_toml(), p).unwrap(), c);
        }
        let q = StudyConfig::preset("quick").unwrap();
        // The quick preset's promise: >= 4 widths, 3 samplers, 5 step counts, 4 guidance rates.
        assert!(q.widths.len() >= 4 && q.sweep.samplers.len() >= 3);
        assert!(q.sweep.steps.len() >= 5 && q.sweep.cfg.len() >= 4);
        assert!(StudyConfig::preset("huge").is_err());
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = StudyConfig::preset("tiny").unwrap();
        c.widths = vec![10];
        assert!(c.validate().unwrap_err().contains("widths[0]: 10"));
        let mut c = StudyConfig::preset("tiny").unwrap();
        c.sweep.samplers = vec![SamplerId::Ddim, SamplerId::Lcm];
        assert!(
            c.validate()
                .unwrap_err()
                .contains("sweep.samplers[1]: lcm samples distilled students only")
        );
        let mut c = StudyConfig::preset("tiny").unwrap();
        let sr = c.super_res.as_mut().unwrap();
        sr.samplers = vec![SamplerId::Lcm];
        sr.snapshot_steps = vec![0];
        sr.eval_pairs = 1_000_000;
        let err = c.validate().unwrap_err();
        for field in [
            "super_res.samplers[0]: lcm",
            "super_res.snapshot_steps[0]: 0",
            "super_res.eval_pairs: 1000000 is outside 2..=64",
        ] {
            assert!(err.contains(field), "{field} missing from:\n{err}");
        }
        let text = StudyConfig::preset("tiny")
            .unwrap()
            .to_toml()
            .replace("resolution = 16", "resolutoin = 16");
        assert!(
            StudyConfig::from_toml(&text, "s.toml")
                .unwrap_err()
                .contains("resolutoin")
        );
    }

    /// cache_text_states reads "auto", true and false, is left out of the TOML when "auto"
    /// (so older configs and their fingerprints are unchanged), and names itself when wrong.
    #[test]
    fn cache_text_states_spellings() {
        let tiny = StudyConfig::preset("tiny").unwrap().to_toml();
        assert!(!tiny.contains("cache_text_states"), "{tiny}");
        let with = |value: &str| {
            let text = tiny.replacen(
                "resolution = ",
                &format!("cache_text_states = {value}\nresolution = "),
                1,
            );
            StudyConfig::from_toml(&text, "s.toml")
        };
        for (value, want) in [
            ("\"auto\"", CacheTextStates::Auto),
            ("true", CacheTextStates::Yes),
            ("false", CacheTextStates::No),
        ] {
            let c = with(value).unwrap();
            assert_eq!(c.cache_text_states, want, "{value}");
            assert_eq!(StudyConfig::from_toml(&c.to_toml(), "s.toml").unwrap(), c);
        }
        for (value, named) in [("\"yes\"", "\"yes\""), ("3", "cache_text_states")] {
            let err = with(value).unwrap_err();
            assert!(
                err.contains("cache_text_states") && err.contains(named),
                "{err}"
            );
            assert!(err.contains("expected \"auto\", true or false"), "{err}");
        }
    }

    /// The inputs that passed `--dry-run` and failed after the family trained: all
    /// named at once, by field, before any work.
    #[test]
    fn every_problem_is_named_before_any_work() {
        let mut c = StudyConfig::preset("tiny").unwrap();
        c.sweep.cfg = vec![f64::NAN, 3.0, 3.0004];
        c.sweep.steps = vec![0, 2];
        c.sweep.samplers = vec![];
        c.recipe.batch_size = 0;
        c.recipe.learning_rate = f64::NAN;
        c.heads = 0;
        let err = c.validate().unwrap_err();
        for field in [
            "sweep.cfg[0]: NaN",
            "sweep.cfg[2]: repeats",
            "sweep.steps[0]: 0 is outside 1..=1000",
            "sweep.samplers: must name at least one",
            "recipe.batch_size: 0",
            "recipe.learning_rate: NaN",
            "heads: 0",
            "widths[0]",
        ] {
            assert!(err.contains(field), "{field} missing from:\n{err}");
        }
        assert!(err.starts_with("9 problems:"), "{err}");
    }

    #[test]
    fn sizes_that_would_exhaust_memory_or_divide_by_zero_are_refused() {
        let tiny = StudyConfig::preset("tiny").unwrap();
        type Breakage = fn(&mut StudyConfig);
        let cases: [(&str, Breakage); 7] = [
            ("resolution", |c| c.resolution = 1_000_000),
            ("recipe.batch_size", |c| c.recipe.batch_size = 100_000_000),
            ("norm_groups", |c| c.norm_groups = 0),
            ("first_stage.factor", |c| {
                c.first_stage = FirstStage::Train {
                    factor: 0,
                    latent_channels: 4,
                    width: 16,
                    steps: 1,
                }
            }),
            ("resolution", |c| c.resolution = 24), // 6 px latents: not halvable twice
            ("train_examples", |c| c.train_examples = usize::MAX / 2),
            ("sweep: no cells", |c| {
                c.sweep.samplers = vec![SamplerId::DpmSolver2M];
                c.sweep.steps = vec![50];
            }),
        ];
        for (field, change) in cases {
            let mut c = tiny.clone();
            change(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn toml_nan_and_typed_dataset_errors_name_the_file_and_field() {
        let toml = StudyConfig::preset("tiny").unwrap().to_toml();
        let bad = toml.replace("cfg = [", "cfg = [nan, ");
        let err = StudyConfig::from_toml(&bad, "s.toml").unwrap_err();
        assert!(
            err.starts_with("s.toml: ") && err.contains("sweep.cfg[0]"),
            "{err}"
        );
        let bad = toml.replace("dataset = \"shapes\"", "dataset = \"shapez\"");
        let err = StudyConfig::from_toml(&bad, "s.toml").unwrap_err();
        assert!(err.contains("dataset") && err.contains("shapez"), "{err}");
        let table = toml.replace(
            "dataset = \"shapes\"",
            "dataset = { kind = \"shapes\", seed = 3 }",
        );
        let c = StudyConfig::from_toml(&table, "s.toml").unwrap();
        assert_eq!(c.dataset.unwrap().to_string(), "shapes:seed=3");
    }

    #[test]
    fn sources_are_one_dataset_or_train_and_eval_named_by_field() {
        let paper = StudyConfig::preset("paper").unwrap();
        let [train, eval] = paper.sources().unwrap();
        assert_eq!(train.spec.to_string(), "wds:laion/{00000..09999}.tar");
        assert!(eval.spec.to_string().starts_with("coco:"), "{}", eval.spec);
        let toml = paper.to_toml();
        assert!(toml.contains("train_dataset = ") && !toml.contains("\ndataset = "));
        let tiny = StudyConfig::preset("tiny").unwrap().to_toml();
        let parsed = StudyConfig::from_toml(&tiny, "s.toml").unwrap();
        let [train, eval] = parsed.sources().unwrap();
        assert_eq!((train.split, eval.split), (Split::Train, Split::Val));
        type Breakage = fn(&mut StudyConfig);
        let cases: [(&str, Breakage); 4] = [
            ("eval_dataset: missing", |c| {
                c.train_dataset = c.dataset.take();
            }),
            ("train_dataset: missing", |c| {
                c.eval_dataset = c.dataset.take();
            }),
            ("dataset: give either", |c| {
                c.eval_dataset = c.dataset.clone();
            }),
            ("eval_dataset: shapes is train_dataset itself", |c| {
                c.train_dataset = c.dataset.clone();
                c.eval_dataset = c.dataset.take();
            }),
        ];
        for (message, change) in cases {
            let mut c = StudyConfig::preset("tiny").unwrap();
            change(&mut c);
            let err = StudyConfig::from_toml(&c.to_toml(), "s.toml").unwrap_err();
            assert!(err.contains(message), "{message}: {err}");
        }
    }

    #[test]
    fn typed_fields_keep_their_toml_spelling() {
        let toml = StudyConfig::preset("paper").unwrap().to_toml();
        assert!(
            toml.contains("text_encoder = \"clip:text_encoder\""),
            "{toml}"
        );
        assert!(
            toml.contains("family = \"paper\"") && toml.contains("fid_features = \"inception\"")
        );
        assert!(toml.contains("\"dpmpp-2m\""), "{toml}");
        let bad = toml.replace("\"dpmpp-2m\"", "\"dpm++\"");
        let err = StudyConfig::from_toml(&bad, "s.toml").unwrap_err();
        assert!(
            err.contains("s.toml") && err.contains("dpm++") && err.contains("dpmpp-2m"),
            "{err}"
        );
        let bad = toml.replace("clip:text_encoder", "bert");
        assert!(
            StudyConfig::from_toml(&bad, "s.toml")
                .unwrap_err()
                .contains("text_encoder")
        );
    }

    #[test]
    fn dpm_cells_stop_at_twenty_steps() {
        let c = StudyConfig::preset("quick").unwrap();
        assert!(
            c.cells()
                .iter()
                .all(|c| !c.sampler.is_dpm_solver() || c.steps <= 20)
        );
        assert!(
            c.cells()
                .iter()
                .any(|c| c.sampler == SamplerId::Ddim && c.steps == 16)
        );
    }
}
