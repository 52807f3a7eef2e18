//! CoDi-style consistency distillation (Mei et al.): a whole text-to-image UNet distilled
//! into a few-step student that is still sampled WITH classifier-free guidance.
//!
//! The student is the teacher itself (same config, same weights), so step 0 equals it. A step
//! draws a DDIM index of the 50-step solver (`t = ddim_t[i]`, `s = max(t - 20, 0)`) and a
//! guidance `w ~ U[w_min, w_max)` per sample (standard form `x0 = u + w (c - u)`; the
//! reference's U[1, 11) starts at the plain conditional model). The frozen teacher takes one
//! conditional DDIM step `t -> s` WITHOUT guidance (the model's own ODE). Guidance enters the
//! loss instead: the online student at `(z_t, t)` and the EMA target (decay 0.999, no
//! gradient) at `(z_s, s)` both evaluate their conditional and unconditional halves in one
//! forward and combine them at `w`; the consistency outputs `c_skip z + c_out x0` are compared
//! by mean squared error in x0 space. Sampling: [`ldmscale_diffusion::CodiSampler`] under
//! [`ldmscale_diffusion::Cfg`], two evaluations per step. The EMA target is the task's extra
//! state (in every checkpoint); the config's `text_dropout` is not applied (the null caption
//! is the unconditional half already).
//!
//! The student is either the whole UNet ([`CodiStudent::Unet`]) or an encoder adapter on the
//! frozen teacher ([`CodiStudent::Adapter`], ControlNet-style, see
//! [`ldmscale_model::unet::adapter`]): only the adapter is trained, its zero fusion
//! convolutions make the step-0 student the teacher, and its forward counts in the cost.
//!
//! Caveat of the recipe as specified: at the boundary (`t = 19 -> s = 0`, `c_skip(0) = 1`)
//! the target is the unguided teacher's `z_0` for every `w`, so the exact fixed point of the
//! loss is a student whose guidance term vanishes; the study should check that its students
//! still respond to `w`.

use std::ops::Range;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use ldmscale_diffusion::objective::add_noise;
use ldmscale_diffusion::{NoiseSchedule, PredictionType, SchedulerConfig, boundary_scalings};
use ldmscale_model::{UNet, UNetConfig};
use rand::RngExt;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, TrainConfig};
use crate::data::TrainingData;
use crate::error::TrainError;
use crate::params::{self, Named};
use crate::task::{ShardLoss, TrainTask};
use crate::tasks::ema_target::EmaTarget;
use crate::tasks::lcm_distill::{
    alphas, as_f32, check_teacher, digest, normal, per_row, prediction_type,
};
use crate::tasks::super_res::at_reference_width;
use crate::tasks::text_to_image::rows_on;

/// Parameter names of an adapter student's trained part.
const ADAPTER_PREFIX: &str = "adapter.";

/// Network evaluations per sampling step of a CoDi student (conditional and unconditional
/// half); an LCM student costs 1.
pub const EVALUATIONS_PER_STEP: usize = 2;

/// Forward-pass equivalents per sample of a training step: the student's guided forward and
/// backward (2 x 3), the teacher's conditional forward (1) and the target's two halves (2).
pub const FORWARD_PASSES: f64 = 9.0;

/// The student's part of [`FORWARD_PASSES`] (its guided forward and backward and the
/// target's halves); the teacher's forward is added at its own cost. An adapter student's
/// backward is counted at 2 forwards although the frozen UNet's weights get no gradient.
const STUDENT_PASSES: f64 = 8.0;

/// What a CoDi run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodiStudent {
    /// The whole UNet, initialised as the teacher.
    #[default]
    Unet,
    /// A ControlNet-style encoder adapter on the frozen teacher.
    Adapter,
}

impl CodiStudent {
    /// The name in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CodiStudent::Unet => "unet",
            CodiStudent::Adapter => "adapter",
        }
    }
}

/// The CoDi recipe beyond the optimizer (the `[codi]` table of a distillation config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodiOptions {
    /// Lowest guidance drawn, standard CFG form (`x0 = u + w (c - u)`: 1 is unguided).
    pub w_min: f64,
    /// Upper end of the guidance range (exclusive; equal to `w_min` fixes the guidance).
    pub w_max: f64,
    /// Steps of the DDIM solver over the training schedule (skip = timesteps / steps).
    pub ddim_steps: usize,
    /// Decay of the EMA target.
    pub ema_decay: f64,
    /// Scale of `t` in the boundary scalings (as LCM's `timestep_scaling`).
    pub timestep_scaling: f64,
}

impl Default for CodiOptions {
    fn default() -> Self {
        Self {
            w_min: 1.0,
            w_max: 11.0,
            ddim_steps: 50,
            ema_decay: 0.999,
            timestep_scaling: 10.0,
        }
    }
}

impl CodiOptions {
    /// Checks every field (against SD's training schedule, the task's); the error names the
    /// field (`codi.x`).
    pub fn validate(&self) -> Result<(), TrainError> {
        let train_timesteps = SchedulerConfig::sd().num_train_timesteps;
        let bad = |field: &str, value: &dyn ToString, message: &str| {
            let field = format!("codi.{field}");
            Err(TrainError::config(field, value.to_string(), message))
        };
        if !(self.w_min.is_finite() && self.w_min >= 0.0) {
            return bad("w_min", &self.w_min, "must be a finite guidance >= 0");
        }
        if !self.w_max.is_finite() || self.w_max < self.w_min {
            let message = format!("must be finite and at least codi.w_min = {}", self.w_min);
            return bad("w_max", &self.w_max, &message);
        }
        if self.ddim_steps == 0 || !train_timesteps.is_multiple_of(self.ddim_steps) {
            let message = format!("must divide the {train_timesteps} training timesteps");
            return bad("ddim_steps", &self.ddim_steps, &message);
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("ema_decay", &self.ema_decay, "must be in [0, 1)");
        }
        if !(self.timestep_scaling.is_finite() && self.timestep_scaling > 0.0) {
            return bad("timestep_scaling", &self.timestep_scaling, "must be > 0");
        }
        Ok(())
    }
}

/// CoDi-style distillation of a text-to-image teacher on cached latents and text states.
pub struct CodiDistill<'d> {
    data: &'d dyn TrainingData,
    /// The frozen teacher, on the drawing device.
    teacher: UNet,
    /// The student's config (the teacher's, with the adapter for an adapter student).
    config: UNetConfig,
    /// The teacher's config (the cost normalisation's reference is its 320-filter member).
    teacher_config: UNetConfig,
    student: CodiStudent,
    /// The student at step 0: the teacher's weights (and a zero-fused adapter).
    initial: Named,
    /// Forward-pass equivalents of the student per training sample.
    passes: f64,
    /// The EMA target, on the drawing device.
    target: EmaTarget,
    /// The null caption's states `[1, L, D]` (the unconditional half).
    null: Tensor<3>,
    schedule: NoiseSchedule,
    options: CodiOptions,
    key: String,
    loss: CodiLoss,
}

/// One CoDi micro-batch: the student's inputs and the (gradient-free) target.
pub struct CodiBatch {
    /// `z_t` `[B, C, h, w]`.
    pub noisy: Tensor<4>,
    /// Text states `[B, L, D]`.
    pub context: Tensor<3>,
    /// The null caption's states, one row per sample `[B, L, D]`.
    pub null: Tensor<3>,
    /// The guidance `w` per sample (standard form).
    pub w: Vec<f32>,
    /// `t` per sample.
    pub timesteps: Vec<usize>,
    /// The EMA target's guided consistency output at `(z_s, s)` `[B, C, h, w]`.
    pub target: Tensor<4>,
}

/// The guided consistency function of a UNet and the loss of the student against its target.
pub struct CodiLoss {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    timestep_scaling: f64,
}

impl<'d> CodiDistill<'d> {
    /// The task of `config` on `data`, distilling `teacher` (its config and weights) into a
    /// whole-UNet student under `options`, drawing batches on plain device `device`.
    pub fn new(
        config: &TrainConfig,
        data: &'d dyn TrainingData,
        teacher: (&UNetConfig, UNet),
        options: CodiOptions,
        device: &Device,
    ) -> Result<Self, TrainError> {
        Self::with_student(config, data, teacher, (options, CodiStudent::Unet), device)
    }

    /// [`CodiDistill::new`] training `student`.
    pub fn with_student(
        config: &TrainConfig,
        data: &'d dyn TrainingData,
        (teacher_config, teacher): (&UNetConfig, UNet),
        (options, student): (CodiOptions, CodiStudent),
        device: &Device,
    ) -> Result<Self, TrainError> {
        let schedule = NoiseSchedule::new(&SchedulerConfig::sd())?;
        options.validate()?;
        check_codi_teacher(config, teacher_config, data)?;
        let teacher = teacher.to_device(device);
        let (student_config, student_model) = student_of(student, teacher_config, &teacher)?;
        let initial = params::snapshot(&student_model);
        let adapter = match student {
            CodiStudent::Unet => "",
            CodiStudent::Adapter => ", adapter student",
        };
        let key = format!(
            "codi-distill({}, teacher {:016x}, {options:?}{adapter})",
            data.key(),
            digest(&params::snapshot(&teacher))
        );
        let [h, w, tokens] = data.forward_size();
        let student_gflops = student_model.cost(h, w, tokens).gflops();
        let passes = STUDENT_PASSES + teacher.cost(h, w, tokens).gflops() / student_gflops;
        let loss = CodiLoss {
            schedule: schedule.clone(),
            prediction: prediction_type(config),
            timestep_scaling: options.timestep_scaling,
        };
        Ok(Self {
            data,
            target: EmaTarget::new(student_model, options.ema_decay),
            teacher,
            config: student_config,
            teacher_config: teacher_config.clone(),
            student,
            initial,
            passes,
            null: data.null_context(device),
            schedule,
            options,
            key,
            loss,
        })
    }

    /// The student's config (the teacher's, with the adapter for an adapter student).
    pub fn student_config(&self) -> &UNetConfig {
        &self.config
    }

    /// What the run trains.
    pub fn student(&self) -> CodiStudent {
        self.student
    }

    /// The options the task runs with.
    pub fn options(&self) -> &CodiOptions {
        &self.options
    }
}

/// The step-0 student of `teacher` and its config.
fn student_of(
    student: CodiStudent,
    teacher_config: &UNetConfig,
    teacher: &UNet,
) -> Result<(UNetConfig, UNet), TrainError> {
    match student {
        CodiStudent::Unet => Ok((teacher_config.clone(), teacher.clone())),
        CodiStudent::Adapter => {
            let config = teacher_config
                .with_encoder_adapter()
                .map_err(|message| TrainError::settings("teacher", message))?;
            let model = teacher.clone().with_encoder_adapter(&config);
            Ok((config, model))
        }
    }
}

/// As LCM's teacher check, and no guidance embedding: a CoDi student is guided by CFG, so a
/// UNet that reads one (an LCM student) would be run with it missing.
fn check_codi_teacher(
    config: &TrainConfig,
    teacher: &UNetConfig,
    data: &dyn TrainingData,
) -> Result<(), TrainError> {
    if let Some(d) = teacher.time_cond_proj_dim {
        return Err(TrainError::settings(
            "teacher",
            format!(
                "time_cond_proj_dim: {d}: this UNet reads a guidance embedding (an LCM \
                 student, not a teacher); CoDi distils a plain text-to-image UNet"
            ),
        ));
    }
    check_teacher(config, teacher, data)
}

impl CodiDistill<'_> {
    /// The batch of examples `indices` with `target` as the consistency target (the task's
    /// EMA target in training; any model for a held-out measurement), randomness from `rng`:
    /// DDIM indices, then noise, then guidance.
    pub fn draw_against(
        &self,
        target: &UNet,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<CodiBatch, TrainError> {
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
        let z_s = self.teacher_step(noisy.clone(), (&timesteps, &prev), context.clone())?;
        let [_, l, d] = context.dims();
        let null = self.null.clone().to_device(device).expand([b, l, d]);
        let halves = (context.clone(), null.clone());
        let target = self.loss.consistency(target, z_s, &prev, halves, &w)?;
        Ok(CodiBatch {
            noisy,
            context,
            null,
            w,
            timesteps,
            target,
        })
    }

    /// One unguided (conditional) DDIM step `t -> s` of the teacher.
    fn teacher_step(
        &self,
        noisy: Tensor<4>,
        (t, s): (&[usize], &[usize]),
        context: Tensor<3>,
    ) -> Result<Tensor<4>, TrainError> {
        let device = noisy.device();
        let out = self.teacher.forward(noisy.clone(), &as_f32(t), context);
        let a_t = alphas(&self.schedule, t)?;
        let (x0, eps) = self
            .loss
            .prediction
            .x0_and_eps_per_sample(noisy, out, &a_t)?;
        let a_s = alphas(&self.schedule, s)?;
        let signal = per_row(a_s.iter().map(|a| a.sqrt()).collect(), &device);
        let noise = per_row(a_s.iter().map(|a| (1.0 - a).sqrt()).collect(), &device);
        Ok(x0 * signal + eps * noise)
    }
}

impl CodiLoss {
    /// `unet`'s guided x0 at `(z, t)`: both halves (`context`, `null`) in one forward,
    /// `x0 = u + w (c - u)` per row.
    pub fn guided_x0(
        &self,
        unet: &UNet,
        z: Tensor<4>,
        t: &[usize],
        (context, null): (Tensor<3>, Tensor<3>),
        w: &[f32],
    ) -> Result<Tensor<4>, TrainError> {
        let b = t.len();
        let both_t: Vec<f32> = as_f32(t).into_iter().cycle().take(2 * b).collect();
        let both = Tensor::cat(vec![z.clone(), z.clone()], 0);
        let out = unet.forward(both, &both_t, Tensor::cat(vec![context, null], 0));
        let a = alphas(&self.schedule, t)?;
        let p = self.prediction;
        let (x0_c, _) = p.x0_and_eps_per_sample(z.clone(), out.clone().narrow(0, 0, b), &a)?;
        let (x0_u, _) = p.x0_and_eps_per_sample(z.clone(), out.narrow(0, b, b), &a)?;
        let w = per_row(w.to_vec(), &z.device());
        Ok(x0_u.clone() + (x0_c - x0_u) * w)
    }

    /// The guided consistency function at `t`: `c_skip(t) z + c_out(t) x0_w(z)`.
    pub fn consistency(
        &self,
        unet: &UNet,
        z: Tensor<4>,
        t: &[usize],
        halves: (Tensor<3>, Tensor<3>),
        w: &[f32],
    ) -> Result<Tensor<4>, TrainError> {
        let x0 = self.guided_x0(unet, z.clone(), t, halves, w)?;
        let (skip, scale): (Vec<f32>, Vec<f32>) = t
            .iter()
            .map(|&t| boundary_scalings(t as i64, self.timestep_scaling))
            .unzip();
        let device = z.device();
        Ok(z * per_row(skip, &device) + x0 * per_row(scale, &device))
    }
}

impl TrainTask for CodiDistill<'_> {
    type Batch = CodiBatch;
    type Loss = CodiLoss;

    fn data_key(&self) -> String {
        self.key.clone()
    }

    fn examples(&self) -> usize {
        self.data.len()
    }

    /// The student (`model` only labels the run: see [`CodiDistill::new`]).
    fn unet_config(&self, _model: &ModelConfig) -> UNetConfig {
        self.config.clone()
    }

    fn forward_size(&self) -> [usize; 3] {
        self.data.forward_size()
    }

    fn draw(
        &self,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<CodiBatch, TrainError> {
        self.draw_against(&self.target.current(), indices, rng, device)
    }

    fn shard_loss(&self) -> &CodiLoss {
        &self.loss
    }

    fn initial_weights(&self) -> Option<&Named> {
        Some(&self.initial)
    }

    fn reference_unet_config(&self, _config: &TrainConfig) -> UNetConfig {
        at_reference_width(&self.teacher_config)
    }

    fn forward_passes(&self) -> f64 {
        self.passes
    }

    /// The EMA target.
    fn extra_state(&self) -> Named {
        self.target.snapshot()
    }

    fn start_extra_state(&self, saved: Option<Named>) -> Result<(), Vec<String>> {
        let weights = saved.as_ref().unwrap_or(&self.initial);
        self.target.restore(weights, &self.null.device())
    }

    /// The target follows the trained weights only (the frozen UNet's stay bit-exact).
    fn after_step(&self, weights: &Named) {
        match self.student {
            CodiStudent::Unet => self.target.update(weights),
            CodiStudent::Adapter => {
                let trained: Named = (weights.iter())
                    .filter(|(name, _)| name.starts_with(ADAPTER_PREFIX))
                    .map(|(name, w)| (name.clone(), w.clone()))
                    .collect();
                self.target.update(&trained);
            }
        }
    }
}

impl ShardLoss<CodiBatch> for CodiLoss {
    fn rows(&self, batch: &CodiBatch) -> usize {
        batch.timesteps.len()
    }

    fn shard(&self, batch: &CodiBatch, rows: Range<usize>, device: &Device) -> CodiBatch {
        let whole = rows.len() == batch.timesteps.len();
        CodiBatch {
            noisy: rows_on(&batch.noisy, &rows, whole, device),
            context: rows_on(&batch.context, &rows, whole, device),
            null: rows_on(&batch.null, &rows, whole, device),
            w: batch.w[rows.clone()].to_vec(),
            timesteps: batch.timesteps[rows.clone()].to_vec(),
            target: rows_on(&batch.target, &rows, whole, device),
        }
    }

    /// Mean squared distance of the student's guided consistency output at `(z_t, t)` from
    /// the target.
    /// An adapter student's frozen UNet gets no gradient.
    fn loss(&self, unet: &UNet, shard: CodiBatch) -> Result<Tensor<1>, TrainError> {
        let halves = (shard.context, shard.null);
        let unet = &unet.clone().with_frozen_base();
        let online = self.consistency(unet, shard.noisy, &shard.timesteps, halves, &shard.w)?;
        Ok((online - shard.target).powi_scalar(2).mean())
    }
}
