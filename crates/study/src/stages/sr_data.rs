//! Stage: the super-resolution data: HR/LR training pairs encoded by the first stage, and the
//! frozen evaluation set (HR and LR PNGs made once, with their SHA-256 in a manifest), since
//! several versions of the RealESRGAN degradation circulate and a comparison across runs needs
//! the same LR images.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use ldmscale_data::degrade::{FloatImage, RealEsrganParams, realesrgan, seed_for};
use ldmscale_data::image::Image;
use ldmscale_data::{Captioned, CropSpec, HrSource, hr_crops};
use ldmscale_model::weights::write_atomic;
use ldmscale_train::tasks::SrPairs;
use ldmscale_train::tasks::sr_pairs::{latents_of, upsample_to, upsampled_lr};
use ldmscale_util::hash::stable_seed;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::data::{self, Splits};
use super::first_stage::{self, FirstStageModel};
use super::latents::Latents;
use super::text;
use crate::config::super_res::EVAL_EVERY;
use crate::config::{SrDegradation, StudyConfig, SuperResConfig};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::stage::Stage;

/// The super-resolution directory of a study.
pub const DIR: &str = "super_res";
/// The evaluation set's directory under [`DIR`].
const EVAL_DIR: &str = "eval";
const MANIFEST: &str = "manifest.json";

/// What the SR stage trains and measures on.
pub struct SrSets {
    /// Training pairs (HR and upsampled-LR latents).
    pub pairs: SrPairs,
    /// The frozen evaluation set.
    pub eval: EvalSet,
    /// The empty prompt's text states `[1, L, D]`.
    pub context: Tensor<3>,
}

/// The frozen evaluation pairs.
pub struct EvalSet {
    /// HR images, [0, 1].
    pub hr: Vec<FloatImage>,
    /// Their LR images (x4 smaller), as stored.
    pub lr: Vec<FloatImage>,
    /// The LR images upsampled x4 (bicubic, clamped): the baseline an SR model must beat.
    pub upsampled: Vec<FloatImage>,
    /// Those encoded: what the SR models read `[N, C, h, w]`.
    pub lr_latents: Tensor<4>,
    /// SHA-256 of the stored PNGs, in order: identifies the set in the cells' fingerprint.
    pub hash: String,
}

/// Makes the pairs (deterministic, in memory) and makes or reads the evaluation set.
pub struct SrDataStage<'a> {
    /// The study's examples (the HR images of the `study` source).
    pub data: &'a Splits,
    /// The first stage that encodes HR and LR alike.
    pub first: &'a FirstStageModel,
    /// The empty prompt's states.
    pub latents: &'a Latents,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Manifest {
    fingerprint: Fingerprint,
    count: usize,
    sha256: String,
}

/// What the SR data depend on.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    let sr = config.super_res.as_ref();
    let recipe = sr.map(|s| {
        (
            &s.hr_source,
            s.resolution,
            s.downscale,
            s.degradation,
            s.train_pairs,
            s.eval_pairs,
            s.seed,
        )
    });
    Fingerprint::of(
        "sr-data",
        &(
            first_stage::fingerprint(config),
            text::fingerprint(config),
            recipe,
        ),
    )
}

/// What the evaluation set alone depends on (not the first stage: it is images).
fn eval_fingerprint(config: &StudyConfig, sr: &SuperResConfig) -> Fingerprint {
    Fingerprint::of(
        "sr-eval-set",
        &(
            data::fingerprint(config),
            &sr.hr_source,
            sr.resolution,
            sr.downscale,
            sr.degradation,
            sr.eval_pairs,
        ),
    )
}

/// The `[super_res]` section, which the SR stages only run with.
pub fn section<'c>(cx: &StudyContext<'c>) -> Result<&'c SuperResConfig, StudyError> {
    cx.config
        .super_res
        .as_ref()
        .ok_or_else(|| StudyError::Config("the study has no [super_res] section".into()))
}

impl Stage for SrDataStage<'_> {
    type Output = SrSets;
    const NAME: &'static str = "sr-data";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    /// Cheap and deterministic: made again on every run (the evaluation set is read back).
    fn load(&self, cx: &StudyContext) -> Result<Option<SrSets>, StudyError> {
        self.run(cx).map(Some)
    }

    fn run(&self, cx: &StudyContext) -> Result<SrSets, StudyError> {
        let sr = section(cx)?;
        let res = sr.hr_side(cx.config.resolution);
        let params = degradation(sr.degradation, res)?;
        let hr = self.hr_set(cx, sr, false)?;
        let mut lr = Vec::with_capacity(hr.len());
        for (i, image) in hr.iter().enumerate() {
            lr.push(upsampled_lr(image, &params, seed_for("train", i as u64)).map_err(task_error)?);
        }
        let (vae, vae_config) = (&self.first.vae, &self.first.config);
        let key = format!("study super-res {}", fingerprint(cx.config));
        let pairs =
            SrPairs::encode(vae, vae_config, (&hr, &lr), &key, &cx.device).map_err(task_error)?;
        let (eval_hr, eval_lr, hash) = self.eval_images(cx, sr, &params)?;
        let up = eval_lr
            .iter()
            .map(|l| upsample_to(l, res, res))
            .collect::<Result<Vec<_>, _>>()
            .map_err(task_error)?;
        let lr_latents = latents_of(vae, vae_config, &up, &cx.device).map_err(task_error)?;
        tracing::info!(
            "super-res data: {} training pairs, {} evaluation pairs ({res} px HR, {} px LR; set {})",
            hr.len(),
            eval_hr.len(),
            res / 4,
            &hash[..12]
        );
        Ok(SrSets {
            pairs,
            eval: EvalSet {
                hr: eval_hr,
                lr: eval_lr,
                upsampled: up,
                lr_latents,
                hash,
            },
            context: self.latents.null.states_tensor(&cx.device),
        })
    }
}

impl SrDataStage<'_> {
    /// The stored evaluation set when it was made for this config, else made and stored.
    fn eval_images(
        &self,
        cx: &StudyContext,
        sr: &SuperResConfig,
        params: &RealEsrganParams,
    ) -> Result<(Vec<FloatImage>, Vec<FloatImage>, String), StudyError> {
        let dir = cx.path(DIR).join(EVAL_DIR);
        let fingerprint = eval_fingerprint(cx.config, sr);
        if let Some(set) = read_eval_set(&dir, &fingerprint)? {
            return Ok(set);
        }
        let hr = self.hr_set(cx, sr, true)?;
        let lr = hr
            .iter()
            .enumerate()
            .map(|(i, image)| realesrgan(image, params, seed_for("eval", i as u64)))
            .collect::<Result<Vec<_>, _>>()?;
        // Stored as 8 bits, as the degradation ends; read back so runs see the same values.
        let hash = write_eval_set(&dir, &fingerprint, &hr, &lr)?;
        let (hr, lr, _) = read_eval_set(&dir, &fingerprint)?.expect("the set just written");
        Ok((hr, lr, hash))
    }

    /// The HR images for training or evaluation: the study's own images of that split, or
    /// seeded crops at the HR side of a file source's training or held-out files
    /// (the evaluation crops' seed is fixed, so the frozen set does not move with `seed`).
    fn hr_set(
        &self,
        cx: &StudyContext,
        sr: &SuperResConfig,
        eval: bool,
    ) -> Result<Vec<FloatImage>, StudyError> {
        let res = sr.hr_side(cx.config.resolution);
        let (count, split) = match eval {
            true => (sr.eval_pairs, &self.data.val),
            false => (sr.train_pairs, &self.data.train),
        };
        if sr.hr_source == HrSource::Study && res == cx.config.resolution {
            return Ok(hr_images(&split.first(count)?, count, res));
        }
        if sr.hr_source == HrSource::Study {
            let source = match eval {
                true => cx.config.eval_source(),
                false => cx.config.train_source(),
            }
            .map_err(StudyError::Config)?;
            tracing::info!("super-res: {source} again at {res} px");
            let images = data::load(source, res, count)?.first(count)?;
            return Ok(hr_images(&images, count, res));
        }
        let files = split_files(&sr.hr_source, sr.hr_source.files()?, eval)?;
        let seed = match eval {
            true => stable_seed(&["sr-eval"]),
            false => stable_seed(&["sr-train", &sr.seed.to_string()]),
        };
        let spec = CropSpec {
            count,
            size: res as u32,
            seed,
            downscale: sr.downscale,
        };
        Ok(hr_crops(&files, &spec)?
            .iter()
            .map(FloatImage::from_image)
            .collect())
    }
}

fn task_error(e: ldmscale_train::TrainError) -> StudyError {
    StudyError::stage("sr-data")(ldmscale_train::error::chain(&e))
}

/// A file source's held-out files (every [`EVAL_EVERY`]th by sorted path) or the others.
fn split_files(
    source: &HrSource,
    files: Vec<PathBuf>,
    eval: bool,
) -> Result<Vec<PathBuf>, StudyError> {
    if files.len() < 2 {
        return Err(StudyError::Config(format!(
            "super_res.hr_source = \"{source}\": {} image file(s); at least 2 are needed (every \
             {EVAL_EVERY}th is held out for evaluation)",
            files.len()
        )));
    }
    Ok(files
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (i % EVAL_EVERY == 0) == eval)
        .map(|(_, f)| f)
        .collect())
}

/// The RealESRGAN parameters for HR images of side `res`.
fn degradation(choice: SrDegradation, res: usize) -> Result<RealEsrganParams, StudyError> {
    let paper = RealEsrganParams::x4plus();
    Ok(match choice {
        SrDegradation::Paper => paper,
        SrDegradation::Scaled => paper.scaled_for(res, res)?,
    })
}

/// The first `n` images of `split` (`[-1, 1]` CHW values) as [0, 1] HWC images.
fn hr_images(split: &Captioned, n: usize, res: usize) -> Vec<FloatImage> {
    let per = 3 * res * res;
    split
        .images
        .chunks_exact(per)
        .take(n)
        .map(|chw| {
            let image = Image::from_chw_f32(res as u32, res as u32, chw).expect("res x res");
            FloatImage::from_image(&image)
        })
        .collect()
}

fn png_name(i: usize) -> String {
    format!("{i:05}.png")
}

/// Writes `hr/` and `lr/` PNGs and the manifest into a temporary directory renamed into
/// place, so a killed run leaves no partial set; returns the set's hash.
fn write_eval_set(
    dir: &Path,
    fingerprint: &Fingerprint,
    hr: &[FloatImage],
    lr: &[FloatImage],
) -> Result<String, StudyError> {
    let parent = dir.parent().expect("eval dir has a parent");
    let tmp = parent.join(format!(".{EVAL_DIR}-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut digest = Sha256::new();
    for (side, images) in [("hr", hr), ("lr", lr)] {
        let folder = tmp.join(side);
        std::fs::create_dir_all(&folder).map_err(StudyError::io(&folder))?;
        for (i, image) in images.iter().enumerate() {
            let png = image.to_image().to_png();
            digest.update(&png);
            let path = folder.join(png_name(i));
            std::fs::write(&path, &png).map_err(StudyError::io(&path))?;
        }
    }
    let sha256 = hex(&digest.finalize());
    let manifest = Manifest {
        fingerprint: fingerprint.clone(),
        count: hr.len(),
        sha256: sha256.clone(),
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    write_atomic(&tmp.join(MANIFEST), text.as_bytes())?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(StudyError::io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(StudyError::io(dir))?;
    Ok(sha256)
}

/// The stored set, if its manifest names `fingerprint`; a file changed since it was written
/// is an error naming it (the set is frozen).
#[allow(clippy::type_complexity)]
fn read_eval_set(
    dir: &Path,
    fingerprint: &Fingerprint,
) -> Result<Option<(Vec<FloatImage>, Vec<FloatImage>, String)>, StudyError> {
    let Ok(text) = std::fs::read_to_string(dir.join(MANIFEST)) else {
        return Ok(None);
    };
    let Ok(manifest) = serde_json::from_str::<Manifest>(&text) else {
        return Ok(None);
    };
    if &manifest.fingerprint != fingerprint {
        return Ok(None);
    }
    let mut digest = Sha256::new();
    let mut sides = Vec::new();
    for side in ["hr", "lr"] {
        let mut images = Vec::with_capacity(manifest.count);
        for i in 0..manifest.count {
            let path: PathBuf = dir.join(side).join(png_name(i));
            let bytes = std::fs::read(&path).map_err(StudyError::io(&path))?;
            digest.update(&bytes);
            images.push(FloatImage::from_image(&Image::open(&path)?));
        }
        sides.push(images);
    }
    let sha256 = hex(&digest.finalize());
    if sha256 != manifest.sha256 {
        return Err(StudyError::Config(format!(
            "{}: the frozen evaluation set's images changed on disk (SHA-256 {sha256}, manifest \
             {}); delete the folder to make it again",
            dir.display(),
            manifest.sha256
        )));
    }
    let lr = sides.pop().expect("two sides");
    let hr = sides.pop().expect("two sides");
    Ok(Some((hr, lr, sha256)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
