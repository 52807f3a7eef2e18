//! The sampling loop shared by all samplers, and the sampler interface.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::codi::CodiSampler;
use crate::ddim::{DdimOptions, DdimSampler};
use crate::ddpm::{DdpmOptions, DdpmSampler};
use crate::denoiser::Denoiser;
use crate::dpm_solver::{DpmSolverOptions, DpmSolverSampler};
use crate::error::{DiffusionError, Result};
use crate::lcm::{LcmOptions, LcmSampler};
use crate::noise::NoiseSource;
use crate::schedule::SchedulerConfig;

/// One reverse-diffusion solver with its inference timesteps fixed (a diffusers scheduler after
/// `set_timesteps`). Multistep solvers keep history, hence `&mut self`.
pub trait Sampler {
    /// Short name for logs ("ddim", "ddpm", "dpm_solver").
    fn name(&self) -> &'static str;

    /// The timesteps at which the denoiser is evaluated, in order (descending).
    fn timesteps(&self) -> &[i64];

    /// Forgets multistep history so a new trajectory can start.
    fn reset(&mut self);

    /// Advances `sample` from `timesteps()[index]` to the next noise level given the raw model
    /// output there. Steps must be taken in order `0, 1, ...` after a [`Sampler::reset`].
    fn step(
        &mut self,
        index: usize,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor<4>>;
}

/// What a sampling run produced.
#[derive(Debug, Clone)]
pub struct SampleOutput {
    /// Final latents (`x_0`), still scaled by the VAE scaling factor.
    pub latents: Tensor<4>,
    /// Number of denoiser calls (= sampling steps).
    pub steps: usize,
    /// Network evaluations per sample: `steps` times the denoiser's
    /// [`Denoiser::evaluations_per_call`] (2 per step with classifier-free guidance).
    /// Multiply by GFLOPs per evaluation for the sampling cost.
    pub evaluations: usize,
}

/// Reported to the observer of [`sample`] after each step.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Step number, from 0.
    pub index: usize,
    /// The timestep the denoiser was evaluated at.
    pub timestep: i64,
    /// The raw denoiser output at that step.
    pub model_output: &'a Tensor<4>,
    /// The sample after the step.
    pub sample: &'a Tensor<4>,
}

/// Runs `sampler` from `initial` (pure noise times `init_noise_sigma`, which is 1 for the
/// samplers here) to the end of its timesteps, calling `denoiser` once per step.
pub fn sample(
    sampler: &mut dyn Sampler,
    denoiser: &mut dyn Denoiser,
    initial: Tensor<4>,
    noise: &mut dyn NoiseSource,
    mut on_step: Option<&mut dyn FnMut(&StepEvent<'_>)>,
) -> Result<SampleOutput> {
    sampler.reset();
    let batch = initial.dims()[0];
    let timesteps = sampler.timesteps().to_vec();
    let mut x = initial;
    let mut evaluations = 0;
    for (index, &timestep) in timesteps.iter().enumerate() {
        let model_output = denoiser.predict(x.clone(), &vec![timestep as f32; batch]);
        evaluations += denoiser.evaluations_per_call();
        if model_output.dims() != x.dims() {
            return Err(DiffusionError::Shape(format!(
                "denoiser returned {:?} for a sample of {:?}",
                model_output.dims(),
                x.dims()
            )));
        }
        let observed = on_step.as_ref().map(|_| model_output.clone());
        x = sampler.step(index, model_output, x, noise)?;
        if let (Some(callback), Some(model_output)) = (on_step.as_mut(), observed.as_ref()) {
            callback(&StepEvent {
                index,
                timestep,
                model_output,
                sample: &x,
            });
        }
    }
    Ok(SampleOutput {
        latents: x,
        steps: timesteps.len(),
        evaluations,
    })
}

/// A sampler choice with its options, e.g. from a run config:
/// `{"sampler": "dpm_solver", "solver_order": 2}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "sampler", rename_all = "snake_case")]
pub enum SamplerKind {
    /// Deterministic (eta = 0) or stochastic DDIM.
    Ddim(DdimOptions),
    /// Ancestral DDPM.
    Ddpm(DdpmOptions),
    /// DPM-Solver++ (multistep, order 1-3, optionally SDE).
    DpmSolver(DpmSolverOptions),
    /// Latent Consistency Model multistep sampling (a distilled student with a guidance
    /// embedding; one evaluation per step).
    Lcm(LcmOptions),
    /// Deterministic multistep consistency sampling of a CoDi-style student on the LCM grid
    /// (guidance by the denoiser: two evaluations per step under CFG).
    Codi(LcmOptions),
}

impl SamplerKind {
    /// Builds the sampler for `num_steps` inference steps.
    pub fn build(&self, config: &SchedulerConfig, num_steps: usize) -> Result<Box<dyn Sampler>> {
        Ok(match self {
            SamplerKind::Ddim(o) => Box::new(DdimSampler::new(config, *o, num_steps)?),
            SamplerKind::Ddpm(o) => Box::new(DdpmSampler::new(config, *o, num_steps)?),
            SamplerKind::DpmSolver(o) => Box::new(DpmSolverSampler::new(config, *o, num_steps)?),
            SamplerKind::Lcm(o) => Box::new(LcmSampler::new(config, *o, num_steps)?),
            SamplerKind::Codi(o) => Box::new(CodiSampler::new(config, *o, num_steps)?),
        })
    }
}
