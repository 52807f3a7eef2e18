//! Errors of the evaluation crate; each names the file, tensor or input at fault.

use std::path::Path;

/// What went wrong loading a network, reading images or statistics, or computing a metric.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        message: String,
    },
    /// A weights archive (TorchScript zip, safetensors) is malformed or uses something this
    /// reader refuses.
    #[error("{file}: {message}")]
    Archive {
        /// The archive.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor the network needs is absent.
    #[error("{file}: missing tensor {key:?} (expected shape {expected:?}){hint}")]
    MissingTensor {
        /// The weights file.
        file: String,
        /// The tensor name.
        key: String,
        /// Its shape in the network.
        expected: Vec<usize>,
        /// Extra help, e.g. how many were missing in all.
        hint: String,
    },
    /// A tensor has the wrong shape or dtype, or a layer setting disagrees with the network.
    #[error("{file}: tensor {key:?}: {message}")]
    BadTensor {
        /// The weights file.
        file: String,
        /// The tensor or layer name.
        key: String,
        /// Expected vs found.
        message: String,
    },
    /// The weights hold tensors the network has no place for.
    #[error("{file}: unexpected tensors not used by this network: {keys}")]
    UnexpectedTensors {
        /// The weights file.
        file: String,
        /// The first few names.
        keys: String,
    },
    /// An image could not be decoded.
    #[error("{file}: cannot read image: {message}")]
    Image {
        /// The image file.
        file: String,
        /// The decoder's complaint.
        message: String,
    },
    /// A statistics or array file is malformed or does not fit the others.
    #[error("{file}: {message}")]
    Stats {
        /// The file (or a description of the in-memory input).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Input that cannot give a metric (empty folder, too few samples, mismatched sizes).
    #[error("{0}")]
    Input(String),
}

impl EvalError {
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        EvalError::Io {
            file: path.display().to_string(),
            message: e.to_string(),
        }
    }

    pub(crate) fn archive(path: &Path, message: impl Into<String>) -> Self {
        EvalError::Archive {
            file: path.display().to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn stats(file: impl std::fmt::Display, message: impl Into<String>) -> Self {
        EvalError::Stats {
            file: file.to_string(),
            message: message.into(),
        }
    }
}
