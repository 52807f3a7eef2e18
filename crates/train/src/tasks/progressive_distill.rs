//! Guided distillation, stage 2 (Meng et al.; Salimans & Ho's progressive distillation): a
//! w-conditioned student learns to take in one DDIM step what its w-conditioned teacher (the
//! stage-1 student, or the previous round's student) takes in two. Rounds halve the steps:
//! the students s16 and s8 of the paper's App. C.
//!
//! The student samples with deterministic DDIM on the study's `N`-step grid (diffusers'
//! leading spacing). A step draws a grid index `i` (from `t = g_i` to `s = g_{i-1}`, or to
//! timestep 0 after the smallest, whose `alpha_cumprod` is DDIM's final one), noise and `w`
//! per sample; the frozen teacher takes two DDIM steps `t -> (t + s) / 2 -> s` at `w`, and
//! the target is the clean estimate that takes the student from `z_t` to the teacher's `z_s`
//! in one DDIM step, `x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t)
//! alpha_t)`. Loss: the student's clean estimate against it, weighted by `max(SNR(t), 1)`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use ldmscale_diffusion::objective::add_noise;
use ldmscale_diffusion::{NoiseSchedule, SamplerId, SchedulerConfig};
use ldmscale_model::{ExtraConditioning, UNet, UNetConfig};
use rand::RngExt;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, TrainConfig};
use crate::data::TrainingData;
use crate::error::TrainError;
use crate::params::{self, Named};
use crate::task::TrainTask;
use crate::tasks::guided_distill::{GuidedBatch, GuidedLoss};
use crate::tasks::lcm_distill::{
    alphas, as_f32, check_teacher, digest, embeddings, normal, per_row, prediction_type,
};
use crate::tasks::super_res::at_reference_width;

/// Forward-pass equivalents per sample of a training step: the student's forward and
/// backward (3) and the teacher's two steps (2).
pub const FORWARD_PASSES: f64 = 5.0;

/// One round's recipe beyond the optimizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressiveOptions {
    /// The student's DDIM steps (the teacher takes twice as many).
    pub student_steps: usize,
    /// Lowest guidance drawn, LCM form (CFG scale `w + 1`).
    pub w_min: f64,
    /// Highest guidance drawn.
    pub w_max: f64,
}

impl ProgressiveOptions {
    /// Checks every field; the error names it (`progressive.x`).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &str, value: &dyn ToString, message: &str| {
            Err(TrainError::config(
                format!("progressive.{field}"),
                value.to_string(),
                message,
            ))
        };
        if !(1..=500).contains(&self.student_steps) {
            let message = "must be 1..=500 (the teacher takes twice as many of 1000 timesteps)";
            return bad("student_steps", &self.student_steps, message);
        }
        if !(self.w_min.is_finite() && self.w_min >= 0.0) {
            return bad("w_min", &self.w_min, "must be a finite guidance >= 0");
        }
        if !self.w_max.is_finite() || self.w_max < self.w_min {
            let message = format!(
                "must be finite and at least progressive.w_min = {}",
                self.w_min
            );
            return bad("w_max", &self.w_max, &message);
        }
        Ok(())
    }
}

/// One round of progressive distillation on cached latents and text states.
pub struct ProgressiveDistill<'d> {
    data: &'d dyn TrainingData,
    /// The frozen w-conditioned teacher, on the drawing device.
    teacher: UNet,
    config: UNetConfig,
    /// The student at step 0 (the teacher).
    initial: Named,
    /// The student's DDIM timesteps, ascending.
    grid: Vec<usize>,
    embedding_dim: usize,
    schedule: NoiseSchedule,
    options: ProgressiveOptions,
    key: String,
    loss: GuidedLoss,
}

impl<'d> ProgressiveDistill<'d> {
    /// The round of `config` on `data`, halving the steps of `teacher` (its config and
    /// weights: a UNet with a guidance embedding) under `options`, drawing on `device`.
    pub fn new(
        config: &TrainConfig,
        data: &'d dyn TrainingData,
        (teacher_config, teacher): (&UNetConfig, UNet),
        options: ProgressiveOptions,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let scheduler = SchedulerConfig::sd();
        let schedule = NoiseSchedule::new(&scheduler)?;
        options.validate()?;
        check_teacher(config, teacher_config, data)?;
        let Some(embedding_dim) = teacher_config.time_cond_proj_dim else {
            return Err(TrainError::settings(
                "teacher",
                "time_cond_proj_dim: none: progressive distillation halves the steps of a \
                 w-conditioned teacher; distil one with guided distillation (stage 1) first",
            ));
        };
        let ddim = SamplerId::Ddim
            .kind()
            .build(&scheduler, options.student_steps)?;
        let mut grid: Vec<usize> = ddim.timesteps().iter().map(|&t| t as usize).collect();
        grid.sort_unstable();
        let teacher = teacher.to_device(device);
        let initial = params::snapshot(&teacher);
        let key = format!(
            "progressive-distill({}, teacher {:016x}, {options:?})",
            data.key(),
            digest(&initial)
        );
        Ok(Self {
            data,
            teacher,
            config: teacher_config.clone(),
            initial,
            grid,
            embedding_dim,
            loss: GuidedLoss::new(schedule.clone(), prediction_type(config)),
            schedule,
            options,
            key,
        })
    }

    /// The student's config (the teacher's).
    pub fn student_config(&self) -> &UNetConfig {
        &self.config
    }

    /// The student's DDIM timesteps, ascending.
    pub fn grid(&self) -> &[usize] {
        &self.grid
    }

    /// Deterministic DDIM steps of the teacher at `w` (embedded) from `z` along `path`
    /// (per sample: timesteps, the first being `z`'s).
    fn teacher_steps(
        &self,
        mut z: Tensor<4>,
        path: &[Vec<usize>],
        context: &Tensor<3>,
        guidance: &Tensor<2>,
    ) -> Result<Tensor<4>, TrainError> {
        let device = z.device();
        let extra = ExtraConditioning {
            timestep_cond: Some(guidance.clone()),
            ..ExtraConditioning::default()
        };
        for pair in path.windows(2) {
            let (from, to) = (&pair[0], &pair[1]);
            let out = self
                .teacher
                .forward_with(z.clone(), &as_f32(from), context.clone(), &extra);
            let a = alphas(&self.schedule, from)?;
            let (x0, eps) = self.loss.prediction().x0_and_eps_per_sample(z, out, &a)?;
            let next = alphas(&self.schedule, to)?;
            let signal = per_row(next.iter().map(|a| a.sqrt()).collect(), &device);
            let noise = per_row(next.iter().map(|a| (1.0 - a).sqrt()).collect(), &device);
            z = x0 * signal + eps * noise;
        }
        Ok(z)
    }

    /// The clean estimate that takes `z_t` to `z_s` in one DDIM step.
    fn one_step_target(
        &self,
        z_t: Tensor<4>,
        z_s: Tensor<4>,
        (t, s): (&[usize], &[usize]),
    ) -> Result<Tensor<4>, TrainError> {
        let (a_t, a_s) = (alphas(&self.schedule, t)?, alphas(&self.schedule, s)?);
        let mut ratio = Vec::with_capacity(t.len());
        let mut denominator = Vec::with_capacity(t.len());
        for (&a_t, &a_s) in a_t.iter().zip(&a_s) {
            let r = ((1.0 - a_s) / (1.0 - a_t)).sqrt();
            ratio.push(r);
            denominator.push(1.0 / (a_s.sqrt() - r * a_t.sqrt()));
        }
        let device = z_t.device();
        Ok((z_s - z_t * per_row(ratio, &device)) * per_row(denominator, &device))
    }
}

impl TrainTask for ProgressiveDistill<'_> {
    type Batch = GuidedBatch;
    type Loss = GuidedLoss;

    fn data_key(&self) -> String {
        self.key.clone()
    }

    fn examples(&self) -> usize {
        self.data.len()
    }

    fn unet_config(&self, _model: &ModelConfig) -> UNetConfig {
        self.config.clone()
    }

    fn forward_size(&self) -> [usize; 3] {
        self.data.forward_size()
    }

    /// Examples, then grid indices, noise and guidance from `rng`.
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
        let picks: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..self.grid.len()))
            .collect();
        let t: Vec<usize> = picks.iter().map(|&i| self.grid[i]).collect();
        let s: Vec<usize> = picks
            .iter()
            .map(|&i| if i == 0 { 0 } else { self.grid[i - 1] })
            .collect();
        let mid: Vec<usize> = t.iter().zip(&s).map(|(t, s)| (t + s) / 2).collect();
        let noise = normal(rng, x0.dims(), device);
        let o = &self.options;
        let w: Vec<f32> = (0..b)
            .map(|_| (o.w_min + (o.w_max - o.w_min) * rng.random::<f64>()) as f32)
            .collect();
        let noisy = add_noise(&self.schedule, x0, noise, &t)?;
        let guidance = embeddings(&w, self.embedding_dim, device)?;
        let path = [t.clone(), mid, s.clone()];
        let z_s = self.teacher_steps(noisy.clone(), &path, &context, &guidance)?;
        let target = self.one_step_target(noisy.clone(), z_s, (&t, &s))?;
        Ok(GuidedBatch {
            noisy,
            context,
            guidance,
            timesteps: t,
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
        at_reference_width(&self.config)
    }

    fn forward_passes(&self) -> f64 {
        FORWARD_PASSES
    }
}
