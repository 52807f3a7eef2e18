//! Errors of model construction and weight I/O; each names the file or key at fault.

use std::path::Path;

/// What went wrong reading or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        message: String,
    },
    /// A config file is malformed or asks for something unsupported.
    #[error("{file}: invalid config: {message}")]
    Config {
        /// The config file.
        file: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A weights file is not valid safetensors.
    #[error("{file}: not a readable safetensors file: {message}")]
    CorruptWeights {
        /// The weights file.
        file: String,
        /// The parser's complaint.
        message: String,
    },
    /// A parameter the model needs is missing from the weights.
    #[error("{file}: missing tensor {key:?} (expected shape {expected:?}){hint}")]
    MissingKey {
        /// The weights file.
        file: String,
        /// The parameter name in diffusers' naming.
        key: String,
        /// Its shape in the model.
        expected: Vec<usize>,
        /// Extra help, e.g. how many keys were missing in all.
        hint: String,
    },
    /// The weights hold tensors the model has no place for.
    #[error("{file}: unexpected tensors not used by this model config: {keys}")]
    UnexpectedKeys {
        /// The weights file.
        file: String,
        /// The first few unexpected names.
        keys: String,
    },
    /// A tensor has the wrong shape or dtype.
    #[error("{file}: tensor {key:?}: {message}")]
    BadTensor {
        /// The weights file.
        file: String,
        /// The parameter name.
        key: String,
        /// Expected vs found.
        message: String,
    },
}

impl ModelError {
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        ModelError::Io {
            file: path.display().to_string(),
            message: e.to_string(),
        }
    }
}
