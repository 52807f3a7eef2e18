//! The training tasks.

pub mod codi_distill;
pub mod dreambooth;
pub mod ema_target;
pub mod guided_distill;
pub mod lcm_distill;
pub mod progressive_distill;
pub mod sr_pairs;
pub mod super_res;
pub mod text_to_image;

pub use codi_distill::{CodiBatch, CodiDistill, CodiLoss, CodiOptions, CodiStudent};
pub use dreambooth::{DEFAULT_PRIOR_WEIGHT, DreamBooth, DreamBoothBatch, DreamBoothLoss};
pub use guided_distill::{GuidedBatch, GuidedDistill, GuidedLoss, GuidedOptions};
pub use lcm_distill::{ConsistencyLoss, LcmBatch, LcmDistill, LcmLoss, LcmOptions};
pub use progressive_distill::{ProgressiveDistill, ProgressiveOptions};
pub use sr_pairs::SrPairs;
pub use super_res::{SrBatch, SrData, SrLoss, SrOptions, SuperRes};
pub use text_to_image::{DenoisingLoss, TextImageBatch, TextToImage};
