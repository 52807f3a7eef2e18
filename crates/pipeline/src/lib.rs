//! Inference over a latent diffusion model: the bundle of a UNet, its first-stage autoencoder
//! and its frozen text encoder ([`LatentDiffusion`]), the one adapter that turns the UNet into
//! the denoiser samplers drive, generation with classifier-free guidance (or an LCM student's
//! guidance embedding, [`LcmDenoiser`]), and encoding of images and captions; super-resolution
//! ([`SuperResolution`]: the LR latent concatenated to
//! the noisy one, no guidance). Training (periodic evaluation, class images, teachers), the
//! study and the CLI all sample through here.

mod denoiser;
mod encode;
mod error;
mod generate;
mod lcm;
mod super_res;

pub use denoiser::UNetDenoiser;
pub use encode::{TextBatch, encode_images, encode_text, encode_tokens};
pub use error::PipelineError;
pub use generate::{Generated, LatentDiffusion, SamplingSpec, generate_batch};
pub use lcm::LcmDenoiser;
pub use super_res::{
    SrDenoiser, SrSampling, SuperResolution, level_labels, low_res_schedule, noise_lr,
};

use burn::tensor::Tensor;

/// The values of a tensor as f32, row-major.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("converted to f32")
}
