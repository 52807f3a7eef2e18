//! `ldmscale sample --sampler lcm`: a Latent Consistency Model student, its guidance scale given
//! to the UNet as a guidance embedding (one evaluation per step, no negative prompt), fresh
//! noise between steps from `--step-noise` or `--seed`.

use anyhow::{Result, bail, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::{NoiseQueue, NoiseSource, SamplerId, SeededNoise};
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_pipeline::LcmDenoiser;

use super::SampleArgs;
use crate::npy;

/// Flags that do not go with the sampler: `--step-noise` is LCM's alone, and LCM has no use for
/// DDPM/DDIM noise, a negative prompt or SR latents.
pub(super) fn check_args(args: &SampleArgs) -> Result<()> {
    if matches!(args.sampler, SamplerId::Codi | SamplerId::GuidedDdim) {
        ensure!(
            args.lr_latents.is_none(),
            "--lr-latents does not go with --sampler {}: it samples text-to-image students only",
            args.sampler
        );
    }
    if args.sampler == SamplerId::GuidedDdim {
        ensure!(
            args.negative_embeds.is_none(),
            "--negative-embeds does not go with --sampler guided-ddim: guidance is the \
             student's embedding of --cfg"
        );
    }
    if args.sampler != SamplerId::Lcm {
        ensure!(
            args.step_noise.is_none(),
            "--step-noise is for --sampler lcm (the noise injected between its steps); \
             {} takes its noise from --noise",
            args.sampler
        );
        return Ok(());
    }
    let refused = [
        (
            args.noise.is_some(),
            "--noise",
            "give LCM's draws as --step-noise",
        ),
        (
            args.negative_embeds.is_some(),
            "--negative-embeds",
            "LCM takes no negative prompt: guidance is the student's embedding of --cfg",
        ),
        (
            args.lr_latents.is_some(),
            "--lr-latents",
            "LCM samples text-to-image students only",
        ),
    ];
    if let Some((_, flag, why)) = refused.iter().find(|(given, ..)| *given) {
        bail!("{flag} does not go with --sampler lcm: {why}");
    }
    ensure!(
        args.step_noise.is_none() || args.steps > 1,
        "--step-noise given but 1 LCM step draws no noise"
    );
    Ok(())
}

/// The student behind `--unet`, refused when it was not distilled with a guidance embedding.
pub(super) fn denoiser<'a>(
    args: &SampleArgs,
    unet: &'a UNet,
    config: &UNetConfig,
    cond: Tensor<3>,
) -> Result<LcmDenoiser<'a>> {
    let method = match args.sampler {
        SamplerId::Lcm => "lcm",
        _ => "guided or progressive",
    };
    ensure!(
        config.time_cond_proj_dim.is_some(),
        "{}: --sampler {} needs a UNet distilled with a guidance embedding \
         (time_cond_proj_dim in config.json; made by ldmscale distill --method {method}); this \
         UNet has none (a --method codi student samples with --sampler codi)",
        args.unet.join("config.json").display(),
        args.sampler
    );
    Ok(LcmDenoiser::new(unet, cond, args.cfg as f64)?)
}

/// `--step-noise` (`[steps - 1, B, C, H, W]`), or draws seeded by `--seed`.
pub(super) fn step_noise(
    args: &SampleArgs,
    noise: Option<npy::Array>,
    initial: &Tensor<4>,
    device: &Device,
) -> Result<Box<dyn NoiseSource>> {
    let (Some(array), Some(path)) = (noise, &args.step_noise) else {
        // Apart from the initial latents' stream, as for the other samplers.
        return Ok(Box::new(SeededNoise::new(args.seed.wrapping_add(0x5eed))));
    };
    let dims = initial.dims();
    let expected = [args.steps - 1, dims[0], dims[1], dims[2], dims[3]];
    ensure!(
        array.shape == expected,
        "{}: step noise must be [steps - 1, batch, channels, height, width] = {expected:?} \
         for {} LCM steps, found {:?}",
        path.display(),
        args.steps,
        array.shape
    );
    let slice: usize = dims.iter().product();
    let draws = array
        .data
        .chunks_exact(slice)
        .map(|c| Tensor::from_data(TensorData::new(c.to_vec(), dims), device));
    Ok(Box::new(NoiseQueue::new(draws.collect::<Vec<_>>())))
}
