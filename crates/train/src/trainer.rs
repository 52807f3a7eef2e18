//! The training loop: the paper's recipe (AdamW, constant LR after warmup, EMA, gradient
//! clipping) over any [`TrainTask`], with exact resume and training compute accounted per
//! checkpoint. [`train`] and [`train_with_hook`] run the text-to-image task.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_model::init::seeded_init;
use ldmscale_model::weights::{save_unet, write_atomic};
use ldmscale_model::{UNet, UNetConfig};
use serde_json::json;

use crate::checkpoint::{self, Saved, TrainState};
use crate::config::TrainConfig;
use crate::data::{TrainingData, order, rng_for};
use crate::error::TrainError;
use crate::optimizer::{AdamW, clip_global_norm, learning_rate};
use crate::parallel::{self, training_devices};
use crate::params::{self, Named};
use crate::sync::{DeviceThreads, GradSync};
use crate::task::TrainTask;
use crate::tasks::TextToImage;

/// Width the paper normalises costs against.
pub(crate) const REFERENCE_WIDTH: usize = 320;

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

/// Called every `eval_every` steps with the weights to evaluate (the EMA when the run keeps
/// one) on the plain side of the first training device, and the state after that step.
pub type EvalHook<'a> = &'a mut dyn FnMut(&UNet, &TrainState) -> Result<(), String>;

/// Trains (or resumes) text-to-image run `run` on `data`.
pub fn train(
    config: &TrainConfig,
    data: &dyn TrainingData,
    run: &Path,
    device: &Device,
    show_progress: bool,
) -> Result<RunSummary, TrainError> {
    train_with_hook(config, data, run, device, show_progress, None)
}

/// [`train`] with an evaluation hook. The steps run on `config.devices` when given (split
/// across them by [`DeviceThreads`]), else on `device`.
pub fn train_with_hook(
    config: &TrainConfig,
    data: &dyn TrainingData,
    run: &Path,
    device: &Device,
    show_progress: bool,
    hook: Option<EvalHook<'_>>,
) -> Result<RunSummary, TrainError> {
    config.validate()?;
    let devices = training_devices(config, device)?;
    let sync = DeviceThreads::new(&devices)?;
    let task = TextToImage::new(config, data, &devices[0].clone().inner())?;
    train_task(config, &task, &sync, run, show_progress, hook)
}

/// Trains (or resumes) run `run` of `task`, its shards placed and reduced by `sync`.
pub fn train_task<T: TrainTask>(
    config: &TrainConfig,
    task: &T,
    sync: &dyn GradSync,
    run: &Path,
    show_progress: bool,
    hook: Option<EvalHook<'_>>,
) -> Result<RunSummary, TrainError> {
    let unet_config = prepare_run_dir(config, task, run, sync.writes())?;
    let trainer = Trainer::start(config, task, sync, run, unet_config)?;
    if trainer.state.step >= config.steps {
        return Ok(RunSummary {
            state: trainer.state,
            steps_run: 0,
            seconds: 0.0,
            model_dirs: final_dirs(run, config),
        });
    }
    trainer.run(show_progress, hook)
}

/// GFLOPs of one forward of the run's UNet and of the width-320 model of the same family at
/// the same sizes (for normalised cost). `device` only hosts the (never initialised) models.
pub fn forward_gflops<T: TrainTask>(config: &TrainConfig, task: &T, device: &Device) -> (f64, f64) {
    let [h, w, l] = task.forward_size();
    let gflops = |unet_config: &UNetConfig| UNet::new(unet_config, device).cost(h, w, l).gflops();
    (
        gflops(&task.unet_config(&config.model)),
        gflops(&task.reference_unet_config(config)),
    )
}

/// Checks the config and the run directory (a resumed run must have the same config) and
/// records the config there (when this process `writes`); returns the UNet config the task
/// trains.
fn prepare_run_dir<T: TrainTask>(
    config: &TrainConfig,
    task: &T,
    run: &Path,
    writes: bool,
) -> Result<UNetConfig, TrainError> {
    config.validate()?;
    if task.examples() == 0 {
        return Err(TrainError::NoData);
    }
    std::fs::create_dir_all(run).map_err(|e| TrainError::io(run, e))?;
    check_resume(run, config)?;
    if writes {
        write_atomic(&run.join("config.toml"), config.to_toml().as_bytes())?;
    }
    let unet_config = task.unet_config(&config.model);
    unet_config
        .validate()
        .map_err(|message| TrainError::settings("model", message))?;
    Ok(unet_config)
}

/// Checks that `run` was started with the same config (only `steps` and `devices` may change).
fn check_resume(run: &Path, config: &TrainConfig) -> Result<(), TrainError> {
    let path = run.join("config.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut saved = TrainConfig::from_toml(&text, &path.display().to_string())?;
    saved.steps = config.steps;
    // Where the steps run may change between sessions (it changes rounding, not the recipe).
    saved.devices = config.devices.clone();
    if &saved != config {
        return Err(TrainError::ConfigChanged { path });
    }
    Ok(())
}

/// A run in progress: the model, the optimizer and EMA state, and the scalar state.
struct Trainer<'a, T: TrainTask> {
    config: &'a TrainConfig,
    task: &'a T,
    sync: &'a dyn GradSync,
    run: &'a Path,
    unet_config: UNetConfig,
    /// The plain side of the weights' device (batches, the EMA, the evaluated model).
    device: Device,
    model: UNet,
    adam: AdamW,
    shadow: Named,
    state: TrainState,
    forward_gflops: f64,
    normalized_cost: f64,
}

/// What a step reports besides the state.
struct StepReport {
    lr: f64,
    grad_norm: f64,
}

impl<'a, T: TrainTask> Trainer<'a, T> {
    /// A freshly initialised model, then the newest checkpoint of `run` restored over it.
    fn start(
        config: &'a TrainConfig,
        task: &'a T,
        sync: &'a dyn GradSync,
        run: &'a Path,
        unet_config: UNetConfig,
    ) -> Result<Self, TrainError> {
        let ad = sync.weights_device().clone();
        let device = ad.clone().inner();
        let model = seeded_init(&ad, config.seed, || UNet::new(&unet_config, &ad));
        let model = match task.initial_weights() {
            Some(weights) => initialised_from(model, weights, &device)?,
            None => model,
        };
        let (ours, reference) = forward_gflops(config, task, &device);
        let trainer = Self {
            config,
            task,
            sync,
            run,
            unet_config,
            device,
            model,
            adam: AdamW::new(config.adamw.clone()),
            shadow: Named::new(),
            state: TrainState {
                step: 0,
                samples: 0,
                adamw_step: 0,
                train_gflops: 0.0,
                normalized_cost_x_iterations: 0.0,
                last_loss: f64::NAN,
                data_key: task.data_key(),
            },
            forward_gflops: ours,
            normalized_cost: ours / reference,
        };
        let saved = checkpoint::read_latest(run, &trainer.state.data_key, &trainer.device)?;
        match saved {
            Some(saved) => trainer.restore(saved),
            None => {
                task.start_extra_state(None)
                    .map_err(|names| TrainError::MissingParameters {
                        path: PathBuf::from("task state"),
                        names,
                    })?;
                Ok(trainer)
            }
        }
    }

    /// Takes over a checkpoint's weights, optimizer and EMA state, and drops metric lines
    /// after it.
    fn restore(mut self, saved: Saved) -> Result<Self, TrainError> {
        let Saved {
            path,
            mut weights,
            m,
            v,
            ema,
            task,
            state,
        } = saved;
        self.task
            .start_extra_state(Some(task))
            .map_err(|names| TrainError::MissingParameters {
                path: path.clone(),
                names,
            })?;
        let mut missing = Vec::new();
        self.model = params::update(self.model, &mut |name, current| {
            weights.remove(name).unwrap_or_else(|| {
                missing.push(name.to_string());
                current
            })
        });
        if !missing.is_empty() {
            return Err(TrainError::MissingParameters {
                path,
                names: missing,
            });
        }
        (self.adam.m, self.adam.v, self.adam.step) = (m, v, state.adamw_step);
        self.shadow = ema;
        self.state = state;
        if self.sync.writes() {
            truncate_metrics(&self.run.join("metrics.jsonl"), self.state.step)?;
        }
        Ok(self)
    }

    /// Steps up to `config.steps`, logging, evaluating and checkpointing on the way, then
    /// writes the final models.
    fn run(
        mut self,
        show_progress: bool,
        mut hook: Option<EvalHook<'_>>,
    ) -> Result<RunSummary, TrainError> {
        let config = self.config;
        let start = Instant::now();
        let first = self.state.step;
        let bar = progress_bar(config, first, show_progress);
        let metrics_path = self.run.join("metrics.jsonl");
        let writes = self.sync.writes();
        let mut metrics = match writes {
            true => Some(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&metrics_path)
                    .map_err(|e| TrainError::io(&metrics_path, e))?,
            ),
            false => None,
        };
        for step in first + 1..=config.steps {
            let report;
            (self, report) = self.step(step)?;
            if let Some(metrics) = metrics.as_mut()
                && (step % config.log_every == 0 || step == config.steps)
            {
                let line = self.metrics_line(&report, start.elapsed().as_secs_f64());
                writeln!(metrics, "{line}").map_err(|e| TrainError::io(&metrics_path, e))?;
            }
            bar.set_message(format!("loss {:.4}", self.state.last_loss));
            bar.set_position(step);
            let last = step == config.steps;
            if let Some(hook) = hook.as_deref_mut()
                && writes
                && config.eval_every > 0
                && (step % config.eval_every == 0 || last)
            {
                self.evaluate(hook)?;
            }
            if writes && (step % config.checkpoint_every == 0 || last) {
                self.save_checkpoint()?;
            }
            if writes && config.snapshot_steps.contains(&step) {
                self.save_snapshot()?;
            }
        }
        bar.finish_and_clear();
        if writes {
            write_model_dirs(self.run, &self.model_dirs_content())?;
        }
        Ok(RunSummary {
            steps_run: self.state.step - first,
            state: self.state,
            seconds: start.elapsed().as_secs_f64(),
            model_dirs: final_dirs(self.run, config),
        })
    }

    /// One optimizer step: accumulated gradients, clipping, AdamW, EMA, and the state after.
    fn step(mut self, step: u64) -> Result<(Self, StepReport), TrainError> {
        let config = self.config;
        let (mut grads, loss) = self.accumulated_gradients(step)?;
        let grad_norm = clip_global_norm(&mut grads, config.grad_clip);
        let lr = learning_rate(
            config.learning_rate,
            &config.lr_schedule,
            config.warmup_steps,
            step,
            config.steps,
        );
        self.model = self.adam.step_module(self.model, grads, lr);
        let weights = params::snapshot(&self.model);
        if let Some(ema) = &config.ema {
            ema.update(&mut self.shadow, &weights, step);
        }
        self.task.after_step(&weights);
        let samples_per_step = (config.batch_size * config.grad_accum) as f64;
        let state = &mut self.state;
        state.step = step;
        state.adamw_step = self.adam.step;
        state.last_loss = loss;
        state.train_gflops += self.task.forward_passes() * self.forward_gflops * samples_per_step;
        state.normalized_cost_x_iterations = self.normalized_cost * step as f64;
        Ok((self, StepReport { lr, grad_norm }))
    }

    /// The mean loss and gradients of step `step`'s micro-batches (scaled by their count).
    fn accumulated_gradients(&mut self, step: u64) -> Result<(Named, f64), TrainError> {
        let config = self.config;
        let mut grads = Named::new();
        let mut loss_sum = 0.0;
        for micro in 0..config.grad_accum {
            let (loss, g) = self.micro_batch_gradients(step, micro as u64)?;
            if !loss.is_finite() {
                return Err(TrainError::Diverged { step, loss });
            }
            loss_sum += loss;
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
        Ok((grads, loss_sum / config.grad_accum as f64))
    }

    /// Draws micro-batch `micro` of step `step` (examples from the data order, everything else
    /// from its own generator) and computes its loss and gradients.
    fn micro_batch_gradients(&mut self, step: u64, micro: u64) -> Result<(f64, Named), TrainError> {
        let config = self.config;
        let indices = order(
            config.seed,
            self.task.examples(),
            self.state.samples,
            config.batch_size,
        );
        self.state.samples += config.batch_size as u64;
        let mut rng = rng_for(config.seed, step, micro + 1);
        let batch = self.task.draw(&indices, &mut rng, &self.device)?;
        parallel::batch_gradients(&self.model, self.sync, self.task.shard_loss(), batch)
    }

    fn metrics_line(&self, report: &StepReport, seconds: f64) -> serde_json::Value {
        let state = &self.state;
        json!({
            "step": state.step,
            "loss": state.last_loss,
            "lr": report.lr,
            "grad_norm": report.grad_norm,
            "samples": state.samples,
            "train_gflops": state.train_gflops,
            "normalized_cost_x_iterations": state.normalized_cost_x_iterations,
            "seconds": seconds,
        })
    }

    /// Runs the hook on the weights to evaluate (the EMA when kept), on the training device.
    fn evaluate(
        &self,
        hook: &mut dyn FnMut(&UNet, &TrainState) -> Result<(), String>,
    ) -> Result<(), TrainError> {
        let weights = if self.config.ema.is_some() {
            self.shadow.clone()
        } else {
            params::snapshot(&self.model)
        };
        let unet = params::unet_holding(&self.unet_config, &weights, &self.device);
        hook(&unet, &self.state).map_err(|message| TrainError::Hook {
            step: self.state.step,
            message,
        })
    }

    /// The models a checkpoint or the run's end writes: `unet/`, and `unet_ema/` with EMA.
    fn model_dirs_content(&self) -> ModelDirs<'_> {
        ModelDirs {
            config: &self.unet_config,
            weights: params::snapshot(&self.model),
            ema: self.config.ema.as_ref().map(|_| &self.shadow),
            device: &self.device,
        }
    }

    fn save_checkpoint(&self) -> Result<(), TrainError> {
        let config = self.config;
        checkpoint::commit(self.run, self.state.step, config.keep_last, |tmp| {
            let models = self.model_dirs_content();
            write_model_dirs(tmp, &models)?;
            let extra = self.task.extra_state();
            let saved = (&self.shadow, &extra);
            checkpoint::write_state(tmp, &models.weights, &self.adam, saved, &self.state)
        })?;
        Ok(())
    }

    /// The models and state at this step, kept for good in `snapshots/step-N/`.
    fn save_snapshot(&self) -> Result<(), TrainError> {
        checkpoint::commit_snapshot(self.run, self.state.step, |tmp| {
            write_model_dirs(tmp, &self.model_dirs_content())?;
            checkpoint::write_state_json(tmp, &self.state)
        })?;
        Ok(())
    }
}

/// `model` with every parameter taken from `weights` (by name); one missing is an error.
fn initialised_from(model: UNet, weights: &Named, device: &Device) -> Result<UNet, TrainError> {
    params::with_weights(model, weights, device).map_err(|names| TrainError::MissingParameters {
        path: PathBuf::from("initial weights"),
        names,
    })
}

/// The UNets saved in diffusers layout beside a checkpoint or in the run directory.
struct ModelDirs<'a> {
    config: &'a UNetConfig,
    weights: Named,
    ema: Option<&'a Named>,
    device: &'a Device,
}

fn write_model_dirs(dir: &Path, models: &ModelDirs<'_>) -> Result<(), TrainError> {
    let unet = params::unet_holding(models.config, &models.weights, models.device);
    save_unet(&dir.join("unet"), models.config, &unet)?;
    if let Some(ema) = models.ema {
        let unet = params::unet_holding(models.config, ema, models.device);
        save_unet(&dir.join("unet_ema"), models.config, &unet)?;
    }
    Ok(())
}

fn final_dirs(run: &Path, config: &TrainConfig) -> Vec<PathBuf> {
    let mut dirs = vec![run.join("unet")];
    if config.ema.is_some() {
        dirs.push(run.join("unet_ema"));
    }
    dirs
}

fn progress_bar(config: &TrainConfig, position: u64, show: bool) -> ProgressBar {
    let bar = if show {
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
    bar.set_position(position);
    bar
}

/// Drops metric lines after `step` (left by a run killed after its last checkpoint).
fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
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
    Ok(write_atomic(path, kept.as_bytes())?)
}
