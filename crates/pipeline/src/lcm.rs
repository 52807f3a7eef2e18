//! A UNet distilled with a guidance embedding (a Latent Consistency Model student) as the
//! denoiser the LCM sampler drives: guidance enters as `timestep_cond`, never as a second,
//! unconditional evaluation.

use burn::tensor::{Tensor, TensorData};
use ldmscale_diffusion::{Denoiser, guidance_embedding};
use ldmscale_model::{ExtraConditioning, UNet};

use crate::PipelineError;

/// `eps(x, t, context, embed(w - 1))` for an LCM student, as `LatentConsistencyModelPipeline`
/// calls its UNet: one evaluation per step, no negative prompt.
pub struct LcmDenoiser<'a> {
    unet: &'a UNet,
    /// `[B, L, D]`.
    context: Tensor<3>,
    /// The guidance embedding of every sample, `[B, time_cond_proj_dim]`.
    extra: ExtraConditioning,
}

impl<'a> LcmDenoiser<'a> {
    /// `unet` with text states `context` (`[B, L, D]`) at guidance scale `guidance_scale`
    /// (the embedding of `guidance_scale - 1`). A UNet without `time_cond_proj_dim` is refused:
    /// it was not distilled to read a guidance scale.
    pub fn new(
        unet: &'a UNet,
        context: Tensor<3>,
        guidance_scale: f64,
    ) -> Result<Self, PipelineError> {
        let dim = unet.time_cond_proj_dim().ok_or_else(|| {
            PipelineError::UNetConfig(
                "LCM sampling needs a UNet distilled with a guidance embedding \
                 (time_cond_proj_dim in its config.json); this one has none"
                    .to_string(),
            )
        })?;
        let [batch, ..] = context.dims();
        let row = guidance_embedding(guidance_scale, dim)?;
        let rows: Vec<f32> = row.iter().copied().cycle().take(batch * dim).collect();
        let cond = Tensor::from_data(TensorData::new(rows, [batch, dim]), &context.device());
        Ok(Self {
            unet,
            context,
            extra: ExtraConditioning {
                timestep_cond: Some(cond),
                ..ExtraConditioning::default()
            },
        })
    }
}

impl Denoiser for LcmDenoiser<'_> {
    /// # Panics
    /// If `x`'s batch differs from the batch of the context given to [`LcmDenoiser::new`].
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        assert_eq!(
            x.dims()[0],
            self.context.dims()[0],
            "LcmDenoiser was built for another batch"
        );
        self.unet
            .forward_with(x, timesteps, self.context.clone(), &self.extra)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use burn::tensor::{Device, Distribution};
    use ldmscale_diffusion::{NoiseSource, SamplerId, SchedulerConfig, SeededNoise, sample};
    use ldmscale_model::weights::load_unet;

    use super::*;

    fn unet(name: &str) -> UNet {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/unet")
            .join(name);
        load_unet(&dir, &Device::flex()).unwrap().1
    }

    fn run(unet: &UNet, context: &Tensor<3>, scale: f64) -> (Tensor<4>, usize) {
        let mut student = LcmDenoiser::new(unet, context.clone(), scale).unwrap();
        let mut sampler = SamplerId::Lcm
            .kind()
            .build(&SchedulerConfig::sd(), 4)
            .unwrap();
        let mut noise = SeededNoise::new(7);
        let init = noise.noise([2, 4, 8, 8], &context.device()).unwrap();
        let out = sample(sampler.as_mut(), &mut student, init, &mut noise, None).unwrap();
        (out.latents, out.evaluations)
    }

    #[test]
    fn the_guidance_scale_reaches_the_unet_at_one_evaluation_per_step() {
        let student = unet("lcm_timestep_cond");
        let device = Device::flex();
        let context = Tensor::random([2, 3, 32], Distribution::Normal(0.0, 1.0), &device);
        let (w1, evaluations) = run(&student, &context, 1.0);
        let (w8, _) = run(&student, &context, 8.0);
        assert_eq!(evaluations, 4, "no batch doubling");
        let diff: f32 = (w1.clone() - w8).abs().max().into_scalar();
        assert!(
            diff > 1e-2,
            "guidance 1 and 8 gave the same latents ({diff})"
        );
        let (again, _) = run(&student, &context, 1.0);
        let same: f32 = (w1 - again).abs().max().into_scalar();
        assert_eq!(same, 0.0, "seeded runs repeat");
    }

    #[test]
    fn a_unet_without_a_guidance_embedding_is_refused() {
        let base = unet("sd_like_linear");
        let context = Tensor::zeros([1, 3, 32], &Device::flex());
        let err = LcmDenoiser::new(&base, context, 4.0)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("time_cond_proj_dim"), "{err}");
    }
}
