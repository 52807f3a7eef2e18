//! Errors of inference.

use ldmscale_diffusion::DiffusionError;
use ldmscale_model::ModelError;

/// What can go wrong while sampling or encoding.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The sampler or guidance refused its inputs.
    #[error("sampling: {0}")]
    Diffusion(#[from] DiffusionError),
    /// The text encoder or tokenizer failed.
    #[error("text encoding: {0}")]
    Text(#[from] ModelError),
    /// The UNet does not fit the task (the message names the config field).
    #[error("UNet config: {0}")]
    UNetConfig(String),
}
