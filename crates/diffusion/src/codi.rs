//! Multistep consistency sampling for a CoDi-style student (a whole UNet distilled with
//! classifier-free guidance inside its loss): deterministic, with guidance applied by the
//! denoiser ([`crate::Cfg`], two evaluations per step).
//!
//! Each step maps `z_t` to the boundary-scaled clean estimate (`denoised`, as
//! [`LcmSampler::denoised`]) on the LCM timesteps (4 steps: 999, 759, 499, 259). Instead of
//! LCM's fresh noise, the next sample re-uses the noise the step implies,
//! `eps = (z_t - sqrt(a_t) denoised) / sqrt(1 - a_t)`: a DDIM step with the student's
//! estimate, so the run is deterministic and keeps the marginal noise level (zero step noise
//! would shrink the sample instead). The last step returns `denoised`.

use burn::tensor::Tensor;

use crate::error::Result;
use crate::lcm::{LcmOptions, LcmSampler};
use crate::noise::NoiseSource;
use crate::sampler::Sampler;
use crate::schedule::{NoiseSchedule, SchedulerConfig};

/// Deterministic multistep consistency sampling over the LCM timesteps.
#[derive(Debug, Clone)]
pub struct CodiSampler {
    lcm: LcmSampler,
    schedule: NoiseSchedule,
}

impl CodiSampler {
    /// `num_steps` steps taken from the `options.original_inference_steps` solver grid.
    pub fn new(config: &SchedulerConfig, options: LcmOptions, num_steps: usize) -> Result<Self> {
        Ok(Self {
            lcm: LcmSampler::new(config, options, num_steps)?,
            schedule: NoiseSchedule::new(config)?,
        })
    }
}

impl Sampler for CodiSampler {
    fn name(&self) -> &'static str {
        "codi"
    }

    fn timesteps(&self) -> &[i64] {
        self.lcm.timesteps()
    }

    fn reset(&mut self) {}

    /// Draws no noise: `noise` is never read.
    fn step(
        &mut self,
        index: usize,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor<4>> {
        let denoised = self.lcm.denoised(index, model_output, sample.clone())?;
        let timesteps = self.lcm.timesteps();
        let Some(&next) = timesteps.get(index + 1) else {
            return Ok(denoised);
        };
        let a_t = self.schedule.alpha_cumprod(timesteps[index])?;
        let a_next = self.schedule.alpha_cumprod(next)?;
        // The noise direction of this step's own estimate (deterministic DDIM re-noising).
        let eps = (sample - denoised.clone().mul_scalar(a_t.sqrt())).div_scalar((1.0 - a_t).sqrt());
        Ok(denoised
            .mul_scalar(a_next.sqrt())
            .add(eps.mul_scalar((1.0 - a_next).sqrt())))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::denoiser::FnDenoiser;
    use crate::noise::NoNoise;
    use crate::sampler::sample;

    fn latents(values: Vec<f32>) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, [1, 1, 2, 2]), &Device::flex())
    }

    #[test]
    fn four_deterministic_steps_on_the_lcm_grid() {
        let config = SchedulerConfig::sd();
        let mut sampler = CodiSampler::new(&config, LcmOptions::default(), 4).unwrap();
        assert_eq!(sampler.timesteps(), [999, 759, 499, 259]);
        // An eps model whose eps is the initial sample's own noise: x0 = 0 at every step
        // when the re-noising keeps that noise, so the output is 0 (fresh noise would not be).
        let init = vec![0.5, -1.0, 2.0, 0.25];
        let a = NoiseSchedule::new(&config)
            .unwrap()
            .alpha_cumprod(999)
            .unwrap();
        let fixed = latents(init.iter().map(|v| v / (1.0 - a).sqrt()).collect());
        let mut denoiser = FnDenoiser(|_x: Tensor<4>, _t: &[f32]| fixed.clone());
        let out = sample(
            &mut sampler,
            &mut denoiser,
            latents(init),
            &mut NoNoise,
            None,
        );
        let out = out.unwrap();
        assert_eq!((out.steps, out.evaluations), (4, 4));
        let values = out.latents.into_data().try_to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| v.abs() < 1e-4), "{values:?}");
    }

    #[test]
    fn a_step_keeps_the_implied_noise() {
        let config = SchedulerConfig::sd();
        let schedule = NoiseSchedule::new(&config).unwrap();
        let mut sampler = CodiSampler::new(&config, LcmOptions::default(), 2).unwrap();
        // x0 = 1 everywhere and eps = 1: z_t = sqrt(a) + sqrt(1 - a) at t = 999.
        let a = schedule.alpha_cumprod(999).unwrap();
        let z = latents(vec![a.sqrt() + (1.0 - a).sqrt(); 4]);
        let eps = latents(vec![1.0; 4]);
        let next = sampler.step(0, eps, z, &mut NoNoise).unwrap();
        let (skip, out) = crate::lcm::boundary_scalings(999, 10.0);
        let denoised = skip * (a.sqrt() + (1.0 - a).sqrt()) + out;
        let implied = ((a.sqrt() + (1.0 - a).sqrt()) - a.sqrt() * denoised) / (1.0 - a).sqrt();
        let b = schedule.alpha_cumprod(499).unwrap();
        let want = b.sqrt() * denoised + (1.0 - b).sqrt() * implied;
        for v in next.into_data().try_to_vec::<f32>().unwrap() {
            assert!((v - want).abs() < 1e-5, "{v} vs {want}");
        }
    }
}
