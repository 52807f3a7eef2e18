//! The `[distill]` section: consistency distillation of the trained widths to few-step
//! students with one recipe, sampled over the sweep's guidance grid (Sec. 3.6, Fig. 13).

use std::fmt;
use std::str::FromStr;

use ldmscale_diffusion::SamplerId;
use ldmscale_train::tasks::{CodiOptions, LcmOptions};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StudyConfig;
use super::validate::MAX_STEPS;

/// A consistency-distillation method, with the sampler its students need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DistillMethod {
    /// Latent consistency distillation: guidance as an embedding, 1 evaluation per step.
    Lcm,
    /// CoDi-style: guidance inside the loss, sampled with CFG (2 evaluations per step).
    Codi,
}

impl DistillMethod {
    /// Every method, in the order reports list them.
    pub const ALL: [DistillMethod; 2] = [DistillMethod::Lcm, DistillMethod::Codi];

    /// The name configs and the store use.
    pub fn as_str(self) -> &'static str {
        match self {
            DistillMethod::Lcm => "lcm",
            DistillMethod::Codi => "codi",
        }
    }

    /// The sampler of its students.
    pub fn sampler(self) -> SamplerId {
        match self {
            DistillMethod::Lcm => SamplerId::Lcm,
            DistillMethod::Codi => SamplerId::Codi,
        }
    }

    /// The cost convention of its students, in words.
    pub fn cost_convention(self) -> &'static str {
        match self {
            DistillMethod::Lcm => "LCM: 1 evaluation per step (guidance is an embedding)",
            DistillMethod::Codi => "CoDi: 2 evaluations per step under CFG (1 at w = 1)",
        }
    }
}

impl fmt::Display for DistillMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DistillMethod {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        DistillMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| format!("unknown distillation method {name:?}: expected lcm or codi"))
    }
}

impl Serialize for DistillMethod {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DistillMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Distillation: the methods, the widths, one optimizer recipe for every student, and the
/// students' sampling (the sweep's guidance grid and seeds at `sample_steps`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Methods: "lcm", "codi".
    pub methods: Vec<DistillMethod>,
    /// Widths distilled (each one of `widths`); empty: every width.
    #[serde(default)]
    pub widths: Vec<usize>,
    /// Optimizer steps per student.
    pub steps: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate (AdamW, constant after warmup).
    pub learning_rate: f64,
    /// Warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Sampling steps of the students and of the teachers they are compared with (Fig. 13: 4).
    #[serde(default = "four")]
    pub sample_steps: u32,
    /// The teachers' sampler at `sample_steps` (Fig. 13 left's undistilled points).
    #[serde(default = "ddim")]
    pub teacher_sampler: SamplerId,
    /// Seed of the students' data order and noise draws.
    #[serde(default)]
    pub seed: u64,
    /// The LCM recipe (guidance in LCM form: CFG scale w + 1).
    #[serde(default)]
    pub lcm: LcmOptions,
    /// The CoDi recipe (guidance in CFG form).
    #[serde(default)]
    pub codi: CodiOptions,
}

fn four() -> u32 {
    4
}

fn ddim() -> SamplerId {
    SamplerId::Ddim
}

impl DistillConfig {
    /// The widths distilled: `widths`, or every width of `config`.
    pub fn distilled_widths(&self, config: &StudyConfig) -> Vec<usize> {
        match self.widths.is_empty() {
            true => config.widths.clone(),
            false => self.widths.clone(),
        }
    }

    /// The small presets' recipe: both methods, guidance ranges covering the small presets'
    /// guidance grid (CFG 1 to 5) so every sampled rate was seen in training.
    fn small(steps: u64, widths: Vec<usize>) -> Self {
        DistillConfig {
            methods: DistillMethod::ALL.to_vec(),
            widths,
            steps,
            batch_size: 16,
            learning_rate: 1e-4,
            warmup_steps: 0,
            sample_steps: 4,
            teacher_sampler: SamplerId::Ddim,
            seed: 0,
            lcm: LcmOptions {
                w_min: 0.0,
                w_max: 4.0,
                embedding_dim: 32,
                ..LcmOptions::default()
            },
            codi: CodiOptions {
                w_min: 1.0,
                w_max: 6.0,
                ..CodiOptions::default()
            },
        }
    }

    /// CI: the smallest width only, a few steps.
    pub fn tiny() -> Self {
        DistillConfig {
            batch_size: 8,
            ..Self::small(6, vec![8])
        }
    }

    /// Every width in a small budget.
    pub fn quick() -> Self {
        Self::small(150, Vec::new())
    }

    /// Hours on a CPU: every width, longer.
    pub fn full() -> Self {
        Self::small(2000, Vec::new())
    }

    /// The references' recipes (LCM's w ~ U[5, 15], CoDi's U[1, 11)), every width.
    pub fn paper() -> Self {
        DistillConfig {
            methods: DistillMethod::ALL.to_vec(),
            widths: Vec::new(),
            steps: 10_000,
            batch_size: 256,
            learning_rate: 1e-5,
            warmup_steps: 0,
            sample_steps: 4,
            teacher_sampler: SamplerId::Ddim,
            seed: 0,
            lcm: LcmOptions::default(),
            codi: CodiOptions::default(),
        }
    }
}

/// The section's problems, each naming its field (`distill.x`).
pub fn problems(c: &StudyConfig) -> Vec<String> {
    let Some(d) = &c.distill else {
        return Vec::new();
    };
    let mut p = Vec::new();
    if d.methods.is_empty() {
        p.push("distill.methods: empty; expected one or more of lcm, codi".to_string());
    }
    for (i, m) in d.methods.iter().enumerate() {
        if d.methods[..i].contains(m) {
            p.push(format!("distill.methods[{i}]: {m} is listed twice"));
        }
    }
    for (i, w) in d.widths.iter().enumerate() {
        if !c.widths.contains(w) {
            p.push(format!(
                "distill.widths[{i}]: {w} is not one of the study's widths {:?}",
                c.widths
            ));
        }
    }
    if d.steps == 0 {
        p.push("distill.steps: 0; expected at least 1".into());
    }
    if !(1..=super::validate::MAX_BATCH).contains(&d.batch_size) {
        p.push(format!(
            "distill.batch_size: {} is outside 1..=65536",
            d.batch_size
        ));
    }
    if !(d.learning_rate.is_finite() && d.learning_rate > 0.0 && d.learning_rate <= 1.0) {
        p.push(format!(
            "distill.learning_rate: {} is not in (0, 1]",
            d.learning_rate
        ));
    }
    if d.warmup_steps > d.steps {
        p.push(format!(
            "distill.warmup_steps: {} exceeds distill.steps = {}",
            d.warmup_steps, d.steps
        ));
    }
    if !(1..=MAX_STEPS).contains(&d.sample_steps) {
        p.push(format!(
            "distill.sample_steps: {} is outside 1..={MAX_STEPS}",
            d.sample_steps
        ));
    }
    if d.teacher_sampler.needs_distilled_student() {
        p.push(format!(
            "distill.teacher_sampler: {} samples students, not the teachers",
            d.teacher_sampler
        ));
    }
    if let Err(e) = d.lcm.validate() {
        p.push(format!("distill.{e}"));
    }
    if let Err(e) = d.codi.validate() {
        p.push(format!("distill.{e}"));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named_and_presets_validate() {
        for preset in ["tiny", "quick", "full", "paper"] {
            let c = StudyConfig::preset(preset).unwrap();
            assert!(problems(&c).is_empty(), "{preset}: {:?}", problems(&c));
        }
        let mut c = StudyConfig::preset("tiny").unwrap();
        let d = c.distill.as_mut().unwrap();
        d.methods = vec![DistillMethod::Lcm, DistillMethod::Lcm];
        d.widths = vec![12];
        d.sample_steps = 0;
        d.teacher_sampler = SamplerId::Codi;
        d.lcm.w_min = 5.0;
        d.lcm.w_max = 1.0;
        d.codi.ema_decay = 1.5;
        let found = problems(&c).join("\n");
        for field in [
            "distill.methods[1]: lcm is listed twice",
            "distill.widths[0]: 12 is not one of the study's widths",
            "distill.sample_steps: 0",
            "distill.teacher_sampler: codi",
            "distill.lcm.w_max = 1",
            "distill.codi.ema_decay = 1.5",
        ] {
            assert!(found.contains(field), "{field} in {found}");
        }
        assert!(c.validate().unwrap_err().contains("distill.lcm.w_max"));
    }

    #[test]
    fn the_section_round_trips_and_unknown_methods_are_named() {
        let c = StudyConfig::preset("quick").unwrap();
        let back = StudyConfig::from_toml(&c.to_toml(), "quick.toml").unwrap();
        assert_eq!(back.distill, c.distill);
        let text = c.to_toml().replace("\"codi\"", "\"guided\"");
        let err = StudyConfig::from_toml(&text, "q.toml").unwrap_err();
        assert!(
            err.contains("unknown distillation method \"guided\""),
            "{err}"
        );
        assert_eq!(
            c.distill
                .unwrap()
                .distilled_widths(&StudyConfig::preset("quick").unwrap()),
            vec![8, 16, 24, 32]
        );
    }
}
