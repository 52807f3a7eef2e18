//! Latent consistency distillation (LCM, Luo et al. 2023; diffusers'
//! `train_lcm_distill_sd_wds.py`) of a text-to-image teacher into a few-step student.
//!
//! The student is the teacher with a zero guidance-embedding projection
//! ([`UNet::with_guidance_embedding`]), so at step 0 it equals the teacher for every guidance.
//! A step draws a DDIM index `i` of the 50-step solver (`t = ddim_t[i]`, `s = max(t - 20, 0)`)
//! and a guidance `w ~ U[w_min, w_max]` per sample; the frozen teacher takes one DDIM step
//! `t -> s` under classifier-free guidance in LCM form (`x0 = c + w (c - u)`), and the target is
//! an EMA copy of the student at `(z_s, s)`. Both sides apply the boundary scalings `c_skip`,
//! `c_out`; the loss is L2 or Huber. The student reads the embedding of `w` (the sampler gives
//! it `cfg - 1`, diffusers' convention). The EMA target is the task's extra state: every
//! checkpoint stores it, so a resumed run is bit-identical. The config's `text_dropout` is
//! not applied: the teacher's unconditional half reads the null caption already.

use std::ops::Range;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::objective::add_noise;
use ldmscale_diffusion::{
    NoiseSchedule, PredictionType, SchedulerConfig, boundary_scalings, guidance_embedding,
};
use ldmscale_model::unet::config::{DOWN_CROSS_ATTN, MID_CROSS_ATTN};
use ldmscale_model::{ExtraConditioning, UNet, UNetConfig};
use rand::RngExt;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, Objective, TrainConfig};
use crate::data::TrainingData;
use crate::error::TrainError;
use crate::params::{self, Named};
use crate::task::{ShardLoss, TrainTask};
use crate::tasks::ema_target::EmaTarget;
use crate::tasks::super_res::at_reference_width;
use crate::tasks::text_to_image::rows_on;

/// The distance between the student's and the target's consistency outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyLoss {
    /// Mean squared error (diffusers' default).
    #[default]
    L2,
    /// Pseudo-Huber `mean(sqrt(d^2 + c^2) - c)` with `c` = [`LcmOptions::huber_c`].
    Huber,
}

/// Forward-pass equivalents per sample of a training step: the student's forward and
/// backward (3), the teacher's two halves and the target (3).
pub const FORWARD_PASSES: f64 = 6.0;

/// The LCM recipe beyond the optimizer (the `[lcm]` table of a distillation config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LcmOptions {
    /// Lowest guidance drawn, LCM form (`x0 = c + w (c - u)`, i.e. CFG scale `w + 1`).
    pub w_min: f64,
    /// Highest guidance drawn.
    pub w_max: f64,
    /// Width of the student's guidance embedding (`time_cond_proj_dim`).
    pub embedding_dim: usize,
    /// Steps of the DDIM solver over the training schedule (skip = timesteps / steps).
    pub ddim_steps: usize,
    /// Decay of the EMA target.
    pub ema_decay: f64,
    /// L2 or Huber.
    pub loss: ConsistencyLoss,
    /// The Huber loss's `c`.
    pub huber_c: f64,
    /// Scale of `t` in the boundary scalings (LCMScheduler's `timestep_scaling`).
    pub timestep_scaling: f64,
}

impl Default for LcmOptions {
    fn default() -> Self {
        Self {
            w_min: 5.0,
            w_max: 15.0,
            embedding_dim: 256,
            ddim_steps: 50,
            ema_decay: 0.95,
            loss: ConsistencyLoss::L2,
            huber_c: 0.001,
            timestep_scaling: 10.0,
        }
    }
}

impl LcmOptions {
    /// Checks every field (against SD's training schedule, the task's); the error names the
    /// field (`lcm.x`).
    pub fn validate(&self) -> Result<(), TrainError> {
        let train_timesteps = SchedulerConfig::sd().num_train_timesteps;
        let bad = |field: &str, value: &dyn ToString, message: &str| {
            Err(TrainError::config(
                format!("lcm.{field}"),
                value.to_string(),
                message,
            ))
        };
        if !(self.w_min.is_finite() && self.w_min >= 0.0) {
            return bad("w_min", &self.w_min, "must be a finite guidance >= 0");
        }
        if !self.w_max.is_finite() || self.w_max < self.w_min {
            let message = format!("must be finite and at least lcm.w_min = {}", self.w_min);
            return bad("w_max", &self.w_max, &message);
        }
        if self.embedding_dim < 4 {
            return bad("embedding_dim", &self.embedding_dim, "must be at least 4");
        }
        if self.ddim_steps == 0 || !train_timesteps.is_multiple_of(self.ddim_steps) {
            let message = format!("must divide the {train_timesteps} training timesteps");
            return bad("ddim_steps", &self.ddim_steps, &message);
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("ema_decay", &self.ema_decay, "must be in [0, 1)");
        }
        if !(self.huber_c.is_finite() && self.huber_c > 0.0) {
            return bad("huber_c", &self.huber_c, "must be finite and > 0");
        }
        if !(self.timestep_scaling.is_finite() && self.timestep_scaling > 0.0) {
            return bad("timestep_scaling", &self.timestep_scaling, "must be > 0");
        }
        Ok(())
    }
}

/// LCM distillation of a text-to-image teacher on cached latents and text states.
pub struct LcmDistill<'d> {
    data: &'d dyn TrainingData,
    /// The frozen teacher, on the drawing device.
    teacher: UNet,
    student_config: UNetConfig,
    /// The student at step 0 (the teacher's weights, zero `cond_proj`).
    initial: Named,
    /// The EMA target, on the drawing device.
    target: EmaTarget,
    /// The null caption's states `[1, L, D]` (the teacher's unconditional half).
    null: Tensor<3>,
    schedule: NoiseSchedule,
    options: LcmOptions,
    key: String,
    loss: LcmLoss,
}

/// One LCM micro-batch: the student's inputs and the (gradient-free) target.
pub struct LcmBatch {
    /// `z_t` `[B, C, h, w]`.
    pub noisy: Tensor<4>,
    /// Text states `[B, L, D]`.
    pub context: Tensor<3>,
    /// Embeddings of each sample's guidance `[B, embedding_dim]`.
    pub guidance: Tensor<2>,
    /// The guidance `w` per sample (LCM form).
    pub w: Vec<f32>,
    /// `t` per sample.
    pub timesteps: Vec<usize>,
    /// The EMA target's consistency output at `(z_s, s)` `[B, C, h, w]`.
    pub target: Tensor<4>,
}

/// The consistency loss of the student at `(z_t, t)` against the batch's target.
pub struct LcmLoss {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    options: LcmOptions,
}

impl<'d> LcmDistill<'d> {
    /// The task of `config` on `data`, distilling `teacher` (its config and weights) under
    /// `options`, drawing batches on plain device `device`.
    pub fn new(
        config: &TrainConfig,
        data: &'d dyn TrainingData,
        (teacher_config, teacher): (&UNetConfig, UNet),
        options: LcmOptions,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let schedule = NoiseSchedule::new(&SchedulerConfig::sd())?;
        options.validate()?;
        check_teacher(config, teacher_config, data)?;
        let student_config = teacher_config
            .with_guidance_embedding(options.embedding_dim)
            .map_err(|message| TrainError::settings("teacher", message))?;
        let teacher = teacher.to_device(device);
        let student = teacher
            .clone()
            .with_guidance_embedding(options.embedding_dim);
        let initial = params::snapshot(&student);
        let key = format!(
            "lcm-distill({}, teacher {:016x}, {options:?})",
            data.key(),
            digest(&params::snapshot(&teacher))
        );
        let loss = LcmLoss {
            schedule: schedule.clone(),
            prediction: prediction_type(config),
            options: options.clone(),
        };
        Ok(Self {
            data,
            teacher,
            student_config,
            initial,
            target: EmaTarget::new(student, options.ema_decay),
            null: data.null_context(device),
            schedule,
            options,
            key,
            loss,
        })
    }

    /// The student's config (the teacher's with `time_cond_proj_dim`).
    pub fn student_config(&self) -> &UNetConfig {
        &self.student_config
    }

    /// The options the task runs with.
    pub fn options(&self) -> &LcmOptions {
        &self.options
    }
}

/// The teacher must be a text-to-image UNet over the data's latents and text states, of the
/// width the run is labelled with.
pub(crate) fn check_teacher(
    config: &TrainConfig,
    teacher: &UNetConfig,
    data: &dyn TrainingData,
) -> Result<(), TrainError> {
    let refuse = |message: String| Err(TrainError::settings("teacher", message));
    let [c, ..] = data.latent_shape();
    let [_, d] = data.context_shape();
    if teacher.in_channels != c || teacher.out_channels != c {
        return refuse(format!(
            "in_channels {} / out_channels {}: a text-to-image teacher reads and predicts the \
             data's {c}-channel latents",
            teacher.in_channels, teacher.out_channels
        ));
    }
    if let Some(n) = teacher.num_class_embeds {
        return refuse(format!(
            "num_class_embeds: {n}: the task has no class labels"
        ));
    }
    check_text_context(teacher, d)?;
    let base = teacher.base_channels();
    if config.model.width != base {
        return Err(TrainError::config(
            "model.width",
            config.model.width,
            format!("the teacher's base width is {base} (block_out_channels[0])"),
        ));
    }
    Ok(())
}

/// The teacher must read text states `d` wide: CFG contrasts its conditional and
/// unconditional predictions, which are equal for a UNet without cross-attention.
pub(crate) fn check_text_context(teacher: &UNetConfig, d: usize) -> Result<(), TrainError> {
    let reads_text = teacher
        .down_block_types
        .iter()
        .any(|k| k == DOWN_CROSS_ATTN)
        || teacher.mid_block_type.as_deref() == Some(MID_CROSS_ATTN);
    if !reads_text {
        return Err(TrainError::settings(
            "teacher",
            "down_block_types / mid_block_type: no cross-attention block, the teacher reads no \
             text context to guide",
        ));
    }
    let width = teacher.level(0).cross_attention_dim;
    if width != d {
        return Err(TrainError::settings(
            "teacher",
            format!(
                "cross_attention_dim: {width} does not match the data's {d}-wide text states \
                 (the teacher was not trained on this text context)"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn prediction_type(config: &TrainConfig) -> PredictionType {
    match config.objective {
        Objective::Epsilon => PredictionType::Epsilon,
        Objective::VPrediction => PredictionType::VPrediction,
    }
}

/// A stable digest of weights (FNV-1a over names and f32 bits): a run refuses to resume
/// with another teacher.
pub(crate) fn digest(weights: &Named) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, t) in weights {
        eat(name.as_bytes());
        for v in t.clone().into_data().iter::<f32>() {
            eat(&v.to_le_bytes());
        }
    }
    h
}

impl LcmDistill<'_> {
    /// The batch of examples `indices` with `target` as the consistency target (the task's
    /// EMA target in training; any model for a held-out measurement), randomness from `rng`:
    /// DDIM indices, then noise, then guidance.
    pub fn draw_against(
        &self,
        target: &UNet,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<LcmBatch, TrainError> {
        let (x0, context) = self
            .data
            .batch(indices, device)
            .map_err(|message| TrainError::Data { message })?;
        let b = indices.len();
        let (o, skip) = (&self.options, self.schedule.len() / self.options.ddim_steps);
        let timesteps: Vec<usize> = (0..b)
            .map(|_| (rng.random_range(0..o.ddim_steps) + 1) * skip - 1)
            .collect();
        let prev: Vec<usize> = timesteps.iter().map(|t| t.saturating_sub(skip)).collect();
        let noise = normal(rng, x0.dims(), device);
        let w: Vec<f32> = (0..b)
            .map(|_| (o.w_min + (o.w_max - o.w_min) * rng.random::<f64>()) as f32)
            .collect();
        let noisy = add_noise(&self.schedule, x0, noise, &timesteps)?;
        let guidance = embeddings(&w, o.embedding_dim, device)?;
        let z_s = self.teacher_step(noisy.clone(), (&timesteps, &prev), context.clone(), &w)?;
        let extra = guided(guidance.clone());
        let out = target.forward_with(z_s.clone(), &as_f32(&prev), context.clone(), &extra);
        let target = self.loss.consistency_output(z_s, out, &prev)?;
        Ok(LcmBatch {
            noisy,
            context,
            guidance,
            w,
            timesteps,
            target,
        })
    }

    /// One DDIM step `t -> s` of the teacher under CFG in LCM form, `x0 = c + w (c - u)` and
    /// likewise for eps, both halves in one evaluation.
    fn teacher_step(
        &self,
        noisy: Tensor<4>,
        (t, s): (&[usize], &[usize]),
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
        let a_t = alphas(&self.schedule, t)?;
        let p = self.loss.prediction;
        let (x0_c, eps_c) =
            p.x0_and_eps_per_sample(noisy.clone(), out.clone().narrow(0, 0, b), &a_t)?;
        let (x0_u, eps_u) = p.x0_and_eps_per_sample(noisy, out.narrow(0, b, b), &a_t)?;
        let w = per_row(w.to_vec(), &device);
        let x0 = x0_c.clone() + (x0_c - x0_u) * w.clone();
        let eps = eps_c.clone() + (eps_c - eps_u) * w;
        let a_s = alphas(&self.schedule, s)?;
        let signal = per_row(a_s.iter().map(|a| a.sqrt()).collect(), &device);
        let noise = per_row(a_s.iter().map(|a| (1.0 - a).sqrt()).collect(), &device);
        Ok(x0 * signal + eps * noise)
    }
}

impl LcmLoss {
    /// The consistency function at `t`: `c_skip(t) z + c_out(t) x0(z, out)`, from the UNet's
    /// raw output `out` at `z`.
    fn consistency_output(
        &self,
        z: Tensor<4>,
        out: Tensor<4>,
        t: &[usize],
    ) -> Result<Tensor<4>, TrainError> {
        let a = alphas(&self.schedule, t)?;
        let (x0, _) = self.prediction.x0_and_eps_per_sample(z.clone(), out, &a)?;
        let (skip, scale): (Vec<f32>, Vec<f32>) = t
            .iter()
            .map(|&t| boundary_scalings(t as i64, self.options.timestep_scaling))
            .unzip();
        let device = z.device();
        Ok(z * per_row(skip, &device) + x0 * per_row(scale, &device))
    }

    /// The mean L2 or pseudo-Huber distance between `online` and `target`.
    fn distance(&self, online: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
        let squared = (online - target).powi_scalar(2);
        match self.options.loss {
            ConsistencyLoss::L2 => squared.mean(),
            ConsistencyLoss::Huber => {
                let c = self.options.huber_c as f32;
                squared.add_scalar(c * c).sqrt().sub_scalar(c).mean()
            }
        }
    }
}

/// `ExtraConditioning` carrying guidance embeddings `[B, dim]`.
fn guided(guidance: Tensor<2>) -> ExtraConditioning {
    ExtraConditioning {
        timestep_cond: Some(guidance),
        ..ExtraConditioning::default()
    }
}

/// The student's guidance embeddings `[B, dim]` of LCM-form guidances `w` (the embedding of
/// CFG scale `w + 1`, as the LCM sampler feeds `cfg - 1`).
pub fn embeddings(w: &[f32], dim: usize, device: &Device) -> Result<Tensor<2>, TrainError> {
    let mut rows = Vec::with_capacity(w.len() * dim);
    for &w in w {
        rows.extend(guidance_embedding(w as f64 + 1.0, dim)?);
    }
    Ok(Tensor::from_data(
        TensorData::new(rows, [w.len(), dim]),
        device,
    ))
}

pub(crate) fn alphas(schedule: &NoiseSchedule, t: &[usize]) -> Result<Vec<f32>, TrainError> {
    Ok(t.iter()
        .map(|&t| schedule.alpha_cumprod(t as i64))
        .collect::<Result<_, _>>()?)
}

/// `[B, 1, 1, 1]`: one coefficient per row, broadcast over channels and pixels.
pub(crate) fn per_row(values: Vec<f32>, device: &Device) -> Tensor<4> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n, 1, 1, 1]), device)
}

pub(crate) fn as_f32(t: &[usize]) -> Vec<f32> {
    t.iter().map(|&v| v as f32).collect()
}

/// `shape` standard-normal values from `rng`.
pub(crate) fn normal(rng: &mut StdRng, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut *rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

impl TrainTask for LcmDistill<'_> {
    type Batch = LcmBatch;
    type Loss = LcmLoss;

    fn data_key(&self) -> String {
        self.key.clone()
    }

    fn examples(&self) -> usize {
        self.data.len()
    }

    /// The student (`model` only labels the run: see [`LcmDistill::new`]).
    fn unet_config(&self, _model: &ModelConfig) -> UNetConfig {
        self.student_config.clone()
    }

    fn forward_size(&self) -> [usize; 3] {
        self.data.forward_size()
    }

    fn draw(
        &self,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<LcmBatch, TrainError> {
        self.draw_against(&self.target.current(), indices, rng, device)
    }

    fn shard_loss(&self) -> &LcmLoss {
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

    /// The EMA target.
    fn extra_state(&self) -> Named {
        self.target.snapshot()
    }

    fn start_extra_state(&self, saved: Option<Named>) -> Result<(), Vec<String>> {
        let weights = saved.as_ref().unwrap_or(&self.initial);
        self.target.restore(weights, &self.null.device())
    }

    /// `target = decay target + (1 - decay) student`.
    fn after_step(&self, weights: &Named) {
        self.target.update(weights);
    }
}

impl ShardLoss<LcmBatch> for LcmLoss {
    fn rows(&self, batch: &LcmBatch) -> usize {
        batch.timesteps.len()
    }

    fn shard(&self, batch: &LcmBatch, rows: Range<usize>, device: &Device) -> LcmBatch {
        let whole = rows.len() == batch.timesteps.len();
        LcmBatch {
            noisy: rows_on(&batch.noisy, &rows, whole, device),
            context: rows_on(&batch.context, &rows, whole, device),
            guidance: rows_on(&batch.guidance, &rows, whole, device),
            w: batch.w[rows.clone()].to_vec(),
            timesteps: batch.timesteps[rows.clone()].to_vec(),
            target: rows_on(&batch.target, &rows, whole, device),
        }
    }

    /// The student's consistency output at `(z_t, t)`, reading the guidance embedding,
    /// against the target.
    fn loss(&self, unet: &UNet, shard: LcmBatch) -> Result<Tensor<1>, TrainError> {
        let t = as_f32(&shard.timesteps);
        let extra = guided(shard.guidance);
        let out = unet.forward_with(shard.noisy.clone(), &t, shard.context, &extra);
        let online = self.consistency_output(shard.noisy, out, &shard.timesteps)?;
        Ok(self.distance(online, shard.target))
    }
}
