//! The periodic evaluation of `ldmscale train` (every `train.eval_every` steps): the `[eval]`
//! settings and the training evaluator they build (`ldmscale_train::evaluation`, shared with
//! the study): a PNG grid of a fixed prompt set and, when asked, FID on Inception pool3 against
//! as many validation images.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_data::Split;
use ldmscale_diffusion::SamplerId;
use ldmscale_eval::{FidExtractor, FidMode};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, TextConditioner};
use ldmscale_pipeline::SamplingSpec;
use ldmscale_train::evaluation::{FidProbe, GridProbe, InceptionFid, TrainingEvaluator};
use ldmscale_train::{InMemory, TrainingData};
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

/// The evaluator of a run: loads the validation captions (and images, for FID) of `dataset`,
/// encodes them, and writes `prompts.txt` into the run's `eval/`.
#[allow(clippy::too_many_arguments)]
pub fn evaluator<'a>(
    config: &EvalConfig,
    dataset: &str,
    resolution: usize,
    vae: &'a AutoencoderKL,
    vae_config: &'a AutoencoderKLConfig,
    text: &TextConditioner,
    run: &Path,
    device: &Device,
) -> Result<TrainingEvaluator<'a>> {
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
    let shown = config.prompts.min(available);
    let dir = run.join("eval");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let captions = val.captions[..shown].join("\n");
    ldmscale_model::weights::write_atomic(&dir.join("prompts.txt"), captions.as_bytes())?;
    let fid = match config.fid_samples {
        0 => None,
        n => Some(FidProbe {
            prompts: states(n)?,
            score: Box::new(inception_fid(
                config,
                &val.images,
                n,
                resolution,
                &dir,
                device,
            )?),
        }),
    };
    Ok(TrainingEvaluator {
        vae,
        vae_config,
        latent_shape: encoded.latent_shape(),
        spec: SamplingSpec {
            sampler: config.sampler.parse()?,
            steps: config.steps,
            cfg: config.cfg,
            seed: config.seed,
        },
        null: encoded.null_context(device),
        fid,
        grid: Some(GridProbe {
            prompts: states(shown)?,
            dir,
        }),
        log: run.join("eval.jsonl"),
    })
}

/// Inception FID against the first `n` validation images (`values`, CHW in [-1, 1]), whose
/// statistics are kept in `dir` for resumes.
fn inception_fid(
    config: &EvalConfig,
    values: &[f32],
    n: usize,
    resolution: usize,
    dir: &Path,
    device: &Device,
) -> Result<InceptionFid> {
    let weights = ldmscale_eval::default_inception_path();
    let extractor = FidExtractor::load(&weights, FidMode::PytorchFid, device).map_err(|e| {
        anyhow::anyhow!(
            "[eval] fid_samples = {}: {e} (run tools/fetch-assets.sh inception, or set fid_samples = 0)",
            config.fid_samples
        )
    })?;
    let path = dir.join(format!("reference-{n}-pytorch-fid.npz"));
    let reference = match ldmscale_eval::npz::read_stats(&path) {
        Ok(stats) => stats,
        Err(_) => {
            let pixels = 3 * resolution * resolution;
            let images = Tensor::from_data(
                TensorData::new(
                    values[..n * pixels].to_vec(),
                    [n, 3, resolution, resolution],
                ),
                device,
            );
            let stats = InceptionFid::stats(&extractor, images)?;
            ldmscale_eval::npz::write_stats(&path, &stats)?;
            stats
        }
    };
    Ok(InceptionFid::new(extractor, reference))
}
