//! Text-to-image denoising: the paper's task. A batch is clean latents, noise, one timestep per
//! sample and the text states, some replaced by the null caption (text dropout, for CFG).

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::objective::{DiffusionObjective, drop_text, sample_timesteps};
use ldmscale_diffusion::{NoiseSchedule, PredictionType, SchedulerConfig};
use ldmscale_model::{UNet, UNetConfig};
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::config::{ModelConfig, Objective, TrainConfig};
use crate::data::TrainingData;
use crate::error::TrainError;
use crate::task::{ShardLoss, TrainTask};

/// Text-to-image training on any [`TrainingData`].
pub struct TextToImage<'d> {
    data: &'d dyn TrainingData,
    /// The null caption's text states `[1, L, D]`, on the drawing device.
    null: Tensor<3>,
    text_dropout: f32,
    train_timesteps: usize,
    loss: DenoisingLoss,
}

/// One text-to-image micro-batch.
pub struct TextImageBatch {
    /// Clean latents `[B, C, h, w]`.
    pub x0: Tensor<4>,
    /// Noise `[B, C, h, w]`.
    pub noise: Tensor<4>,
    /// Text states after dropout `[B, L, D]`.
    pub context: Tensor<3>,
    /// One training timestep per sample.
    pub timesteps: Vec<usize>,
}

/// The denoising loss of the run's objective (epsilon or v, optionally min-SNR weighted).
pub struct DenoisingLoss {
    objective: DiffusionObjective,
}

impl DenoisingLoss {
    /// The loss of `objective`.
    pub fn new(objective: DiffusionObjective) -> Self {
        Self { objective }
    }
}

impl<'d> TextToImage<'d> {
    /// The task of `config` on `data`, drawing batches on plain device `device`.
    pub fn new(
        config: &TrainConfig,
        data: &'d dyn TrainingData,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let (objective, train_timesteps) = denoising_objective(config)?;
        Ok(Self {
            data,
            null: data.null_context(device),
            text_dropout: config.text_dropout as f32,
            train_timesteps,
            loss: DenoisingLoss::new(objective),
        })
    }
}

/// The run's objective (epsilon or v, optionally min-SNR weighted) over SD's noise schedule,
/// and the schedule's training timesteps.
pub(crate) fn denoising_objective(
    config: &TrainConfig,
) -> Result<(DiffusionObjective, usize), TrainError> {
    let prediction = match config.objective {
        Objective::Epsilon => PredictionType::Epsilon,
        Objective::VPrediction => PredictionType::VPrediction,
    };
    let schedule = NoiseSchedule::new(&SchedulerConfig::sd())?;
    let train_timesteps = schedule.len();
    let objective = DiffusionObjective::new(schedule, prediction, config.snr_gamma)?;
    Ok((objective, train_timesteps))
}

impl TrainTask for TextToImage<'_> {
    type Batch = TextImageBatch;
    type Loss = DenoisingLoss;

    fn data_key(&self) -> String {
        self.data.key()
    }

    fn examples(&self) -> usize {
        self.data.len()
    }

    fn unet_config(&self, model: &ModelConfig) -> UNetConfig {
        let [c, h, _] = self.data.latent_shape();
        let [_, d] = self.data.context_shape();
        model.unet(c, h, d)
    }

    fn forward_size(&self) -> [usize; 3] {
        self.data.forward_size()
    }

    /// Timesteps, then noise, then text dropout, all from `rng`.
    fn draw(
        &self,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<TextImageBatch, TrainError> {
        let (x0, context) = self
            .data
            .batch(indices, device)
            .map_err(|message| TrainError::Data { message })?;
        let b = indices.len();
        let timesteps = sample_timesteps(rng, b, self.train_timesteps);
        let [c, h, w] = self.data.latent_shape();
        let noise: Vec<f32> = (0..b * c * h * w)
            .map(|_| StandardNormal.sample(&mut *rng))
            .collect();
        let noise = Tensor::<4>::from_data(TensorData::new(noise, [b, c, h, w]), device);
        let (context, _) = drop_text(context, &self.null, self.text_dropout, rng)?;
        Ok(TextImageBatch {
            x0,
            noise,
            context,
            timesteps,
        })
    }

    fn shard_loss(&self) -> &DenoisingLoss {
        &self.loss
    }
}

impl ShardLoss<TextImageBatch> for DenoisingLoss {
    fn rows(&self, batch: &TextImageBatch) -> usize {
        batch.timesteps.len()
    }

    fn shard(&self, batch: &TextImageBatch, rows: Range<usize>, device: &Device) -> TextImageBatch {
        let whole = rows.len() == batch.timesteps.len();
        TextImageBatch {
            x0: rows_on(&batch.x0, &rows, whole, device),
            noise: rows_on(&batch.noise, &rows, whole, device),
            context: rows_on(&batch.context, &rows, whole, device),
            timesteps: batch.timesteps[rows].to_vec(),
        }
    }

    fn loss(&self, unet: &UNet, shard: TextImageBatch) -> Result<Tensor<1>, TrainError> {
        let pair = self
            .objective
            .pair(shard.x0, shard.noise, &shard.timesteps)?;
        let t: Vec<f32> = shard.timesteps.iter().map(|&v| v as f32).collect();
        let out = unet.forward(pair.noisy.clone(), &t, shard.context);
        Ok(self.objective.loss(out, &pair)?)
    }
}

/// Rows `rows` of `t` (all of it, without a copy, when `whole`) on autodiff device `device`.
pub(crate) fn rows_on<const D: usize>(
    t: &Tensor<D>,
    rows: &Range<usize>,
    whole: bool,
    device: &Device,
) -> Tensor<D> {
    let t = if whole {
        t.clone()
    } else {
        t.clone().narrow(0, rows.start, rows.len())
    };
    t.to_device(device).autodiff()
}
