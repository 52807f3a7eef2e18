//! Errors of dataset reading and latent caching; each names the file, field or spec at fault.

use std::path::Path;

/// What went wrong opening or reading a dataset or a latent cache.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        message: String,
    },
    /// A dataset asset fetched by `tools/fetch-assets.sh` is not there.
    #[error(
        "dataset {name:?}: {path} not found; run `tools/fetch-assets.sh {name}` to fetch it \
         (assets live under $LDMSCALE_CACHE/assets, default ~/.cache/ldmscale/assets)"
    )]
    MissingAsset {
        /// The asset name `tools/fetch-assets.sh` knows it by.
        name: String,
        /// The file or folder that was looked for.
        path: String,
    },
    /// A file has the wrong format or content.
    #[error("{file}: {message}")]
    Format {
        /// The file (or `file:line`, `shard:member`).
        file: String,
        /// What was expected and what was found.
        message: String,
    },
    /// An image could not be decoded.
    #[error("{file}: unreadable image: {message}")]
    Image {
        /// The image file (or `shard.tar:member`).
        file: String,
        /// The decoder's complaint.
        message: String,
    },
    /// A dataset spec string or option is invalid.
    #[error("dataset spec {spec:?}: {message}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong and what forms are accepted.
        message: String,
    },
    /// A setting given as a string or number (an HR source, a crop size) is invalid.
    #[error("{field} {value:?}: {message}")]
    Setting {
        /// What the setting is (`HR source`, `crop size`).
        field: String,
        /// The value as given.
        value: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// An index past the end of a finite dataset.
    #[error("{dataset}: index {index} out of range (len {len})")]
    OutOfRange {
        /// The dataset.
        dataset: String,
        /// The index asked for.
        index: usize,
        /// The dataset length.
        len: usize,
    },
    /// A dataset has no examples (after filtering or splitting) where some are needed.
    #[error("{dataset}: no examples{detail}")]
    Empty {
        /// The dataset.
        dataset: String,
        /// Why, when known.
        detail: String,
    },
    /// Example `id` of a dataset could not be loaded (the streaming loader names the item).
    #[error("{dataset}: example {id}: {source}")]
    Example {
        /// The dataset.
        dataset: String,
        /// The example's id (or `index N` when even the id could not be read).
        id: String,
        /// What went wrong loading it.
        source: Box<DataError>,
    },
    /// A latent cache was built for different data, encoders or resolution than asked.
    #[error(
        "latent cache {dir}: built for a different setting ({mismatch}); rebuild it or point to the cache built for this setting"
    )]
    CacheKeyMismatch {
        /// The cache folder.
        dir: String,
        /// Each differing field, as `field: cache has X, asked for Y`.
        mismatch: String,
    },
    /// A latent cache is incomplete or malformed, or is given arrays of the wrong shape.
    #[error("latent cache {dir}: {message}")]
    Cache {
        /// The cache folder (or shard file).
        dir: String,
        /// What is wrong.
        message: String,
    },
}

impl DataError {
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        DataError::Io {
            file: path.display().to_string(),
            message: e.to_string(),
        }
    }

    pub(crate) fn setting(
        field: &str,
        value: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        DataError::Setting {
            field: field.to_string(),
            value: value.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn format(file: impl std::fmt::Display, message: impl Into<String>) -> Self {
        DataError::Format {
            file: file.to_string(),
            message: message.into(),
        }
    }

    /// True for errors confined to one example (an unreadable or vanished file, an image that
    /// does not decode), which a batch loader skips with a warning instead of stopping the run.
    pub fn is_per_example(&self) -> bool {
        match self {
            DataError::Example { source, .. } => source.is_per_example(),
            other => matches!(
                other,
                DataError::Image { .. } | DataError::Io { .. } | DataError::Format { .. }
            ),
        }
    }
}

impl From<ldmscale_model::ModelError> for DataError {
    fn from(e: ldmscale_model::ModelError) -> Self {
        match e {
            ldmscale_model::ModelError::Io { file, message } => DataError::Io { file, message },
            other => DataError::Io {
                file: String::new(),
                message: other.to_string(),
            },
        }
    }
}
