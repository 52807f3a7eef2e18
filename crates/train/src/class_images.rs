//! Class images for DreamBooth's prior preservation (diffusers' `train_dreambooth.py`): the
//! base model's own samples of the class prompt, made once into a folder (`00000.png`, ...,
//! and [`RECORD`] naming the prompt, sampling and model that made them) and reused after.
//! Image i's noise depends only on the seed and the 32-image chunk holding i (as
//! [`LatentDiffusion::generate`] seeds it), so a killed generation resumes with the same
//! images. A folder of a user's own class images (no record) is used as it is.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use ldmscale_data::Image;
use ldmscale_data::dreambooth::load_instance_dir;
use ldmscale_model::TextEncoder;
use ldmscale_model::text::TextConditioner;
use ldmscale_model::weights::write_atomic;
use ldmscale_pipeline::{LatentDiffusion, SamplingSpec, encode_text, generate_batch, values};
use serde::{Deserialize, Serialize};

use crate::data::MAX_TOKENS;
use crate::error::TrainError;
use crate::params;
use crate::tasks::super_res::weights_digest;

/// The file recording what made a folder's generated class images.
pub const RECORD: &str = "class_images.json";
/// Images sampled at once; also the unit of the noise seeding (see the module doc).
const CHUNK: usize = 32;
/// Most class images one folder may be asked for.
pub const MAX_CLASS_IMAGES: usize = 100_000;

/// What to generate: `count` images of `prompt`, sampled as `sampling` says.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassImageRequest {
    /// The class prompt, e.g. "a circle".
    pub prompt: String,
    /// Images wanted.
    pub count: usize,
    /// Sampler, steps, guidance and seed (diffusers: DDIM-like 50 steps at CFG 7.5).
    pub sampling: SamplingSpec,
}

/// What made a folder's class images; a folder made by another is refused, not mixed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    prompt: String,
    sampler: String,
    steps: u32,
    cfg: f64,
    seed: u64,
    /// Digest of the UNet's weights.
    unet: String,
    /// Image side in pixels.
    resolution: usize,
}

/// The first `request.count` class images of `dir`, generating the missing ones with `model`
/// (the class prompt encoded by `text`). A folder without [`RECORD`] holding at least `count`
/// images is a user's set and is used as it is; one with fewer is an error naming it.
pub fn ensure_class_images(
    dir: &Path,
    request: &ClassImageRequest,
    model: &LatentDiffusion<'_>,
    text: &TextConditioner,
    device: &Device,
) -> Result<Vec<Image>, TrainError> {
    check_request(dir, request)?;
    let record = record_of(request, model);
    match read_record(dir)? {
        Some(saved) if saved != record => {
            return Err(folder_error(
                dir,
                format!(
                    "holds class images made by another prompt, sampling or model ({saved:?}); \
                     give an empty folder"
                ),
            ));
        }
        Some(_) => {}
        None => {
            if let Some(images) = users_images(dir, request.count)? {
                return Ok(images);
            }
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
            let json = serde_json::to_string_pretty(&record).expect("record serialises");
            write_atomic(&dir.join(RECORD), json.as_bytes())?;
        }
    }
    generate_missing(dir, request, model, text, device)?;
    (0..request.count)
        .map(|i| Image::open(&image_path(dir, i)).map_err(|e| data_error(dir, e)))
        .collect()
}

fn check_request(dir: &Path, request: &ClassImageRequest) -> Result<(), TrainError> {
    if request.prompt.trim().is_empty() {
        return Err(TrainError::config(
            "class prompt",
            format!("{:?}", request.prompt),
            "is empty; give the instance prompt without the identifier",
        ));
    }
    if !(1..=MAX_CLASS_IMAGES).contains(&request.count) {
        return Err(folder_error(
            dir,
            format!(
                "{} class images asked for; must be 1 to {MAX_CLASS_IMAGES}",
                request.count
            ),
        ));
    }
    Ok(())
}

fn record_of(request: &ClassImageRequest, model: &LatentDiffusion<'_>) -> Record {
    let s = &request.sampling;
    let [_, h, _] = model.latent_shape;
    Record {
        prompt: request.prompt.clone(),
        sampler: s.sampler.as_str().to_string(),
        steps: s.steps,
        cfg: s.cfg,
        seed: s.seed,
        unet: format!("{:016x}", weights_digest(&params::snapshot(model.unet))),
        resolution: h * model.vae.downsampling_factor(),
    }
}

fn read_record(dir: &Path) -> Result<Option<Record>, TrainError> {
    let path = dir.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| TrainError::State { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(path, e)),
    }
}

/// A user's folder (no record): its first `count` images by name if it has that many, none
/// if it is empty or missing (then they are generated); fewer is an error.
fn users_images(dir: &Path, count: usize) -> Result<Option<Vec<Image>>, TrainError> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    if empty {
        return Ok(None);
    }
    let images = load_instance_dir(dir, "").map_err(|e| data_error(dir, e))?;
    if images.len() < count {
        return Err(folder_error(
            dir,
            format!(
                "holds {} images not generated here (no {RECORD}), fewer than the {count} asked \
                 for; ask for at most {} or give an empty folder to generate them",
                images.len(),
                images.len()
            ),
        ));
    }
    Ok(Some(
        images.into_iter().take(count).map(|e| e.image).collect(),
    ))
}

/// Samples every chunk with a missing image and writes its images (temp file + rename).
fn generate_missing(
    dir: &Path,
    request: &ClassImageRequest,
    model: &LatentDiffusion<'_>,
    text: &TextConditioner,
    device: &Device,
) -> Result<(), TrainError> {
    let length = text.encoder.max_positions().min(MAX_TOKENS);
    let encode = |prompt: &str| {
        encode_text(text, &[prompt.to_string()], length, device)
            .map(|batch| batch.states_tensor(device))
            .map_err(|e| TrainError::Data {
                message: format!("encoding the class prompt {prompt:?}: {e}"),
            })
    };
    let (cond, null) = (encode(&request.prompt)?, encode("")?);
    for start in (0..request.count).step_by(CHUNK) {
        let end = (start + CHUNK).min(request.count);
        if (start..end).all(|i| image_path(dir, i).is_file()) {
            continue;
        }
        let prompts = cond.clone().repeat_dim(0, end - start);
        let (latents, _) = generate_batch(model, &request.sampling, start, prompts, &null)
            .map_err(|e| TrainError::Data {
                message: format!("sampling class images {start}..{end}: {e}"),
            })?;
        let decoded = model.vae.decode(model.vae_config.latents_to_vae(latents));
        write_images(dir, start, decoded.clamp(-1.0, 1.0))?;
    }
    Ok(())
}

fn write_images(dir: &Path, start: usize, images: Tensor<4>) -> Result<(), TrainError> {
    let [n, _, h, w] = images.dims();
    let pixels = values(images);
    for (i, chw) in pixels.chunks_exact(3 * h * w).take(n).enumerate() {
        let image = Image::from_chw_f32(w as u32, h as u32, chw).expect("3 x h x w values");
        write_atomic(&image_path(dir, start + i), &image.to_png())?;
    }
    Ok(())
}

/// The file of generated class image `index`.
pub fn image_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{index:05}.png"))
}

fn folder_error(dir: &Path, message: String) -> TrainError {
    TrainError::config("class folder", dir.display(), message)
}

fn data_error(dir: &Path, e: ldmscale_data::DataError) -> TrainError {
    TrainError::Data {
        message: format!("class folder {}: {e}", dir.display()),
    }
}
