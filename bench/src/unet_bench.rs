//! Times the UNet forward (a batched CFG sampling step) and a training step (forward, backward,
//! AdamW) on this machine, printing one JSON object. `bench/unet.sh` runs it beside the same
//! model in PyTorch/diffusers and prints the ratios.

use std::path::PathBuf;

// Tensor buffers are large and short-lived: keep them in the process (see ldmscale-alloc).
#[global_allocator]
static GLOBAL: ldmscale_alloc::TensorAllocator = ldmscale_alloc::TensorAllocator;
use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Parser;
use ldmscale_diffusion::{
    Cfg, ConditionalModel, DdimOptions, DdpmOptions, DpmSolverOptions, SamplerKind,
    SchedulerConfig, SeededNoise, sample,
};
use ldmscale_model::weights::save_unet;
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_train::optimizer::{AdamW, AdamWConfig};
use ldmscale_train::params;

#[derive(Parser, Debug)]
struct Args {
    /// Base width of the small SD-layout model ([c, 2c, 2c], attention at the top two levels).
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Batch (a CFG step runs twice this).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Latent side.
    #[arg(long, default_value_t = 32)]
    latent: usize,
    /// Text tokens and their width.
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    #[arg(long, default_value_t = 64)]
    context_dim: usize,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Writes the model (config.json + weights) here so the peer builds the same one.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Skip the training step (to profile sampling alone).
    #[arg(long)]
    skip_train: bool,
    /// Skip the sampling step (to profile training alone).
    #[arg(long)]
    skip_cfg: bool,
    /// Convolution products in bf16 with f32 sums (`ldmscale --precision bf16`).
    #[arg(long)]
    bf16: bool,
    /// The paper's family member of base width `--width` (Table 1: [c, 2c, 4c, 4c], 8 heads,
    /// 1024-wide context) instead of the small model; `--context-dim` is then 1024.
    #[arg(long)]
    paper: bool,
}

/// A "network" that returns its input: sampling through it times everything but the UNet
/// (guidance batching and combination, the sampler's update, noise).
struct Passthrough;

impl ConditionalModel for Passthrough {
    fn forward(&mut self, x: Tensor<4>, _: Tensor<1>, _: &Tensor<3>) -> Tensor<4> {
        x
    }
}

/// Milliseconds per step of a guided sampling run of `steps` steps, the UNet excluded.
fn sampler_overhead_ms(
    kind: &SamplerKind,
    steps: usize,
    x: Tensor<4>,
    ctx: Tensor<3>,
) -> Result<f64> {
    let mut sampler = kind.build(&SchedulerConfig::sd(), steps)?;
    let mut cfg = Cfg::new(Passthrough, ctx.clone(), ctx, 7.5)?;
    let mut noise = SeededNoise::new(0);
    let start = Instant::now();
    let out = sample(&mut *sampler, &mut cfg, x, &mut noise, None)?;
    let _ = out.latents.into_data();
    Ok(start.elapsed().as_secs_f64() * 1e3 / steps as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> Result<()> {
    ldmscale_util::logging::init(ldmscale_util::logging::Verbosity::Normal);
    // As `ldmscale` runs: on a worker of the kernels' pool (see `run_on_pool`).
    ldmscale_kernels::run_on_pool(run)
}

fn run() -> Result<()> {
    let args = Args::parse();
    ldmscale_kernels::bf16::set_products_in_bf16(args.bf16);
    let (config, context_dim) = match args.paper {
        true => (UNetConfig::paper(args.width), 1024),
        false => (
            UNetConfig::small(args.width, args.context_dim, 8.min(args.width / 8).max(1)),
            args.context_dim,
        ),
    };
    let device = Device::flex();
    let model = UNet::new(&config, &device);
    if let Some(dir) = &args.save {
        save_unet(dir, &config, &model)?;
    }
    let (b, l) = (args.batch, args.latent);
    let cost = model.cost(l, l, args.tokens);

    // Sampling step: CFG doubles the batch in one call.
    let x = Tensor::<4>::random([2 * b, 4, l, l], Distribution::Normal(0.0, 1.0), &device);
    let ctx = Tensor::<3>::random(
        [2 * b, args.tokens, context_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let t: Vec<f32> = (0..2 * b).map(|i| (37 * i % 1000) as f32).collect();
    let mut forward = Vec::new();
    for rep in 0..=args.reps {
        if args.skip_cfg {
            forward.push(f64::NAN);
            break;
        }
        let start = Instant::now();
        let out = model.forward(x.clone(), &t, ctx.clone());
        let _ = out.into_data();
        if rep > 0 {
            forward.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }

    // Sampler overhead per step, beside the UNet's CFG step.
    let mut overhead = serde_json::Map::new();
    if !args.skip_cfg {
        let x = x.clone().narrow(0, 0, b);
        let ctx = ctx.clone().narrow(0, 0, b);
        for (name, kind) in [
            ("ddim", SamplerKind::Ddim(DdimOptions::default())),
            ("ddpm", SamplerKind::Ddpm(DdpmOptions::default())),
            (
                "dpmpp_2m",
                SamplerKind::DpmSolver(DpmSolverOptions::dpm_pp_2m()),
            ),
        ] {
            let ms = sampler_overhead_ms(&kind, 20, x.clone(), ctx.clone())?;
            overhead.insert(name.into(), ms.into());
        }
    }

    let train_ms = match args.skip_train {
        true => f64::NAN,
        false => train_step_ms(&config, context_dim, &args)?,
    };
    let forward_ms = median(forward);
    let gflop_fwd = cost.gflops() * (2 * b) as f64;
    // Backward is about twice the forward's multiply-adds.
    let gflop_train = cost.gflops() * b as f64 * 3.0;
    println!(
        "{}",
        serde_json::json!({
            "backend": "burn-flex",
            "precision": if args.bf16 { "bf16" } else { "f32" },
            "family": if args.paper { "paper" } else { "small" },
            "width": args.width,
            "params": model.num_params(),
            "batch": b,
            "latent": l,
            "gflops_per_sample_forward": cost.gflops(),
            "cfg_step_ms": forward_ms,
            "cfg_step_gflops_per_s": gflop_fwd / (forward_ms / 1e3),
            "train_step_ms": train_ms,
            "train_step_gflops_per_s": gflop_train / (train_ms / 1e3),
            "sampler_overhead_ms_per_step": overhead,
        })
    );
    Ok(())
}

/// The median time of `--reps` training steps (forward, backward, AdamW) after one warm-up,
/// on a model of its own on the autodiff device (built only when timed: the paper's widths
/// hold gigabytes of parameters).
fn train_step_ms(config: &UNetConfig, context_dim: usize, args: &Args) -> Result<f64> {
    let (b, l) = (args.batch, args.latent);
    let device = Device::flex();
    let ad = device.autodiff();
    let mut train_model = UNet::new(config, &ad);
    // The trainer's own optimizer (ldmscale-train), as `ldmscale train` runs it.
    let mut adam = AdamW::new(AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    });
    let x = Tensor::<4>::random([b, 4, l, l], Distribution::Normal(0.0, 1.0), &ad);
    let noise = Tensor::<4>::random([b, 4, l, l], Distribution::Normal(0.0, 1.0), &ad);
    let ctx = Tensor::<3>::random(
        [b, args.tokens, context_dim],
        Distribution::Normal(0.0, 1.0),
        &ad,
    );
    let t: Vec<f32> = (0..b).map(|i| (91 * i % 1000) as f32).collect();
    let mut train = Vec::new();
    for rep in 0..=args.reps {
        let start = Instant::now();
        let pred = train_model.forward(x.clone(), &t, ctx.clone());
        let loss = (pred - noise.clone()).powi_scalar(2).mean();
        let grads = params::named_gradients(
            &train_model,
            GradientsParams::from_grads(loss.backward(), &train_model),
        );
        train_model = adam.step_module(train_model, grads, 1e-4);
        if rep > 0 {
            train.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }

    Ok(median(train))
}
