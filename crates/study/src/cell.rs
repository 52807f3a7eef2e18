//! One measured cell of a sweep: a model variant of a width, a sampler, a step count, a
//! guidance rate, a seed.

use std::fmt;
use std::str::FromStr;

use ldmscale_diffusion::SamplerId;
use serde::{Deserialize, Serialize};

use crate::bootstrap::FidCi;
use crate::config::DistillMethod;

/// Which model of a width a cell measures: the text-to-image base model, or one derived from
/// it (DreamBooth and distilled students come with their stages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    /// The pretrained text-to-image model.
    #[default]
    Base,
    /// The x4 super-resolution model finetuned from the base for `finetune_steps` optimizer
    /// steps (a run's snapshots are variants of their own, for Fig. 4).
    SuperRes {
        /// Optimizer steps of the finetune.
        finetune_steps: u64,
    },
    /// A consistency-distilled student of the base model, after `steps` optimizer steps.
    Distilled {
        /// The distillation method (which also fixes the student's sampler).
        method: DistillMethod,
        /// Optimizer steps of the distillation.
        steps: u64,
    },
    /// A guided-distilled student (App. C): stage 1 then progressive rounds, `steps` optimizer
    /// steps each; a cell's sampling steps name the round's student (s16 samples at 16).
    Guided {
        /// Optimizer steps of stage 1 and of each round.
        steps: u64,
    },
    /// DreamBooth finetunes of the base on the study's subjects, with or without prior
    /// preservation, after `finetune_steps` optimizer steps each.
    DreamBooth {
        /// Whether prior preservation was on.
        prior: bool,
        /// Optimizer steps of each finetune.
        finetune_steps: u64,
    },
}

/// The kind of [`Variant::SuperRes`], as the store spells it before `@steps`.
pub const SUPER_RES: &str = "super-res";
/// The kind of [`Variant::Guided`].
pub const GUIDED: &str = "guided";
/// The kinds of [`Variant::DreamBooth`] without and with prior preservation.
pub const DREAMBOOTH: [&str; 2] = ["dreambooth", "dreambooth-prior"];

impl Variant {
    /// The variant's kind: what stage made it ("base", "super-res").
    pub fn kind(self) -> &'static str {
        match self {
            Variant::Base => "base",
            Variant::SuperRes { .. } => SUPER_RES,
            Variant::Distilled { method, .. } => method.as_str(),
            Variant::Guided { .. } => GUIDED,
            Variant::DreamBooth { prior, .. } => DREAMBOOTH[usize::from(prior)],
        }
    }

    /// The name the store uses: the kind, and `@N` for the finetune steps.
    pub fn name(self) -> String {
        match self {
            Variant::Base => "base".into(),
            Variant::SuperRes { finetune_steps } => format!("{SUPER_RES}@{finetune_steps}"),
            Variant::Distilled { method, steps } => format!("{method}@{steps}"),
            Variant::Guided { steps } => format!("{GUIDED}@{steps}"),
            Variant::DreamBooth { finetune_steps, .. } => {
                format!("{}@{finetune_steps}", self.kind())
            }
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        let expected = "expected base, super-res@STEPS, lcm@STEPS, codi@STEPS, guided@STEPS, \
                        dreambooth@STEPS or dreambooth-prior@STEPS";
        let Some((kind, steps)) = name.split_once('@') else {
            return match name {
                "base" => Ok(Variant::Base),
                _ => Err(format!("unknown model variant {name:?}: {expected}")),
            };
        };
        let method = kind.parse::<DistillMethod>();
        let dreambooth = DREAMBOOTH.iter().position(|k| *k == kind);
        let known = kind == SUPER_RES || kind == GUIDED;
        if !known && method.is_err() && dreambooth.is_none() {
            return Err(format!("unknown model variant {name:?}: {expected}"));
        }
        let steps: u64 = steps.parse().map_err(|_| {
            format!("model variant {name:?}: {steps:?} is not a step count; {expected}")
        })?;
        Ok(match (method, dreambooth) {
            (Ok(method), _) => Variant::Distilled { method, steps },
            (_, Some(prior)) => Variant::DreamBooth {
                prior: prior == 1,
                finetune_steps: steps,
            },
            _ if kind == GUIDED => Variant::Guided { steps },
            _ => Variant::SuperRes {
                finetune_steps: steps,
            },
        })
    }
}

// Serde through the store's spelling, so a cell's JSON names its variant as the store does.
impl Serialize for Variant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Variant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
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
            &self.variant.name(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_round_trip_through_their_store_names() {
        let sr = Variant::SuperRes {
            finetune_steps: 250,
        };
        let lcm = Variant::Distilled {
            method: DistillMethod::Lcm,
            steps: 40,
        };
        let db = Variant::DreamBooth {
            prior: true,
            finetune_steps: 100,
        };
        assert_eq!(db.to_string(), "dreambooth-prior@100");
        let guided = Variant::Guided { steps: 30 };
        assert_eq!(
            (guided.name().as_str(), guided.kind()),
            ("guided@30", "guided")
        );
        for v in [Variant::Base, sr, lcm, db, guided] {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Variant>(&json).unwrap(), v);
        }
        assert_eq!(sr.to_string(), "super-res@250");
        assert_eq!(sr.kind(), "super-res");
        assert_eq!((lcm.to_string().as_str(), lcm.kind()), ("lcm@40", "lcm"));
        for bad in [
            "super-res",
            "super-res@x",
            "base@3",
            "dreambooth",
            "codi",
            "lcm@",
        ] {
            assert!(bad.parse::<Variant>().is_err(), "{bad}");
        }
    }
}
