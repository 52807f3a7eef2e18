//! One measured cell of a sweep: a model, a sampler, a step count, a guidance rate, a seed.

use serde::{Deserialize, Serialize};

use crate::bootstrap::FidCi;

/// What identifies a cell (a sweep never measures the same key twice).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CellKey {
    /// Base width of the model.
    pub width: u32,
    /// "ddim", "ddpm", "dpmpp-2m", ... ("lcm" for distilled models).
    pub sampler: String,
    /// Sampling steps.
    pub steps: u32,
    /// Guidance rate, in thousandths (exact equality for keys).
    pub cfg_milli: i64,
    /// Seed of the initial noise.
    pub seed: u64,
}

/// A measured cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Base width.
    pub width: u32,
    /// Parameters of the model.
    pub params: u64,
    /// Sampler name.
    pub sampler: String,
    /// Sampling steps.
    pub steps: u32,
    /// Guidance rate w (<= 1: no guidance).
    pub cfg: f64,
    /// Seed.
    pub seed: u64,
    /// Images generated.
    pub n_samples: u32,
    /// FID against the reference statistics.
    pub fid: f64,
    /// 95% interval of the FID (bootstrap over generated and reference features), if computed.
    pub fid_ci: Option<FidCi>,
    /// CLIP score (x100 cosine), if a CLIP model was available.
    pub clip: Option<f64>,
    /// In-domain CLIP score, for the embedded default.
    pub in_domain_clip: Option<f64>,
    /// CMMD, if computed.
    pub cmmd: Option<f64>,
    /// Denoiser evaluations per image (steps, doubled by guidance).
    pub evaluations: u64,
    /// GFLOPs of one denoiser evaluation.
    pub gflops_per_eval: f64,
    /// Wall seconds to sample the cell's images.
    pub wall_seconds: f64,
}

impl Cell {
    /// The cell's key.
    pub fn key(&self) -> CellKey {
        CellKey {
            width: self.width,
            sampler: self.sampler.clone(),
            steps: self.steps,
            cfg_milli: (self.cfg * 1000.0).round() as i64,
            seed: self.seed,
        }
    }

    /// Sampling cost of one image in GFLOPs: evaluations x GFLOPs per evaluation.
    pub fn sampling_gflops(&self) -> f64 {
        self.evaluations as f64 * self.gflops_per_eval
    }

    /// Wall milliseconds per image on the machine that measured it.
    pub fn ms_per_image(&self) -> f64 {
        1000.0 * self.wall_seconds / self.n_samples.max(1) as f64
    }
}
