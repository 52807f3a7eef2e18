//! `ldmscale dreambooth`: DreamBooth finetuning (Ruiz et al. 2023, diffusers'
//! `train_dreambooth.py`) of a pretrained text-to-image UNet on a folder of instance images,
//! optionally with prior preservation on a folder of class images. The first stage and the text
//! encoder stay frozen: the images and prompts are encoded once, in memory. Resumable like
//! `train`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;
use clap::Args;
use ldmscale_data::Transform;
use ldmscale_data::dreambooth::{load_instance_dir, prompt_words};
use ldmscale_model::text::TextConditioner;
use ldmscale_model::vae::load_vae;
use ldmscale_model::weights::load_unet;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNetConfig};
use ldmscale_train::tasks::{DEFAULT_PRIOR_WEIGHT, DreamBooth};
use ldmscale_train::{DeviceThreads, InMemory, RunSummary, TrainConfig, TrainError, train_task};
use ldmscale_util::lock::DirLock;

use crate::device::DeviceArgs;
use crate::finetune_sr::model_table;

/// Arguments of `ldmscale dreambooth`.
#[derive(Args, Debug)]
pub struct DreamBoothArgs {
    /// Pretrained text-to-image UNet in diffusers layout (e.g. `RUN/unet` of `train`, or a
    /// user's checkpoint).
    #[arg(long, value_name = "DIR")]
    pub unet: PathBuf,
    /// First-stage autoencoder (diffusers AutoencoderKL directory) that encodes the images.
    #[arg(long, value_name = "DIR")]
    pub first_stage: PathBuf,
    /// Text encoder directory (as `train` and `study` save it) that encodes the prompts.
    #[arg(long, value_name = "DIR")]
    pub text_encoder: PathBuf,
    /// Folder of the subject's instance images (png, jpg, jpeg, webp, bmp; not recursive).
    #[arg(long, value_name = "DIR")]
    pub instance_dir: PathBuf,
    /// The prompt of every instance image, with the subject's identifier, e.g. "a sks circle".
    #[arg(long, value_name = "P")]
    pub instance_prompt: String,
    /// Folder of class images for prior preservation. They are not generated here: make them
    /// with the base model first (e.g. `ldmscale sample` with the class prompt) or use real
    /// images of the class.
    #[arg(long, value_name = "DIR", requires = "class_prompt")]
    pub class_dir: Option<PathBuf>,
    /// The prompt of every class image: the instance prompt without the identifier, e.g.
    /// "a circle". Requires --class-dir.
    #[arg(long, value_name = "C", requires = "class_dir")]
    pub class_prompt: Option<String>,
    /// Weight w of the prior loss: loss = mse(instance) + w * mse(prior). Requires --class-dir.
    #[arg(long, value_name = "W", requires = "class_dir")]
    pub prior_loss_weight: Option<f64>,
    /// Output run directory (checkpoints, unet/); a run there resumes from its newest
    /// checkpoint, and a larger --steps extends a finished one.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 400)]
    pub steps: u64,
    /// Constant learning rate (AdamW).
    #[arg(long, default_value_t = 5e-6)]
    pub learning_rate: f64,
    /// Instance examples per step (as many class examples join them with the prior).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Image side in pixels (centre crop, then resize): a multiple of the first stage's
    /// downsampling.
    #[arg(long, default_value_t = 512)]
    pub resolution: usize,
    /// Steps between resumable checkpoints (the last step always gets one).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Seed of data order, timesteps and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs the command.
pub fn run(args: &DreamBoothArgs, quiet: bool) -> Result<()> {
    crate::checks::output_dir(&args.out, "--out")?;
    check_prompts(args)?;
    let device = args.device.device()?;
    let (vae_config, vae) = load_vae(&args.first_stage, &device)
        .with_context(|| format!("--first-stage {}", args.first_stage.display()))?;
    let (unet_config, unet) = load_unet(&args.unet, &device)
        .with_context(|| format!("--unet {}", args.unet.display()))?;
    let factor = vae.downsampling_factor();
    ensure!(
        args.resolution >= factor && args.resolution.is_multiple_of(factor),
        "--resolution {}: must be a multiple of {factor} (the first stage's downsampling)",
        args.resolution
    );
    let config = train_config(args, &unet_config)?;
    let text = TextConditioner::load(&args.text_encoder, None, &device)
        .with_context(|| format!("--text-encoder {}", args.text_encoder.display()))?;
    let instance_images = images(
        "--instance-dir",
        &args.instance_dir,
        &args.instance_prompt,
        args.resolution,
    )?;
    let class_images = match (&args.class_dir, &args.class_prompt) {
        (Some(dir), Some(prompt)) => Some(images("--class-dir", dir, prompt, args.resolution)?),
        _ => None,
    };
    // Taken once the arguments are known good, so a refused run leaves no --out behind.
    let _lock = DirLock::acquire(&args.out, "ldmscale dreambooth")?;
    let encoder = Encoder {
        vae: (&vae, &vae_config),
        text: &text,
        resolution: args.resolution,
        device: &device,
        args,
    };
    let instance = encoder.encode(
        "instance",
        &args.instance_dir,
        &args.instance_prompt,
        &instance_images,
    )?;
    let class = match (&args.class_dir, &args.class_prompt, &class_images) {
        (Some(dir), Some(prompt), Some(images)) => {
            Some(encoder.encode("class", dir, prompt, images)?)
        }
        _ => None,
    };
    let weight = args.prior_loss_weight.unwrap_or(DEFAULT_PRIOR_WEIGHT);
    let class_data = class
        .as_ref()
        .map(|data| (data as &dyn ldmscale_train::TrainingData, weight));
    let task = DreamBooth::new(&config, &instance, class_data, (&unet_config, unet))
        .map_err(name_the_flag)
        .context("the DreamBooth task")?;
    let sync = DeviceThreads::new(std::slice::from_ref(&device))?;
    let summary = train_task(&config, &task, &sync, &args.out, !quiet, None)?;
    report(args, &summary, class.is_some().then_some(weight));
    Ok(())
}

/// The class prompt must differ from the instance prompt (it is the instance prompt without
/// the identifier); both must be non-empty, the prior weight finite and >= 0.
fn check_prompts(args: &DreamBoothArgs) -> Result<()> {
    ensure!(
        !args.instance_prompt.trim().is_empty(),
        "--instance-prompt: is empty; give the subject's prompt with its identifier, e.g. \
         \"a sks circle\""
    );
    if let Some(w) = args.prior_loss_weight {
        ensure!(
            w.is_finite() && w >= 0.0,
            "--prior-loss-weight {w}: must be finite and >= 0"
        );
    }
    if let Some(class) = &args.class_prompt {
        ensure!(
            !class.trim().is_empty(),
            "--class-prompt: is empty; give the instance prompt without the identifier"
        );
        if prompt_words(class).eq(prompt_words(&args.instance_prompt)) {
            bail!(
                "--class-prompt {class:?}: is identical to --instance-prompt; the class prompt \
                 is the instance prompt without the identifier"
            );
        }
    }
    Ok(())
}

/// The images of `dir` (given as `flag`) as `N x 3 x res x res` floats in [-1, 1] (centre
/// crop), with their count.
fn images(flag: &str, dir: &Path, prompt: &str, resolution: usize) -> Result<(Vec<f32>, usize)> {
    let examples = load_instance_dir(dir, prompt).map_err(|e| {
        let message = e.to_string();
        let message = match flag {
            "--class-dir" => message.replacen("instance folder", "class folder", 1),
            _ => message,
        };
        anyhow::anyhow!("{flag}: {message}")
    })?;
    let transform = Transform::center(resolution as u32);
    let mut out = Vec::with_capacity(examples.len() * 3 * resolution * resolution);
    for (i, example) in examples.iter().enumerate() {
        out.extend(transform.apply(&example.image, i as u64).to_chw_f32());
    }
    Ok((out, examples.len()))
}

/// The frozen encoders.
struct Encoder<'a> {
    vae: (&'a AutoencoderKL, &'a AutoencoderKLConfig),
    text: &'a TextConditioner,
    resolution: usize,
    device: &'a Device,
    args: &'a DreamBoothArgs,
}

impl Encoder<'_> {
    /// One folder's images and its prompt, encoded.
    fn encode(
        &self,
        what: &str,
        dir: &Path,
        prompt: &str,
        (images, count): &(Vec<f32>, usize),
    ) -> Result<InMemory> {
        let captions = vec![prompt.to_string(); *count];
        let (vae, vae_config) = self.vae;
        let key = format!(
            "dreambooth {what} dir:{} n:{count} prompt:{prompt:?} res:{} first-stage:{} \
             scaling:{} text:{}",
            dir.display(),
            self.resolution,
            self.args.first_stage.display(),
            vae_config.scaling_factor,
            self.args.text_encoder.display()
        );
        InMemory::encode(
            vae,
            vae_config,
            self.text,
            (images, &captions),
            self.resolution,
            key,
            self.device,
        )
        .with_context(|| format!("encoding the {what} images of {}", dir.display()))
    }
}

/// The run's config: the arguments with the recipe fixed (constant LR, AdamW, grad clip 1.0,
/// no text dropout) and `[model]` describing the pretrained UNet.
fn train_config(args: &DreamBoothArgs, unet: &UNetConfig) -> Result<TrainConfig> {
    let mut t = toml::Table::new();
    let int = |v: u64| toml::Value::Integer(v as i64);
    t.insert("steps".into(), int(args.steps));
    t.insert("batch_size".into(), int(args.batch_size as u64));
    t.insert("learning_rate".into(), args.learning_rate.into());
    t.insert("lr_schedule".into(), "constant".into());
    t.insert("grad_clip".into(), 1.0.into());
    t.insert("text_dropout".into(), 0.0.into());
    t.insert("seed".into(), int(args.seed));
    t.insert("checkpoint_every".into(), int(args.checkpoint_every));
    t.insert("keep_last".into(), int(2));
    t.insert("model".into(), model_table(unet).into());
    let text = toml::to_string(&t)?;
    TrainConfig::from_toml(&text, "dreambooth arguments").map_err(name_the_flag)
}

/// The flags behind the run config's fields, so that an error names what the user typed.
const FLAGS: [(&str, &str); 5] = [
    ("steps", "--steps"),
    ("batch_size", "--batch-size"),
    ("learning_rate", "--learning-rate"),
    ("checkpoint_every", "--checkpoint-every"),
    ("prior_loss_weight", "--prior-loss-weight"),
];

fn name_the_flag(e: TrainError) -> anyhow::Error {
    let inner = match &e {
        TrainError::ConfigFile { source, .. } => &**source,
        other => other,
    };
    let TrainError::InvalidConfig { field, .. } = inner else {
        return e.into();
    };
    match FLAGS.iter().find(|(f, _)| field.starts_with(f)) {
        Some((_, flag)) => anyhow::anyhow!("{flag}: {inner}"),
        None => e.into(),
    }
}

fn report(args: &DreamBoothArgs, summary: &RunSummary, prior: Option<f64>) {
    let prior = match prior {
        Some(w) => format!("prior preservation w {w}"),
        None => "no prior preservation".to_string(),
    };
    println!(
        "dreambooth finetune ({prior}): step {} loss {:.4}; finetune compute {:.3e} GFLOPs = \
         {:.3} normalised cost x iterations; {} steps in {:.1} s; model: {}",
        summary.state.step,
        summary.state.last_loss,
        summary.state.train_gflops,
        summary.state.normalized_cost_x_iterations,
        summary.steps_run,
        summary.seconds,
        args.out.join("unet").display(),
    );
}
