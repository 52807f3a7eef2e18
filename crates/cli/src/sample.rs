//! `ldmscale sample`: run a sampler with classifier-free guidance over a diffusers-format UNet.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_diffusion::{
    Cfg, DdimOptions, Denoiser, DpmSolverOptions, LcmOptions, NoiseQueue, NoiseSource, SamplerId,
    SamplerKind, SchedulerConfig, SeededNoise, sample,
};
use ldmscale_model::unet::config::MAX_SAMPLE_SIZE;
use ldmscale_model::weights::load_unet;
use ldmscale_pipeline::{SrDenoiser, UNetDenoiser, low_res_schedule, noise_lr};

use crate::device::DeviceArgs;
use crate::npy;

mod lcm;

/// The sampler with its options; DPM-Solver's other settings (algorithm, final sigmas,
/// lower_order_final, ...) come from the scheduler config when one is given.
fn sampler_kind(id: SamplerId, eta: f32, scheduler_json: Option<&str>) -> Result<SamplerKind> {
    Ok(match (id.kind(), scheduler_json) {
        (SamplerKind::Ddim(o), _) => SamplerKind::Ddim(DdimOptions { eta, ..o }),
        (SamplerKind::DpmSolver(o), Some(text)) => SamplerKind::DpmSolver(DpmSolverOptions {
            solver_order: o.solver_order,
            ..DpmSolverOptions::from_json(text)?
        }),
        (SamplerKind::Lcm(_), Some(text)) => SamplerKind::Lcm(LcmOptions::from_json(text)?),
        (SamplerKind::Codi(_), Some(text)) => SamplerKind::Codi(LcmOptions::from_json(text)?),
        (kind, _) => kind,
    })
}

fn is_stochastic(id: SamplerId, eta: f32) -> bool {
    id == SamplerId::Ddpm || (id == SamplerId::Ddim && eta > 0.0)
}

/// Arguments of `ldmscale sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// UNet directory in diffusers layout (config.json + diffusion_pytorch_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub unet: PathBuf,
    /// diffusers scheduler_config.json; default: `scheduler/scheduler_config.json` beside the
    /// UNet directory if present, else Stable Diffusion's (scaled_linear, steps_offset 1).
    #[arg(long, value_name = "FILE")]
    pub scheduler_config: Option<PathBuf>,
    /// Sampler: ddim, ddpm, dpmpp-2m, dpmpp-3m; lcm for a UNet distilled with a guidance
    /// embedding (distill --method lcm, time_cond_proj_dim); codi for a CoDi student (distill
    /// --method codi: 4 deterministic steps with CFG, two evaluations per step); guided-ddim for
    /// a guided-distillation student (distill --method guided or progressive: DDIM, guidance
    /// embedded, one evaluation per step).
    #[arg(long, default_value = "ddim")]
    pub sampler: SamplerId,
    /// Sampling steps (denoiser calls).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale w; w <= 1 runs the conditional model alone (one
    /// evaluation per step), w > 1 costs two evaluations per step, as in diffusers. With
    /// --sampler lcm the student gets the embedding of w - 1 instead (one evaluation per step).
    #[arg(long, default_value_t = 7.5)]
    pub cfg: f32,
    /// DDIM stochasticity (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f32,
    /// Seed of the initial latents and of the sampler's noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images to sample (ignored where --prompt-embeds or --init-latents fix the batch).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Text states [B, tokens, width] as .npy (e.g. from a diffusers pipeline's encode_prompt).
    #[arg(long, value_name = "A.npy")]
    pub prompt_embeds: PathBuf,
    /// Unconditional text states [B or 1, tokens, width] (.npy); default: zeros.
    #[arg(long, value_name = "B.npy")]
    pub negative_embeds: Option<PathBuf>,
    /// Initial latents [B, C, H, W] (.npy); default: seeded standard normal noise.
    #[arg(long, value_name = "L.npy")]
    pub init_latents: Option<PathBuf>,
    /// Noise for stochastic samplers, one [B, C, H, W] slice per step, as .npy
    /// [steps, B, C, H, W] (to replay another implementation's draws); default: seeded.
    #[arg(long, value_name = "N.npy")]
    pub noise: Option<PathBuf>,
    /// LCM: the noise injected between its steps, [steps - 1, B, C, H, W] (.npy); default:
    /// seeded by --seed.
    #[arg(long, value_name = "N.npy")]
    pub step_noise: Option<PathBuf>,
    /// Latent side length when --init-latents is not given; default: the config's sample_size.
    #[arg(long)]
    pub latent_size: Option<usize>,
    /// Low-resolution latents [B, C, h, w] (.npy) for a super-resolution UNet (`in_channels` =
    /// 2 x `out_channels`): the first stage's scaled latents of the LR image upsampled x4.
    /// Sampled without guidance (--cfg is ignored), the prompt states as the fixed context.
    #[arg(long, value_name = "LR.npy")]
    pub lr_latents: Option<PathBuf>,
    /// Noise level of the LR latents for an SR UNet with a noise-level embedding
    /// (`num_class_embeds`): they are noised to it first (seeded by --seed), as diffusers' x4
    /// upscaler does (its default 20).
    #[arg(long)]
    pub noise_level: Option<usize>,
    /// Where to write the final latents (.npy, [B, C, H, W]).
    #[arg(long, value_name = "OUT.npy")]
    pub output_latents: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The most latent values (all images of the batch together) sampled at once: 1 GiB of f32.
/// The UNet's activations are a few hundred times the latents, so more would not run anyway.
const MAX_LATENT_ELEMENTS: usize = 1 << 28;

/// Reads an input array, checking its rank, that no dimension is zero and that every value is
/// finite (a NaN would otherwise surface only as non-finite latents after sampling).
fn read_input(path: &Path, what: &str, rank: usize) -> Result<npy::Array> {
    let array = npy::read(path)?;
    ensure!(
        array.shape.len() == rank && array.shape.iter().all(|&d| d > 0),
        "{}: {what} must have {rank} non-zero dimensions, found shape {:?}",
        path.display(),
        array.shape
    );
    npy::check_finite(&array, path)?;
    Ok(array)
}

fn tensor<const D: usize>(array: npy::Array, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(array.data, array.shape), device)
}

/// The checks on the command line that need no file.
fn check_args(args: &SampleArgs) -> Result<()> {
    ensure!(args.steps > 0, "--steps must be at least 1");
    // Above 1, DDIM's noise exceeds the step's variance and the latents turn NaN.
    ensure!(
        (0.0..=1.0).contains(&args.eta),
        "--eta {}: expected a number from 0 to 1",
        args.eta
    );
    ensure!(
        args.cfg.is_finite(),
        "--cfg {} must be a finite number",
        args.cfg
    );
    ensure!(args.batch > 0, "--batch must be at least 1");
    lcm::check_args(args)?;
    if let Some(side) = args.latent_size {
        ensure!(
            (1..=MAX_SAMPLE_SIZE).contains(&side),
            "--latent-size {side}: expected 1..={MAX_SAMPLE_SIZE}"
        );
    }
    Ok(())
}

/// Input arrays, read and checked before the UNet is loaded.
struct Inputs {
    prompt: npy::Array,
    negative: Option<npy::Array>,
    init: Option<npy::Array>,
    noise: Option<npy::Array>,
    step_noise: Option<npy::Array>,
    lr: Option<npy::Array>,
}

fn read_inputs(args: &SampleArgs) -> Result<Inputs> {
    let optional = |path: &Option<PathBuf>, what: &str, rank: usize| {
        path.as_deref()
            .map(|p| read_input(p, what, rank))
            .transpose()
    };
    Ok(Inputs {
        prompt: read_input(&args.prompt_embeds, "--prompt-embeds", 3)?,
        negative: optional(&args.negative_embeds, "--negative-embeds", 3)?,
        init: optional(&args.init_latents, "--init-latents", 4)?,
        noise: optional(&args.noise, "--noise", 5)?,
        step_noise: optional(&args.step_noise, "--step-noise", 5)?,
        lr: optional(&args.lr_latents, "--lr-latents", 4)?,
    })
}

/// The scheduler config and, when read from a file, its text.
fn scheduler_config(args: &SampleArgs) -> Result<(SchedulerConfig, Option<String>)> {
    let beside = args
        .unet
        .parent()
        .map(|p| p.join("scheduler").join("scheduler_config.json"));
    let path = match (&args.scheduler_config, beside) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) if p.exists() => Some(p),
        _ => None,
    };
    match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let config =
                SchedulerConfig::from_json(&text).with_context(|| format!("{}", p.display()))?;
            Ok((config, Some(text)))
        }
        None => Ok((SchedulerConfig::sd(), None)),
    }
}

/// Runs the command.
pub fn run(args: &SampleArgs) -> Result<()> {
    check_args(args)?;
    if args.output_latents.is_none() {
        bail!(
            "nothing to write: pass --output-latents OUT.npy (decoding to PNG needs the first-stage autoencoder, not available yet)"
        );
    }
    if let Some(out) = &args.output_latents {
        crate::checks::output_file(out, "--output-latents")?;
    }
    let inputs = read_inputs(args)?;
    let device = args.device.device()?;
    let (config, unet) = load_unet(&args.unet, &device)?;
    let (scheduler, scheduler_json) = scheduler_config(args)?;
    ensure!(
        args.steps <= scheduler.num_train_timesteps,
        "--steps {}: the scheduler has {} training timesteps",
        args.steps,
        scheduler.num_train_timesteps
    );

    let cond: Tensor<3> = tensor(inputs.prompt, &device);
    let [batch, tokens, width] = cond.dims();
    let context_dim = config.level(0).cross_attention_dim;
    ensure!(
        width == context_dim,
        "{}: text states are {width} wide but the UNet's cross_attention_dim is {context_dim}",
        args.prompt_embeds.display()
    );
    let uncond: Tensor<3> = match inputs.negative {
        Some(array) => tensor(array, &device),
        None => Tensor::zeros([1, tokens, width], &device),
    };

    let lr = lr_latents(args, inputs.lr, &config, &device)?;
    let batch = lr.as_ref().map_or(batch, |t| t.dims()[0]);
    let lr_size = lr.as_ref().map(|t| [t.dims()[2], t.dims()[3]]);
    let initial = initial_latents(args, inputs.init, &config, (batch, lr_size), &device)?;
    if let Some(size) = lr_size {
        ensure!(
            initial.dims()[2..] == size,
            "--init-latents {:?} and --lr-latents {size:?} differ in size",
            initial.dims()
        );
    }
    if args.init_latents.is_none() && args.batch != batch {
        let from = match lr_size {
            Some(_) => "--lr-latents",
            None => "--prompt-embeds",
        };
        eprintln!(
            "note: batch {batch} taken from {from} (not --batch {})",
            args.batch
        );
    }
    let mut noise = match args.sampler {
        SamplerId::Lcm => lcm::step_noise(args, inputs.step_noise, &initial, &device)?,
        _ => step_noise(args, inputs.noise, &initial, &device)?,
    };
    if !is_stochastic(args.sampler, args.eta) && args.noise.is_some() {
        eprintln!("note: --noise is ignored by a deterministic sampler");
    }
    let mut sampler = sampler_kind(args.sampler, args.eta, scheduler_json.as_deref())?
        .build(&scheduler, args.steps)?;
    let mut denoiser: Box<dyn Denoiser + '_> = match lr {
        Some(lr) => {
            ensure!(
                cond.dims()[0] == 1 || cond.dims()[0] == batch,
                "{}: {} prompt states for {batch} LR latents (give 1 or {batch})",
                args.prompt_embeds.display(),
                cond.dims()[0]
            );
            if args.cfg > 1.0 {
                eprintln!("note: super-resolution samples without guidance (--cfg ignored)");
            }
            Box::new(sr_denoiser(args, &unet, &config, lr, &cond)?)
        }
        None if args.sampler.uses_guidance_embedding() => {
            Box::new(lcm::denoiser(args, &unet, &config, cond)?)
        }
        None if args.sampler == SamplerId::Codi && config.time_cond_proj_dim.is_some() => bail!(
            "{}: this UNet reads a guidance embedding (time_cond_proj_dim): an LCM student \
             (distill --method lcm); sample it with --sampler lcm",
            args.unet.join("config.json").display()
        ),
        None => Box::new(Cfg::new(UNetDenoiser(&unet), cond, uncond, args.cfg)?),
    };
    let [_, _, h, w] = initial.dims();
    let gflops_per_eval = unet.cost(h, w, tokens).gflops();

    let bar = ProgressBar::new(args.steps as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} sampling {bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    let mut tick = |_: &ldmscale_diffusion::StepEvent<'_>| bar.inc(1);
    let start = Instant::now();
    let out = sample(
        sampler.as_mut(),
        &mut denoiser,
        initial,
        noise.as_mut(),
        Some(&mut tick),
    )?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let dims = out.latents.dims();
    let values = out
        .latents
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32");
    ensure!(
        values.iter().all(|v| v.is_finite()),
        "sampling produced non-finite latents"
    );
    if let Some(path) = &args.output_latents {
        npy::write(path, &dims, &values)?;
    }
    eprintln!(
        "{} steps of {}, {} {}: {} evaluations per image x {:.3} GFLOPs = {:.2} GFLOPs per image; {:.2} s for {} images",
        out.steps,
        args.sampler,
        match args.sampler.uses_guidance_embedding() {
            true => "guidance (embedded)",
            false => "CFG",
        },
        args.cfg,
        out.evaluations,
        gflops_per_eval,
        out.evaluations as f64 * gflops_per_eval,
        seconds,
        batch
    );
    Ok(())
}

/// The SR denoiser over `lr`, noised to `--noise-level` first for a UNet with a noise-level
/// embedding.
fn sr_denoiser<'a>(
    args: &SampleArgs,
    unet: &'a ldmscale_model::UNet,
    config: &ldmscale_model::UNetConfig,
    lr: Tensor<4>,
    context: &Tensor<3>,
) -> Result<SrDenoiser<'a>> {
    let Some(levels) = config.num_class_embeds else {
        ensure!(
            args.noise_level.is_none(),
            "--noise-level given but {}/config.json has no noise-level embedding (num_class_embeds)",
            args.unet.display()
        );
        return Ok(SrDenoiser::new(unet, lr, context));
    };
    let level = args.noise_level.unwrap_or(20);
    let max = levels.min(low_res_schedule().num_train_timesteps);
    ensure!(
        level < max,
        "--noise-level {level}: expected 0..{max} ({}/config.json: num_class_embeds {levels})",
        args.unet.display()
    );
    let [b, ..] = lr.dims();
    let noise = SeededNoise::new(args.seed ^ 0x10_5e5).noise(lr.dims(), &lr.device())?;
    let lr = noise_lr(lr, noise, &vec![level; b])?;
    Ok(SrDenoiser::new(unet, lr, context).at_noise_level(level))
}

/// `--lr-latents` for a super-resolution UNet (required there, refused elsewhere), checked
/// against the UNet's `in_channels - out_channels`.
fn lr_latents(
    args: &SampleArgs,
    lr: Option<npy::Array>,
    config: &ldmscale_model::UNetConfig,
    device: &Device,
) -> Result<Option<Tensor<4>>> {
    let config_file = args.unet.join("config.json");
    match (config.concat_channels(), lr, &args.lr_latents) {
        (None, None, _) => {
            ensure!(
                args.noise_level.is_none(),
                "--noise-level given but {} is not a super-resolution UNet (it would be ignored)",
                config_file.display()
            );
            Ok(None)
        }
        (Some(c), Some(array), Some(p)) => {
            ensure!(
                array.shape[1] == c,
                "{}: LR latents {:?} must have {c} channels ({}: in_channels {} - out_channels {})",
                p.display(),
                array.shape,
                config_file.display(),
                config.in_channels,
                config.out_channels
            );
            Ok(Some(tensor(array, device)))
        }
        (Some(c), _, _) => bail!(
            "{}: in_channels {} = out_channels {} + {c}: a super-resolution UNet; pass \
             --lr-latents LR.npy ([B, {c}, h, w], the LR image upsampled x4 and encoded)",
            config_file.display(),
            config.in_channels,
            config.out_channels
        ),
        (None, _, _) => bail!(
            "--lr-latents given but {}: in_channels {} equals out_channels: not a \
             super-resolution UNet",
            config_file.display(),
            config.in_channels
        ),
    }
}

/// `--init-latents`, or seeded noise of the UNet's latent size.
fn initial_latents(
    args: &SampleArgs,
    init: Option<npy::Array>,
    config: &ldmscale_model::UNetConfig,
    (batch, lr_size): (usize, Option<[usize; 2]>),
    device: &Device,
) -> Result<Tensor<4>> {
    Ok(match (init, &args.init_latents) {
        (Some(array), Some(p)) => {
            let t: Tensor<4> = tensor(array, device);
            ensure!(
                t.dims()[0] == batch && t.dims()[1] == config.out_channels,
                "{}: latents {:?} do not match batch {batch} and {} channels",
                p.display(),
                t.dims(),
                config.out_channels
            );
            t
        }
        _ => {
            let side = args.latent_size.or(config.sample_size).unwrap_or(64);
            let [h, w] = lr_size.unwrap_or([side, side]);
            let shape = [batch, config.out_channels, h, w];
            let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            ensure!(
                elements.is_some_and(|n| n <= MAX_LATENT_ELEMENTS),
                "latents {shape:?} (batch from --prompt-embeds, --latent-size {side}) hold more than {MAX_LATENT_ELEMENTS} values"
            );
            SeededNoise::new(args.seed).noise(shape, device)?
        }
    })
}

/// `--noise` (the draws injected between steps), or seeded draws.
fn step_noise(
    args: &SampleArgs,
    noise: Option<npy::Array>,
    initial: &Tensor<4>,
    device: &Device,
) -> Result<Box<dyn NoiseSource>> {
    Ok(match (noise, &args.noise) {
        (Some(array), Some(p)) => {
            ensure!(
                array.shape.len() == 5 && array.shape[1..] == initial.dims(),
                "{}: noise must be [steps, {:?}], found {:?}",
                p.display(),
                initial.dims(),
                array.shape
            );
            let slice: usize = array.shape[1..].iter().product();
            let dims = initial.dims();
            let slices = array
                .data
                .chunks_exact(slice)
                .map(|c| Tensor::from_data(TensorData::new(c.to_vec(), dims), device));
            Box::new(NoiseQueue::new(slices.collect::<Vec<_>>()))
        }
        // A seed different from the initial latents' so both streams are independent.
        _ => Box::new(SeededNoise::new(args.seed.wrapping_add(0x5eed))),
    })
}
