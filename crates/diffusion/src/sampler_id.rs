//! The one spelling of a sampler's name, shared by configs, the CLI and the results store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ddim::DdimOptions;
use crate::ddpm::DdpmOptions;
use crate::dpm_solver::DpmSolverOptions;
use crate::lcm::LcmOptions;
use crate::sampler::SamplerKind;

/// A sampler by name: the paper's `ddim`, `ddpm`, `dpmpp-2m`, `dpmpp-3m`, `lcm` for
/// students distilled with a guidance embedding, and `codi` for CFG-aware consistency students.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SamplerId {
    /// DDIM, the paper's default.
    Ddim,
    /// Ancestral DDPM.
    Ddpm,
    /// DPM-Solver++ 2M.
    DpmSolver2M,
    /// DPM-Solver++ 3M.
    DpmSolver3M,
    /// Latent Consistency Model sampling; needs a UNet with `time_cond_proj_dim`.
    Lcm,
    /// Deterministic multistep consistency sampling of a CoDi-style student, with
    /// classifier-free guidance (two evaluations per step).
    Codi,
    /// Deterministic DDIM over a guided-distillation student (stage 1 or a progressive
    /// round): guidance as its embedding, one evaluation per step.
    GuidedDdim,
}

impl SamplerId {
    /// Every sampler, in the order reports list them.
    pub const ALL: [SamplerId; 7] = [
        SamplerId::Ddim,
        SamplerId::Ddpm,
        SamplerId::DpmSolver2M,
        SamplerId::DpmSolver3M,
        SamplerId::Lcm,
        SamplerId::Codi,
        SamplerId::GuidedDdim,
    ];

    /// The name configs, the CLI and the store use.
    pub fn as_str(self) -> &'static str {
        match self {
            SamplerId::Ddim => "ddim",
            SamplerId::Ddpm => "ddpm",
            SamplerId::DpmSolver2M => "dpmpp-2m",
            SamplerId::DpmSolver3M => "dpmpp-3m",
            SamplerId::Lcm => "lcm",
            SamplerId::Codi => "codi",
            SamplerId::GuidedDdim => "guided-ddim",
        }
    }

    /// Whether this is a DPM-Solver++ (designed for few steps: the paper stops at 20).
    pub fn is_dpm_solver(self) -> bool {
        matches!(self, SamplerId::DpmSolver2M | SamplerId::DpmSolver3M)
    }

    /// Whether guidance enters as the model's guidance embedding (`timestep_cond`, one
    /// evaluation per step) instead of classifier-free guidance.
    pub fn uses_guidance_embedding(self) -> bool {
        matches!(self, SamplerId::Lcm | SamplerId::GuidedDdim)
    }

    /// Whether the sampler is for distilled students only (consistency or guided: a base
    /// model reads no guidance embedding, and its boundary-scaled estimate at 4 steps is not a
    /// sample of it).
    pub fn needs_distilled_student(self) -> bool {
        matches!(
            self,
            SamplerId::Lcm | SamplerId::Codi | SamplerId::GuidedDdim
        )
    }

    /// The sampler with its default options (deterministic DDIM, diffusers' DPM-Solver++).
    pub fn kind(self) -> SamplerKind {
        match self {
            SamplerId::Ddim => SamplerKind::Ddim(DdimOptions::default()),
            SamplerId::Ddpm => SamplerKind::Ddpm(DdpmOptions::default()),
            SamplerId::DpmSolver2M => SamplerKind::DpmSolver(DpmSolverOptions::default()),
            SamplerId::DpmSolver3M => SamplerKind::DpmSolver(DpmSolverOptions {
                solver_order: 3,
                ..DpmSolverOptions::default()
            }),
            SamplerId::Lcm => SamplerKind::Lcm(LcmOptions::default()),
            SamplerId::Codi => SamplerKind::Codi(LcmOptions::default()),
            SamplerId::GuidedDdim => SamplerKind::Ddim(DdimOptions::default()),
        }
    }
}

impl fmt::Display for SamplerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sampler name that is not one of [`SamplerId::ALL`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "unknown sampler {name:?}: expected one of ddim, ddpm, dpmpp-2m, dpmpp-3m, lcm, codi, guided-ddim{hint}"
)]
pub struct UnknownSampler {
    /// The name given.
    pub name: String,
    hint: &'static str,
}

impl FromStr for SamplerId {
    type Err = UnknownSampler;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if let Some(id) = SamplerId::ALL.into_iter().find(|s| s.as_str() == name) {
            return Ok(id);
        }
        let hint = match name {
            "dpm_solver" | "dpmpp" | "dpm++" | "dpmpp2m" => " (DPM-Solver++ is dpmpp-2m)",
            _ => "",
        };
        Err(UnknownSampler {
            name: name.to_string(),
            hint,
        })
    }
}

impl Serialize for SamplerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SamplerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for id in SamplerId::ALL {
            assert_eq!(id.as_str().parse::<SamplerId>(), Ok(id));
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<SamplerId>(&json).unwrap(), id);
        }
        let err = "dpm++".parse::<SamplerId>().unwrap_err();
        assert_eq!(err.name, "dpm++");
        assert!(err.to_string().contains("dpmpp-2m"));
        assert_eq!("lcm".parse::<SamplerId>(), Ok(SamplerId::Lcm));
        assert!(
            SamplerId::Lcm.uses_guidance_embedding() && !SamplerId::Ddim.uses_guidance_embedding()
        );
        assert!(matches!(SamplerId::Lcm.kind(), SamplerKind::Lcm(_)));
        assert!(matches!(SamplerId::Codi.kind(), SamplerKind::Codi(_)));
        assert!(!SamplerId::Codi.uses_guidance_embedding());
        assert!(SamplerId::GuidedDdim.uses_guidance_embedding());
        assert!(matches!(SamplerId::GuidedDdim.kind(), SamplerKind::Ddim(_)));
        assert!(
            SamplerId::Codi.needs_distilled_student() && !SamplerId::Ddim.needs_distilled_student()
        );
    }

    #[test]
    fn dpm_solver_orders() {
        let SamplerKind::DpmSolver(o) = SamplerId::DpmSolver3M.kind() else {
            panic!("dpmpp-3m is a DPM-Solver");
        };
        assert_eq!(o.solver_order, 3);
        assert!(SamplerId::DpmSolver2M.is_dpm_solver() && !SamplerId::Ddpm.is_dpm_solver());
    }
}
