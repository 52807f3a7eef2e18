//! Models of the ldmscale toolkit: the paper's UNet family, the first-stage autoencoder and the
//! text encoders, with parameter and FLOP counting and diffusers/transformers-format weights.

pub mod cost;
pub mod error;
pub mod init;
pub mod ops;
pub mod text;
pub mod unet;
pub mod vae;
pub mod weights;
pub mod zoo;

pub use cost::Cost;
pub use error::ModelError;
pub use text::{
    ContextProjection, TextConditioner, TextEncoder, TextModel, TextStates, TokenBatch,
};
pub use unet::{ExtraConditioning, UNet, UNetConfig};
pub use vae::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian};
