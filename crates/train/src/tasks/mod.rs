//! The training tasks.

pub mod sr_pairs;
pub mod super_res;
pub mod text_to_image;

pub use sr_pairs::SrPairs;
pub use super_res::{SrBatch, SrData, SrLoss, SrOptions, SuperRes};
pub use text_to_image::{DenoisingLoss, TextImageBatch, TextToImage};
