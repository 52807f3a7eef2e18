//! The evaluation during training, so the quality-vs-training-compute curve (the paper's
//! Fig. 3) comes out of training itself. Every `eval_every` steps the weights sample fixed
//! prompts with fixed noise; the samples' FID against a reference set (the features are
//! pluggable: the study's in-domain encoder or Inception) and, optionally, a PNG grid are
//! recorded as one [`EvalRecord`] line of the run's `eval.jsonl`. The study's family stage and
//! `ldmscale train` both evaluate through [`TrainingEvaluator`].

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use ldmscale_data::Image;
use ldmscale_eval::{EvalError, FidExtractor, GaussianStats, RgbImage, frechet_distance};
use ldmscale_model::weights::write_atomic;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, ModelError, UNet};
use ldmscale_pipeline::{LatentDiffusion, PipelineError, SamplingSpec, values};
use serde::{Deserialize, Serialize};

use crate::checkpoint::TrainState;

/// Any error of a pluggable part.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// FID of generated images against a reference set, with features of the scorer's choice.
pub trait FidScore {
    /// FID of images `[N, 3, H, W]` in [-1, 1].
    fn fid(&self, images: Tensor<4>) -> Result<f64, BoxError>;
}

/// FID on Inception pool3 features (pytorch-fid mode).
pub struct InceptionFid {
    extractor: FidExtractor,
    reference: GaussianStats,
}

impl InceptionFid {
    /// Scores against `reference` (e.g. [`InceptionFid::stats`] of held-out images).
    pub fn new(extractor: FidExtractor, reference: GaussianStats) -> Self {
        Self {
            extractor,
            reference,
        }
    }

    /// Statistics of the features of images `[N, 3, H, W]` in [-1, 1], quantised to 8 bits
    /// first, as saved samples are before pytorch-fid reads them.
    pub fn stats(extractor: &FidExtractor, images: Tensor<4>) -> Result<GaussianStats, EvalError> {
        let [_, _, h, w] = images.dims();
        let rgb = values(images)
            .chunks(3 * h * w)
            .map(|chw| RgbImage::from_signed_chw(w, h, chw))
            .collect::<Result<Vec<_>, _>>()?;
        GaussianStats::from_features(&extractor.features(&rgb), ldmscale_eval::FEATURE_DIM)
    }
}

/// A borrowed scorer scores (the study lends its evaluator, which the sweep uses too).
impl<T: FidScore + ?Sized> FidScore for &T {
    fn fid(&self, images: Tensor<4>) -> Result<f64, BoxError> {
        (**self).fid(images)
    }
}

impl FidScore for InceptionFid {
    fn fid(&self, images: Tensor<4>) -> Result<f64, BoxError> {
        let stats = Self::stats(&self.extractor, images)?;
        Ok(frechet_distance(&stats, &self.reference)?)
    }
}

/// FID of samples of fixed prompts.
pub struct FidProbe<'a> {
    /// Text states `[F, L, D]` of the prompts, one sample each.
    pub prompts: Tensor<3>,
    /// The features and the reference.
    pub score: Box<dyn FidScore + 'a>,
}

/// A PNG grid of samples of fixed prompts, one file per evaluation.
pub struct GridProbe {
    /// Text states `[P, L, D]` of the prompts.
    pub prompts: Tensor<3>,
    /// Where the grids go: a directory inside the run (records name it relative to the run).
    pub dir: PathBuf,
}

/// Tiles per grid row.
const GRID_COLUMNS: usize = 8;

/// One evaluation, a line of `eval.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps done.
    pub step: u64,
    /// Training compute so far on the paper's axis.
    pub normalized_cost_x_iterations: f64,
    /// Training compute so far, GFLOPs.
    pub train_gflops: f64,
    /// FID of the probe's samples (none without a FID probe).
    pub fid: Option<f64>,
    /// The grid image, relative to the run (none without a grid probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<String>,
}

/// What a failed evaluation reports.
#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    /// Sampling the probe's prompts failed.
    #[error("sampling the evaluation prompts")]
    Sampling(#[from] PipelineError),
    /// The FID scorer failed.
    #[error("FID of the evaluation samples")]
    Fid(#[source] BoxError),
    /// The grid could not be assembled (no prompts).
    #[error("{}: no samples to tile", .0.display())]
    EmptyGrid(PathBuf),
    /// Writing a grid or the log failed.
    #[error(transparent)]
    Write(#[from] ModelError),
    /// Reading the log or creating the grid's directory failed.
    #[error("{}", .path.display())]
    Io {
        /// The log or the directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line of the log is not a record.
    #[error("{} line {line}: not an evaluation record", .path.display())]
    Record {
        /// The log.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The parser's complaint.
        source: serde_json::Error,
    },
}

/// Everything an evaluation needs besides the weights, prepared once per run.
pub struct TrainingEvaluator<'a> {
    /// The decoder of the latents.
    pub vae: &'a AutoencoderKL,
    /// Its config (latent scaling factor).
    pub vae_config: &'a AutoencoderKLConfig,
    /// `[channels, height, width]` of one latent.
    pub latent_shape: [usize; 3],
    /// How every probe samples (the same noise at every evaluation).
    pub spec: SamplingSpec,
    /// The empty caption's text states `[1, L, D]`.
    pub null: Tensor<3>,
    /// FID, when measured.
    pub fid: Option<FidProbe<'a>>,
    /// A sample grid, when wanted.
    pub grid: Option<GridProbe>,
    /// The run's `eval.jsonl`.
    pub log: PathBuf,
}

impl TrainingEvaluator<'_> {
    /// Evaluates `unet` after the step `state` records and writes the record to the log,
    /// dropping records of steps at or after this one (left by a run killed after evaluating
    /// and resumed from an earlier checkpoint).
    pub fn evaluate(&self, unet: &UNet, state: &TrainState) -> Result<EvalRecord, EvaluationError> {
        let model = LatentDiffusion {
            unet,
            vae: self.vae,
            vae_config: self.vae_config,
            latent_shape: self.latent_shape,
        };
        let grid = match &self.grid {
            Some(probe) => Some(self.write_grid(&model, probe, state.step)?),
            None => None,
        };
        let fid = match &self.fid {
            Some(probe) => Some(self.measure_fid(&model, probe)?),
            None => None,
        };
        let record = EvalRecord {
            step: state.step,
            normalized_cost_x_iterations: state.normalized_cost_x_iterations,
            train_gflops: state.train_gflops,
            fid,
            grid,
        };
        let mut records = read_records(&self.log)?;
        records.retain(|r| r.step < state.step);
        records.push(record.clone());
        write_records(&self.log, &records)?;
        Ok(record)
    }

    fn measure_fid(
        &self,
        model: &LatentDiffusion<'_>,
        probe: &FidProbe<'_>,
    ) -> Result<f64, EvaluationError> {
        let images = model
            .generate(&self.spec, &probe.prompts, &self.null)?
            .images;
        probe.score.fid(images).map_err(EvaluationError::Fid)
    }

    /// Samples the grid's prompts and writes `step-NNNNNNNN.png`; returns its path relative
    /// to the run.
    fn write_grid(
        &self,
        model: &LatentDiffusion<'_>,
        probe: &GridProbe,
        step: u64,
    ) -> Result<String, EvaluationError> {
        let images = model
            .generate(&self.spec, &probe.prompts, &self.null)?
            .images;
        let [count, _, size, _] = images.dims();
        let grid = Image::grid_from_nchw(&values(images), count, size, GRID_COLUMNS, 1, 0)
            .ok_or_else(|| EvaluationError::EmptyGrid(probe.dir.clone()))?;
        let name = format!("step-{step:08}.png");
        std::fs::create_dir_all(&probe.dir).map_err(|source| EvaluationError::Io {
            path: probe.dir.clone(),
            source,
        })?;
        write_atomic(&probe.dir.join(&name), &grid.to_png())?;
        let folder = probe.dir.file_name().unwrap_or_default().to_string_lossy();
        Ok(format!("{folder}/{name}"))
    }
}

/// The records of an `eval.jsonl` (none when it does not exist).
pub fn read_records(path: &Path) -> Result<Vec<EvalRecord>, EvaluationError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            let path = path.to_path_buf();
            return Err(EvaluationError::Io { path, source });
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| EvaluationError::Record {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

fn write_records(path: &Path, records: &[EvalRecord]) -> Result<(), EvaluationError> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).expect("a record serialises"));
        text.push('\n');
    }
    Ok(write_atomic(path, text.as_bytes())?)
}
