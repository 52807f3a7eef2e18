//! Stage 2: the first-stage autoencoder, trained on the training split or loaded pretrained.

use std::path::Path;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ldmscale_model::vae::{load_vae, save_vae};
use ldmscale_model::weights::write_atomic;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig};
use ldmscale_pipeline::values;
use ldmscale_train::data::rng_for;
use ldmscale_train::optimizer::{AdamW, AdamWConfig};
use ldmscale_train::params;
use rand_distr::{Distribution, StandardNormal};

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
const WARMUP_STEPS: f64 = 20.0;
const KL_WEIGHT: f32 = 1e-6;
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
        let images = images_tensor(&self.data.train.images, res, &cx.device);
        let vae = train_autoencoder(&config, &images, *steps, 0, &cx.device);
        let (scaling_factor, psnr) = calibrate(&vae, &images);
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

/// L2 reconstruction plus a small KL term, as LDM's KL-f autoencoders.
fn train_autoencoder(
    config: &AutoencoderKLConfig,
    images: &Tensor<4>,
    steps: u64,
    seed: u64,
    device: &Device,
) -> AutoencoderKL {
    let ad = device.clone().autodiff();
    let mut model = params::seeded_init(&ad, seed, || AutoencoderKL::new(config, &ad));
    let mut adam = AdamW::new(AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    });
    let [n, ..] = images.dims();
    let batch = BATCH.min(n);
    let bar = crate::progress::bar(steps, "first stage");
    for step in 1..=steps {
        let mut rng = rng_for(seed, step, 0xAE);
        let idx: Vec<i64> = (0..batch)
            .map(|_| rand::RngExt::random_range(&mut rng, 0..n) as i64)
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [batch]), device);
        let x = images.clone().select(0, idx).autodiff();
        let posterior = model.encode(x.clone());
        let [b, c, h, w] = posterior.mode().dims();
        let noise: Vec<f32> = (0..b * c * h * w)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let z = posterior.sample(Tensor::from_data(TensorData::new(noise, [b, c, h, w]), &ad));
        let loss = (model.decode(z) - x).powi_scalar(2).mean() + posterior.kl().mean() * KL_WEIGHT;
        let mut grads =
            params::named_gradients(&model, GradientsParams::from_grads(loss.backward(), &model));
        adam.begin_step();
        let lr = PEAK_LR * (step as f64 / WARMUP_STEPS).min(1.0);
        model = params::update(model, &mut |name, p| {
            grads.remove(name).map(|g| adam.update(name, p, g, lr))
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    model.valid()
}

/// The latent scaling factor (1 / std of training latents, as Stable Diffusion set it) and the
/// reconstruction PSNR, both over the first [`PROBE`] training images.
fn calibrate(vae: &AutoencoderKL, images: &Tensor<4>) -> (f64, f64) {
    let [n, ..] = images.dims();
    let probe = images.clone().narrow(0, 0, n.min(PROBE));
    let z = vae.encode(probe.clone()).mode();
    let recon = vae.decode(z.clone()).clamp(-1.0, 1.0);
    let mse: f32 = (recon - probe).powi_scalar(2).mean().into_scalar();
    let psnr = 10.0 * (4.0 / mse as f64).log10();
    let zv = values(z);
    let mean = zv.iter().map(|&v| v as f64).sum::<f64>() / zv.len() as f64;
    let var = zv.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / zv.len() as f64;
    (1.0 / var.sqrt().max(1e-6), psnr)
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
