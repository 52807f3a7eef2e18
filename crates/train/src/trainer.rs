//! The training loop: the paper's recipe (AdamW, constant LR after warmup, EMA, text dropout
//! for CFG) with exact resume and training compute accounted per checkpoint.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_diffusion::objective::{DiffusionObjective, drop_text, sample_timesteps};
use ldmscale_diffusion::{NoiseSchedule, PredictionType, SchedulerConfig};
use ldmscale_model::weights::{save_unet, write_atomic};
use ldmscale_model::{UNet, UNetConfig};
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

use crate::checkpoint::{self, TrainState};
use crate::config::{Objective, TrainConfig};
use crate::data::{TrainingData, order, rng_for};
use crate::optimizer::{AdamW, clip_global_norm, learning_rate};
use crate::parallel::{self, MicroBatch};
use crate::params::{self, Named};

/// Width the paper normalises costs against.
const REFERENCE_WIDTH: usize = 320;

/// What a finished (or already finished) run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// The final state.
    pub state: TrainState,
    /// Steps run by this call (0 when the run was already complete).
    pub steps_run: u64,
    /// Wall seconds of this call.
    pub seconds: f64,
    /// The final model directories (`unet/`, and `unet_ema/` with EMA).
    pub model_dirs: Vec<PathBuf>,
}

/// The UNet config a run trains.
pub fn unet_config(config: &TrainConfig, data: &dyn TrainingData) -> UNetConfig {
    let [c, h, _] = data.latent_shape();
    let [_, d] = data.context_shape();
    config.model.unet(c, h, d)
}

/// GFLOPs of one forward of the run's UNet and of the width-320 model of the same family at
/// the same sizes (for normalised cost).
pub fn forward_gflops(config: &TrainConfig, data: &dyn TrainingData) -> (f64, f64) {
    let [_, h, w] = data.latent_shape();
    let [l, _] = data.context_shape();
    let device = Device::flex();
    let ours = UNet::new(&unet_config(config, data), &device)
        .cost(h, w, l)
        .gflops();
    // The reference is the family's 320-filter member with the paper's 32 groups and 8 heads.
    let mut reference = config.clone();
    reference.model.width = REFERENCE_WIDTH;
    reference.model.norm_groups = 32;
    reference.model.heads = 8;
    let ref_unet = unet_config(&reference, data);
    let theirs = UNet::new(&ref_unet, &device).cost(h, w, l).gflops();
    (ours, theirs)
}

fn err(context: &str, e: impl std::fmt::Display) -> String {
    format!("{context}: {e}")
}

/// Checks that `run` was started with the same config (only `steps` and `devices` may change).
fn check_resume(run: &Path, config: &TrainConfig) -> Result<(), String> {
    let path = run.join("config.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut saved = TrainConfig::from_toml(&text, &path.display().to_string())?;
    saved.steps = config.steps;
    // Where the steps run may change between sessions (it changes rounding, not the recipe).
    saved.devices = config.devices.clone();
    if &saved != config {
        return Err(format!(
            "{}: the run directory was started with a different config (only `steps` and `devices` may change on resume); use a new --out directory",
            path.display()
        ));
    }
    Ok(())
}

/// Called every `eval_every` steps with the weights to evaluate (the EMA when the run keeps
/// one) on the plain device, and the state after that step.
pub type EvalHook<'a> = &'a mut dyn FnMut(&UNet, &TrainState) -> Result<(), String>;

/// Trains (or resumes) the run in directory `run`.
pub fn train(
    config: &TrainConfig,
    data: &dyn TrainingData,
    run: &Path,
    device: &Device,
    show_progress: bool,
) -> Result<RunSummary, String> {
    train_with_hook(config, data, run, device, show_progress, None)
}

/// [`train`] with an evaluation hook.
pub fn train_with_hook(
    config: &TrainConfig,
    data: &dyn TrainingData,
    run: &Path,
    device: &Device,
    show_progress: bool,
    mut hook: Option<EvalHook<'_>>,
) -> Result<RunSummary, String> {
    config.validate()?;
    if data.is_empty() {
        return Err("the training data has no examples".into());
    }
    std::fs::create_dir_all(run).map_err(|e| err(&run.display().to_string(), e))?;
    check_resume(run, config)?;
    write_atomic(&run.join("config.toml"), config.to_toml().as_bytes())
        .map_err(|e| e.to_string())?;

    let unet_config = unet_config(config, data);
    unet_config.validate()?;
    // `train.devices` (when given) is where the step runs, split across them; the first holds
    // the weights, the optimizer state and the EMA.
    let devices = if config.devices.is_empty() {
        vec![device.clone()]
    } else {
        parallel::parse_devices(&config.devices, "train.devices")?
    };
    let device = &devices[0];
    let inner = device.clone().inner();
    let ad = device.clone().autodiff();
    let replicas: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let mut model = params::seeded_init(&ad, config.seed, || UNet::new(&unet_config, &ad));
    let (fwd_gflops, ref_gflops) = forward_gflops(config, data);
    let normalized_cost = fwd_gflops / ref_gflops;
    let samples_per_step = (config.batch_size * config.grad_accum) as u64;

    let mut adam = AdamW::new(config.adamw.clone());
    let mut shadow = Named::new();
    let mut state = TrainState {
        step: 0,
        samples: 0,
        adamw_step: 0,
        train_gflops: 0.0,
        normalized_cost_x_iterations: 0.0,
        last_loss: f64::NAN,
        data_key: data.key(),
    };

    // Resume from the newest complete checkpoint.
    if let Some((_, dir)) = checkpoint::list(run).pop() {
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path)
            .map_err(|e| err(&state_path.display().to_string(), e))?;
        let saved: TrainState =
            serde_json::from_str(&text).map_err(|e| err(&state_path.display().to_string(), e))?;
        if saved.data_key != state.data_key {
            return Err(format!(
                "{}: the run was trained on {:?}, not {:?}; use a new --out directory",
                state_path.display(),
                saved.data_key,
                state.data_key
            ));
        }
        let opt_path = dir.join("optimizer.safetensors");
        let bytes =
            std::fs::read(&opt_path).map_err(|e| err(&opt_path.display().to_string(), e))?;
        let named = |p| {
            params::read_named(&bytes, p, &inner)
                .map_err(|e| err(&opt_path.display().to_string(), e))
        };
        let mut weights = named("param/")?;
        adam.m = named("m/")?;
        adam.v = named("v/")?;
        adam.step = saved.adamw_step;
        shadow = named("ema/")?;
        let mut missing = Vec::new();
        model = params::update(model, &mut |name, _| {
            let w = weights.remove(name);
            if w.is_none() {
                missing.push(name.to_string());
            }
            w
        });
        if !missing.is_empty() {
            return Err(format!(
                "{}: missing parameters {:?}",
                opt_path.display(),
                &missing[..missing.len().min(3)]
            ));
        }
        state = saved;
        truncate_metrics(&run.join("metrics.jsonl"), state.step)?;
    }

    let start = Instant::now();
    let first = state.step;
    if first >= config.steps {
        return Ok(RunSummary {
            state,
            steps_run: 0,
            seconds: 0.0,
            model_dirs: final_dirs(run, config),
        });
    }

    let prediction = match config.objective {
        Objective::Epsilon => PredictionType::Epsilon,
        Objective::VPrediction => PredictionType::VPrediction,
    };
    let schedule = NoiseSchedule::new(&SchedulerConfig::sd()).map_err(|e| e.to_string())?;
    let timesteps = schedule.len();
    let objective = DiffusionObjective::new(schedule, prediction, config.snr_gamma)
        .map_err(|e| e.to_string())?;
    let null = data.null_context(&inner);
    let [c, h, w] = data.latent_shape();

    let bar = if show_progress {
        ProgressBar::new(config.steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} width {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}",
        )
        .expect("template"),
    );
    bar.set_prefix(config.model.width.to_string());
    bar.set_position(first);
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join("metrics.jsonl"))
        .map_err(|e| err("metrics.jsonl", e))?;

    for step in first + 1..=config.steps {
        let mut grads = Named::new();
        let mut loss_sum = 0.0;
        for micro in 0..config.grad_accum {
            let idx = order(config.seed, data.len(), state.samples, config.batch_size);
            state.samples += config.batch_size as u64;
            let (x0, context) = data.batch(&idx, &inner)?;
            let mut rng = rng_for(config.seed, step, micro as u64 + 1);
            let t = sample_timesteps(&mut rng, config.batch_size, timesteps);
            let noise: Vec<f32> = (0..config.batch_size * c * h * w)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            let noise = Tensor::<4>::from_data(
                TensorData::new(noise, [config.batch_size, c, h, w]),
                &inner,
            );
            let (context, _) = drop_text(context, &null, config.text_dropout as f32, &mut rng)
                .map_err(|e| e.to_string())?;
            let batch = MicroBatch {
                x0,
                noise,
                context,
                timesteps: t,
            };
            let (value, g) = parallel::gradients(&model, &replicas, &objective, batch)?;
            if !value.is_finite() {
                return Err(format!(
                    "loss is {value} at step {step}: training diverged; the last good checkpoint is kept unchanged (try a lower learning_rate or grad_clip)"
                ));
            }
            loss_sum += value;
            let scale = 1.0 / config.grad_accum as f64;
            for (k, v) in g {
                let v = if config.grad_accum > 1 {
                    v.mul_scalar(scale)
                } else {
                    v
                };
                let next = match grads.remove(&k) {
                    Some(a) => a.add(v),
                    None => v,
                };
                grads.insert(k, next);
            }
        }
        let grad_norm = clip_global_norm(&mut grads, config.grad_clip);
        let lr = learning_rate(
            config.learning_rate,
            &config.lr_schedule,
            config.warmup_steps,
            step,
            config.steps,
        );
        adam.begin_step();
        model = params::update(model, &mut |name, p| {
            grads.remove(name).map(|g| adam.update(name, p, g, lr))
        });
        if let Some(ema) = &config.ema {
            ema.update(&mut shadow, &params::snapshot(&model), step);
        }

        state.step = step;
        state.adamw_step = adam.step;
        state.last_loss = loss_sum / config.grad_accum as f64;
        state.train_gflops += 3.0 * fwd_gflops * samples_per_step as f64;
        state.normalized_cost_x_iterations = normalized_cost * step as f64;
        if step % config.log_every == 0 || step == config.steps {
            let line = json!({
                "step": step,
                "loss": state.last_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "samples": state.samples,
                "train_gflops": state.train_gflops,
                "normalized_cost_x_iterations": state.normalized_cost_x_iterations,
                "seconds": start.elapsed().as_secs_f64(),
            });
            writeln!(metrics, "{line}").map_err(|e| err("metrics.jsonl", e))?;
        }
        bar.set_message(format!("loss {:.4}", state.last_loss));
        bar.set_position(step);

        if let Some(hook) = hook.as_mut()
            && config.eval_every > 0
            && (step % config.eval_every == 0 || step == config.steps)
        {
            let weights = if config.ema.is_some() {
                shadow.clone()
            } else {
                params::snapshot(&model)
            };
            hook(&model_from(&unet_config, &weights), &state)?;
        }
        if step % config.checkpoint_every == 0 || step == config.steps {
            save_checkpoint(run, config, &unet_config, &model, &adam, &shadow, &state)?;
        }
    }
    bar.finish_and_clear();
    let model_dirs = write_final(run, config, &unet_config, &model, &shadow)?;
    Ok(RunSummary {
        steps_run: state.step - first,
        state,
        seconds: start.elapsed().as_secs_f64(),
        model_dirs,
    })
}

fn final_dirs(run: &Path, config: &TrainConfig) -> Vec<PathBuf> {
    let mut dirs = vec![run.join("unet")];
    if config.ema.is_some() {
        dirs.push(run.join("unet_ema"));
    }
    dirs
}

/// A UNet on the plain CPU device holding `weights` (by parameter name, on any device).
fn model_from(config: &UNetConfig, weights: &Named) -> UNet {
    let cpu = Device::flex();
    // Replacing a lazy parameter initialises it first, drawing from the device generator.
    params::with_device_rng(|| {
        let model = UNet::new(config, &cpu);
        params::update(model, &mut |name, _| {
            weights.get(name).map(|w| w.clone().to_device(&cpu))
        })
    })
}

fn write_model_dirs(
    dir: &Path,
    config: &TrainConfig,
    unet_config: &UNetConfig,
    model: &UNet,
    shadow: &Named,
) -> Result<(), String> {
    let weights = params::snapshot(model);
    save_unet(
        &dir.join("unet"),
        unet_config,
        &model_from(unet_config, &weights),
    )
    .map_err(|e| e.to_string())?;
    if config.ema.is_some() {
        save_unet(
            &dir.join("unet_ema"),
            unet_config,
            &model_from(unet_config, shadow),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn save_checkpoint(
    run: &Path,
    config: &TrainConfig,
    unet_config: &UNetConfig,
    model: &UNet,
    adam: &AdamW,
    shadow: &Named,
    state: &TrainState,
) -> Result<(), String> {
    checkpoint::commit(run, state.step, config.keep_last, |tmp| {
        write_model_dirs(tmp, config, unet_config, model, shadow)?;
        let weights = params::snapshot(model);
        let bytes = params::write_named(
            &[
                ("param/", &weights),
                ("m/", &adam.m),
                ("v/", &adam.v),
                ("ema/", shadow),
            ],
            BTreeMap::from([("step".to_string(), state.step.to_string())]),
        );
        write_atomic(&tmp.join("optimizer.safetensors"), &bytes).map_err(|e| e.to_string())?;
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        write_atomic(&tmp.join("state.json"), json.as_bytes()).map_err(|e| e.to_string())
    })?;
    Ok(())
}

fn write_final(
    run: &Path,
    config: &TrainConfig,
    unet_config: &UNetConfig,
    model: &UNet,
    shadow: &Named,
) -> Result<Vec<PathBuf>, String> {
    write_model_dirs(run, config, unet_config, model, shadow)?;
    Ok(final_dirs(run, config))
}

/// Drops metric lines after `step` (left by a run killed after its last checkpoint).
fn truncate_metrics(path: &Path, step: u64) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes()).map_err(|e| e.to_string())
}
