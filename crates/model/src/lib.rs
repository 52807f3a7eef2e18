//! Models of the ldmscale toolkit: the paper's UNet family, with parameter and FLOP counting and
//! diffusers-format weights.

pub mod cost;
pub mod error;
pub mod unet;
pub mod weights;
pub mod zoo;

pub use cost::Cost;
pub use error::ModelError;
pub use unet::{ExtraConditioning, UNet, UNetConfig};
