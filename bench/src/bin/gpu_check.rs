//! The ldmscale half of `bench/gpu.sh`: for each width of the paper's family, on one device
//! (`cpu` or `cuda:N`), the relative L2 between one UNet forward there and on the CPU (flex),
//! the CFG sampling step (one batched `[uncond; cond]` forward plus the guidance combine) and
//! the training step exactly as `ldmscale train` runs it (forward, backward, gradients by name,
//! global-norm clipping, our AdamW). Prints one JSON object per width; `--save` writes each model
//! so the PyTorch peer (`bench/gpu_torch.py`) times the same weights.

use std::path::PathBuf;
use std::time::Instant;

// Host tensor buffers stay in the process between steps (see ldmscale-alloc).
#[global_allocator]
static GLOBAL: ldmscale_alloc::TensorAllocator = ldmscale_alloc::TensorAllocator;

use anyhow::{Result, anyhow};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clap::Parser;
use ldmscale_diffusion::objective::DiffusionObjective;
use ldmscale_diffusion::{NoiseSchedule, PredictionType, SchedulerConfig};
use ldmscale_model::init::seeded_init;
use ldmscale_model::unet::PerLevel;
use ldmscale_model::weights::save_unet;
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_train::DeviceThreads;
use ldmscale_train::optimizer::{AdamW, AdamWConfig, clip_global_norm};
use ldmscale_train::parallel;
use ldmscale_train::params;
use ldmscale_train::params::Named;
use ldmscale_train::tasks::{DenoisingLoss, TextImageBatch};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

#[derive(Parser, Debug)]
struct Args {
    /// `cpu` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Base widths of the paper's layout ([c, 2c, 4c, 4c], 8 heads).
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    widths: Vec<usize>,
    /// Batch of the training step (a CFG step runs twice this).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Latent side (the paper: 256 px images, 32 x 32 latents).
    #[arg(long, default_value_t = 32)]
    latent: usize,
    /// Text tokens and their width (CLIP: 77 x 1024).
    #[arg(long, default_value_t = 77)]
    tokens: usize,
    #[arg(long, default_value_t = 1024)]
    context_dim: usize,
    /// GroupNorm groups (32 in the paper; smaller for tiny CPU smoke runs).
    #[arg(long, default_value_t = 32)]
    norm_groups: usize,
    /// Untimed steps first (kernel compilation and autotuning happen here).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Batch of the parity forward (0: no parity check).
    #[arg(long, default_value_t = 2)]
    parity_batch: usize,
    /// Writes each model (`DIR/w{width}`, diffusers layout) for the PyTorch peer.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Also checks data parallelism at the first width: the gradients of one batch split over
    /// [device, device] and over [device, cpu] against the device alone (relative L2).
    #[arg(long)]
    dp_check: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// `model`'s weights in a fresh UNet on `device` (plain or autodiff).
fn copy_to(model: &UNet, config: &UNetConfig, device: &Device) -> UNet {
    let weights = params::snapshot(model);
    let target = device.clone().inner();
    let fresh = UNet::new(config, device);
    params::update(fresh, &mut |name, _| {
        weights[name].clone().to_device(&target)
    })
}

/// All gradients, concatenated in name order, on the host.
fn flat_grads(grads: ldmscale_train::params::Named) -> Vec<f32> {
    grads
        .into_values()
        .flat_map(|g| {
            g.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32")
        })
        .collect()
}

/// Relative L2 of the gradients of one batch split over `[device, device]` and over
/// `[device, cpu]`, each against `device` alone.
fn dp_check(
    host: &UNet,
    config: &UNetConfig,
    device: &Device,
    b: usize,
    [l, k, d]: [usize; 3],
) -> Result<[f64; 2]> {
    let ad = device.clone().autodiff();
    let model = copy_to(host, config, &ad);
    let schedule = NoiseSchedule::new(&SchedulerConfig::sd()).map_err(anyhow::Error::msg)?;
    let objective = DiffusionObjective::new(schedule, PredictionType::Epsilon, None)
        .map_err(anyhow::Error::msg)?;
    let mut rng = StdRng::seed_from_u64(7);
    let (x0, noise, ctx) = (
        normal(&mut rng, b * 4 * l * l),
        normal(&mut rng, b * 4 * l * l),
        normal(&mut rng, b * k * d),
    );
    let inner = device.clone().inner();
    let grads = |devices: &[Device]| -> Result<Vec<f32>> {
        let batch = TextImageBatch {
            x0: Tensor::from_data(TensorData::new(x0.clone(), [b, 4, l, l]), &inner),
            noise: Tensor::from_data(TensorData::new(noise.clone(), [b, 4, l, l]), &inner),
            context: Tensor::from_data(TensorData::new(ctx.clone(), [b, k, d]), &inner),
            timesteps: (0..b).map(|i| 53 * i % 1000).collect(),
        };
        let (_, g) = gradients(&model, devices, &objective, batch)?;
        Ok(flat_grads(g))
    };
    let one = grads(std::slice::from_ref(&ad))?;
    let twice = grads(&[ad.clone(), ad.clone()])?;
    let mixed = grads(&[ad.clone(), Device::flex().autodiff()])?;
    Ok([rel_l2(&twice, &one), rel_l2(&mixed, &one)])
}

fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|e| anyhow!("device sync failed: {e:?}"))
}

/// The loss and gradients of one text-to-image batch split over autodiff `devices` (the first
/// `model`'s), as a training step computes them.
fn gradients(
    model: &UNet,
    devices: &[Device],
    objective: &DiffusionObjective,
    batch: TextImageBatch,
) -> Result<(f64, Named)> {
    let sync = DeviceThreads::new(devices)?;
    let loss = DenoisingLoss::new(objective.clone());
    Ok(parallel::batch_gradients(model, &sync, &loss, batch)?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    ldmscale_util::logging::init(ldmscale_util::logging::Verbosity::Normal);
    let device = parallel::parse_device(&args.device, "--device").map_err(anyhow::Error::msg)?;
    let cpu = Device::flex();
    let (b, l, k, d) = (args.batch, args.latent, args.tokens, args.context_dim);
    for (index, &width) in args.widths.iter().enumerate() {
        let mut config = UNetConfig::paper(width);
        config.cross_attention_dim = PerLevel::All(d);
        config.norm_num_groups = args.norm_groups;
        config.sample_size = Some(l);
        config.validate().map_err(anyhow::Error::msg)?;
        let host = seeded_init(&cpu, width as u64, || UNet::new(&config, &cpu));
        if let Some(dir) = &args.save {
            save_unet(&dir.join(format!("w{width}")), &config, &host)?;
        }
        let mut rng = StdRng::seed_from_u64(width as u64);
        let plain = copy_to(&host, &config, &device);

        // Parity: the same forward on the CPU and on the device.
        let parity = if args.parity_batch > 0 {
            let n = args.parity_batch;
            let x = normal(&mut rng, n * 4 * l * l);
            let c = normal(&mut rng, n * k * d);
            let t: Vec<f32> = (0..n).map(|i| (137 * i + 11) as f32 % 1000.0).collect();
            let run = |m: &UNet, dev: &Device| -> Vec<f32> {
                m.forward(
                    Tensor::from_data(TensorData::new(x.clone(), [n, 4, l, l]), dev),
                    &t,
                    Tensor::from_data(TensorData::new(c.clone(), [n, k, d]), dev),
                )
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32")
            };
            let reference = run(&host, &cpu);
            let start = Instant::now();
            let ours = run(&plain, &device);
            let first_forward_s = start.elapsed().as_secs_f64();
            Some((rel_l2(&ours, &reference), first_forward_s))
        } else {
            None
        };

        // CFG sampling step: one forward of [uncond; cond], then u + w (c - u).
        let x2 = Tensor::<4>::from_data(
            TensorData::new(normal(&mut rng, 2 * b * 4 * l * l), [2 * b, 4, l, l]),
            &device,
        );
        let c2 = Tensor::<3>::from_data(
            TensorData::new(normal(&mut rng, 2 * b * k * d), [2 * b, k, d]),
            &device,
        );
        let t2: Vec<f32> = (0..2 * b).map(|i| (37 * i % 1000) as f32).collect();
        let mut cfg_ms = Vec::new();
        for rep in 0..args.warmup + args.reps {
            sync(&device)?;
            let start = Instant::now();
            let out = plain.forward(x2.clone(), &t2, c2.clone());
            let [u, c] = [out.clone().narrow(0, 0, b), out.narrow(0, b, b)];
            let guided = u.clone().add(c.sub(u).mul_scalar(7.5));
            let _ = guided.into_data();
            if rep >= args.warmup {
                cfg_ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        drop(plain);

        // Training step, as the trainer runs it.
        let ad = device.clone().autodiff();
        let mut model = copy_to(&host, &config, &ad);
        let schedule = NoiseSchedule::new(&SchedulerConfig::sd()).map_err(anyhow::Error::msg)?;
        let objective = DiffusionObjective::new(schedule, PredictionType::Epsilon, None)
            .map_err(anyhow::Error::msg)?;
        let mut adam = AdamW::new(AdamWConfig::default());
        let inner = device.clone().inner();
        let x0 = normal(&mut rng, b * 4 * l * l);
        let noise = normal(&mut rng, b * 4 * l * l);
        let ctx = normal(&mut rng, b * k * d);
        let (mut train_ms, mut grad_ms, mut warmup_s) = (Vec::new(), Vec::new(), 0.0);
        let mut losses = Vec::new();
        for rep in 0..args.warmup + args.reps {
            let batch = TextImageBatch {
                x0: Tensor::from_data(TensorData::new(x0.clone(), [b, 4, l, l]), &inner),
                noise: Tensor::from_data(TensorData::new(noise.clone(), [b, 4, l, l]), &inner),
                context: Tensor::from_data(TensorData::new(ctx.clone(), [b, k, d]), &inner),
                timesteps: (0..b).map(|i| 91 * i % 1000).collect(),
            };
            sync(&device)?;
            let start = Instant::now();
            let (loss, mut grads) =
                gradients(&model, std::slice::from_ref(&ad), &objective, batch)?;
            sync(&device)?;
            let grads_done = start.elapsed().as_secs_f64() * 1e3;
            clip_global_norm(&mut grads, Some(1.0));
            model = adam.step_module(model, grads, 1e-4);
            sync(&device)?;
            let total = start.elapsed().as_secs_f64() * 1e3;
            losses.push(loss);
            if rep >= args.warmup {
                train_ms.push(total);
                grad_ms.push(grads_done);
            } else {
                warmup_s += total / 1e3;
            }
        }
        if !losses.iter().all(|v| v.is_finite()) {
            return Err(anyhow!(
                "width {width}: non-finite training loss {losses:?}"
            ));
        }

        drop(model);
        let dp = if args.dp_check && index == 0 {
            Some(dp_check(&host, &config, &device, 2.max(b / 2), [l, k, d])?)
        } else {
            None
        };

        let gflops = host.cost(l, l, k).gflops();
        let cfg = median(cfg_ms);
        let train = median(train_ms);
        let grad = median(grad_ms);
        println!(
            "{}",
            serde_json::json!({
                "impl": "ldmscale",
                "device": args.device,
                "width": width,
                "params": host.num_params(),
                "batch": b,
                "latent": l,
                "tokens": k,
                "gflops_per_sample_forward": gflops,
                "parity_rel_l2": parity.map(|p| p.0),
                "first_forward_s": parity.map(|p| p.1),
                "cfg_step_ms": cfg,
                "cfg_step_tflops_per_s": gflops * (2 * b) as f64 / cfg,
                "train_step_ms": train,
                "train_fwd_bwd_ms": grad,
                "train_optimizer_ms": train - grad,
                "train_warmup_s": warmup_s,
                "train_step_tflops_per_s": 3.0 * gflops * b as f64 / train,
                "losses": losses,
                "dp_split_rel_l2": dp.map(|v| v[0]),
                "dp_with_cpu_rel_l2": dp.map(|v| v[1]),
            })
        );
    }
    Ok(())
}
