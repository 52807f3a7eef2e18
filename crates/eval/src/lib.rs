//! Evaluation metrics of the ldmscale toolkit, numerically equal to the reference libraries:
//!
//! - FID with the FID Inception-v3 (`pt_inception-2015-12-05`) read directly from its
//!   TorchScript archive ([`inception`], [`weights`], [`pickle`]), in pytorch-fid's and
//!   clean-fid's preprocessing ([`preprocess`]); statistics, Fréchet distance and KID in f64
//!   ([`stats`]); `.npz` statistics files ([`npz`]); folders end to end ([`fid`]).
//! - CLIP score as torchmetrics computes it, with a transformers `CLIPModel` directory
//!   ([`clip`]).
//! - CMMD, the RBF-kernel MMD between CLIP embeddings of Jayasumana et al. ([`cmmd`]).
//! - PSNR and SSIM of super-resolution results as BasicSR 1.4.2 computes them ([`sr_metrics`]);
//!   LPIPS with AlexNet / VGG16 trunks as the `lpips` 0.1.4 package ([`lpips`]).

pub mod clip;
pub mod cmmd;
pub mod dino;
pub mod error;
pub mod fid;
pub mod inception;
pub mod lpips;
pub mod npz;
pub mod pickle;
pub mod preprocess;
pub mod sr_metrics;
pub mod stats;
mod vit;
pub mod weights;

pub use error::EvalError;
pub use fid::{FidExtractor, FolderStatistics, default_inception_path, folder_statistics};
pub use inception::{FEATURE_DIM, FID_INCEPTION_PARAMS, FidInception};
pub use preprocess::{FidMode, RgbImage};
pub use sr_metrics::{RgbView, SrMetricOptions, psnr, ssim};
pub use stats::{GaussianStats, Kid, KidOptions, StatsAccumulator, frechet_distance};
