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

/// Reads a JSON config file and validates it; either failure is a [`ModelError::Config`]
/// naming the file.
pub(crate) fn read_json_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let config_error = |message: String| ModelError::Config {
        file: path.display().to_string(),
        message,
    };
    // The path names the field (`block_out_channels[2]`), not just a line and column.
    let mut json = serde_json::Deserializer::from_str(&text);
    let config: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        config_error(match field.as_str() {
            "." => inner.to_string(),
            _ => format!("field `{field}`: {inner}"),
        })
    })?;
    validate(&config).map_err(config_error)?;
    Ok(config)
}

/// A config as pretty JSON with the identifying `key: value` entry the reference library
/// writes (`_class_name` for diffusers, `model_type` for transformers).
pub(crate) fn json_config_with<T: serde::Serialize>(config: &T, key: &str, value: &str) -> String {
    let mut json = serde_json::to_value(config).expect("config serialises");
    if let Some(map) = json.as_object_mut() {
        map.insert(key.into(), value.into());
    }
    serde_json::to_string_pretty(&json).expect("config serialises")
}
