//! FID end to end: image folders to pool3 features to statistics.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::EvalError;
use crate::inception::{FEATURE_DIM, FidInception, INPUT_SIZE};
use crate::preprocess::{FidMode, RgbImage, fid_input};
use crate::stats::{GaussianStats, StatsAccumulator};

/// File extensions read as images (lower-case comparison).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

/// Where `tools/fetch-assets.sh inception` puts the FID Inception weights:
/// `$LDMSCALE_CACHE/assets/fid-inception/pt_inception-2015-12-05.pt`, the cache defaulting to
/// `~/.cache/ldmscale`.
pub fn default_inception_path() -> PathBuf {
    let cache = std::env::var_os("LDMSCALE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache").join("ldmscale")
        });
    cache
        .join("assets")
        .join("fid-inception")
        .join("pt_inception-2015-12-05.pt")
}

/// The image files directly inside `dir` (not in subfolders), sorted by path.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let entries = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| EvalError::io(dir, e))?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if !is_image {
            continue;
        }
        // Followed symlinks: a broken or looping one (or a folder named like an image) is
        // skipped, and said so.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(_) => tracing::warn!("skipping {}: not a file", path.display()),
            Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
        }
    }
    if files.is_empty() {
        return Err(EvalError::Input(format!(
            "{}: no images ({}) in this folder",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    files.sort();
    Ok(files)
}

/// The FID network with a preprocessing mode, on a device.
#[derive(Debug)]
pub struct FidExtractor {
    net: FidInception,
    mode: FidMode,
    device: Device,
}

impl FidExtractor {
    /// Wraps a loaded network.
    pub fn new(net: FidInception, mode: FidMode, device: Device) -> Self {
        Self { net, mode, device }
    }

    /// Loads the network from a TorchScript archive or safetensors copy.
    pub fn load(weights: &Path, mode: FidMode, device: &Device) -> Result<Self, EvalError> {
        Ok(Self::new(
            FidInception::load(weights, device)?,
            mode,
            device.clone(),
        ))
    }

    /// The same network with another preprocessing mode.
    pub fn with_mode(self, mode: FidMode) -> Self {
        Self { mode, ..self }
    }

    /// The preprocessing mode.
    pub fn mode(&self) -> FidMode {
        self.mode
    }

    /// The network.
    pub fn net(&self) -> &FidInception {
        &self.net
    }

    /// The `[n, 3, 299, 299]` network input for `images`.
    pub fn input(&self, images: &[RgbImage]) -> Tensor<4> {
        let mut data = Vec::with_capacity(images.len() * 3 * INPUT_SIZE * INPUT_SIZE);
        for image in images {
            data.extend(fid_input(image, self.mode));
        }
        Tensor::from_data(
            TensorData::new(data, [images.len(), 3, INPUT_SIZE, INPUT_SIZE]),
            &self.device,
        )
    }

    /// pool3 features of `images`, `n x 2048` row-major.
    pub fn features(&self, images: &[RgbImage]) -> Vec<f32> {
        if images.is_empty() {
            return Vec::new();
        }
        let out = self.net.forward(self.input(images));
        out.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 features")
    }
}

/// What [`folder_statistics`] found.
#[derive(Debug, Clone)]
pub struct FolderStatistics {
    /// Mean and covariance of the features.
    pub stats: GaussianStats,
    /// The features themselves (`images x 2048`), when asked for.
    pub features: Option<Vec<f32>>,
    /// Images that went into the statistics.
    pub images: usize,
    /// Files that could not be read, with the reason; they are left out.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Features and statistics of every image in `dir`, `batch` images per forward. Unreadable
/// files are skipped and reported; `progress` is called with the number of files done.
pub fn folder_statistics(
    extractor: &FidExtractor,
    dir: &Path,
    batch: usize,
    keep_features: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<FolderStatistics, EvalError> {
    let files = image_files(dir)?;
    let batch = batch.max(1);
    let mut acc = StatsAccumulator::new(FEATURE_DIM);
    let mut kept = keep_features.then(Vec::new);
    let mut skipped = Vec::new();
    let mut done = 0;
    for chunk in files.chunks(batch) {
        let mut images = Vec::with_capacity(chunk.len());
        for path in chunk {
            match RgbImage::open(path) {
                Ok(image) => images.push(image),
                Err(e) => skipped.push((path.clone(), e.to_string())),
            }
        }
        let features = extractor.features(&images);
        acc.add(&features)?;
        if let Some(kept) = kept.as_mut() {
            kept.extend_from_slice(&features);
        }
        done += chunk.len();
        progress(done);
    }
    let images = acc.count();
    if images < 2 {
        return Err(EvalError::Input(format!(
            "{}: {images} readable image(s); FID statistics need at least 2",
            dir.display()
        )));
    }
    Ok(FolderStatistics {
        stats: acc.finish()?,
        features: kept,
        images,
        skipped,
    })
}
