//! Errors of the study, typed by where they come from.

use std::path::PathBuf;

use ldmscale_data::DataError;
use ldmscale_eval::EvalError;
use ldmscale_model::ModelError;
use ldmscale_pipeline::PipelineError;

use crate::store::StoreError;

/// What stopped a study.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// The study config is invalid (the message names the field).
    #[error("{0}")]
    Config(String),
    /// A file or directory could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The results store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another run holds the study directory.
    #[error(transparent)]
    Lock(#[from] ldmscale_util::lock::LockError),
    /// Training a width of the family.
    #[error("training width {width}")]
    Train {
        /// The width.
        width: usize,
        /// Why it stopped.
        source: ldmscale_train::TrainError,
    },
    /// Sampling or encoding.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Loading or saving a model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Reading the dataset or the latent cache.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Loading an evaluation network or statistics.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// An asset the config asks for is not on this machine.
    #[error("{what} needs an asset: fetch it with tools/fetch-assets.sh {asset}")]
    MissingAsset {
        /// What needs it.
        what: String,
        /// The fetch-assets.sh name.
        asset: &'static str,
        /// The load error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stage failed inside (analysis, bootstrap, plots, the latent cache).
    #[error("{stage}: {message}")]
    Stage {
        /// The stage.
        stage: &'static str,
        /// Why.
        message: String,
    },
    /// `--only` named a stage that does not exist.
    #[error("--only {0:?}: no such stage; the stages are {stages}", stages = crate::context::STAGES.join(", "))]
    UnknownStage(String),
    /// `--only` left out a stage whose result is needed and not stored.
    #[error(
        "stage {stage} has not run for this config, and --only leaves it out; add it to --only or run without --only"
    )]
    NotRun {
        /// The missing stage.
        stage: &'static str,
    },
    /// The stages `--only` asked for are done, or an array task trained its widths (not a
    /// failure: the run stops there).
    #[error("the stages --only asked for are done")]
    OnlyDone,
}

impl StudyError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StudyError + '_ {
        move |source| StudyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A failure inside `stage` reported as text by a helper.
    pub fn stage(stage: &'static str) -> impl FnOnce(String) -> StudyError {
        move |message| StudyError::Stage { stage, message }
    }
}
