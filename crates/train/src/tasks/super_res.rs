//! Super-resolution finetuning (the paper's Sec. 3.2): the pretrained text-to-image UNet widened
//! to read the LR latent beside the noisy one ([`UNet::into_super_res`]: new input weights zero,
//! old weights and bias copied), trained with the text-to-image objective on (HR latent, LR
//! latent) pairs under the fixed empty-prompt context. No caption dropout: there are no captions.
//! Optional noise augmentation of the LR latent ([`SrOptions::noise_augmentation`], off by
//! default): a random level per sample of the x4 upscaler's schedule, fed to a zero-initialised
//! noise-level embedding.

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::objective::{DiffusionObjective, sample_timesteps};
use ldmscale_model::unet::PerLevel;
use ldmscale_model::{ExtraConditioning, UNet, UNetConfig};
use ldmscale_pipeline::{level_labels, low_res_schedule, noise_lr};
use rand::RngExt;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::config::{ModelConfig, TrainConfig};
use crate::error::TrainError;
use crate::params::{self, Named};
use crate::task::{ShardLoss, TrainTask};
use crate::tasks::text_to_image::{denoising_objective, rows_on};
use crate::trainer::REFERENCE_WIDTH;

/// Super-resolution training pairs by example index.
pub trait SrData {
    /// Number of pairs.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[channels, h, w]` of one HR latent (the LR latent, of the LR image upsampled x4, has
    /// the same shape).
    fn latent_shape(&self) -> [usize; 3];
    /// HR latents and LR latents `[B, C, h, w]` of examples `indices`.
    fn pairs(&self, indices: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<4>), String>;
    /// Identifies the data (images, degradation, first stage) for resume checks.
    fn key(&self) -> String;
}

/// Super-resolution finetuning of a pretrained text-to-image UNet.
pub struct SuperRes<'d> {
    data: &'d dyn SrData,
    /// The SR UNet's config (`in_channels` doubled).
    config: UNetConfig,
    /// The widened pretrained weights, the run's starting point.
    initial: Named,
    /// The empty prompt's text states `[1, L, D]`.
    context: Tensor<3>,
    train_timesteps: usize,
    key: String,
    /// The highest LR noise level drawn, when augmenting.
    max_noise_level: Option<usize>,
    loss: SrLoss,
}

/// Choices of the super-resolution task beyond the recipe.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SrOptions {
    /// Noise-augment the LR latent with levels drawn from `0..=max` (diffusers' x4 upscaler:
    /// 350) of [`low_res_schedule`], the level fed to a noise-level embedding of
    /// [`NOISE_LEVELS`] entries. `None` (the default): the LR latent as encoded.
    pub noise_augmentation: Option<usize>,
}

/// Entries of the noise-level embedding (diffusers' x4 upscaler's `num_class_embeds`).
pub const NOISE_LEVELS: usize = 1000;

/// One super-resolution micro-batch.
pub struct SrBatch {
    /// Clean HR latents `[B, C, h, w]`.
    pub x0: Tensor<4>,
    /// LR latents `[B, C, h, w]`.
    pub lr: Tensor<4>,
    /// Noise `[B, C, h, w]`.
    pub noise: Tensor<4>,
    /// The empty prompt's states for every row `[B, L, D]`.
    pub context: Tensor<3>,
    /// One training timestep per sample.
    pub timesteps: Vec<usize>,
    /// The LR latents' noise level per sample (empty without noise augmentation).
    pub noise_levels: Vec<usize>,
}

/// The text-to-image denoising loss with the LR latent concatenated to the noisy input.
pub struct SrLoss {
    objective: DiffusionObjective,
}

impl<'d> SuperRes<'d> {
    /// The task of `config` on `data`, starting from text-to-image UNet `pretrained` (its
    /// config and weights), under `context` (the empty prompt's states `[1, L, D]`).
    pub fn new(
        config: &TrainConfig,
        data: &'d dyn SrData,
        pretrained: (&UNetConfig, UNet),
        context: Tensor<3>,
    ) -> Result<Self, TrainError> {
        Self::with_options(config, data, pretrained, context, SrOptions::default())
    }

    /// [`SuperRes::new`] with `options`.
    pub fn with_options(
        config: &TrainConfig,
        data: &'d dyn SrData,
        (pretrained_config, pretrained): (&UNetConfig, UNet),
        context: Tensor<3>,
        options: SrOptions,
    ) -> Result<Self, TrainError> {
        let [c, ..] = data.latent_shape();
        let (mut sr_config, mut sr) = pretrained
            .into_super_res(pretrained_config, c)
            .map_err(|message| TrainError::settings("unet", message))?;
        check_model(config, &sr_config)?;
        check_context(&context, &sr_config)?;
        let mut key = format!("super-res({}", data.key());
        if let Some(max) = options.noise_augmentation {
            check_noise_level(max)?;
            sr_config = sr_config.with_noise_level_embedding(NOISE_LEVELS);
            sr = sr.with_noise_level_embedding(NOISE_LEVELS);
            key.push_str(&format!(", LR noise levels 0..={max}"));
        }
        let initial = params::snapshot(&sr);
        let key = format!("{key}, unet {:016x})", weights_digest(&initial));
        let (objective, train_timesteps) = denoising_objective(config)?;
        Ok(Self {
            data,
            config: sr_config,
            initial,
            context,
            train_timesteps,
            key,
            max_noise_level: options.noise_augmentation,
            loss: SrLoss { objective },
        })
    }

    /// The SR UNet's config.
    pub fn sr_config(&self) -> &UNetConfig {
        &self.config
    }
}

/// `model.width` must name the pretrained UNet's base width (it labels the run).
pub(crate) fn check_model(config: &TrainConfig, sr: &UNetConfig) -> Result<(), TrainError> {
    let base = sr.base_channels();
    if config.model.width != base {
        return Err(TrainError::config(
            "model.width",
            config.model.width,
            format!("the pretrained UNet's base width is {base} (block_out_channels[0])"),
        ));
    }
    Ok(())
}

/// The highest noise-augmentation level must be a level of the LR schedule and the embedding.
pub fn check_noise_level(max: usize) -> Result<(), TrainError> {
    let levels = NOISE_LEVELS.min(low_res_schedule().num_train_timesteps);
    if max >= levels {
        return Err(TrainError::config(
            "noise_augmentation",
            max,
            format!("the highest noise level must be below {levels}"),
        ));
    }
    Ok(())
}

fn check_context(context: &Tensor<3>, sr: &UNetConfig) -> Result<(), TrainError> {
    let [n, _, d] = context.dims();
    let width = sr.level(0).cross_attention_dim;
    if n != 1 || d != width {
        return Err(TrainError::settings(
            "context",
            format!(
                "the empty prompt's states are {:?}; the UNet needs [1, L, {width}] \
                 (cross_attention_dim)",
                context.dims()
            ),
        ));
    }
    Ok(())
}

/// A stable digest of weights (FNV-1a over names and f32 bits), so a run refuses to resume
/// from another pretrained model.
pub(crate) fn weights_digest(weights: &Named) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, t) in weights {
        eat(name.as_bytes());
        for v in crate::params::into_values(t.clone()) {
            eat(&v.to_le_bytes());
        }
    }
    h
}

/// `shape` standard-normal values from `rng`.
pub(crate) fn normal(rng: &mut StdRng, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut *rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `config` at base width 320 (every level scaled alike, multiples of 32 channels) with 32
/// groups and 8 heads: the paper's reference for normalised cost.
pub fn at_reference_width(config: &UNetConfig) -> UNetConfig {
    let base = config.base_channels() as f64;
    let mut reference = config.clone();
    reference.block_out_channels = config
        .block_out_channels
        .iter()
        .map(|&c| ((c as f64 * REFERENCE_WIDTH as f64 / base / 32.0).round() as usize).max(1) * 32)
        .collect();
    reference.norm_num_groups = 32;
    reference.attention_head_dim = PerLevel::All(8);
    reference.num_attention_heads = None;
    reference
}

impl TrainTask for SuperRes<'_> {
    type Batch = SrBatch;
    type Loss = SrLoss;

    fn data_key(&self) -> String {
        self.key.clone()
    }

    fn examples(&self) -> usize {
        self.data.len()
    }

    /// The widened pretrained UNet (`model` only labels the run: see [`SuperRes::new`]).
    fn unet_config(&self, _model: &ModelConfig) -> UNetConfig {
        self.config.clone()
    }

    fn forward_size(&self) -> [usize; 3] {
        let [_, h, w] = self.data.latent_shape();
        let [_, l, _] = self.context.dims();
        [h, w, l]
    }

    /// Timesteps, then noise, then (when augmenting) LR noise levels and LR noise, from `rng`.
    fn draw(
        &self,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<SrBatch, TrainError> {
        let (x0, lr) = self
            .data
            .pairs(indices, device)
            .map_err(|message| TrainError::Data { message })?;
        let b = indices.len();
        let timesteps = sample_timesteps(rng, b, self.train_timesteps);
        let [c, h, w] = self.data.latent_shape();
        let noise = normal(rng, [b, c, h, w], device);
        let (lr, noise_levels) = match self.max_noise_level {
            Some(max) => {
                let levels: Vec<usize> = (0..b).map(|_| rng.random_range(0..=max)).collect();
                let lr_noise = normal(rng, [b, c, h, w], device);
                let lr = noise_lr(lr, lr_noise, &levels).map_err(|e| TrainError::Data {
                    message: e.to_string(),
                })?;
                (lr, levels)
            }
            None => (lr, Vec::new()),
        };
        let [_, l, d] = self.context.dims();
        let context = self.context.clone().to_device(device).expand([b, l, d]);
        Ok(SrBatch {
            x0,
            lr,
            noise,
            context,
            timesteps,
            noise_levels,
        })
    }

    fn shard_loss(&self) -> &SrLoss {
        &self.loss
    }

    fn initial_weights(&self) -> Option<&Named> {
        Some(&self.initial)
    }

    fn reference_unet_config(&self, _config: &TrainConfig) -> UNetConfig {
        at_reference_width(&self.config)
    }
}

impl ShardLoss<SrBatch> for SrLoss {
    fn rows(&self, batch: &SrBatch) -> usize {
        batch.timesteps.len()
    }

    fn shard(&self, batch: &SrBatch, rows: Range<usize>, device: &Device) -> SrBatch {
        let whole = rows.len() == batch.timesteps.len();
        SrBatch {
            x0: rows_on(&batch.x0, &rows, whole, device),
            lr: rows_on(&batch.lr, &rows, whole, device),
            noise: rows_on(&batch.noise, &rows, whole, device),
            context: rows_on(&batch.context, &rows, whole, device),
            timesteps: batch.timesteps[rows.clone()].to_vec(),
            noise_levels: match batch.noise_levels.is_empty() {
                true => Vec::new(),
                false => batch.noise_levels[rows].to_vec(),
            },
        }
    }

    fn loss(&self, unet: &UNet, shard: SrBatch) -> Result<Tensor<1>, TrainError> {
        let pair = self
            .objective
            .pair(shard.x0, shard.noise, &shard.timesteps)?;
        let t: Vec<f32> = shard.timesteps.iter().map(|&v| v as f32).collect();
        let input = Tensor::cat(vec![pair.noisy.clone(), shard.lr], 1);
        let mut extra = ExtraConditioning::default();
        if !shard.noise_levels.is_empty() {
            extra.class_labels = Some(level_labels(&shard.noise_levels, &input.device()));
        }
        let out = unet.forward_with(input, &t, shard.context, &extra);
        Ok(self.objective.loss(out, &pair)?)
    }
}
