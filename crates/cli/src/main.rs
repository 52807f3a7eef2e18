//! `ldmscale`: train, sample and measure families of latent diffusion models of different sizes,
//! and find which size, sampler, step count and guidance give the best images for a budget.

mod checks;
mod clip_score;
mod degrade;
mod device;
mod distill;
mod dreambooth;
mod fid;
mod finetune_sr;
mod launch;
mod lpips;
mod npy;
mod plan;
mod sample;
mod slurm;
mod sr_metrics;
mod study;
mod train;
mod train_vae;
mod zoo;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

// Tensor buffers are large and short-lived: keep them in the process (see ldmscale-alloc).
#[global_allocator]
static GLOBAL: ldmscale_alloc::TensorAllocator = ldmscale_alloc::TensorAllocator;

/// Scaling properties of latent diffusion models, as working software.
///
/// Reproduces Mei et al., "Bigger is not Always Better: Scaling Properties of Latent Diffusion
/// Models": a family of Stable-Diffusion-style UNets that differ only in base width, trained
/// from scratch, sampled with DDIM / DDPM / DPM-Solver++ under classifier-free guidance, and
/// compared at equal sampling cost (GFLOPs x steps).
#[derive(Parser, Debug)]
#[command(name = "ldmscale", version, about, long_about)]
struct Cli {
    /// Arithmetic of the CPU convolutions and dense layers: `f32`, or `bf16` products with f32
    /// sums (as PyTorch's bf16 autocast) where that beats f32: AMX tiles on Intel, AVX512-BF16
    /// on AMD Zen 4 and later (convolutions 1.3-1.8x faster); elsewhere f32 products (with a
    /// warning).
    /// Weights, optimizer state and every other operation stay f32; bf16 results differ from
    /// f32 from about the third significant digit.
    #[arg(long, global = true, value_enum, default_value = "f32")]
    precision: Precision,
    /// More log lines: `-v` adds debug lines, `-vv` trace lines.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Warnings and errors only: no progress lines or bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the model family: exact parameters, GFLOPs per forward and normalised cost, beside
    /// the paper's Table 1.
    ///
    /// Counts come from the models the toolkit builds (parameters are allocated lazily, so even
    /// the 5B model costs no memory). Example: `ldmscale zoo --latent 32 --widths 64,128 --format csv`.
    Zoo(zoo::ZooArgs),
    /// Sample latents with DDIM / DDPM / DPM-Solver++ and classifier-free guidance, or with
    /// an LCM student (`--sampler lcm`: guidance as its embedding, one evaluation per step).
    ///
    /// Takes text states as .npy (interop with diffusers' encode_prompt) and prints the sampling
    /// cost: evaluations (doubled by CFG) x GFLOPs per evaluation. Example:
    /// `ldmscale sample --unet unet/ --sampler dpmpp-2m --steps 20 --cfg 7.5
    /// --prompt-embeds p.npy --negative-embeds n.npy --output-latents out.npy`.
    Sample(Box<sample::SampleArgs>),
    /// Fréchet Inception Distance between two image folders or .npz statistics, equal to
    /// pytorch-fid 0.3.0 (`--mode pytorch-fid`, default) or clean-fid 0.1.35 (`--mode clean`).
    ///
    /// Example: `ldmscale fid samples/ real.npz --mode clean`;
    /// `ldmscale fid real/ --save-stats real.npz` only writes the statistics.
    Fid(Box<fid::FidArgs>),
    /// CLIP score of images against their captions, equal to torchmetrics' CLIPScore:
    /// `max(mean(100 * cos(image, caption)), 0)` with a local transformers CLIPModel directory.
    ///
    /// Example: `ldmscale clip-score --images samples/ --captions captions.tsv --clip clip-vit-large-patch14/`.
    ClipScore(Box<clip_score::ClipScoreArgs>),
    /// PSNR between two image folders matched by file name, equal to BasicSR 1.4.2's
    /// calculate_psnr (see the conventions under --help).
    ///
    /// Example (an SR paper's x4 setting): `ldmscale psnr hr/ sr/ --y-channel --crop-border 4`.
    Psnr(sr_metrics::SrMetricArgs),
    /// SSIM between two image folders matched by file name, equal to BasicSR 1.4.2's
    /// calculate_ssim (see the conventions under --help).
    ///
    /// Example (Real-ESRGAN's validation): `ldmscale ssim hr/ sr/ --crop-border 4 --per-image`.
    Ssim(sr_metrics::SrMetricArgs),
    /// LPIPS v0.1 between two image folders matched by file name, equal to the lpips 0.1.4
    /// package, with a local AlexNet / VGG16 trunk (see --help for the weights).
    ///
    /// Example: `ldmscale lpips hr/ sr/ --net alex --trunk alex-trunk.safetensors`.
    Lpips(Box<lpips::LpipsArgs>),
    /// Recommend the model size, sampler, steps and guidance with the best FID within a
    /// sampling budget, from a study's results store.
    ///
    /// Example: `ldmscale plan --store study/results.sqlite --budget-gflops 2.5`.
    Plan(plan::PlanArgs),
    /// Work with results stores: merge shards, write a report.
    #[command(subcommand)]
    Results(plan::ResultsCommand),
    /// Train a small KL autoencoder (the first stage) on a dataset's images.
    ///
    /// Reports held-out reconstruction PSNR and stores 1 / std of training latents as the
    /// scaling factor in the diffusers config it writes. Example:
    /// `ldmscale train-vae --data shapes --resolution 32 --factor 4 --steps 2000 --output vae/`.
    TrainVae(Box<train_vae::TrainVaeArgs>),
    /// Run the paper's study end to end: data, first stage, text encoder, train a width family,
    /// sweep samplers x steps x guidance, evaluate, analyse, report. Resumable.
    ///
    /// With no arguments, the `quick` preset on the procedural `shapes` dataset (no download).
    /// `--dry-run` prints the plan with its estimated compute. Example:
    /// `ldmscale study --preset tiny --out /tmp/tiny`.
    Study(Box<study::StudyArgs>),
    /// Train one UNet width from scratch on encoded data (resumes from its newest checkpoint).
    ///
    /// Example: `ldmscale train --config run.toml --out runs/w32 --width 32`.
    Train(Box<train::TrainArgs>),
    /// Train every width of a family with the identical recipe, one directory per width,
    /// skipping finished widths.
    ///
    /// Example: `ldmscale train-family --config run.toml --widths 16,24,32,48 --out family/`.
    TrainFamily(Box<train::TrainArgs>),
    /// Finetune a text-to-image UNet for x4 super-resolution on a folder of HR images.
    ///
    /// `conv_in` is widened to read the LR latent (RealESRGAN-degraded crop, upsampled x4,
    /// encoded) beside the noisy one, starting equal to the text-to-image model; models are
    /// kept at `--snapshot-steps`. Example: `ldmscale finetune-sr --unet w64/unet
    /// --first-stage vae/ --text-encoder study/text_encoder --hr photos/ --out sr-w64
    /// --steps 400 --snapshot-steps 100,200,400`.
    FinetuneSr(Box<finetune_sr::FinetuneSrArgs>),
    /// Distil a text-to-image teacher into a few-step student (resumes like `train`).
    ///
    /// `--method lcm`: latent consistency distillation; the student is the teacher with a
    /// zero-initialised guidance embedding (`time_cond_proj_dim`) and samples with `sample
    /// --sampler lcm`. Example: `ldmscale distill --teacher runs/w32/unet --method lcm
    /// --config distill.toml --out lcm-w32`. `--method codi`: CoDi-style consistency
    /// distillation of the whole UNet with guidance inside the loss; the student is a plain
    /// UNet, sampled with guidance (2 evaluations per step).
    Distill(Box<distill::DistillArgs>),
    /// DreamBooth: finetune a text-to-image UNet on a subject's images (resumes like `train`).
    ///
    /// The instance images (and, with `--class-dir`, the class images for prior preservation)
    /// are encoded by the first stage and their prompts by the text encoder, both frozen; the
    /// whole UNet trains with AdamW at a constant learning rate, grad clip 1.0, no text dropout.
    /// Class images are not generated here: make them with the base model first. Example:
    /// `ldmscale dreambooth --unet runs/w32/unet --first-stage vae/ --text-encoder
    /// runs/w32/text_encoder --instance-dir dog/ --instance-prompt "a sks dog" --class-dir
    /// dogs/ --class-prompt "a dog" --out db-w32 --steps 400`.
    Dreambooth(Box<dreambooth::DreamBoothArgs>),
    /// Degrade a folder of high-resolution images to a frozen low-resolution set for x4
    /// super-resolution, with the RealESRGAN two-stage degradation (Real-ESRGAN's x4plus
    /// settings, the paper's).
    ///
    /// Each image is sharpened (USM), then degraded twice by blur (Gaussian, generalised,
    /// plateau or sinc kernels), random resize (area, bilinear, bicubic), Gaussian or Poisson
    /// noise and JPEG, then resized to 1/scale with a final sinc filter and JPEG in random
    /// order, and rounded to 8 bits; each operation equals BasicSR 1.4.2 / PyTorch on fixtures.
    ///
    /// Seeds: the files are sorted by name and image i is degraded with a seed made from
    /// (--split, i, --seed) alone, so the same folder, settings and seed give byte-identical
    /// PNGs on any machine and with any number of threads. Adding or renaming files shifts the
    /// indices, so make the set once and keep it (several versions of this degradation
    /// circulate): `manifest.json` records the settings, seeds and each input's and output's
    /// SHA-256. The set appears at --out only when complete; a killed run leaves a hidden
    /// `.NAME.partial-PID` folder beside it, safe to delete.
    ///
    /// Inputs are read as OpenCV's imread gives them to Real-ESRGAN: grey images replicated to
    /// RGB, 16-bit ones reduced to 8 bits, a fully opaque alpha channel dropped (each noted in
    /// the manifest); images with transparent pixels, sides below 4 x scale or not divisible by
    /// the scale are refused, all named at once before any work. Example:
    /// `ldmscale degrade --input div2k-val-crops/ --out lr-x4/ --seed 0`.
    Degrade(Box<degrade::DegradeArgs>),
}

/// See `Cli::precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Precision {
    F32,
    Bf16,
}

/// Parses the command line, letting negative numbers through as values so that `--lr -1`
/// reaches the check naming the flag rather than clap's "unexpected argument '-1'".
fn parse_cli() -> Cli {
    fn negative_numbers(command: clap::Command) -> clap::Command {
        command
            .allow_negative_numbers(true)
            .mut_subcommands(negative_numbers)
    }
    let matches = negative_numbers(Cli::command())
        .try_get_matches()
        .unwrap_or_else(|e| exit_with(e));
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| exit_with(e))
}

/// Exits with clap's message, saying what a whole-number flag expects where Rust's parse error
/// ("invalid digit found in string", e.g. for `--seed -1`) does not.
fn exit_with(e: clap::Error) -> ! {
    if e.kind() != clap::error::ErrorKind::ValueValidation {
        e.exit()
    }
    let text = e.to_string().replace(
        "invalid digit found in string",
        "expected a whole number 0, 1, 2, ...",
    );
    eprint!("{text}");
    std::process::exit(2)
}

fn main() {
    let cli = parse_cli();
    ldmscale_util::logging::init(ldmscale_util::logging::Verbosity::from_flags(
        cli.quiet,
        cli.verbose,
    ));
    if cli.precision == Precision::Bf16 {
        use ldmscale_kernels::bf16::{Engine, engine};
        if engine() == Engine::F32 {
            eprintln!(
                "warning: --precision bf16 runs f32 products on this CPU: it has neither AMX-BF16 \
                 nor AVX512-BF16 that beats f32 (Intel without AMX issues vdpbf16ps on one port)"
            );
        }
        ldmscale_kernels::bf16::set_products_in_bf16(true);
    }
    // On a worker of the kernels' thread pool, so that their parallel loops start in place
    // (see `run_on_pool`).
    let result = ldmscale_kernels::run_on_pool(|| run(&cli));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Zoo(args) => zoo::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Fid(args) => fid::run(args),
        Command::ClipScore(args) => clip_score::run(args),
        Command::Psnr(args) => sr_metrics::run(sr_metrics::SrMetric::Psnr, args),
        Command::Ssim(args) => sr_metrics::run(sr_metrics::SrMetric::Ssim, args),
        Command::Lpips(args) => lpips::run(args),
        Command::Plan(args) => checks::plan_args(args).and_then(|()| plan::plan(args)),
        Command::Results(command) => {
            checks::results_args(command).and_then(|()| plan::results(command))
        }
        Command::Study(args) => study::run(args),
        Command::Train(args) => train::run(args, cli.quiet),
        Command::TrainFamily(args) => train::family(args, cli.quiet),
        Command::FinetuneSr(args) => finetune_sr::run(args, cli.quiet),
        Command::Distill(args) => distill::run(args, cli.quiet),
        Command::Dreambooth(args) => dreambooth::run(args, cli.quiet),
        Command::TrainVae(args) => train_vae::run(args),
        Command::Degrade(args) => degrade::run(args, cli.quiet),
    }
}
