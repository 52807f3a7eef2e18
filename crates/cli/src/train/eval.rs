//! The periodic evaluation of `ldmscale train` (every `train.eval_every` steps): samples a fixed
//! prompt set to a PNG grid and, when asked, measures FID on Inception pool3 against as many
//! validation images, so the quality-vs-training-compute curve (the paper's Fig. 3) comes out of
//! training itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use ldmscale_data::{Image, Split};
use ldmscale_diffusion::SamplerId;
use ldmscale_eval::{FidExtractor, FidMode, GaussianStats, RgbImage, frechet_distance};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, TextConditioner, UNet};
use ldmscale_pipeline::{LatentDiffusion, SamplingSpec};
use ldmscale_train::{InMemory, TrainState, TrainingData};
use serde::Deserialize;

/// `[eval]` of a run file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Validation captions sampled at every evaluation (the same ones, with the same noise).
    #[serde(default = "default_prompts")]
    pub prompts: usize,
    /// ddim, ddpm, dpmpp-2m or dpmpp-3m.
    #[serde(default = "default_sampler")]
    pub sampler: String,
    /// Sampling steps.
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Classifier-free guidance rate (1: none).
    #[serde(default = "default_cfg")]
    pub cfg: f64,
    /// Noise seed.
    #[serde(default)]
    pub seed: u64,
    /// Samples for FID on Inception pool3 (pytorch-fid mode) against as many validation images;
    /// 0 skips FID. Needs the FID Inception weights (`tools/fetch-assets.sh inception`).
    #[serde(default)]
    pub fid_samples: usize,
}

fn default_prompts() -> usize {
    8
}
fn default_sampler() -> String {
    "ddim".into()
}
fn default_steps() -> u32 {
    20
}
fn default_cfg() -> f64 {
    3.0
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            prompts: default_prompts(),
            sampler: default_sampler(),
            steps: default_steps(),
            cfg: default_cfg(),
            seed: 0,
            fid_samples: 0,
        }
    }
}

impl EvalConfig {
    /// Checks the fields that can be checked before anything is loaded.
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.sampler
            .parse::<SamplerId>()
            .map_err(|e| anyhow::anyhow!("{origin} [eval] sampler: {e}"))?;
        if self.prompts == 0 {
            bail!("{origin} [eval] prompts: must be at least 1");
        }
        if self.steps == 0 {
            bail!("{origin} [eval] steps: must be at least 1");
        }
        if !(self.cfg.is_finite() && self.cfg >= 1.0) {
            bail!(
                "{origin} [eval] cfg: expected a guidance rate >= 1, got {}",
                self.cfg
            );
        }
        if self.fid_samples == 1 {
            bail!("{origin} [eval] fid_samples: FID needs at least 2 samples (or 0 for none)");
        }
        Ok(())
    }
}

/// One measurement, a line of `eval.jsonl`.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub normalized_cost_x_iterations: f64,
    pub train_gflops: f64,
    pub fid: Option<f64>,
    pub grid: String,
}

/// Everything an evaluation needs, loaded once per run.
pub struct Evaluator<'a> {
    config: EvalConfig,
    vae: &'a AutoencoderKL,
    vae_config: &'a AutoencoderKLConfig,
    /// Text states of the fixed prompts `[P, L, D]`, of the FID prompts `[F, L, D]`, and the
    /// empty prompt `[1, L, D]`.
    prompts: Tensor<3>,
    fid_prompts: Option<Tensor<3>>,
    null: Tensor<3>,
    latent_shape: [usize; 3],
    resolution: usize,
    fid: Option<(FidExtractor, GaussianStats)>,
    dir: PathBuf,
}

impl<'a> Evaluator<'a> {
    /// Loads the validation captions (and images, for FID) of `dataset` and encodes them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &EvalConfig,
        dataset: &str,
        resolution: usize,
        vae: &'a AutoencoderKL,
        vae_config: &'a AutoencoderKLConfig,
        text: &TextConditioner,
        run: &Path,
        device: &Device,
    ) -> Result<Self> {
        let wanted = config.prompts.max(config.fid_samples);
        let val = ldmscale_data::load_captioned(dataset, resolution, Split::Val, wanted)
            .map_err(|e| anyhow::anyhow!("[eval]: validation split of {dataset}: {e}"))?;
        let available = val.captions.len();
        if config.fid_samples > available {
            bail!(
                "[eval] fid_samples = {}: the validation split of {dataset} has only {available} usable examples",
                config.fid_samples
            );
        }
        let encoded = InMemory::encode(
            vae,
            vae_config,
            text,
            (&val.images, &val.captions),
            resolution,
            "eval".into(),
            device,
        )?;
        let states = |n: usize| -> Result<Tensor<3>> {
            let indices: Vec<usize> = (0..n).collect();
            Ok(encoded
                .batch(&indices, device)
                .map_err(anyhow::Error::msg)?
                .1)
        };
        let prompts = states(config.prompts.min(available))?;
        let dir = run.join("eval");
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        let captions = val.captions[..config.prompts.min(available)].join("\n");
        ldmscale_model::weights::write_atomic(&dir.join("prompts.txt"), captions.as_bytes())?;

        let (fid, fid_prompts) = if config.fid_samples > 0 {
            let weights = ldmscale_eval::default_inception_path();
            let extractor = FidExtractor::load(&weights, FidMode::PytorchFid, device)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "[eval] fid_samples = {}: {e} (run tools/fetch-assets.sh inception, or set fid_samples = 0)",
                        config.fid_samples
                    )
                })?;
            let n = config.fid_samples;
            // Reference statistics of the validation images, kept beside the run for resumes.
            let path = dir.join(format!("reference-{n}-pytorch-fid.npz"));
            let reference = match ldmscale_eval::npz::read_stats(&path) {
                Ok(stats) => stats,
                Err(_) => {
                    let pixels = 3 * resolution * resolution;
                    let stats =
                        inception_stats(&extractor, &val.images[..n * pixels], n, resolution)?;
                    ldmscale_eval::npz::write_stats(&path, &stats)?;
                    stats
                }
            };
            (Some((extractor, reference)), Some(states(n)?))
        } else {
            (None, None)
        };
        Ok(Self {
            config: config.clone(),
            vae,
            vae_config,
            prompts,
            fid_prompts,
            null: encoded.null_context(device),
            latent_shape: encoded.latent_shape(),
            resolution,
            fid,
            dir,
        })
    }

    /// Samples the fixed prompts (and the FID set) with `unet`, writes the grid and appends the
    /// record to `eval.jsonl`, dropping records of steps at or after this one (left by a run that
    /// was killed after evaluating and resumed from an earlier checkpoint).
    pub fn evaluate(&self, unet: &UNet, state: &TrainState) -> Result<EvalRecord> {
        let c = &self.config;
        let model = LatentDiffusion {
            unet,
            vae: self.vae,
            vae_config: self.vae_config,
            latent_shape: self.latent_shape,
        };
        let spec = SamplingSpec {
            sampler: c.sampler.parse()?,
            steps: c.steps,
            cfg: c.cfg,
            seed: c.seed,
        };
        let sample = |cond: &Tensor<3>| -> Result<Tensor<4>> {
            Ok(model.generate(&spec, cond, &self.null)?.images)
        };
        let images = sample(&self.prompts)?;
        let [count, ..] = images.dims();
        let values = to_vec(images);
        let grid = Image::grid_from_nchw(&values, count, self.resolution, 8, 1, 0)
            .context("sample grid of the evaluation prompts")?;
        let name = format!("step-{:08}.png", state.step);
        ldmscale_model::weights::write_atomic(&self.dir.join(&name), &grid.to_png())?;

        let fid = match (&self.fid, &self.fid_prompts) {
            (Some((extractor, reference)), Some(cond)) => {
                let images = sample(cond)?;
                let [n, ..] = images.dims();
                let values = to_vec(images);
                let stats = inception_stats(extractor, &values, n, self.resolution)?;
                Some(frechet_distance(&stats, reference)?)
            }
            _ => None,
        };
        let record = EvalRecord {
            step: state.step,
            normalized_cost_x_iterations: state.normalized_cost_x_iterations,
            train_gflops: state.train_gflops,
            fid,
            grid: format!("eval/{name}"),
        };
        let log = self.log_path();
        let mut records: Vec<EvalRecord> = read_records(&log)?
            .into_iter()
            .filter(|r| r.step < state.step)
            .collect();
        records.push(record.clone());
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        ldmscale_model::weights::write_atomic(&log, text.as_bytes())?;
        Ok(record)
    }

    /// `eval.jsonl` beside the run's metrics.
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .parent()
            .expect("the eval dir is inside the run")
            .join("eval.jsonl")
    }
}

/// The records of an `eval.jsonl` (none when it does not exist).
pub fn read_records(path: &Path) -> Result<Vec<EvalRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {}: not an evaluation record",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Gaussian statistics of Inception pool3 features of `n` images `3 x res x res` in [-1, 1],
/// quantised to 8 bits first as saved samples would be.
fn inception_stats(
    extractor: &FidExtractor,
    values: &[f32],
    n: usize,
    resolution: usize,
) -> Result<GaussianStats> {
    let pixels = 3 * resolution * resolution;
    let images = values
        .chunks(pixels)
        .take(n)
        .map(|chw| RgbImage::from_signed_chw(resolution, resolution, chw))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GaussianStats::from_features(
        &extractor.features(&images),
        ldmscale_eval::FEATURE_DIM,
    )?)
}

fn to_vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 after convert")
}
