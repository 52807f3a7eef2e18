//! The one error type of this crate.

use thiserror::Error;

/// Errors from building schedules, samplers and objectives.
///
/// Bad user configuration is reported here (naming the offending field) instead of panicking.
#[derive(Debug, Error)]
pub enum DiffusionError {
    /// A configuration field holds a value this crate cannot use.
    #[error("invalid `{field}`: {message}")]
    InvalidConfig {
        /// The diffusers field name (or argument name) that is wrong.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A scheduler config could not be parsed. Not a `source`: the message holds it already,
    /// and an error chain would print it twice.
    #[error("cannot parse scheduler config: {0}")]
    Parse(serde_json::Error),
    /// Tensors or arguments disagree about their shapes.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A sampler needed noise that its noise source could not provide.
    #[error("noise source exhausted: {0}")]
    NoiseExhausted(String),
}

impl From<serde_json::Error> for DiffusionError {
    fn from(e: serde_json::Error) -> Self {
        DiffusionError::Parse(e)
    }
}

impl DiffusionError {
    /// Shorthand for [`DiffusionError::InvalidConfig`].
    pub fn config(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            message: message.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;
