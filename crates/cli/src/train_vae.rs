//! `ldmscale train-vae`: trains a small KL autoencoder (the first stage) on a dataset's images,
//! reports reconstruction PSNR on held-out images, and measures the latent scaling factor.
//!
//! The loop is the study's first stage's (`ldmscale_train::autoencoder`) with LDM's loss scale:
//! the L1 (or squared) reconstruction error of a decoded posterior sample summed per image,
//! plus `--kl-weight` times the KL divergence of the posterior to N(0, I), averaged over the
//! batch; AdamW without weight decay or warmup. Batches come from a shuffled loader with random
//! crops. The scaling factor is 1 / std of posterior modes of further training batches, as Stable
//! Diffusion measured its 0.18215. Checkpoints are diffusers `AutoencoderKL` directories written
//! file by file atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_data::{
    BatchLoader, Dataset, DatasetSpec, LoaderConfig, Split, SplitConfig, SplitDataset, Transform,
};
use ldmscale_model::init::seeded_init;
use ldmscale_model::vae::{AutoencoderKL, AutoencoderKLConfig, save_vae};
use ldmscale_model::weights::write_atomic;
use ldmscale_train::TrainError;
use ldmscale_train::autoencoder::{
    AutoencoderRecipe, AutoencoderStep, ImageBatches, ReconstructionLoss, Reduction, StdRng,
    latent_scaling_factor, reconstruction_psnr, train_autoencoder,
};
use ldmscale_util::lock::DirLock;

/// Largest accepted sizes: beyond them a run cannot fit in memory (or is a typo).
const MAX_FACTOR: usize = 64;
const MAX_RESOLUTION: usize = 4096;
const MAX_CHANNELS: usize = 1024;
const MAX_BATCH: usize = 4096;
const MAX_IMAGES: usize = 100_000;
/// Values of one first-level activation of a batch (2^32 f32 values: 16 GiB).
const MAX_ACTIVATION_VALUES: u128 = 1 << 32;

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
    /// PSNR (dB, images in [0, 1]) of the mean squared error of posterior-mode reconstructions
    /// of held-out images.
    pub val_psnr: f64,
    /// The same before training, for comparison.
    pub val_psnr_at_start: f64,
    /// 1 / std of posterior modes of training images, stored in config.json as `scaling_factor`.
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
    crate::checks::output_dir(&args.output, "--output")?;
    let (mut config, recipe) = settings(args)?;
    let (loader, val_images) = data(args)?;
    let _lock = DirLock::acquire(&args.output, "ldmscale train-vae")?;
    let device = args.device.device()?;
    let r = args.resolution as usize;
    let val = image_tensor(val_images.concat(), val_images.len(), r, &device);
    let untrained = seeded_init(&device, args.seed, || AutoencoderKL::new(&config, &device));
    let val_psnr_at_start = reconstruction_psnr(&untrained, &val, args.batch_size);
    let params = untrained.num_params();

    let mut batches = LoaderBatches {
        loader,
        resolution: r,
    };
    let mut progress = Progress::new(args, &config, show_progress);
    let trained = train_autoencoder(&config, &recipe, &mut batches, &device, &mut |s, model| {
        progress.observe(s, model)
    })
    .map_err(|e| flag_error(e, args))?;
    progress.bar.finish_and_clear();
    let tail = (progress.tail_reconstruction(), progress.tail_kl());

    config.scaling_factor = scaling_factor(&trained, &mut batches, args, &device)?;
    save_vae(&args.output, &config, &trained).context("saving the trained autoencoder")?;
    let latent = r / args.factor;
    let report = TrainVaeReport {
        steps: args.steps,
        params,
        final_reconstruction_per_value: tail.0,
        final_kl: tail.1,
        val_psnr: reconstruction_psnr(&trained, &val, args.batch_size),
        val_psnr_at_start,
        scaling_factor: config.scaling_factor,
        encode_gflops: trained.encode_cost(r, r).gflops(),
        decode_gflops: trained.decode_cost(latent, latent).gflops(),
        seconds: start.elapsed().as_secs_f64(),
    };
    write_report(&args.output, &report)?;
    Ok(report)
}

/// The autoencoder and the recipe `args` ask for, every flag checked before any work.
fn settings(args: &TrainVaeArgs) -> Result<(AutoencoderKLConfig, AutoencoderRecipe)> {
    check_sizes(args)?;
    let recipe = AutoencoderRecipe {
        loss: match args.loss {
            RecLoss::L1 => ReconstructionLoss::L1,
            RecLoss::L2 => ReconstructionLoss::L2,
        },
        reduction: Reduction::SumPerImage,
        kl_weight: args.kl_weight,
        learning_rate: args.lr,
        warmup_steps: 0,
        batch_size: args.batch_size,
        steps: args.steps as u64,
        seed: args.seed,
    };
    recipe.validate().map_err(|e| flag_error(e, args))?;
    let mut config = AutoencoderKLConfig::small(args.factor, args.base_channels);
    config.latent_channels = args.latent_channels;
    config.sample_size = ldmscale_model::vae::SampleSize::Square(args.resolution as usize);
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("autoencoder settings: {e}"))?;
    Ok((config, recipe))
}

/// Refuses sizes that cannot run or would exhaust memory, naming the flag.
fn check_sizes(args: &TrainVaeArgs) -> Result<()> {
    let r = args.resolution as usize;
    let f = args.factor;
    if !(f.is_power_of_two() && f <= MAX_FACTOR) {
        bail!("--factor {f}: expected a power of two up to {MAX_FACTOR} (4, 8, ...)");
    }
    if r < f || !r.is_multiple_of(f) || r > MAX_RESOLUTION {
        bail!("--resolution {r}: expected a multiple of --factor {f} up to {MAX_RESOLUTION}");
    }
    for (flag, value, max) in [
        ("--base-channels", args.base_channels, MAX_CHANNELS),
        ("--latent-channels", args.latent_channels, MAX_CHANNELS),
        ("--batch-size", args.batch_size, MAX_BATCH),
        ("--eval-images", args.eval_images, MAX_IMAGES),
        ("--scale-batches", args.scale_batches, MAX_IMAGES),
    ] {
        if value == 0 || value > max {
            bail!("{flag} {value}: expected 1 to {max}");
        }
    }
    // The first level's activations of one batch, a lower bound of what a step holds.
    let values = (args.batch_size * args.base_channels) as u128 * (r * r) as u128;
    if values > MAX_ACTIVATION_VALUES {
        bail!(
            "--batch-size {} x --base-channels {} x --resolution {r}^2: one activation alone would hold {values} values (at most {MAX_ACTIVATION_VALUES})",
            args.batch_size,
            args.base_channels
        );
    }
    Ok(())
}

/// A training error in the user's terms: recipe fields as the flags that set them.
fn flag_error(error: TrainError, args: &TrainVaeArgs) -> anyhow::Error {
    match error {
        TrainError::InvalidConfig {
            field,
            value,
            message,
        } => {
            let flag = match field.as_str() {
                "learning_rate" => "--lr",
                "kl_weight" => "--kl-weight",
                "batch_size" => "--batch-size",
                "steps" => "--steps",
                other => other,
            };
            anyhow::anyhow!("{flag} {}: {message}", value.unwrap_or_default())
        }
        TrainError::Diverged { step, loss } => anyhow::anyhow!(
            "step {step}: the loss diverged ({loss}) at --lr {}; try a lower --lr",
            args.lr
        ),
        other => anyhow::Error::new(other),
    }
}

/// The training split's batches, as the shared loop draws them (the loader has its own order).
struct LoaderBatches {
    loader: TrainLoader,
    resolution: usize,
}

impl LoaderBatches {
    fn next(&mut self, device: &Device) -> Result<Tensor<4>, TrainError> {
        let batch = self.loader.next_batch().map_err(|e| TrainError::Data {
            message: e.to_string(),
        })?;
        let values = batch.images_chw_f32();
        Ok(image_tensor(values, batch.len(), self.resolution, device))
    }
}

impl ImageBatches for LoaderBatches {
    fn draw(
        &mut self,
        _size: usize,
        _rng: &mut StdRng,
        device: &Device,
    ) -> Result<Tensor<4>, TrainError> {
        self.next(device)
    }
}

/// The progress bar, the loss over the last 10% of steps, and periodic checkpoints.
struct Progress<'a> {
    args: &'a TrainVaeArgs,
    config: &'a AutoencoderKLConfig,
    bar: ProgressBar,
    tail: u64,
    sums: (f64, f64),
}

impl<'a> Progress<'a> {
    fn new(args: &'a TrainVaeArgs, config: &'a AutoencoderKLConfig, show: bool) -> Self {
        Self {
            args,
            config,
            bar: progress(args.steps as u64, show),
            tail: (args.steps as u64 / 10).max(1),
            sums: (0.0, 0.0),
        }
    }

    fn observe(&mut self, s: &AutoencoderStep, model: &AutoencoderKL) -> Result<(), TrainError> {
        let steps = self.args.steps as u64;
        if s.step + self.tail > steps {
            self.sums.0 += s.reconstruction_per_value;
            self.sums.1 += s.kl_per_image;
        }
        self.bar.inc(1);
        if s.step % 10 == 1 {
            let (rec, kl) = (s.reconstruction_per_value, s.kl_per_image);
            self.bar
                .set_message(format!("rec/value {rec:.4} kl {kl:.1}"));
        }
        let every = self.args.checkpoint_every as u64;
        if every > 0 && s.step.is_multiple_of(every) && s.step < steps {
            save_vae(&self.args.output, self.config, &model.valid())?;
        }
        Ok(())
    }

    fn tail_reconstruction(&self) -> f64 {
        self.sums.0 / self.tail as f64
    }

    fn tail_kl(&self) -> f64 {
        self.sums.1 / self.tail as f64
    }
}

/// 1 / std of the latents of `--scale-batches` further training batches.
fn scaling_factor(
    vae: &AutoencoderKL,
    batches: &mut LoaderBatches,
    args: &TrainVaeArgs,
    device: &Device,
) -> Result<f64> {
    let drawn = (0..args.scale_batches)
        .map(|_| batches.next(device))
        .collect::<Result<Vec<_>, _>>()?;
    let images = Tensor::cat(drawn, 0);
    latent_scaling_factor(vae, &images, args.batch_size)
        .context("the latents have no spread; the scaling factor is undefined")
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

fn write_report(dir: &Path, report: &TrainVaeReport) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    write_atomic(&dir.join("train_vae.json"), json.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that makes the arguments invalid.
    type Spoil = fn(&mut TrainVaeArgs);

    fn args(output: &Path) -> TrainVaeArgs {
        TrainVaeArgs {
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
            output: output.to_path_buf(),
            seed: 1,
        }
    }

    #[test]
    fn settings_that_cannot_run_are_refused_naming_the_flag() {
        let cases: [(Spoil, &str); 10] = [
            (|a| a.lr = f64::NAN, "--lr NaN"),
            (|a| a.lr = 0.0, "--lr 0"),
            (|a| a.kl_weight = -1.0, "--kl-weight -1"),
            (|a| a.steps = 0, "--steps 0"),
            (|a| a.batch_size = 0, "--batch-size 0"),
            (|a| a.batch_size = 100_000_000, "--batch-size"),
            (|a| a.resolution = 18, "--resolution 18"),
            (|a| a.resolution = 1_000_000, "--resolution 1000000"),
            (|a| a.factor = 3, "--factor 3"),
            (|a| a.latent_channels = 0, "--latent-channels 0"),
        ];
        for (spoil, flag) in cases {
            let mut a = args(Path::new("unused"));
            spoil(&mut a);
            let message = settings(&a).unwrap_err().to_string();
            assert!(message.starts_with(flag), "{flag}: {message}");
        }
        assert!(settings(&args(Path::new("unused"))).is_ok());
    }

    #[test]
    fn a_short_run_learns_and_writes_a_loadable_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
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
