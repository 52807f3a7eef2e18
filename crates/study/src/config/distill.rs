//! The `[distill]` section: consistency distillation of the trained widths to few-step
//! students with one recipe, sampled over the sweep's guidance grid (Sec. 3.6, Fig. 13).

use std::fmt;
use std::str::FromStr;

use ldmscale_diffusion::SamplerId;
use ldmscale_train::tasks::{
    CodiOptions, CodiStudent, GuidedOptions, LcmOptions, ProgressiveOptions,
};
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
    /// What CoDi trains: "unet" (the whole UNet) or "adapter" (an encoder adapter on the
    /// frozen teacher, its parameters and GFLOPs counted in the students' cost).
    #[serde(default, skip_serializing_if = "is_whole_unet")]
    pub codi_student: CodiStudent,
    /// Guided distillation (App. C); absent: not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided: Option<GuidedStudy>,
}

/// Guided distillation (App. C): stage 1 (a w-conditioned student of the teacher's CFG
/// output, sampled at `base_steps`), then progressive rounds halving the steps, each round's
/// student the next one's teacher; the `students` are measured beside the undistilled models
/// at their steps. The paper's students are s16 and s8 of its two smallest models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidedStudy {
    /// Widths distilled (each one of `widths`); empty: the study's two smallest.
    #[serde(default)]
    pub widths: Vec<usize>,
    /// Optimizer steps of stage 1 and of each round (the optimizer recipe is `[distill]`'s).
    pub steps: u64,
    /// Sampling steps of the stage-1 student, which the first round halves.
    pub base_steps: u32,
    /// The students measured, by their sampling steps (each `base_steps / 2^k`; k = 0 is the
    /// stage-1 student, against the teacher with CFG at the same steps).
    pub students: Vec<u32>,
    /// Lowest guidance drawn, LCM form (CFG scale `w + 1`), in every stage.
    pub w_min: f64,
    /// Highest guidance drawn.
    pub w_max: f64,
    /// Width of the students' guidance embedding.
    pub embedding_dim: usize,
}

impl GuidedStudy {
    /// The widths distilled: `widths`, or the study's two smallest.
    pub fn distilled_widths(&self, config: &StudyConfig) -> Vec<usize> {
        if !self.widths.is_empty() {
            return self.widths.clone();
        }
        let mut all = config.widths.clone();
        all.sort_unstable();
        all.truncate(2);
        all
    }

    /// The rounds' student steps, in order: `base_steps / 2` down to the fewest student's.
    pub fn rounds(&self) -> Vec<u32> {
        let fewest = self
            .students
            .iter()
            .copied()
            .min()
            .unwrap_or(self.base_steps);
        let mut steps = self.base_steps / 2;
        let mut rounds = Vec::new();
        while steps >= fewest.max(1) {
            rounds.push(steps);
            steps /= 2;
        }
        rounds
    }

    /// Stage 1's options.
    pub fn stage1(&self) -> GuidedOptions {
        GuidedOptions {
            w_min: self.w_min,
            w_max: self.w_max,
            embedding_dim: self.embedding_dim,
        }
    }

    /// The options of the round whose student takes `student_steps`.
    pub fn round(&self, student_steps: u32) -> ProgressiveOptions {
        ProgressiveOptions {
            student_steps: student_steps as usize,
            w_min: self.w_min,
            w_max: self.w_max,
        }
    }

    /// Students s16 and s8 from a 32-step stage-1 student (the small presets: two rounds,
    /// not the longer chain from 64 or more steps), guidance covering CFG 1 to `w_max + 1`.
    fn small(steps: u64, w_max: f64) -> Self {
        GuidedStudy {
            widths: Vec::new(),
            steps,
            base_steps: 32,
            students: vec![16, 8],
            w_min: 0.0,
            w_max,
            embedding_dim: 32,
        }
    }
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
            codi_student: CodiStudent::Unet,
            guided: None,
        }
    }

    /// CI: the smallest width only, a few steps; guided distillation of it with 2 steps per
    /// stage, so every stage runs.
    pub fn tiny() -> Self {
        DistillConfig {
            batch_size: 8,
            guided: Some(GuidedStudy {
                widths: vec![8],
                ..GuidedStudy::small(2, 4.0)
            }),
            ..Self::small(6, vec![8])
        }
    }

    /// Every width in a small budget; guided students of the two smallest.
    pub fn quick() -> Self {
        DistillConfig {
            guided: Some(GuidedStudy::small(100, 4.0)),
            ..Self::small(150, Vec::new())
        }
    }

    /// Hours on a CPU: every width, longer; guided students from 64 steps (the full preset's
    /// guidance grid reaches CFG 7.5).
    pub fn full() -> Self {
        DistillConfig {
            guided: Some(GuidedStudy {
                base_steps: 64,
                ..GuidedStudy::small(1000, 6.5)
            }),
            ..Self::small(2000, Vec::new())
        }
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
            codi_student: CodiStudent::Unet,
            guided: Some(GuidedStudy {
                base_steps: 64,
                embedding_dim: 256,
                ..GuidedStudy::small(10_000, 7.0)
            }),
        }
    }
}

fn is_whole_unet(student: &CodiStudent) -> bool {
    *student == CodiStudent::Unet
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
    if let Some(g) = &d.guided {
        p.extend(guided_problems(c, g));
    }
    p
}

/// `[distill.guided]`'s problems, each naming its field.
fn guided_problems(c: &StudyConfig, g: &GuidedStudy) -> Vec<String> {
    let mut p = Vec::new();
    for (i, w) in g.widths.iter().enumerate() {
        if !c.widths.contains(w) {
            p.push(format!(
                "distill.guided.widths[{i}]: {w} is not one of the study's widths {:?}",
                c.widths
            ));
        }
    }
    if g.steps == 0 {
        p.push("distill.guided.steps: 0; expected at least 1".into());
    }
    if !(2..=MAX_STEPS).contains(&g.base_steps) {
        p.push(format!(
            "distill.guided.base_steps: {} is outside 2..={MAX_STEPS}",
            g.base_steps
        ));
    }
    if g.students.is_empty() {
        p.push("distill.guided.students: empty; expected sampling steps such as [16, 8]".into());
    }
    let mut allowed = vec![g.base_steps];
    allowed.extend(g.rounds());
    for (i, &s) in g.students.iter().enumerate() {
        if !allowed.contains(&s) || g.students[..i].contains(&s) {
            p.push(format!(
                "distill.guided.students[{i}]: {s} is neither base_steps = {} nor a halving of it (expected one of {allowed:?}, each once)",
                g.base_steps
            ));
        }
    }
    if let Err(e) = g.stage1().validate() {
        p.push(format!("distill.{e}"));
    }
    for &cfg in &c.sweep.cfg {
        // Non-finite rates are sweep.cfg's problem.
        if cfg.is_finite() && !(g.w_min..=g.w_max).contains(&(cfg - 1.0)) {
            p.push(format!(
                "distill.guided.w_max: sweep.cfg {cfg} (w = {}) is outside the trained range [{}, {}]",
                cfg - 1.0,
                g.w_min,
                g.w_max
            ));
        }
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
    fn guided_rounds_halve_to_the_fewest_student_and_bad_fields_are_named() {
        let mut c = StudyConfig::preset("quick").unwrap();
        let g = c.distill.as_ref().unwrap().guided.clone().unwrap();
        assert_eq!(g.rounds(), vec![16, 8]);
        assert_eq!(g.distilled_widths(&c), vec![8, 16]);
        let full = StudyConfig::preset("full").unwrap();
        let g = full.distill.unwrap().guided.unwrap();
        assert_eq!(g.rounds(), vec![32, 16, 8]);
        // The stage-1 student may be measured too.
        let mut with_stage1 = c.clone();
        let guided = with_stage1
            .distill
            .as_mut()
            .unwrap()
            .guided
            .as_mut()
            .unwrap();
        guided.students = vec![32, 16, 8];
        assert_eq!(guided.rounds(), vec![16, 8]);
        assert!(problems(&with_stage1).is_empty());
        let bad = c.distill.as_mut().unwrap().guided.as_mut().unwrap();
        bad.widths = vec![12];
        bad.students = vec![16, 12, 16];
        bad.w_max = 1.0;
        let found = problems(&c).join("\n");
        for field in [
            "distill.guided.widths[0]: 12",
            "distill.guided.students[1]: 12 is neither base_steps = 32 nor a halving",
            "distill.guided.students[2]: 16",
            "distill.guided.w_max: sweep.cfg 3 (w = 2)",
        ] {
            assert!(found.contains(field), "{field} in {found}");
        }
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

    #[test]
    fn the_codi_student_reads_from_toml_and_a_bad_one_is_named() {
        let c = StudyConfig::preset("tiny").unwrap();
        assert_eq!(c.distill.as_ref().unwrap().codi_student, CodiStudent::Unet);
        assert!(!c.to_toml().contains("codi_student"));
        let text = c
            .to_toml()
            .replace("[distill]\n", "[distill]\ncodi_student = \"adapter\"\n");
        let back = StudyConfig::from_toml(&text, "t.toml").unwrap();
        assert_eq!(back.distill.unwrap().codi_student, CodiStudent::Adapter);
        let text = text.replace("\"adapter\"", "\"adaptor\"");
        let err = StudyConfig::from_toml(&text, "t.toml").unwrap_err();
        assert!(
            err.contains("codi_student") && err.contains("adaptor"),
            "{err}"
        );
    }
}
