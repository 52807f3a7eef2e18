//! `ldmscale finetune-sr`: finetune a user's text-to-image UNet for x4 super-resolution on a
//! folder of HR images. LR images are made from the HR crops with the RealESRGAN degradation
//! (seeded per crop), upsampled x4 and encoded by the first stage like the HR targets.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_data::degrade::{FloatImage, RealEsrganParams, seed_for};
use ldmscale_data::image::Image;
use ldmscale_model::text::{TextConditioner, TextEncoder};
use ldmscale_model::vae::load_vae;
use ldmscale_model::weights::load_unet;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNetConfig};
use ldmscale_pipeline::encode_text;
use ldmscale_train::tasks::sr_pairs::upsampled_lr;
use ldmscale_train::tasks::super_res::check_noise_level;
use ldmscale_train::tasks::{SrOptions, SrPairs};
use ldmscale_train::{SuperRes, TrainConfig, TrainError, checkpoint};

use crate::device::DeviceArgs;
use crate::launch::{LaunchArgs, Rank};
use crate::npy;

/// Image files read from `--hr`.
pub(crate) const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];
/// Tokens of the empty prompt's states (as `train` encodes its null caption).
const MAX_TOKENS: usize = 32;

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ObjectiveArg {
    Epsilon,
    VPrediction,
}

/// Arguments of `ldmscale finetune-sr`.
#[derive(Args, Debug)]
pub struct FinetuneSrArgs {
    /// Pretrained text-to-image UNet in diffusers layout (`in_channels` = the first stage's
    /// latent channels).
    #[arg(long, value_name = "DIR")]
    pub unet: PathBuf,
    /// First-stage autoencoder (diffusers AutoencoderKL directory, e.g. from `train-vae`); HR
    /// and LR latents are scaled by its scaling factor alike.
    #[arg(long, value_name = "DIR")]
    pub first_stage: PathBuf,
    /// Folder of HR images (png, jpg, jpeg, webp, bmp; grey and RGBA are made RGB).
    #[arg(long, value_name = "DIR")]
    pub hr: PathBuf,
    /// Output run directory (checkpoints, snapshots/, unet/); a run there resumes.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Text encoder directory (as `train` and `study` save it) that encodes the empty prompt.
    #[arg(long, value_name = "DIR", required_unless_present = "empty_context")]
    pub text_encoder: Option<PathBuf>,
    /// The empty prompt's text states [1, tokens, width] as .npy (instead of --text-encoder).
    #[arg(long, value_name = "E.npy", conflicts_with = "text_encoder")]
    pub empty_context: Option<PathBuf>,
    /// HR crop side in pixels: a multiple of 4 and of the first stage's downsampling, >= 16.
    #[arg(long, default_value_t = 64)]
    pub crop: usize,
    /// Crops per HR image, at seeded positions.
    #[arg(long, default_value_t = 1)]
    pub crops_per_image: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Crops per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Steps whose models are kept in `snapshots/step-N/` (quality against finetune compute),
    /// e.g. `50,100,200`.
    #[arg(long, value_delimiter = ',')]
    pub snapshot_steps: Vec<u64>,
    /// Steps between resumable checkpoints (the last step always gets one).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Keep an EMA of the weights with this maximum decay (saved as `unet_ema/`).
    #[arg(long)]
    pub ema_max_decay: Option<f64>,
    /// Noise-augment the LR latents with levels 0..=MAX of the x4 upscaler's schedule, the level
    /// fed to a new noise-level embedding (diffusers' x4 upscaler trains with 350); off by
    /// default. `ldmscale sample --noise-level` then sets the level.
    #[arg(long, value_name = "MAX")]
    pub noise_augmentation: Option<usize>,
    /// What the network predicts (as the pretrained model was trained).
    #[arg(long, value_enum, default_value = "epsilon")]
    pub objective: ObjectiveArg,
    /// Seed of data order, timesteps and noise (the degradation seeds are per crop).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// The most crops of one image (more would stall allocating them).
const MAX_CROPS_PER_IMAGE: usize = 4096;
/// The most bytes of f32 HR crops held at once.
const MAX_CROP_BYTES: usize = 1 << 36;

/// Runs the command.
pub fn run(args: &FinetuneSrArgs, quiet: bool) -> Result<()> {
    let (device, ranks, gpu) = crate::launch::resolve(&args.device.device, &args.launch)?;
    crate::checks::count(
        args.crops_per_image,
        MAX_CROPS_PER_IMAGE,
        "--crops-per-image",
    )?;
    let (vae_config, vae) = load_vae(&args.first_stage, &device)
        .with_context(|| format!("--first-stage {}", args.first_stage.display()))?;
    let (unet_config, unet) = load_unet(&args.unet, &device)
        .with_context(|| format!("--unet {}", args.unet.display()))?;
    let unet_file = args.unet.join("config.json");
    unet_config
        .super_res(vae_config.latent_channels)
        .map_err(|m| anyhow::anyhow!("{}: {m}", unet_file.display()))?;
    check_crop(args.crop, vae.downsampling_factor())?;
    let config = train_config(args, &unet_config)?;
    if let Some(max) = args.noise_augmentation {
        check_noise_level(max).map_err(|e| anyhow::anyhow!("--noise-augmentation: {e}"))?;
    }
    let context = empty_context(args, &device)?;
    image_files(&args.hr)?;
    // Every rank makes the same pairs; each trains on its share of every batch.
    let rank = Rank::join(ranks, device.clone(), gpu, config.batch_size)?;
    let quiet = quiet || !rank.writes();
    // Taken once the arguments are known good, so a refused run leaves no --out behind.
    let _lock = rank.lock(&args.out, "ldmscale finetune-sr")?;

    let hr = hr_crops(args, quiet)?;
    let pairs = encode_pairs(args, &hr, (&vae, &vae_config), quiet, &device)?;
    drop(hr);
    let options = SrOptions {
        noise_augmentation: args.noise_augmentation,
    };
    let task = SuperRes::with_options(&config, &pairs, (&unet_config, unet), context, options)
        .context("the super-resolution task")?;
    let summary = rank.train_task(&config, &task, &args.out, !quiet)?;
    if rank.writes() {
        report(args, &summary);
    }
    Ok(())
}

fn check_crop(crop: usize, factor: usize) -> Result<()> {
    ensure!(
        crop >= 16 && crop.is_multiple_of(4) && crop.is_multiple_of(factor),
        "--crop {crop}: must be at least 16 and a multiple of 4 (the SR scale) and of {factor} \
         (the first stage's downsampling)"
    );
    Ok(())
}

/// The run's config: the arguments, with `[model]` describing the pretrained UNet.
fn train_config(args: &FinetuneSrArgs, unet: &UNetConfig) -> Result<TrainConfig> {
    let mut t = toml::Table::new();
    let int = |v: u64| toml::Value::Integer(v as i64);
    t.insert("steps".into(), int(args.steps));
    t.insert("batch_size".into(), int(args.batch_size as u64));
    t.insert("learning_rate".into(), args.learning_rate.into());
    t.insert("warmup_steps".into(), int(args.warmup_steps));
    t.insert("grad_clip".into(), 1.0.into());
    t.insert("text_dropout".into(), 0.0.into());
    let objective = match args.objective {
        ObjectiveArg::Epsilon => "epsilon",
        ObjectiveArg::VPrediction => "v_prediction",
    };
    t.insert("objective".into(), objective.into());
    t.insert("seed".into(), int(args.seed));
    t.insert("checkpoint_every".into(), int(args.checkpoint_every));
    t.insert("keep_last".into(), int(2));
    let snapshots = args.snapshot_steps.iter().map(|&s| int(s)).collect();
    t.insert("snapshot_steps".into(), toml::Value::Array(snapshots));
    t.insert("model".into(), model_table(unet).into());
    if let Some(decay) = args.ema_max_decay {
        let mut ema = toml::Table::new();
        ema.insert("max_decay".into(), decay.into());
        t.insert("ema".into(), ema.into());
    }
    let text = toml::to_string(&t)?;
    TrainConfig::from_toml(&text, "finetune-sr arguments").map_err(name_the_flag)
}

/// The flags behind the run config's fields, so that an error names what the user typed.
const FLAGS: [(&str, &str); 7] = [
    ("steps", "--steps"),
    ("batch_size", "--batch-size"),
    ("learning_rate", "--learning-rate"),
    ("checkpoint_every", "--checkpoint-every"),
    ("ema.max_decay", "--ema-max-decay"),
    ("snapshot_steps", "--snapshot-steps"),
    ("warmup_steps", "--warmup-steps"),
];

fn name_the_flag(e: TrainError) -> anyhow::Error {
    let TrainError::ConfigFile { source, .. } = &e else {
        return e.into();
    };
    let TrainError::InvalidConfig { field, .. } = &**source else {
        return e.into();
    };
    match FLAGS.iter().find(|(f, _)| field.starts_with(f)) {
        Some((_, flag)) => anyhow::anyhow!("{flag}: {source}"),
        None => e.into(),
    }
}

/// `[model]` of a pretrained UNet: its base width, heads and groups (they label the run;
/// `distill` labels its runs with the teacher's).
pub(crate) fn model_table(unet: &UNetConfig) -> toml::Table {
    let family = if unet.num_levels() == 4 {
        "paper"
    } else {
        "small"
    };
    let mut m = toml::Table::new();
    m.insert("family".into(), family.into());
    m.insert("width".into(), (unet.base_channels() as i64).into());
    m.insert("heads".into(), (unet.level(0).num_heads as i64).into());
    m.insert("norm_groups".into(), (unet.norm_num_groups as i64).into());
    m
}

/// The image files directly in `dir`, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("--hr {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("--hr {}", dir.display()))?
            .path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if path.is_file() && IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "--hr {}: no images (expected files with extensions {})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    Ok(files)
}

/// `--crops-per-image` crops of every HR image, at positions seeded by file name and crop.
fn hr_crops(args: &FinetuneSrArgs, quiet: bool) -> Result<Vec<FloatImage>> {
    let files = image_files(&args.hr)?;
    let bytes = [args.crops_per_image, args.crop, args.crop, 3 * 4]
        .iter()
        .try_fold(files.len(), |n, &k| n.checked_mul(k))
        .filter(|&b| b <= MAX_CROP_BYTES);
    ensure!(
        bytes.is_some(),
        "--crops-per-image {} x {} images of --crop {}: the crops need more than {} GiB",
        args.crops_per_image,
        files.len(),
        args.crop,
        MAX_CROP_BYTES >> 30
    );
    let bar = progress(files.len(), "reading HR", quiet);
    let crop = args.crop as u32;
    let mut crops = Vec::with_capacity(files.len() * args.crops_per_image);
    for file in &files {
        let image = Image::open(file)?;
        let (w, h) = (image.width(), image.height());
        ensure!(
            w >= crop && h >= crop,
            "{}: {w}x{h} is smaller than the {crop}x{crop} crop (--crop)",
            file.display()
        );
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        for k in 0..args.crops_per_image {
            let seed = ldmscale_util::hash::stable_seed(&[&name, &k.to_string()]);
            let left = (seed % (w - crop + 1) as u64) as u32;
            let top = ((seed >> 32) % (h - crop + 1) as u64) as u32;
            crops.push(FloatImage::from_image(&image.crop(left, top, crop, crop)));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(crops)
}

/// Degrades every crop (seeded by its index), upsamples the LR x4 and encodes both.
fn encode_pairs(
    args: &FinetuneSrArgs,
    hr: &[FloatImage],
    (vae, vae_config): (&AutoencoderKL, &AutoencoderKLConfig),
    quiet: bool,
    device: &Device,
) -> Result<SrPairs> {
    let params = RealEsrganParams::x4plus().scaled_for(args.crop, args.crop)?;
    let bar = progress(hr.len(), "degrading", quiet);
    let mut lr = Vec::with_capacity(hr.len());
    for (i, image) in hr.iter().enumerate() {
        lr.push(upsampled_lr(image, &params, seed_for("train", i as u64))?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let key = format!(
        "finetune-sr hr:{} crop:{} per-image:{} first-stage:{} scaling:{}",
        args.hr.display(),
        args.crop,
        args.crops_per_image,
        args.first_stage.display(),
        vae_config.scaling_factor
    );
    Ok(SrPairs::encode(vae, vae_config, (hr, &lr), &key, device)?)
}

/// The empty prompt's text states `[1, L, D]`.
fn empty_context(args: &FinetuneSrArgs, device: &Device) -> Result<Tensor<3>> {
    if let Some(path) = &args.empty_context {
        let array = npy::read(path)?;
        npy::check_finite(&array, path)?;
        ensure!(
            array.shape.len() == 3 && array.shape[0] == 1 && array.shape[1] > 0,
            "{}: expected [1, tokens, width], found {:?}",
            path.display(),
            array.shape
        );
        return Ok(Tensor::from_data(
            TensorData::new(array.data, array.shape),
            device,
        ));
    }
    let dir = args.text_encoder.as_ref().expect("clap requires one");
    let text = TextConditioner::load(dir, None, device)
        .with_context(|| format!("--text-encoder {}", dir.display()))?;
    let length = text.encoder.max_positions().min(MAX_TOKENS);
    let batch = encode_text(&text, &[String::new()], length, device)?;
    Ok(batch.states_tensor(device))
}

fn progress(len: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what} {{bar:30}} {{pos}}/{{len}}"))
            .expect("template"),
    );
    bar
}

fn report(args: &FinetuneSrArgs, summary: &ldmscale_train::RunSummary) {
    let snapshots: Vec<String> = checkpoint::snapshots(&args.out)
        .iter()
        .map(|(s, _)| s.to_string())
        .collect();
    println!(
        "super-resolution finetune: step {} loss {:.4}; finetune compute {:.3e} GFLOPs = {:.3} \
         normalised cost x iterations; {} steps in {:.1} s; models: {}; snapshots at steps [{}]",
        summary.state.step,
        summary.state.last_loss,
        summary.state.train_gflops,
        summary.state.normalized_cost_x_iterations,
        summary.steps_run,
        summary.seconds,
        args.out.join("unet").display(),
        snapshots.join(", ")
    );
}
