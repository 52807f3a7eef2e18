//! `ldmscale train-vae`: trains a small KL autoencoder (the first stage) on a dataset's images,
//! reports reconstruction PSNR on held-out images, and measures the latent scaling factor.
//!
//! Loss per image, as in LDM's autoencoder (without its GAN and perceptual terms): the summed L1
//! (or squared) reconstruction error of a decoded posterior sample, plus `beta` times the KL
//! divergence of the posterior to N(0, I); averaged over the batch; AdamW. The scaling factor
//! is 1 / std of posterior samples over training images, as Stable Diffusion measured its 0.18215.
//! Checkpoints are diffusers `AutoencoderKL` directories written file by file atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_data::{
    BatchLoader, Dataset, DatasetSpec, LoaderConfig, Split, SplitConfig, SplitDataset, Transform,
};
use ldmscale_diffusion::SeededNoise;
use ldmscale_model::vae::{AutoencoderKL, AutoencoderKLConfig, save_vae};
use ldmscale_model::weights::write_atomic;

/// Reconstruction loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecLoss {
    /// Absolute error (LDM's choice).
    L1,
    /// Squared error.
    L2,
}

/// Options of `ldmscale train-vae`.
#[derive(Args, Debug, Clone)]
pub struct TrainVaeArgs {
    /// Dataset spec (see ldmscale-data's `DatasetSpec`): "shapes", "fashion-mnist", a folder, ...
    #[arg(long, default_value = "shapes")]
    pub data: String,
    /// Side of the square training images in pixels.
    #[arg(long, default_value_t = 32)]
    pub resolution: u32,
    /// Downsampling factor of the autoencoder (a power of two: 4 for KL-f4, 8 for KL-f8).
    #[arg(long, default_value_t = 4)]
    pub factor: usize,
    /// Channels of the highest-resolution level (the others have twice as many).
    #[arg(long, default_value_t = 32)]
    pub base_channels: usize,
    /// Latent channels.
    #[arg(long, default_value_t = 4)]
    pub latent_channels: usize,
    /// Optimisation steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Reconstruction loss.
    #[arg(long, value_enum, default_value_t = RecLoss::L1)]
    pub loss: RecLoss,
    /// Weight of the KL term (LDM: 1e-6).
    #[arg(long, default_value_t = 1e-6)]
    pub kl_weight: f64,
    /// Held-out images for the reconstruction PSNR.
    #[arg(long, default_value_t = 128)]
    pub eval_images: usize,
    /// Training batches whose latents measure the scaling factor.
    #[arg(long, default_value_t = 16)]
    pub scale_batches: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: usize,
    /// Output directory (diffusers AutoencoderKL layout, plus train_vae.json with the report).
    #[arg(long)]
    pub output: PathBuf,
    /// Seed of the data order and the posterior noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

/// What a run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainVaeReport {
    /// Steps taken.
    pub steps: usize,
    /// Parameters of the autoencoder.
    pub params: usize,
    /// Reconstruction loss per pixel value over the last 10% of steps.
    pub final_reconstruction_per_value: f64,
    /// KL per image over the last 10% of steps.
    pub final_kl: f64,
    /// Mean PSNR (dB, images in [0, 1]) of posterior-mode reconstructions of held-out images.
    pub val_psnr: f64,
    /// The same before training, for comparison.
    pub val_psnr_at_start: f64,
    /// 1 / std of training latents, stored in config.json as `scaling_factor`.
    pub scaling_factor: f64,
    /// GFLOPs to encode one image / decode one latent.
    pub encode_gflops: f64,
    /// See `encode_gflops`.
    pub decode_gflops: f64,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
}

/// Runs the command.
pub fn run(args: &TrainVaeArgs) -> Result<()> {
    let report = train(args, true)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Images `[batch, 3, r, r]` in [-1, 1] on `device`.
fn image_tensor(values: Vec<f32>, batch: usize, r: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, [batch, 3, r, r]), device)
}

/// Trains per `args`; writes checkpoints and the final model to `args.output`.
pub fn train(args: &TrainVaeArgs, show_progress: bool) -> Result<TrainVaeReport> {
    let start = Instant::now();
    let mut config = autoencoder_config(args)?;
    let (mut loader, val_images) = data(args)?;
    let r = args.resolution as usize;

    let device = args.device.device()?;
    let train_device = device.clone().autodiff();
    let mut model = ldmscale_train::params::seeded_init(&train_device, args.seed, || {
        AutoencoderKL::new(&config, &train_device)
    });
    let params = model.num_params();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut noise = SeededNoise::new(args.seed ^ 0x5eed_0a0e);
    let val_psnr_at_start = psnr(&model.valid(), &val_images, r, args.batch_size, &device);

    let bar = progress(args.steps as u64, show_progress);
    let tail = (args.steps / 10).max(1);
    let (mut tail_rec, mut tail_kl) = (0.0f64, 0.0f64);
    let values_per_batch = (args.batch_size * 3 * r * r) as f64;
    for step in 0..args.steps {
        let batch = loader.next_batch()?;
        let b = batch.len();
        let x = image_tensor(batch.images_chw_f32(), b, r, &train_device);
        let posterior = model.encode(x.clone());
        let shape = posterior.mean.dims();
        let eps = Tensor::from_data(
            TensorData::new(noise.sample_vec(shape.iter().product()), shape),
            &train_device,
        );
        let reconstruction = model.decode(posterior.sample(eps));
        let error = reconstruction - x;
        let error = match args.loss {
            RecLoss::L1 => error.abs(),
            RecLoss::L2 => error.powi_scalar(2),
        };
        let rec = error.sum() / b as f32;
        let kl = posterior.kl().mean();
        let loss = rec.clone() + kl.clone() * args.kl_weight as f32;
        let rec_value = rec.into_scalar::<f32>() as f64;
        let kl_value = kl.into_scalar::<f32>() as f64;
        if !(rec_value.is_finite() && kl_value.is_finite()) {
            bail!(
                "step {step}: the loss diverged (reconstruction {rec_value}, KL {kl_value}); lower --lr"
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(args.lr, model, grads);
        if step + tail >= args.steps {
            tail_rec += rec_value * b as f64 / values_per_batch;
            tail_kl += kl_value;
        }
        bar.inc(1);
        if step % 10 == 0 {
            bar.set_message(format!(
                "rec/value {:.4} kl {:.1}",
                rec_value * b as f64 / values_per_batch,
                kl_value
            ));
        }
        if args.checkpoint_every > 0
            && (step + 1) % args.checkpoint_every == 0
            && step + 1 < args.steps
        {
            save_vae(&args.output, &config, &model.valid())
                .with_context(|| format!("checkpoint at step {}", step + 1))?;
        }
    }
    bar.finish_and_clear();

    let trained = model.valid();
    config.scaling_factor = 1.0
        / latent_std(
            &trained,
            &mut loader,
            args.scale_batches,
            r,
            &mut noise,
            &device,
        )?;
    save_vae(&args.output, &config, &trained).context("saving the trained autoencoder")?;
    let latent = r / args.factor;
    let report = TrainVaeReport {
        steps: args.steps,
        params,
        final_reconstruction_per_value: tail_rec / tail as f64,
        final_kl: tail_kl / tail as f64,
        val_psnr: psnr(&trained, &val_images, r, args.batch_size, &device),
        val_psnr_at_start,
        scaling_factor: config.scaling_factor,
        encode_gflops: trained.encode_cost(r, r).gflops(),
        decode_gflops: trained.decode_cost(latent, latent).gflops(),
        seconds: start.elapsed().as_secs_f64(),
    };
    write_report(&args.output, &report)?;
    Ok(report)
}

/// The autoencoder `args` ask for, checked.
fn autoencoder_config(args: &TrainVaeArgs) -> Result<AutoencoderKLConfig> {
    if args.steps == 0 || args.batch_size == 0 {
        bail!("--steps and --batch-size must be positive");
    }
    if !args.factor.is_power_of_two() {
        bail!(
            "--factor {}: expected a power of two (4, 8, ...)",
            args.factor
        );
    }
    if !(args.resolution as usize).is_multiple_of(args.factor) {
        bail!(
            "--resolution {} is not a multiple of --factor {}",
            args.resolution,
            args.factor
        );
    }
    let mut config = AutoencoderKLConfig::small(args.factor, args.base_channels);
    config.latent_channels = args.latent_channels;
    config.sample_size = ldmscale_model::vae::SampleSize::Square(args.resolution as usize);
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("autoencoder settings: {e}"))?;
    Ok(config)
}

/// Batches of the training split.
type TrainLoader = BatchLoader<SplitDataset<Box<dyn Dataset>>>;

/// The training loader and the held-out images of `args.data`.
fn data(args: &TrainVaeArgs) -> Result<(TrainLoader, Vec<Vec<f32>>)> {
    let spec: DatasetSpec = args
        .data
        .parse()
        .with_context(|| format!("--data {:?}", args.data))?;
    let split = SplitConfig::default();
    let train_set = SplitDataset::new(spec.open()?, Split::Train, split)?;
    let val_set = SplitDataset::new(spec.open()?, Split::Val, split)?;
    let loader = BatchLoader::new(
        train_set,
        Transform::random(args.resolution, false),
        LoaderConfig {
            batch_size: args.batch_size,
            seed: args.seed,
            shuffle: true,
            workers: 0,
        },
    )?;
    let val_images = held_out_images(&val_set, args.eval_images, args.resolution)?;
    Ok((loader, val_images))
}

fn progress(steps: u64, show: bool) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} train-vae {bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// The first `count` held-out images, centre-cropped to `resolution`, as CHW floats in [-1, 1].
fn held_out_images(set: &dyn Dataset, count: usize, resolution: u32) -> Result<Vec<Vec<f32>>> {
    let transform = Transform::center(resolution);
    let available = set.len().unwrap_or(usize::MAX).min(count);
    if available == 0 {
        bail!("{}: no held-out images for the PSNR", set.name());
    }
    (0..available)
        .map(|i| {
            let example = set.get(i)?;
            Ok(transform.apply(&example.image, 0).to_chw_f32())
        })
        .collect()
}

/// Mean PSNR (dB, pixel values in [0, 1]) of posterior-mode reconstructions.
fn psnr(
    model: &AutoencoderKL,
    images: &[Vec<f32>],
    r: usize,
    batch_size: usize,
    device: &Device,
) -> f64 {
    let mut total = 0.0;
    for chunk in images.chunks(batch_size) {
        let x = image_tensor(chunk.concat(), chunk.len(), r, device);
        let reconstruction = model.reconstruct(x.clone()).clamp(-1.0, 1.0);
        // Squared error in [0, 1] units is a quarter of that in [-1, 1] units.
        let mse = (reconstruction - x)
            .powi_scalar(2)
            .flatten::<2>(1, 3)
            .mean_dim(1)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 values");
        total += mse
            .iter()
            .map(|&m| psnr_of_mse(m as f64 / 4.0))
            .sum::<f64>();
    }
    total / images.len() as f64
}

/// PSNR in dB of a mean squared error of values in [0, 1]; a perfect match is capped at 100 dB.
fn psnr_of_mse(mse: f64) -> f64 {
    if mse <= 1e-10 {
        100.0
    } else {
        -10.0 * mse.log10()
    }
}

/// Standard deviation of posterior samples over `batches` training batches.
fn latent_std<D: Dataset>(
    model: &AutoencoderKL,
    loader: &mut BatchLoader<D>,
    batches: usize,
    r: usize,
    noise: &mut SeededNoise,
    device: &Device,
) -> Result<f64> {
    let (mut sum, mut sum2, mut n) = (0.0f64, 0.0f64, 0usize);
    for _ in 0..batches.max(1) {
        let batch = loader.next_batch()?;
        let posterior = model.encode(image_tensor(batch.images_chw_f32(), batch.len(), r, device));
        let shape = posterior.mean.dims();
        let eps = Tensor::from_data(
            TensorData::new(noise.sample_vec(shape.iter().product()), shape),
            device,
        );
        let z = posterior
            .sample(eps)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 values");
        for v in z {
            sum += v as f64;
            sum2 += (v as f64) * (v as f64);
            n += 1;
        }
    }
    let mean = sum / n as f64;
    let std = (sum2 / n as f64 - mean * mean).max(0.0).sqrt();
    if !(std > 0.0 && std.is_finite()) {
        bail!("latents have no spread (std {std}); the scaling factor is undefined");
    }
    Ok(std)
}

fn write_report(dir: &Path, report: &TrainVaeReport) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    write_atomic(&dir.join("train_vae.json"), json.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_errors() {
        assert!((psnr_of_mse(0.01) - 20.0).abs() < 1e-9);
        assert!((psnr_of_mse(1e-4) - 40.0).abs() < 1e-9);
        assert_eq!(psnr_of_mse(0.0), 100.0);
    }

    #[test]
    fn a_short_run_learns_and_writes_a_loadable_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let args = TrainVaeArgs {
            device: Default::default(),
            data: "shapes".into(),
            resolution: 16,
            factor: 4,
            base_channels: 8,
            latent_channels: 4,
            steps: 150,
            batch_size: 8,
            lr: 2e-3,
            loss: RecLoss::L1,
            kl_weight: 1e-6,
            eval_images: 16,
            scale_batches: 2,
            checkpoint_every: 75,
            output: dir.path().to_path_buf(),
            seed: 1,
        };
        let report = train(&args, false).unwrap();
        assert!(
            report.val_psnr > report.val_psnr_at_start + 3.0,
            "PSNR {:.2} dB -> {:.2} dB",
            report.val_psnr_at_start,
            report.val_psnr
        );
        let (config, model) = ldmscale_model::vae::load_vae(dir.path(), &Device::flex()).unwrap();
        assert_eq!(config.scaling_factor, report.scaling_factor);
        assert!(report.scaling_factor > 0.0 && report.scaling_factor.is_finite());
        assert_eq!(model.downsampling_factor(), 4);
        assert!(dir.path().join("train_vae.json").exists());
    }
}
