//! Stage 6: the family: every width trained with one recipe on the latent cache, with FID
//! measured during training (Fig. 3).

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use ldmscale_diffusion::SamplerId;
use ldmscale_model::UNet;
use ldmscale_model::weights::write_atomic;
use ldmscale_pipeline::SamplingSpec;
use ldmscale_train::ema::EmaConfig;
use ldmscale_train::evaluation::{BoxError, FidProbe, FidScore, TrainingEvaluator};
use ldmscale_train::optimizer::{AdamWConfig, LrSchedule};
use ldmscale_train::{ModelConfig, Objective, TrainConfig, TrainState};

use super::evaluator::Evaluator;
use super::first_stage::FirstStageModel;
use super::latents::{self, Latents};
use crate::config::StudyConfig;
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::{Fingerprint, per_width};
use crate::stage::Stage;

/// Each width's run directory is `models/w{width}`.
pub const DIR: &str = "models";
/// The file in a run directory naming the fingerprint it was trained for.
pub const FINGERPRINT_FILE: &str = "fingerprint";

/// Fig. 3's evaluation during training: DDIM steps, prompts, noise seed, and the guidance rate
/// (the sweep's rate nearest this one).
const EVAL_STEPS: u32 = 8;
const EVAL_PROMPTS: usize = 32;
const EVAL_SEED: u64 = 99;
const EVAL_CFG_TARGET: f64 = 3.0;
/// The recipe's fixed parts: gradient clipping and checkpoints per run.
const GRAD_CLIP: f64 = 1.0;
const CHECKPOINTS_PER_RUN: u64 = 4;

/// The trained widths and where their final weights are.
pub struct Family {
    /// (width, final UNet directory), in config order.
    pub models: Vec<(usize, PathBuf)>,
}

/// Trains every width (resuming interrupted runs, retraining those made for another recipe).
pub struct FamilyStage<'a> {
    /// The training data.
    pub latents: &'a Latents,
    /// FID during training.
    pub evaluator: &'a Evaluator,
    /// The decoder.
    pub first: &'a FirstStageModel,
}

/// What width `width`'s model depends on.
pub fn width_fingerprint(config: &StudyConfig, width: usize) -> Fingerprint {
    Fingerprint::of(
        "family",
        &(
            latents::fingerprint(config),
            width,
            train_config(config, width),
        ),
    )
}

/// What the family depends on.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    let widths = per_width(config, width_fingerprint);
    Fingerprint::of("family", &widths)
}

/// Width `width`'s run directory.
pub fn run_dir(out: &Path, width: usize) -> PathBuf {
    out.join(DIR).join(format!("w{width}"))
}

/// The weights a finished run leaves for sampling (the EMA's when there is one).
fn final_dir(config: &StudyConfig, run: &Path) -> PathBuf {
    run.join(if config.recipe.ema_max_decay.is_some() {
        "unet_ema"
    } else {
        "unet"
    })
}

impl Stage for FamilyStage<'_> {
    type Output = Family;
    const NAME: &'static str = "family";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<Family>, StudyError> {
        let mut models = Vec::new();
        for &w in &cx.config.widths {
            let run = run_dir(&cx.out, w);
            let done = read_fingerprint(&run) == Some(width_fingerprint(cx.config, w))
                && final_dir(cx.config, &run).join("config.json").is_file();
            if !done {
                return Ok(None);
            }
            models.push((w, final_dir(cx.config, &run)));
        }
        Ok(Some(Family { models }))
    }

    fn run(&self, cx: &StudyContext) -> Result<Family, StudyError> {
        let mut models = Vec::new();
        for (i, &w) in cx.config.widths.iter().enumerate() {
            if cx.trains_width(i) {
                models.push((w, self.train_width(cx, w)?));
            }
        }
        Ok(Family { models })
    }
}

impl FamilyStage<'_> {
    /// Trains (or resumes) one width; returns its final weights.
    fn train_width(&self, cx: &StudyContext, width: usize) -> Result<PathBuf, StudyError> {
        let run = run_dir(&cx.out, width);
        let fingerprint = width_fingerprint(cx.config, width);
        match read_fingerprint(&run) {
            Some(old) if old != fingerprint => cx.retire(&run, old.as_str())?,
            _ => {}
        }
        tracing::info!("training width {width} ({} steps)", cx.config.recipe.steps);
        let config = train_config(cx.config, width);
        let evaluator = self.training_evaluator(cx, &run);
        let mut hook = |unet: &UNet, state: &TrainState| -> Result<(), String> {
            evaluator
                .evaluate(unet, state)
                .map(drop)
                .map_err(|e| ldmscale_train::error::chain(&e))
        };
        let summary = ldmscale_train::train_with_hook(
            &config,
            &self.latents.train,
            &run,
            &cx.device,
            true,
            Some(&mut hook),
        )
        .map_err(|e| StudyError::Train { width, source: e })?;
        let path = run.join(FINGERPRINT_FILE);
        write_atomic(&path, format!("{fingerprint}\n").as_bytes())?;
        Ok(summary
            .model_dirs
            .last()
            .cloned()
            .unwrap_or_else(|| final_dir(cx.config, &run)))
    }

    /// Fig. 3: FID of a small sample set (the study's features against its held-out
    /// images), recorded in the run's `eval.jsonl`.
    fn training_evaluator(&self, cx: &StudyContext, run: &Path) -> TrainingEvaluator<'_> {
        let n = EVAL_PROMPTS.min(cx.config.sweep.samples_per_cell as usize);
        let prompts = self.latents.prompts(n, &cx.device);
        TrainingEvaluator {
            vae: &self.first.vae,
            vae_config: &self.first.config,
            latent_shape: self.latents.latent_shape,
            spec: SamplingSpec {
                sampler: SamplerId::Ddim,
                steps: EVAL_STEPS,
                cfg: eval_cfg(cx.config),
                seed: EVAL_SEED,
            },
            null: prompts.null,
            fid: Some(FidProbe {
                prompts: prompts.cond,
                score: Box::new(self.evaluator),
            }),
            grid: None,
            log: run.join("eval.jsonl"),
        }
    }
}

/// The study's FID as the training evaluator's score.
impl FidScore for Evaluator {
    fn fid(&self, images: Tensor<4>) -> Result<f64, BoxError> {
        Ok(self.fid_point(images)?)
    }
}

/// The sweep's guidance rate nearest [`EVAL_CFG_TARGET`] (1 when the sweep has none nearer).
fn eval_cfg(config: &StudyConfig) -> f64 {
    let distance = |w: f64| (w - EVAL_CFG_TARGET).abs();
    config
        .sweep
        .cfg
        .iter()
        .copied()
        .fold(1.0, |a, b| if distance(b) < distance(a) { b } else { a })
}

fn read_fingerprint(run: &Path) -> Option<Fingerprint> {
    let text = std::fs::read_to_string(run.join(FINGERPRINT_FILE)).ok()?;
    Some(Fingerprint(text.trim().to_string()))
}

/// Records that `run` holds width `width` of `config`'s family (adopting a directory made
/// before fingerprints were recorded).
pub fn adopt_run(config: &StudyConfig, out: &Path, width: usize) -> Result<(), StudyError> {
    let run = run_dir(out, width);
    if run.is_dir() && read_fingerprint(&run).is_none() {
        let fingerprint = width_fingerprint(config, width);
        write_atomic(
            &run.join(FINGERPRINT_FILE),
            format!("{fingerprint}\n").as_bytes(),
        )?;
    }
    Ok(())
}

/// One width's training run as the study configures it.
pub fn train_config(config: &StudyConfig, width: usize) -> TrainConfig {
    let recipe = &config.recipe;
    TrainConfig {
        model: model_config(config, width),
        steps: recipe.steps,
        batch_size: recipe.batch_size,
        grad_accum: 1,
        learning_rate: recipe.learning_rate,
        warmup_steps: recipe.warmup_steps,
        lr_schedule: LrSchedule::Constant,
        adamw: AdamWConfig::default(),
        grad_clip: Some(GRAD_CLIP),
        ema: recipe.ema_max_decay.map(|max_decay| EmaConfig {
            max_decay,
            ..Default::default()
        }),
        text_dropout: recipe.text_dropout,
        objective: Objective::Epsilon,
        snr_gamma: None,
        seed: 0,
        checkpoint_every: (recipe.steps / CHECKPOINTS_PER_RUN).max(1),
        keep_last: 1,
        snapshot_steps: Vec::new(),
        log_every: 10,
        eval_every: recipe.eval_every,
        devices: Vec::new(),
    }
}

/// Width `width` of the config's family.
pub fn model_config(config: &StudyConfig, width: usize) -> ModelConfig {
    ModelConfig {
        family: config.family,
        width,
        heads: config.heads,
        norm_groups: config.norm_groups,
    }
}
