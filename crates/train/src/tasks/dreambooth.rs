//! DreamBooth (Ruiz et al. 2023; diffusers' `train_dreambooth.py`): a full finetune of a
//! pretrained UNet on a few instance examples of a subject, optionally with prior preservation.
//! The VAE and the text encoder stay frozen: the data are already-encoded latents and text
//! states. With the prior, every batch holds the instance examples and as many class examples
//! in one forward (instance rows first), and the loss is `mse(instance) + w * mse(prior)`.
//!
//! The config's `text_dropout` is not applied: the identifier lives in the instance prompt, so
//! dropping it would teach the subject without its name (diffusers drops nothing either).

use std::ops::Range;

use burn::tensor::{Device, Tensor};
use ldmscale_diffusion::objective::{DiffusionObjective, sample_timesteps, weighted_mse};
use ldmscale_model::{UNet, UNetConfig};
use rand::rngs::StdRng;

use crate::config::{ModelConfig, TrainConfig};
use crate::data::TrainingData;
use crate::error::TrainError;
use crate::params::{self, Named};
use crate::task::{ShardLoss, TrainTask};
use crate::tasks::super_res::{at_reference_width, check_model, normal, weights_digest};
use crate::tasks::text_to_image::{denoising_objective, rows_on};

/// diffusers' default `prior_loss_weight`.
pub const DEFAULT_PRIOR_WEIGHT: f64 = 1.0;

/// DreamBooth finetuning of a pretrained text-to-image UNet.
pub struct DreamBooth<'d> {
    instance: &'d dyn TrainingData,
    /// Class data for prior preservation, with its loss weight.
    class: Option<(&'d dyn TrainingData, f64)>,
    config: UNetConfig,
    /// The pretrained weights, the run's starting point.
    initial: Named,
    train_timesteps: usize,
    key: String,
    loss: DreamBoothLoss,
}

/// One DreamBooth micro-batch: instance rows, then (with the prior) as many class rows.
pub struct DreamBoothBatch {
    /// Clean latents `[R, C, h, w]`.
    pub x0: Tensor<4>,
    /// Noise `[R, C, h, w]`.
    pub noise: Tensor<4>,
    /// Text states `[R, L, D]`, never dropped.
    pub context: Tensor<3>,
    /// One training timestep per row.
    pub timesteps: Vec<usize>,
    /// Whether each row is a class (prior) example.
    pub prior: Vec<bool>,
}

/// The denoising loss with instance and prior rows weighted `1 : w`.
pub struct DreamBoothLoss {
    objective: DiffusionObjective,
    /// `w`, with prior preservation.
    prior_weight: Option<f32>,
}

impl<'d> DreamBooth<'d> {
    /// The task of `config` on `instance`, with prior preservation on `class` at loss weight
    /// `w` when given, starting from `pretrained` (its config and weights).
    pub fn new(
        config: &TrainConfig,
        instance: &'d dyn TrainingData,
        class: Option<(&'d dyn TrainingData, f64)>,
        (unet_config, pretrained): (&UNetConfig, UNet),
    ) -> Result<Self, TrainError> {
        check_model(config, unet_config)?;
        check_instance(instance, unet_config)?;
        if let Some((data, w)) = class {
            check_class(instance, data, w)?;
        }
        let initial = params::snapshot(&pretrained);
        let key = data_key(instance, class, &initial);
        let (objective, train_timesteps) = denoising_objective(config)?;
        Ok(Self {
            instance,
            class,
            config: unet_config.clone(),
            initial,
            train_timesteps,
            key,
            loss: DreamBoothLoss {
                objective,
                prior_weight: class.map(|(_, w)| w as f32),
            },
        })
    }

    /// Latents and states of the instance examples for `indices` (modulo their count), then
    /// of the class examples (modulo theirs), with the rows' prior flags.
    fn examples_of(
        &self,
        indices: &[usize],
        device: &Device,
    ) -> Result<(Tensor<4>, Tensor<3>, Vec<bool>), TrainError> {
        let (x0, context) = take(self.instance, indices, device)?;
        let Some((class, _)) = self.class else {
            return Ok((x0, context, vec![false; indices.len()]));
        };
        let (cx0, cctx) = take(class, indices, device)?;
        let prior = (0..2 * indices.len()).map(|i| i >= indices.len()).collect();
        let x0 = Tensor::cat(vec![x0, cx0], 0);
        Ok((x0, Tensor::cat(vec![context, cctx], 0), prior))
    }
}

/// Examples `indices` of `data`, each taken modulo its length (diffusers' dataset cycles the
/// smaller of the two sets).
fn take(
    data: &dyn TrainingData,
    indices: &[usize],
    device: &Device,
) -> Result<(Tensor<4>, Tensor<3>), TrainError> {
    let wrapped: Vec<usize> = indices.iter().map(|&i| i % data.len()).collect();
    data.batch(&wrapped, device)
        .map_err(|message| TrainError::Data { message })
}

/// The instance data must be non-empty and fit the UNet's input and text width.
fn check_instance(data: &dyn TrainingData, unet: &UNetConfig) -> Result<(), TrainError> {
    if data.is_empty() {
        return Err(TrainError::settings("instance", "no instance examples"));
    }
    let [c, ..] = data.latent_shape();
    if c != unet.in_channels || c != unet.out_channels {
        return Err(TrainError::settings(
            "instance",
            format!(
                "latents have {c} channels; the UNet has in_channels {} and out_channels {}",
                unet.in_channels, unet.out_channels
            ),
        ));
    }
    let [_, d] = data.context_shape();
    let width = unet.level(0).cross_attention_dim;
    if d != width {
        return Err(TrainError::settings(
            "instance",
            format!("text states are {d} wide; the UNet's cross_attention_dim is {width}"),
        ));
    }
    Ok(())
}

/// The prior weight must be finite and non-negative, the class data non-empty and shaped like
/// the instance data (they share one forward).
fn check_class(
    instance: &dyn TrainingData,
    class: &dyn TrainingData,
    w: f64,
) -> Result<(), TrainError> {
    if !w.is_finite() || w < 0.0 {
        return Err(TrainError::config(
            "prior_loss_weight",
            w,
            "must be finite and >= 0",
        ));
    }
    if class.is_empty() {
        return Err(TrainError::settings("class", "no class examples"));
    }
    let (il, cl) = (instance.latent_shape(), class.latent_shape());
    if il != cl {
        return Err(TrainError::settings(
            "class.latent_shape",
            format!("class latents are {cl:?}, instance latents {il:?}"),
        ));
    }
    let (ic, cc) = (instance.context_shape(), class.context_shape());
    if ic != cc {
        return Err(TrainError::settings(
            "class.context_shape",
            format!("class text states are {cc:?} [tokens, width], instance ones {ic:?}"),
        ));
    }
    Ok(())
}

/// Both data sets, the prior weight and the pretrained weights: a resume with any of them
/// changed is refused.
fn data_key(
    instance: &dyn TrainingData,
    class: Option<(&dyn TrainingData, f64)>,
    initial: &Named,
) -> String {
    let prior = match class {
        Some((data, w)) => format!("class {}, prior weight {w:?}", data.key()),
        None => "no prior".to_string(),
    };
    let digest = weights_digest(initial);
    format!(
        "dreambooth(instance {}, {prior}, unet {digest:016x})",
        instance.key()
    )
}

impl TrainTask for DreamBooth<'_> {
    type Batch = DreamBoothBatch;
    type Loss = DreamBoothLoss;

    fn data_key(&self) -> String {
        self.key.clone()
    }

    /// The larger of the two sets, as diffusers' dataset: the smaller one cycles.
    fn examples(&self) -> usize {
        let class = self.class.map_or(0, |(data, _)| data.len());
        self.instance.len().max(class)
    }

    /// The pretrained UNet (`model` only labels the run: see [`DreamBooth::new`]).
    fn unet_config(&self, _model: &ModelConfig) -> UNetConfig {
        self.config.clone()
    }

    fn forward_size(&self) -> [usize; 3] {
        self.instance.forward_size()
    }

    /// Timesteps, then noise, for all rows, from `rng`; no text dropout.
    fn draw(
        &self,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<DreamBoothBatch, TrainError> {
        let (x0, context, prior) = self.examples_of(indices, device)?;
        let [rows, c, h, w] = x0.dims();
        let timesteps = sample_timesteps(rng, rows, self.train_timesteps);
        let noise = normal(rng, [rows, c, h, w], device);
        Ok(DreamBoothBatch {
            x0,
            noise,
            context,
            timesteps,
            prior,
        })
    }

    fn shard_loss(&self) -> &DreamBoothLoss {
        &self.loss
    }

    fn initial_weights(&self) -> Option<&Named> {
        Some(&self.initial)
    }

    /// A forward and its backward per row; with the prior each sample brings two rows.
    fn forward_passes(&self) -> f64 {
        if self.class.is_some() { 6.0 } else { 3.0 }
    }

    fn reference_unet_config(&self, _config: &TrainConfig) -> UNetConfig {
        at_reference_width(&self.config)
    }
}

impl DreamBoothLoss {
    /// Per-row weights whose mean over the batch is `mse(instance) + w * mse(prior)`: with
    /// the prior half the rows are each kind, so each row counts twice. The run's min-SNR
    /// weights apply to instance rows only, as in diffusers.
    fn row_weights(&self, prior: &[bool], snr: &[f32]) -> Vec<f32> {
        let Some(w) = self.prior_weight else {
            return snr.to_vec();
        };
        prior
            .iter()
            .zip(snr)
            .map(|(&p, &s)| if p { 2.0 * w } else { 2.0 * s })
            .collect()
    }
}

impl ShardLoss<DreamBoothBatch> for DreamBoothLoss {
    fn rows(&self, batch: &DreamBoothBatch) -> usize {
        batch.timesteps.len()
    }

    fn shard(
        &self,
        batch: &DreamBoothBatch,
        rows: Range<usize>,
        device: &Device,
    ) -> DreamBoothBatch {
        let whole = rows.len() == batch.timesteps.len();
        DreamBoothBatch {
            x0: rows_on(&batch.x0, &rows, whole, device),
            noise: rows_on(&batch.noise, &rows, whole, device),
            context: rows_on(&batch.context, &rows, whole, device),
            timesteps: batch.timesteps[rows.clone()].to_vec(),
            prior: batch.prior[rows].to_vec(),
        }
    }

    fn loss(&self, unet: &UNet, shard: DreamBoothBatch) -> Result<Tensor<1>, TrainError> {
        let pair = self
            .objective
            .pair(shard.x0, shard.noise, &shard.timesteps)?;
        let t: Vec<f32> = shard.timesteps.iter().map(|&v| v as f32).collect();
        let out = unet.forward(pair.noisy.clone(), &t, shard.context);
        let weights = self.row_weights(&shard.prior, &pair.weights);
        Ok(weighted_mse(out, pair.target, &weights)?)
    }
}
