//! The training tasks.

pub mod text_to_image;

pub use text_to_image::{DenoisingLoss, TextImageBatch, TextToImage};
