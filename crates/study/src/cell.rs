//! One measured cell of a sweep: a model variant of a width, a sampler, a step count, a
//! guidance rate, a seed.

use std::fmt;
use std::str::FromStr;

use ldmscale_diffusion::SamplerId;
use serde::{Deserialize, Serialize};

use crate::bootstrap::FidCi;

/// Which model of a width a cell measures: the text-to-image base model, or one derived from
/// it (super-resolution, DreamBooth and distilled students come with their stages).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The pretrained text-to-image model.
    #[default]
    Base,
}

impl Variant {
    /// The name the store uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Base => "base",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "base" => Ok(Variant::Base),
            other => Err(format!("unknown model variant {other:?}: expected base")),
        }
    }
}

/// What identifies a cell (a sweep never measures the same key twice).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CellKey {
    /// The model variant.
    pub variant: Variant,
    /// Base width of the model.
    pub width: u32,
    /// The sampler.
    pub sampler: SamplerId,
    /// Sampling steps.
    pub steps: u32,
    /// Guidance rate, in thousandths (exact equality for keys).
    pub cfg_milli: i64,
    /// Seed of the initial noise.
    pub seed: u64,
}

impl CellKey {
    /// A seed for this cell's randomness (bootstrap replicates) from its fields through a
    /// stable hash, the same on every platform and release.
    pub fn seed_for(&self, purpose: &str) -> u64 {
        ldmscale_util::hash::stable_seed(&[
            purpose,
            self.variant.as_str(),
            &self.width.to_string(),
            self.sampler.as_str(),
            &self.steps.to_string(),
            &self.cfg_milli.to_string(),
            &self.seed.to_string(),
        ])
    }
}

/// A named measurement of a cell beside FID (PSNR, LPIPS, subject fidelity, ...), with its
/// 95% interval when one was computed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Name, e.g. "lpips".
    pub name: String,
    /// Value.
    pub value: f64,
    /// Interval, if any.
    pub ci: Option<FidCi>,
}

/// A measured cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The model variant.
    #[serde(default)]
    pub variant: Variant,
    /// Base width.
    pub width: u32,
    /// Parameters of the model.
    pub params: u64,
    /// The sampler.
    pub sampler: SamplerId,
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
    /// In-domain CLIP score, for the embedded default.
    pub in_domain_clip: Option<f64>,
    /// Other metrics, by name.
    #[serde(default)]
    pub metrics: Vec<Metric>,
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
            variant: self.variant,
            width: self.width,
            sampler: self.sampler,
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
