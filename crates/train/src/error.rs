//! The one error type of training: each variant names what is at fault and keeps its source.
//! A variant's message leaves its source out (reporters such as anyhow's `{:#}` print the
//! chain); [`chain`] writes the whole chain as one line.

use std::error::Error;
use std::path::PathBuf;

use ldmscale_diffusion::DiffusionError;
use ldmscale_model::ModelError;

/// What went wrong in a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting holds a value a run cannot use.
    #[error("{field}{}: {message}", .value.as_ref().map(|v| format!(" = {v}")).unwrap_or_default())]
    InvalidConfig {
        /// The setting, e.g. `model.width` or `train.devices[1]`.
        field: String,
        /// Its value as written, where that helps.
        value: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// A config text is not valid TOML or has unknown keys.
    #[error("{origin}")]
    ParseConfig {
        /// The file (or section) the text came from.
        origin: String,
        /// The parser's complaint.
        source: toml::de::Error,
    },
    /// A config text parsed but one of its settings is invalid.
    #[error("{origin}")]
    ConfigFile {
        /// The file (or section) the text came from.
        origin: String,
        /// The invalid setting.
        source: Box<TrainError>,
    },
    /// A device name this build cannot use.
    #[error("{field} = {name:?}: {reason}")]
    Device {
        /// The setting naming the device.
        field: String,
        /// The name as given.
        name: String,
        /// Why it cannot be used.
        reason: DeviceProblem,
    },
    /// A run directory was started with another config.
    #[error(
        "{}: the run directory was started with a different config (only `steps` and `devices` may change on resume); use a new --out directory",
        .path.display()
    )]
    ConfigChanged {
        /// The run's saved `config.toml`.
        path: PathBuf,
    },
    /// A checkpoint was trained on other data.
    #[error("{}: the run was trained on {saved:?}, not {current:?}; use a new --out directory", .path.display())]
    DataChanged {
        /// The checkpoint's `state.json`.
        path: PathBuf,
        /// The data key it records.
        saved: String,
        /// The data key of this run.
        current: String,
    },
    /// A checkpoint lacks parameters the model has.
    #[error("{}: missing parameters {:?}", .path.display(), first_three(.names))]
    MissingParameters {
        /// The checkpoint's `optimizer.safetensors`.
        path: PathBuf,
        /// The missing names.
        names: Vec<String>,
    },
    /// A checkpoint's `state.json` cannot be read as a training state.
    #[error("{}: not a training state", .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// A checkpoint's tensors cannot be read.
    #[error("{}", .path.display())]
    Tensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: TensorsError,
    },
    /// A file or directory could not be read or written.
    #[error("{}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing through the model crate (UNet weights, atomic file writes) failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The noise schedule or training objective refused its inputs.
    #[error(transparent)]
    Diffusion(#[from] DiffusionError),
    /// The training data has no examples.
    #[error("the training data has no examples")]
    NoData,
    /// Reading a batch of training data failed.
    #[error("reading the training data: {message}")]
    Data {
        /// The data source's message ([`crate::TrainingData::batch`] reports a `String`).
        message: String,
    },
    /// The loss stopped being finite.
    #[error(
        "loss is {loss} at step {step}: training diverged; the last good checkpoint is kept unchanged (try a lower learning_rate or grad_clip)"
    )]
    Diverged {
        /// The optimizer step.
        step: u64,
        /// The loss value (NaN or infinite).
        loss: f64,
    },
    /// A data-parallel worker thread panicked.
    #[error("the data-parallel worker of shard {shard} panicked: {message}")]
    WorkerPanicked {
        /// The shard it ran.
        shard: usize,
        /// The panic message.
        message: String,
    },
    /// The evaluation hook failed.
    #[error("evaluation at step {step}: {message}")]
    Hook {
        /// The step evaluated.
        step: u64,
        /// The hook's message ([`crate::trainer::EvalHook`] reports a `String`).
        message: String,
    },
}

/// Why a device name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceProblem {
    /// Not a device name at all.
    #[error("expected \"cpu\", \"cuda\" or \"cuda:N\"")]
    UnknownName,
    /// A CUDA device in a build without CUDA.
    #[error(
        "this build has no CUDA support; rebuild with the cargo feature `cuda` (README.md, section GPUs)"
    )]
    NoCuda,
}

/// What is wrong with a safetensors file of named tensors.
#[derive(Debug, thiserror::Error)]
pub enum TensorsError {
    /// Not readable safetensors.
    #[error("not a readable safetensors file")]
    Parse(#[from] safetensors::SafeTensorError),
    /// A tensor that is not f32.
    #[error("{name}: expected F32, found {dtype}")]
    NotF32 {
        /// The tensor's name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
}

impl TrainError {
    /// [`TrainError::InvalidConfig`] of `field` with `value`.
    pub fn config(
        field: impl Into<String>,
        value: impl ToString,
        message: impl Into<String>,
    ) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            value: Some(value.to_string()),
            message: message.into(),
        }
    }

    /// [`TrainError::InvalidConfig`] of settings with no single value to show.
    pub fn settings(fields: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: fields.into(),
            value: None,
            message: message.into(),
        }
    }

    /// [`TrainError::Io`] at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

fn first_three(names: &[String]) -> &[String] {
    &names[..names.len().min(3)]
}

/// `error` and its sources as one line, `outer: inner: ...`.
pub fn chain(error: &dyn Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(&format!(": {e}"));
        source = e.source();
    }
    out
}
