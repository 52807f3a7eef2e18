//! `ldmscale study`: data -> first stage -> text encoder -> latent cache -> evaluator ->
//! family -> sweep -> adaptive sampling -> grids -> learning check -> super-resolution data ->
//! super-resolution -> distillation -> DreamBooth -> report. Each stage's result is stored under
//! the output directory with the fingerprint of what it depends on, so a killed study resumes
//! where it stopped and a changed config recomputes only the stages the change reaches.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ldmscale_model::weights::write_atomic;

use crate::cell::Cell;
use crate::config::StudyConfig;
use crate::context::{RunOptions, StudyContext};
use crate::error::StudyError;
use crate::grid::EqualCostGrid;
use crate::stages::adaptive::AdaptiveStage;
use crate::stages::data::Data;
use crate::stages::distill::DistillStage;
use crate::stages::dreambooth::DreamBoothStage;
use crate::stages::evaluator::{Evaluator, EvaluatorStage};
use crate::stages::family::{Family, FamilyStage};
use crate::stages::first_stage::{FirstStageModel, FirstStageStage};
use crate::stages::grids::{DdimProbe, GridsStage};
use crate::stages::latents::{Latents, LatentsStage};
use crate::stages::learning_check::LearningCheckStage;
use crate::stages::report::ReportStage;
use crate::stages::sr_data::SrDataStage;
use crate::stages::super_res::SuperResStage;
use crate::stages::sweep::SweepStage;
use crate::stages::text::TextStage;
use crate::stages::{self};

/// What a study run did.
#[derive(Debug)]
pub struct Summary {
    /// Cells of the config's grid stored (0 when `--only` stopped before the sweep).
    pub cells: usize,
    /// The HTML report (none when `--only` stopped before it).
    pub report: Option<PathBuf>,
    /// Wall seconds.
    pub seconds: f64,
}

/// The file recording the config of the latest run in a study directory.
pub const CONFIG_FILE: &str = "study.toml";

/// Runs (or resumes) the study in `out` on `device`.
pub fn run(
    config: &StudyConfig,
    out: &Path,
    device: &Device,
    options: &RunOptions,
) -> Result<Summary, StudyError> {
    config.validate().map_err(StudyError::Config)?;
    let cx = StudyContext::open(config, out, device.clone(), options)?.locked()?;
    let config_path = out.join(CONFIG_FILE);
    if !out.join(crate::context::MANIFEST).exists()
        && let Ok(text) = std::fs::read_to_string(&config_path)
    {
        let saved = StudyConfig::from_toml(&text, &config_path.display().to_string())
            .map_err(StudyError::Config)?;
        stages::adopt_legacy(&cx, &saved)?;
    }
    write_atomic(&config_path, config.to_toml().as_bytes())?;
    let mut summary = Summary {
        cells: 0,
        report: None,
        seconds: 0.0,
    };
    match run_stages(&cx, &mut summary) {
        Ok(()) | Err(StudyError::OnlyDone) => {}
        Err(e) => return Err(e),
    }
    summary.seconds = cx.started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The stages in order, each result feeding the next. The measuring stages and each
/// downstream section feed only the report, so a run whose `--only` names neither them nor
/// the report skips them (see [`StudyContext::needs`]).
fn run_stages(cx: &StudyContext, summary: &mut Summary) -> Result<(), StudyError> {
    let data = cx.ensure(&Data)?;
    let first = cx.ensure(&FirstStageStage { data: &data })?;
    let text = cx.ensure(&TextStage { data: &data })?;
    let latents = cx.ensure(&LatentsStage {
        data: &data,
        first: &first,
        text: &text,
    })?;
    let evaluator = cx.ensure(&EvaluatorStage {
        data: &data,
        latents: &latents,
    })?;
    let sr_sets = match cx.config.super_res {
        Some(_) if cx.needs(&["sr-data", "super-res"]) => Some(cx.ensure(&SrDataStage {
            data: &data,
            first: &first,
            latents: &latents,
        })?),
        _ => None,
    };
    let family = cx.ensure(&FamilyStage {
        latents: &latents,
        evaluator: &evaluator,
        first: &first,
    })?;
    let measured = match cx.needs(&["sweep", "adaptive", "grids", "learning-check"]) {
        true => Some(measure_family(cx, &family, &latents, &evaluator, &first)?),
        false => None,
    };
    let super_res = match &sr_sets {
        Some(sets) if cx.needs(&["super-res"]) => Some(cx.ensure(&SuperResStage {
            family: &family,
            sets,
            evaluator: &evaluator,
            first: &first,
        })?),
        _ => None,
    };
    let distill = match cx.config.distill {
        Some(_) if cx.needs(&["distill"]) => Some(cx.ensure(&DistillStage {
            family: &family,
            latents: &latents,
            evaluator: &evaluator,
            first: &first,
        })?),
        _ => None,
    };
    let dreambooth = match cx.config.dreambooth {
        Some(_) if cx.needs(&["dreambooth"]) => Some(cx.ensure(&DreamBoothStage {
            family: &family,
            latents: &latents,
            evaluator: &evaluator,
            first: &first,
            text: &text,
        })?),
        _ => None,
    };
    let Some(measured) = measured else {
        return Ok(());
    };
    summary.cells = measured.cells.len();
    let report = ReportStage {
        data: &data,
        first: &first,
        text: &text,
        evaluator: &evaluator,
        family: &family,
        cells: &measured.cells,
        grids: &measured.grids,
        learning: &measured.learning,
        super_res: super_res.as_ref(),
        distill: distill.as_ref(),
        dreambooth: dreambooth.as_ref(),
    };
    summary.report = Some(cx.ensure(&report)?);
    Ok(())
}

/// What the family's measurement gives the report.
struct Measured {
    cells: Vec<Cell>,
    grids: Vec<EqualCostGrid>,
    learning: String,
}

/// The sweep, adaptive sampling, the grids and the learning check.
fn measure_family(
    cx: &StudyContext,
    family: &Family,
    latents: &Latents,
    evaluator: &Evaluator,
    first: &FirstStageModel,
) -> Result<Measured, StudyError> {
    let sweep = || SweepStage {
        family,
        latents,
        evaluator,
        first,
    };
    cx.ensure(&sweep())?;
    let cells = cx.ensure(&AdaptiveStage { sweep: sweep() })?;
    let probe = || DdimProbe {
        first,
        latents,
        evaluator,
    };
    let grids = cx.ensure(&GridsStage {
        family,
        cells: &cells,
        probe: probe(),
    })?;
    let learning = cx.ensure(&LearningCheckStage {
        family,
        cells: &cells,
        probe: probe(),
    })?;
    Ok(Measured {
        cells,
        grids,
        learning,
    })
}

pub use crate::dry_run::dry_run;
