//! The study's stages, one file each, in the order a study runs them.

pub mod adaptive;
pub mod data;
pub mod distill;
pub mod dreambooth;
pub mod evaluator;
pub mod family;
pub mod first_stage;
pub mod grids;
pub mod latents;
pub mod learning_check;
pub mod report;
pub mod sr_data;
pub mod super_res;
pub mod sweep;
pub mod text;

use crate::config::StudyConfig;
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;

/// Every stored stage's fingerprint for `config` (the report is never stored).
pub fn fingerprints(config: &StudyConfig) -> Vec<(&'static str, Fingerprint)> {
    vec![
        ("data", data::fingerprint(config)),
        ("first-stage", first_stage::fingerprint(config)),
        ("text-encoder", text::fingerprint(config)),
        ("latents", latents::fingerprint(config)),
        ("evaluator", evaluator::fingerprint(config)),
        ("family", family::fingerprint(config)),
        ("sweep", sweep::fingerprint(config)),
        ("adaptive", adaptive::fingerprint(config)),
        ("grids", grids::fingerprint(config)),
        ("learning-check", learning_check::fingerprint(config)),
        ("sr-data", sr_data::fingerprint(config)),
        ("distill", distill::fingerprint(config)),
    ]
}

/// The stages that train per width after the family, with how many widths each trains:
/// the arrays a scheduler runs between the family and the report (`--only STAGE --shard i/N`
/// trains the widths j with j mod N = i).
pub fn width_arrays(config: &StudyConfig) -> Vec<(&'static str, usize)> {
    let mut arrays = Vec::new();
    if config.super_res.is_some() {
        arrays.push(("super-res", config.widths.len()));
    }
    if let Some(d) = &config.distill {
        let guided = d
            .guided
            .as_ref()
            .map_or(0, |g| g.distilled_widths(config).len());
        arrays.push(("distill", d.distilled_widths(config).len().max(guided)));
    }
    if let Some(d) = &config.dreambooth {
        arrays.push(("dreambooth", d.finetuned_widths(config).len()));
    }
    arrays.retain(|(_, n)| *n > 0);
    arrays
}

/// Adopts a study directory written before per-stage fingerprints: its results were all
/// made by `saved`, its config then (older releases refused any other).
pub fn adopt_legacy(cx: &StudyContext, saved: &StudyConfig) -> Result<(), StudyError> {
    for &w in &saved.widths {
        family::adopt_run(saved, &cx.out, w)?;
    }
    sweep::adopt_store(cx, saved)?;
    cx.adopt_legacy(saved)
}
