//! Stage 10: the report (HTML and Markdown), made again on every run from what is stored.

use std::path::{Path, PathBuf};

use ldmscale_model::weights::write_atomic;

use super::data::Splits;
use super::evaluator::Evaluator;
use super::family::Family;
use super::first_stage::FirstStageModel;
use super::sweep;
use super::text::TextModel;
use crate::cell::Cell;
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::grid::EqualCostGrid;
use crate::pairing::Pairing;
use crate::report::{ReportInputs, render};
use crate::stage::Stage;
use crate::store::Store;
use crate::super_res::SrResults;

/// The report's directory in the study.
pub const DIR: &str = "report";

/// Everything the report shows.
pub struct ReportStage<'a> {
    /// The examples.
    pub data: &'a Splits,
    /// The autoencoder.
    pub first: &'a FirstStageModel,
    /// The text encoder.
    pub text: &'a TextModel,
    /// What cells were measured with.
    pub evaluator: &'a Evaluator,
    /// The trained widths (their training curves).
    pub family: &'a Family,
    /// The sweep's cells.
    pub cells: &'a [Cell],
    /// Fig. 10.
    pub grids: &'a [EqualCostGrid],
    /// The learning check's sentence.
    pub learning: &'a str,
    /// The super-resolution section's results, when the study has one.
    pub super_res: Option<&'a SrResults>,
    /// The distillation section's results, when the study has one.
    pub distill: Option<&'a crate::distill::DistillResults>,
    /// The DreamBooth section's results, when the study has one.
    pub dreambooth: Option<&'a crate::dreambooth::results::DreamBoothResults>,
}

impl Stage for ReportStage<'_> {
    type Output = PathBuf;
    const NAME: &'static str = "report";

    fn fingerprint(&self, _cx: &StudyContext) -> Fingerprint {
        Fingerprint::of("report", &())
    }

    /// Never stored: the report says how long this run took.
    fn load(&self, _cx: &StudyContext) -> Result<Option<PathBuf>, StudyError> {
        Ok(None)
    }

    fn run(&self, cx: &StudyContext) -> Result<PathBuf, StudyError> {
        let mut inputs = self.inputs(cx);
        let path = sweep::store_path(cx);
        if path.is_file() {
            inputs.pairing = Pairing::from_store(&Store::open_read_only(&path)?, self.cells)?;
        }
        let (html, md) = render(self.cells, &inputs).map_err(StudyError::stage(Self::NAME))?;
        let dir = cx.path(DIR);
        std::fs::create_dir_all(&dir).map_err(StudyError::io(&dir))?;
        write_atomic(&dir.join("report.html"), html.as_bytes())?;
        write_atomic(&dir.join("report.md"), md.as_bytes())?;
        Ok(dir.join("report.html"))
    }
}

impl ReportStage<'_> {
    fn inputs(&self, cx: &StudyContext) -> ReportInputs {
        let c = cx.config;
        let res = c.resolution;
        ReportInputs {
            title: format!(
                "{} preset: {} at {res}x{res}, widths {:?}",
                c.name,
                c.describe_data(),
                c.widths
            ),
            facts: self.facts(cx),
            fid_features: format!(
                "{}, {} samples per cell vs {} held-out images",
                self.evaluator.features.describe(),
                (c.sweep.samples_per_cell as usize).min(self.data.val.len()),
                self.data.val.len()
            ),
            grids: Vec::new(),
            equal_cost: self.grids.to_vec(),
            training_curves: self
                .family
                .models
                .iter()
                .filter_map(|(w, dir)| {
                    let log = dir.parent().expect("a run directory").join("eval.jsonl");
                    training_curve(&log).map(|curve| (*w as u32, curve))
                })
                .collect(),
            pairing: None,
            super_res: self.super_res.cloned(),
            distill: self.distill.cloned(),
            dreambooth: self.dreambooth.cloned(),
        }
    }

    fn facts(&self, cx: &StudyContext) -> Vec<(String, String)> {
        let c = cx.config;
        let first = &self.first.config;
        let clip = &self.evaluator.features.clip;
        let fact = |k: &str, v: String| (k.to_string(), v);
        vec![
            fact(
                "dataset",
                format!(
                    "{} ({} train / {} val examples)",
                    c.describe_data(),
                    self.data.train.len(),
                    self.data.val.len()
                ),
            ),
            fact(
                "first stage",
                format!(
                    "KL-f{} autoencoder, {} latent channels, scaling factor {:.4}, reconstruction PSNR {:.2} dB",
                    self.first.vae.downsampling_factor(),
                    first.latent_channels,
                    first.scaling_factor,
                    self.first.psnr
                ),
            ),
            fact(
                "text encoder",
                format!(
                    "{} ({} wide, {} tokens)",
                    c.text_encoder, self.text.width, self.text.length
                ),
            ),
            fact(
                "training",
                format!(
                    "{} steps of batch {} per width, lr {}",
                    c.recipe.steps, c.recipe.batch_size, c.recipe.learning_rate
                ),
            ),
            fact(
                "in-domain CLIP",
                format!(
                    "held-out retrieval accuracy {:.1}% (chance {:.1}%)",
                    100.0 * clip.retrieval_accuracy,
                    100.0 * clip.chance
                ),
            ),
            fact("learning check", self.learning.to_string()),
            fact("device", device_name(&cx.device)),
            fact(
                "wall time",
                format!("{:.0} s", cx.started.elapsed().as_secs_f64()),
            ),
        ]
    }
}

/// The device as a reader names it ("cpu" for burn's flex backend).
fn device_name(device: &burn::tensor::Device) -> String {
    let name = format!("{device:?}");
    if name.contains("Flex") {
        "cpu (burn flex backend)".into()
    } else {
        name
    }
}

/// (normalised cost x iterations, FID) points of a run's evaluation log, the last entry per
/// step winning (a resumed run re-evaluates the steps after its checkpoint).
fn training_curve(path: &Path) -> Option<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut by_step = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let point = (
            v["normalized_cost_x_iterations"].as_f64()?,
            v["fid"].as_f64()?,
        );
        by_step.insert(v["step"].as_u64()?, point);
    }
    (!by_step.is_empty()).then(|| by_step.into_values().collect())
}
