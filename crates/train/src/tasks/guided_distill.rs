//! Guided distillation, stage 1 (Meng et al., "On Distillation of Guided Diffusion Models";
//! the paper's App. C): a student that reads the guidance `w` as an embedding learns to
//! output, in one evaluation, what the frozen teacher gives with classifier-free guidance in
//! two.
//!
//! The student is the teacher with a zero-initialised guidance embedding (as LCM's, so step 0
//! equals the teacher's conditional model for every `w`). A step draws `t ~ U{0..999}` and
//! `w ~ U[w_min, w_max]` per sample (LCM form, `x0 = c + w (c - u)`: CFG scale `w + 1`); the
//! teacher's conditional and unconditional halves in one forward give the guided clean
//! estimate, and the loss is the student's clean estimate against it in x space, weighted by
//! the truncated SNR `max(SNR(t), 1)` as Salimans & Ho's progressive distillation, whose
//! rounds (stage 2, halving the steps) take such a student as their first teacher.

use std::ops::Range;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use ldmscale_diffusion::objective::add_noise;
use ldmscale_diffusion::{NoiseSchedule, PredictionType, SchedulerConfig};
use ldmscale_model::{ExtraConditioning, UNet, UNetConfig};
use rand::RngExt;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, TrainConfig};
use crate::data::TrainingData;
use crate::error::TrainError;
use crate::params::{self, Named};
use crate::task::{ShardLoss, TrainTask};
use crate::tasks::lcm_distill::{
    alphas, as_f32, check_teacher, digest, embeddings, normal, per_row, prediction_type,
};
use crate::tasks::super_res::at_reference_width;
use crate::tasks::text_to_image::rows_on;

/// Forward-pass equivalents per sample of a training step: the student's forward and
/// backward (3) and the teacher's two halves (2).
pub const FORWARD_PASSES: f64 = 5.0;

/// The stage-1 recipe beyond the optimizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuidedOptions {
    /// Lowest guidance drawn, LCM form (CFG scale `w + 1`).
    pub w_min: f64,
    /// Highest guidance drawn.
    pub w_max: f64,
    /// Width of the student's guidance embedding (`time_cond_proj_dim`).
    pub embedding_dim: usize,
}

impl Default for GuidedOptions {
    fn default() -> Self {
        Self {
            w_min: 0.0,
            w_max: 4.0,
            embedding_dim: 256,
        }
    }
}

impl GuidedOptions {
    /// Checks every field; the error names it (`guided.x`).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &str, value: &dyn ToString, message: &str| {
            Err(TrainError::config(
                format!("guided.{field}"),
                value.to_string(),
                message,
            ))
        };
        if !(self.w_min.is_finite() && self.w_min >= 0.0) {
            return bad("w_min", &self.w_min, "must be a finite guidance >= 0");
        }
        if !self.w_max.is_finite() || self.w_max < self.w_min {
            let message = format!("must be finite and at least guided.w_min = {}", self.w_min);
            return bad("w_max", &self.w_max, &message);
        }
        if self.embedding_dim < 4 {
            return bad("embedding_dim", &self.embedding_dim, "must be at least 4");
        }
        Ok(())
    }
}

/// Stage 1 of guided distillation on cached latents and text states.
pub struct GuidedDistill<'d> {
    data: &'d dyn TrainingData,
    /// The frozen teacher, on the drawing device.
    teacher: UNet,
    student_config: UNetConfig,
    /// The student at step 0 (the teacher's weights, zero `cond_proj`).
    initial: Named,
    /// The null caption's states `[1, L, D]` (the teacher's unconditional half).
    null: Tensor<3>,
    schedule: NoiseSchedule,
    options: GuidedOptions,
    key: String,
    loss: GuidedLoss,
}

/// One micro-batch: the student's inputs and the teacher's guided clean estimate.
pub struct GuidedBatch {
    /// `z_t` `[B, C, h, w]`.
    pub noisy: Tensor<4>,
    /// Text states `[B, L, D]`.
    pub context: Tensor<3>,
    /// Embeddings of each sample's guidance `[B, embedding_dim]`.
    pub guidance: Tensor<2>,
    /// `t` per sample.
    pub timesteps: Vec<usize>,
    /// The teacher's guided clean estimate `[B, C, h, w]`.
    pub target: Tensor<4>,
}

/// The student's clean estimate against a target's, SNR-weighted (both guided stages).
pub struct GuidedLoss {
    schedule: NoiseSchedule,
    prediction: PredictionType,
}

impl GuidedLoss {
    pub(crate) fn new(schedule: NoiseSchedule, prediction: PredictionType) -> Self {
        Self {
            schedule,
            prediction,
        }
    }

    /// What the UNets predict.
    pub(crate) fn prediction(&self) -> PredictionType {
        self.prediction
    }
}

impl<'d> GuidedDistill<'d> {
    /// The task of `config` on `data`, distilling `teacher` (its config and weights) under
    /// `options`, drawing batches on plain device `device`.
    pub fn new(
        config: &TrainConfig,
        data: &'d dyn TrainingData,
        (teacher_config, teacher): (&UNetConfig, UNet),
        options: GuidedOptions,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let schedule = NoiseSchedule::new(&SchedulerConfig::sd())?;
        options.validate()?;
        check_teacher(config, teacher_config, data)?;
        let student_config = teacher_config
            .with_guidance_embedding(options.embedding_dim)
            .map_err(|message| TrainError::settings("teacher", message))?;
        let teacher = teacher.to_device(device);
        let initial = params::snapshot(
            &teacher
                .clone()
                .with_guidance_embedding(options.embedding_dim),
        );
        let key = format!(
            "guided-distill({}, teacher {:016x}, {options:?})",
            data.key(),
            digest(&params::snapshot(&teacher))
        );
        Ok(Self {
            data,
            teacher,
            student_config,
            initial,
            null: data.null_context(device),
            loss: GuidedLoss::new(schedule.clone(), prediction_type(config)),
            schedule,
            options,
            key,
        })
    }

    /// The student's config (the teacher's with `time_cond_proj_dim`).
    pub fn student_config(&self) -> &UNetConfig {
        &self.student_config
    }

    /// The teacher's guided clean estimate at `(z_t, t)` for LCM-form guidances `w`, both
    /// halves in one evaluation.
    fn guided_x0(
        &self,
        noisy: Tensor<4>,
        t: &[usize],
        context: Tensor<3>,
        w: &[f32],
    ) -> Result<Tensor<4>, TrainError> {
        let [b, l, d] = context.dims();
        let device = noisy.device();
        let null = self.null.clone().to_device(&device).expand([b, l, d]);
        let both_t: Vec<f32> = as_f32(t).into_iter().cycle().take(2 * b).collect();
        let both = Tensor::cat(vec![noisy.clone(), noisy.clone()], 0);
        let out = self
            .teacher
            .forward(both, &both_t, Tensor::cat(vec![context, null], 0));
        let a = alphas(&self.schedule, t)?;
        let p = self.loss.prediction;
        let (x0_c, _) = p.x0_and_eps_per_sample(noisy.clone(), out.clone().narrow(0, 0, b), &a)?;
        let (x0_u, _) = p.x0_and_eps_per_sample(noisy, out.narrow(0, b, b), &a)?;
        Ok(x0_c.clone() + (x0_c - x0_u) * per_row(w.to_vec(), &device))
    }
}

impl TrainTask for GuidedDistill<'_> {
    type Batch = GuidedBatch;
    type Loss = GuidedLoss;

    fn data_key(&self) -> String {
        self.key.clone()
    }

    fn examples(&self) -> usize {
        self.data.len()
    }

    /// The student (`model` only labels the run).
    fn unet_config(&self, _model: &ModelConfig) -> UNetConfig {
        self.student_config.clone()
    }

    fn forward_size(&self) -> [usize; 3] {
        self.data.forward_size()
    }

    /// Examples, then timesteps, noise and guidance from `rng`.
    fn draw(
        &self,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<GuidedBatch, TrainError> {
        let (x0, context) = self
            .data
            .batch(indices, device)
            .map_err(|message| TrainError::Data { message })?;
        let b = indices.len();
        let timesteps: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..self.schedule.len()))
            .collect();
        let noise = normal(rng, x0.dims(), device);
        let o = &self.options;
        let w: Vec<f32> = (0..b)
            .map(|_| (o.w_min + (o.w_max - o.w_min) * rng.random::<f64>()) as f32)
            .collect();
        let noisy = add_noise(&self.schedule, x0, noise, &timesteps)?;
        let target = self.guided_x0(noisy.clone(), &timesteps, context.clone(), &w)?;
        Ok(GuidedBatch {
            guidance: embeddings(&w, o.embedding_dim, device)?,
            noisy,
            context,
            timesteps,
            target,
        })
    }

    fn shard_loss(&self) -> &GuidedLoss {
        &self.loss
    }

    fn initial_weights(&self) -> Option<&Named> {
        Some(&self.initial)
    }

    fn reference_unet_config(&self, _config: &TrainConfig) -> UNetConfig {
        at_reference_width(&self.student_config)
    }

    fn forward_passes(&self) -> f64 {
        FORWARD_PASSES
    }
}

impl ShardLoss<GuidedBatch> for GuidedLoss {
    fn rows(&self, batch: &GuidedBatch) -> usize {
        batch.timesteps.len()
    }

    fn shard(&self, batch: &GuidedBatch, rows: Range<usize>, device: &Device) -> GuidedBatch {
        let whole = rows.len() == batch.timesteps.len();
        GuidedBatch {
            noisy: rows_on(&batch.noisy, &rows, whole, device),
            context: rows_on(&batch.context, &rows, whole, device),
            guidance: rows_on(&batch.guidance, &rows, whole, device),
            timesteps: batch.timesteps[rows.clone()].to_vec(),
            target: rows_on(&batch.target, &rows, whole, device),
        }
    }

    /// `mean(max(SNR(t), 1) (x0_student - x0_target)^2)`.
    fn loss(&self, unet: &UNet, shard: GuidedBatch) -> Result<Tensor<1>, TrainError> {
        let t = as_f32(&shard.timesteps);
        let extra = ExtraConditioning {
            timestep_cond: Some(shard.guidance),
            ..ExtraConditioning::default()
        };
        let out = unet.forward_with(shard.noisy.clone(), &t, shard.context, &extra);
        let a = alphas(&self.schedule, &shard.timesteps)?;
        let (x0, _) = self
            .prediction
            .x0_and_eps_per_sample(shard.noisy, out, &a)?;
        let weights: Vec<f32> = a.iter().map(|a| (a / (1.0 - a)).max(1.0)).collect();
        let device = x0.device();
        Ok(((x0 - shard.target).powi_scalar(2) * per_row(weights, &device)).mean())
    }
}
