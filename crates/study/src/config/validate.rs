//! Every check a study config must pass before any work starts (and in `--dry-run`): each
//! problem names its field as the TOML spells it (`sweep.cfg[0]`), and all are reported at
//! once, so a study never trains its family and then fails on a sweep setting.

use std::collections::HashSet;
use std::hash::Hash;

use ldmscale_data::{HrSource, Split};

use super::{Family, FirstStage, StudyConfig};

/// Image sides above this are refused (the paper samples 512 px; 8192 px images would need
/// 0.8 GB per f32 image batch of one).
pub const MAX_RESOLUTION: usize = 8192;
/// Base widths above this are refused (Table 1 stops at 768 filters, 5B parameters).
pub const MAX_WIDTH: usize = 4096;
/// Batch sizes above this are refused (the paper's is 2048).
pub const MAX_BATCH: usize = 65_536;
/// Sampling steps cannot exceed the training schedule's timesteps.
pub const MAX_STEPS: u32 = 1000;
/// Super-resolution pairs above this are refused (the paper evaluates on 3k crops).
pub const MAX_PAIRS: usize = 10_000_000;
/// Latent channels above this are refused (SD uses 4).
pub const MAX_LATENT_CHANNELS: usize = 64;

/// The problems found, in field order; empty for a valid config.
pub fn problems(c: &StudyConfig) -> Vec<String> {
    let mut p = Problems::default();
    check_top(c, &mut p);
    check_family(c, &mut p);
    check_first_stage(c, &mut p);
    check_recipe(c, &mut p);
    check_sweep(c, &mut p);
    check_super_res(c, &mut p);
    p.0.extend(super::distill::problems(c));
    p.0.extend(super::dreambooth::problems(c));
    p.0
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, field: impl std::fmt::Display, message: impl std::fmt::Display) {
        self.0.push(format!("{field}: {message}"));
    }

    /// `field` must be in `lo..=hi`.
    fn range<T: PartialOrd + std::fmt::Display>(&mut self, field: &str, v: T, lo: T, hi: T) {
        if v < lo || v > hi {
            self.add(field, format!("{v} is outside {lo}..={hi}"));
        }
    }

    /// `field` must be a finite number in `lo..=hi`.
    fn number(&mut self, field: &str, v: f64, lo: f64, hi: f64) {
        if !(v.is_finite() && (lo..=hi).contains(&v)) {
            self.add(field, format!("{v} is not a number in [{lo}, {hi}]"));
        }
    }

    /// A list that must not be empty nor repeat an entry (under `key`).
    fn list<T, K: Eq + Hash>(&mut self, field: &str, items: &[T], key: impl Fn(&T) -> K) {
        if items.is_empty() {
            self.add(field, "must name at least one entry");
        }
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(key(item)) {
                self.add(format!("{field}[{i}]"), "repeats an earlier entry");
            }
        }
    }
}

fn check_top(c: &StudyConfig, p: &mut Problems) {
    if c.name.is_empty() || c.name.contains(['/', '\\', '\0']) {
        p.add(
            "name",
            format!(
                "{:?}: must be a non-empty name without '/' (the default output directory is study-<name>)",
                c.name
            ),
        );
    }
    check_sources(c, p);
    p.range("resolution", c.resolution, 1, MAX_RESOLUTION);
    p.range("train_examples", c.train_examples, 1, usize::MAX);
    p.range("val_examples", c.val_examples, 2, usize::MAX);
    let pixels = c
        .resolution
        .checked_mul(c.resolution)
        .and_then(|px| px.checked_mul(3));
    for (field, n) in [
        ("train_examples", c.train_examples),
        ("val_examples", c.val_examples),
    ] {
        if pixels.and_then(|px| px.checked_mul(n)).is_none() {
            p.add(
                field,
                format!("{n} images of {0}x{0} overflow memory sizes", c.resolution),
            );
        }
    }
    if let Some(path) = c.text_encoder.path()
        && path.is_empty()
    {
        p.add("text_encoder", "the directory after dir: or clip: is empty");
    }
}

/// `dataset`, or `train_dataset` and `eval_dataset`, and two separate sources that differ.
fn check_sources(c: &StudyConfig, p: &mut Problems) {
    match c.sources() {
        Err(e) => p.0.push(e),
        Ok([train, eval]) if train.split == Split::All && train.spec == eval.spec => p.add(
            "eval_dataset",
            format!(
                "{} is train_dataset itself: every evaluation image would be a training image \
                 (give `dataset` alone to hold out part of one source)",
                eval.spec
            ),
        ),
        Ok(_) => {}
    }
}

fn check_family(c: &StudyConfig, p: &mut Problems) {
    p.range("heads", c.heads, 1, MAX_WIDTH);
    p.range("norm_groups", c.norm_groups, 1, MAX_WIDTH);
    p.list("widths", &c.widths, |w| *w);
    for (i, &w) in c.widths.iter().enumerate() {
        let divides = |d: usize| d > 0 && w.is_multiple_of(d);
        if w == 0 || w > MAX_WIDTH || !divides(c.norm_groups) || !divides(c.heads) {
            p.add(
                format!("widths[{i}]"),
                format!(
                    "{w} must be a multiple of norm_groups ({}) and heads ({}) in 1..={MAX_WIDTH}",
                    c.norm_groups, c.heads
                ),
            );
        }
    }
    let factor = match &c.first_stage {
        FirstStage::Train { factor, .. } => *factor,
        FirstStage::Pretrained { .. } => 8,
    };
    if ![2, 4, 8].contains(&factor) {
        return; // first_stage.factor says so
    }
    let side = c.resolution / factor;
    let halvings = match c.family {
        Family::Small => 2,
        Family::Paper => 3,
    };
    if side > 0 && !side.is_multiple_of(1 << halvings) {
        p.add(
            "resolution",
            format!(
                "{} px over the first stage's factor {factor} gives {side} px latents; the {:?} family halves them {halvings} times, so they must be a multiple of {}",
                c.resolution,
                c.family,
                1 << halvings
            ),
        );
    }
}

fn check_first_stage(c: &StudyConfig, p: &mut Problems) {
    match &c.first_stage {
        FirstStage::Train {
            factor,
            latent_channels,
            width,
            steps,
        } => {
            if ![2, 4, 8].contains(factor) || !c.resolution.is_multiple_of(*factor) {
                p.add(
                    "first_stage.factor",
                    format!(
                        "{factor} must be 2, 4 or 8 and divide resolution ({})",
                        c.resolution
                    ),
                );
            }
            p.range(
                "first_stage.latent_channels",
                *latent_channels,
                1,
                MAX_LATENT_CHANNELS,
            );
            p.range("first_stage.width", *width, 1, MAX_WIDTH);
            p.range("first_stage.steps", *steps, 1, u64::MAX);
            if [2, 4, 8].contains(factor) && (1..=MAX_WIDTH).contains(width) {
                let vae = ldmscale_model::AutoencoderKLConfig::small(*factor, *width);
                if let Err(e) = vae.validate() {
                    p.add("first_stage.width", format!("{width}: {e}"));
                }
            }
        }
        FirstStage::Pretrained { path } => {
            if path.is_empty() {
                p.add(
                    "first_stage.path",
                    "must name a diffusers AutoencoderKL directory",
                );
            }
            if !c.resolution.is_multiple_of(8) {
                p.add(
                    "resolution",
                    format!(
                        "{}: a pretrained (KL-f8) first stage needs a multiple of 8",
                        c.resolution
                    ),
                );
            }
        }
    }
}

fn check_recipe(c: &StudyConfig, p: &mut Problems) {
    let r = &c.recipe;
    p.range("recipe.steps", r.steps, 1, u64::MAX);
    p.range("recipe.batch_size", r.batch_size, 1, MAX_BATCH);
    if !(r.learning_rate.is_finite() && r.learning_rate > 0.0 && r.learning_rate <= 1.0) {
        p.add(
            "recipe.learning_rate",
            format!("{} is not a number in (0, 1]", r.learning_rate),
        );
    }
    p.number("recipe.text_dropout", r.text_dropout, 0.0, 1.0);
    if let Some(d) = r.ema_max_decay
        && !(d.is_finite() && (0.0..1.0).contains(&d))
    {
        p.add(
            "recipe.ema_max_decay",
            format!("{d} is not a number in [0, 1)"),
        );
    }
}

fn check_sweep(c: &StudyConfig, p: &mut Problems) {
    let s = &c.sweep;
    p.list("sweep.samplers", &s.samplers, |x| *x);
    for (i, sampler) in s.samplers.iter().enumerate() {
        // The family are base text-to-image UNets, not consistency students.
        if sampler.needs_distilled_student() {
            p.add(
                format!("sweep.samplers[{i}]"),
                format!(
                    "{sampler} samples distilled students only, not the base \
                     family (the distill stage samples its students with it)"
                ),
            );
        }
    }
    p.list("sweep.steps", &s.steps, |x| *x);
    for (i, &n) in s.steps.iter().enumerate() {
        p.range(&format!("sweep.steps[{i}]"), n, 1, MAX_STEPS);
    }
    // Cells are keyed by guidance in thousandths: two rates closer than that are one cell.
    p.list("sweep.cfg", &s.cfg, |x| (x * 1000.0).round() as i64);
    for (i, &w) in s.cfg.iter().enumerate() {
        p.number(&format!("sweep.cfg[{i}]"), w, 0.0, 1000.0);
    }
    p.list("sweep.seeds", &s.seeds, |x| *x);
    p.range("sweep.dpm_max_steps", s.dpm_max_steps, 1, MAX_STEPS);
    p.range("sweep.samples_per_cell", s.samples_per_cell, 2, u32::MAX);
    if s.samples_per_cell as usize > c.val_examples {
        p.add(
            "sweep.samples_per_cell",
            format!(
                "{} is more than val_examples ({}): each sample is generated from its own \
                 evaluation caption",
                s.samples_per_cell, c.val_examples
            ),
        );
    }
    for (field, problem) in s
        .adaptive
        .iter()
        .flat_map(|a| a.problems(s.samples_per_cell))
    {
        p.add(field, problem);
    }
    if s.bootstrap == 1 {
        p.add(
            "sweep.bootstrap",
            "1: use 0 (no interval) or at least 2 replicates",
        );
    }
    for (i, &b) in s.grid_budgets.iter().enumerate() {
        if !(b.is_finite() && b > 0.0) {
            p.add(
                format!("sweep.grid_budgets[{i}]"),
                format!("{b} is not a positive number of normalised cost x steps"),
            );
        }
    }
    if !s.samplers.is_empty() && !s.steps.is_empty() && !s.cfg.is_empty() && c.cells().is_empty() {
        p.add(
            "sweep",
            format!(
                "no cells: every step count exceeds dpm_max_steps ({}) for the DPM-Solver++ samplers named",
                s.dpm_max_steps
            ),
        );
    }
}

/// The `[super_res]` section: sizes the study's images and splits can give, a snapshot grid
/// inside the finetune, samplers that need no guidance embedding.
fn check_super_res(c: &StudyConfig, p: &mut Problems) {
    let Some(sr) = &c.super_res else {
        return;
    };

    let factor = match c.first_stage {
        FirstStage::Train { factor, .. } => factor.max(1),
        FirstStage::Pretrained { .. } => 8,
    };
    let side = sr.hr_side(c.resolution);
    if !(16..=MAX_RESOLUTION).contains(&side) || !side.is_multiple_of(4 * factor) {
        let field = match sr.resolution {
            Some(_) => "super_res.resolution",
            None => "resolution",
        };
        p.add(
            field,
            format!(
                "{side}: super-resolution needs HR images of 16 to {MAX_RESOLUTION} px whose x4 \
                 LR side is a multiple of the first stage's downsampling {factor}"
            ),
        );
    }
    // The study's own images bound the pairs; a file source crops as many as asked.
    let (train_max, eval_max) = match sr.hr_source {
        HrSource::Study => (c.train_examples, c.val_examples),
        _ => (MAX_PAIRS, MAX_PAIRS),
    };
    p.range("super_res.train_pairs", sr.train_pairs, 1, train_max);
    p.range("super_res.eval_pairs", sr.eval_pairs, 2, eval_max);
    p.range("super_res.steps", sr.steps, 1, 100_000_000);
    p.range("super_res.batch_size", sr.batch_size, 1, MAX_BATCH);
    p.number("super_res.learning_rate", sr.learning_rate, 1e-12, 1.0);
    p.range("super_res.warmup_steps", sr.warmup_steps, 0, sr.steps);
    for (i, &s) in sr.snapshot_steps.iter().enumerate() {
        p.range(&format!("super_res.snapshot_steps[{i}]"), s, 1, sr.steps);
    }
    p.list("super_res.samplers", &sr.samplers, |s| *s);
    for (i, sampler) in sr.samplers.iter().enumerate() {
        if sampler.needs_distilled_student() {
            p.add(
                format!("super_res.samplers[{i}]"),
                format!("{sampler} needs a distilled student; SR models are not"),
            );
        }
    }
    p.list("super_res.sample_steps", &sr.sample_steps, |s| *s);
    for (i, &s) in sr.sample_steps.iter().enumerate() {
        p.range(&format!("super_res.sample_steps[{i}]"), s, 1, MAX_STEPS);
    }
}
