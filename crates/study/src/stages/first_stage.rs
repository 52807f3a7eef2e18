//! Stage 2: the first-stage autoencoder, trained on the training split or loaded pretrained.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_data::CaptionedSet;
use ldmscale_model::vae::{load_vae, save_vae};
use ldmscale_model::weights::write_atomic;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig};
use ldmscale_train::TrainError;
use ldmscale_train::autoencoder::{
    self, AutoencoderRecipe, AutoencoderStep, ImageBatches, ReconstructionLoss, Reduction,
};
use ldmscale_train::error::chain;
use rand::RngExt;
use rand::rngs::StdRng;

use super::data::{self, Splits};
use crate::config::{FirstStage, StudyConfig};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::stage::{Estimate, Stage};

/// The autoencoder with its latent scaling factor and reconstruction quality.
pub struct FirstStageModel {
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// Its config (scaling factor included).
    pub config: AutoencoderKLConfig,
    /// Reconstruction PSNR on training images, dB (NaN when not measured).
    pub psnr: f64,
}

/// Trains (or loads) the first stage from the training split.
pub struct FirstStageStage<'a> {
    /// The examples.
    pub data: &'a Splits,
}

/// The study directory's autoencoder.
pub const DIR: &str = "first_stage";

/// Training recipe of the small KL autoencoder.
const BATCH: usize = 16;
const PEAK_LR: f64 = 1e-3;
const WARMUP_STEPS: u64 = 20;
const KL_WEIGHT: f64 = 1e-6;
/// Training images the scaling factor and PSNR are measured on.
const PROBE: usize = 256;

/// What the autoencoder depends on.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    Fingerprint::of(
        "first-stage",
        &(data::fingerprint(config), &config.first_stage),
    )
}

impl Stage for FirstStageStage<'_> {
    type Output = FirstStageModel;
    const NAME: &'static str = "first-stage";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<FirstStageModel>, StudyError> {
        let dir = match &cx.config.first_stage {
            FirstStage::Train { .. } => cx.path(DIR),
            FirstStage::Pretrained { path } => Path::new(path).to_path_buf(),
        };
        let Ok((config, vae)) = load_vae(&dir, &cx.device) else {
            return Ok(None);
        };
        let psnr = std::fs::read_to_string(dir.join("psnr.txt"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(f64::NAN);
        Ok(Some(FirstStageModel { vae, config, psnr }))
    }

    fn run(&self, cx: &StudyContext) -> Result<FirstStageModel, StudyError> {
        let FirstStage::Train {
            factor,
            latent_channels,
            width,
            steps,
        } = &cx.config.first_stage
        else {
            return self.load(cx)?.ok_or_else(|| match &cx.config.first_stage {
                FirstStage::Pretrained { path } => StudyError::Config(format!(
                    "first_stage.path {path:?}: not a diffusers AutoencoderKL directory"
                )),
                FirstStage::Train { .. } => unreachable!(),
            });
        };
        let dir = cx.path(DIR);
        if let Some(old) = cx.recorded(Self::NAME) {
            cx.retire(&dir, old.as_str())?;
        }
        tracing::info!("first stage: training a KL-f{factor} autoencoder ({steps} steps)");
        let mut config = AutoencoderKLConfig::small(*factor, *width);
        config.latent_channels = *latent_channels;
        let res = cx.config.resolution;
        let vae = train(&config, &self.data.train, *steps, &cx.device)?;
        let probe = self.data.train.first(PROBE)?;
        let (scaling_factor, psnr) =
            calibrate(&vae, &images_tensor(&probe.images, res, &cx.device))?;
        config.scaling_factor = scaling_factor;
        save_vae(&dir, &config, &vae)?;
        write_atomic(&dir.join("psnr.txt"), format!("{psnr}\n").as_bytes())?;
        Ok(FirstStageModel { vae, config, psnr })
    }
}

/// `N x 3 x res x res` values as a tensor.
pub fn images_tensor(images: &[f32], res: usize, device: &Device) -> Tensor<4> {
    let n = images.len() / (3 * res * res);
    Tensor::from_data(TensorData::new(images.to_vec(), [n, 3, res, res]), device)
}

/// The study's recipe: squared error averaged per value plus a small KL term.
fn recipe(steps: u64) -> AutoencoderRecipe {
    AutoencoderRecipe {
        loss: ReconstructionLoss::L2,
        reduction: Reduction::MeanPerValue,
        kl_weight: KL_WEIGHT,
        learning_rate: PEAK_LR,
        warmup_steps: WARMUP_STEPS,
        batch_size: BATCH,
        steps,
        seed: 0,
    }
}

/// Training images drawn with replacement by index (as `SampledImages` draws them from
/// memory), decoded when drawn: the set is never held.
struct DrawnImages<'a>(&'a CaptionedSet);

impl ImageBatches for DrawnImages<'_> {
    fn draw(
        &mut self,
        size: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Tensor<4>, TrainError> {
        let n = self.0.len();
        let idx: Vec<usize> = (0..size.min(n)).map(|_| rng.random_range(0..n)).collect();
        let part = self.0.get(&idx).map_err(|e| TrainError::Data {
            message: e.to_string(),
        })?;
        Ok(images_tensor(&part.images, self.0.resolution(), device))
    }
}

/// Trains the autoencoder on `images` (batches sampled with replacement), with a progress bar.
fn train(
    config: &AutoencoderKLConfig,
    images: &CaptionedSet,
    steps: u64,
    device: &Device,
) -> Result<AutoencoderKL, StudyError> {
    let bar = crate::progress::bar(steps, "first stage");
    let mut tick = |_: &AutoencoderStep, _: &AutoencoderKL| {
        bar.inc(1);
        Ok(())
    };
    let trained = autoencoder::train_autoencoder(
        config,
        &recipe(steps),
        &mut DrawnImages(images),
        device,
        &mut tick,
    );
    bar.finish_and_clear();
    trained.map_err(|e| StudyError::stage("first-stage")(chain(&e)))
}

/// The latent scaling factor and the reconstruction PSNR, both over `probe`, the first
/// [`PROBE`] training images.
fn calibrate(vae: &AutoencoderKL, probe: &Tensor<4>) -> Result<(f64, f64), StudyError> {
    let scaling_factor =
        autoencoder::latent_scaling_factor(vae, probe, PROBE).ok_or_else(|| {
            StudyError::stage("first-stage")(
                "the trained autoencoder's latents have no spread; no scaling factor exists".into(),
            )
        })?;
    Ok((
        scaling_factor,
        autoencoder::reconstruction_psnr(vae, probe, PROBE),
    ))
}

/// A pretrained first stage that is not there.
pub fn estimate(config: &StudyConfig) -> Estimate {
    let mut e = Estimate::default();
    match &config.first_stage {
        FirstStage::Pretrained { path } => {
            if !Path::new(path).join("config.json").exists() {
                e.problems.push(format!(
                    "first_stage.path {path:?}: no config.json (a diffusers AutoencoderKL directory is needed)"
                ));
            }
            e.lines.push(format!("first stage: pretrained from {path}"));
        }
        FirstStage::Train { factor, latent_channels, steps, .. } => e.lines.push(format!(
            "first stage: a KL-f{factor} autoencoder with {latent_channels} latent channels, {steps} steps"
        )),
    }
    e
}
