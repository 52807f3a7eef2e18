//! Guided distillation, stage 2 (one round of progressive distillation): a tiny round lowers
//! the held-out loss (the student's one DDIM step against the teacher's two, in x space),
//! the student's grid is the DDIM sampler's, resume is bit-identical, and a teacher without a
//! guidance embedding or bad options are named. (The DDIM sampler's leading grid for 2N steps
//! starts above the N-step one, so N-step samples are compared with the teacher along the
//! student's own halved path, which is what the loss measures, not with its 2N-step samples.)

#[allow(dead_code)]
mod common;

use std::path::Path;

use burn::tensor::Device;
use ldmscale_model::init::seeded_init;
use ldmscale_model::weights::load_unet;
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_train::data::rng_for;
use ldmscale_train::params::update;
use ldmscale_train::tasks::{ProgressiveDistill, ProgressiveOptions};
use ldmscale_train::{
    DeviceThreads, ShardLoss, SyntheticData, TrainConfig, TrainError, TrainTask, checkpoint,
    train_task,
};

/// A w-conditioned teacher: a random UNet with a (zero-initialised) guidance embedding.
fn teacher(seed: u64) -> (UNetConfig, UNet) {
    let device = Device::flex();
    let config = common::config("steps = 1\nbatch_size = 1")
        .model
        .unet(4, 8, 16);
    let unet = seeded_init(&device, seed, || UNet::new(&config, &device));
    let guided = config.with_guidance_embedding(16).unwrap();
    (guided, unet.with_guidance_embedding(16))
}

fn options(student_steps: usize) -> ProgressiveOptions {
    ProgressiveOptions {
        student_steps,
        w_min: 1.0,
        w_max: 6.0,
    }
}

fn config(steps: u64, lr: f64) -> TrainConfig {
    common::config(&format!(
        "steps = {steps}\nbatch_size = 4\nlearning_rate = {lr}\ngrad_clip = 1.0\ncheckpoint_every = 2\nkeep_last = 2\ntext_dropout = 0.0"
    ))
}

fn task<'d>(config: &TrainConfig, data: &'d SyntheticData) -> ProgressiveDistill<'d> {
    let (c, unet) = teacher(7);
    ProgressiveDistill::new(config, data, (&c, unet), options(4), &Device::flex()).unwrap()
}

fn distill(config: &TrainConfig, data: &SyntheticData, run: &Path) -> Result<u64, TrainError> {
    let task = task(config, data);
    let sync = DeviceThreads::new(&[Device::flex()])?;
    Ok(train_task(config, &task, &sync, run, false, None)?.steps_run)
}

fn held_out_loss(student: &UNet) -> f64 {
    let cfg = config(1, 1e-3);
    let data = common::data(16);
    let task = task(&cfg, &data);
    let indices: Vec<usize> = (8..16).collect();
    let mut total = 0.0;
    for draw in 0..4 {
        let mut rng = rng_for(99, draw, 0);
        let batch = task.draw(&indices, &mut rng, &Device::flex()).unwrap();
        let loss = task.shard_loss().loss(student, batch).unwrap();
        total += loss.into_scalar::<f32>() as f64 / 4.0;
    }
    total
}

#[test]
fn a_tiny_round_lowers_the_held_out_loss() {
    let data = common::data(8);
    let run = tempfile::tempdir().unwrap();
    let mut cfg = config(80, 1e-4);
    cfg.checkpoint_every = 80;
    distill(&cfg, &data, run.path()).unwrap();
    let (_, teacher) = teacher(7);
    let (_, trained) = load_unet(&run.path().join("unet"), &Device::flex()).unwrap();
    let (before, after) = (held_out_loss(&teacher), held_out_loss(&trained));
    eprintln!("held-out progressive loss: step 0 {before:.4e}, after 80 steps {after:.4e}");
    assert!(after < 0.85 * before, "{before:.4e} -> {after:.4e}");
}

#[test]
fn the_grid_is_the_ddim_samplers() {
    let data = common::data(4);
    let task = task(&config(1, 1e-3), &data);
    assert_eq!(task.grid(), [1, 251, 501, 751]);
    let start = task.initial_weights().unwrap();
    let (_, original) = teacher(7);
    let same = update(original, &mut |name, current| {
        start.get(name).cloned().unwrap_or(current)
    });
    let (a, b) = (held_out_loss(&same), held_out_loss(&teacher(7).1));
    assert!((a - b).abs() <= 1e-5 * b, "{a} vs {b}");
}

#[test]
fn resumed_round_is_bit_identical() {
    let data = common::data(6);
    let straight = tempfile::tempdir().unwrap();
    distill(&config(5, 1e-3), &data, straight.path()).unwrap();
    let split = tempfile::tempdir().unwrap();
    distill(&config(3, 1e-3), &data, split.path()).unwrap();
    std::fs::remove_dir_all(checkpoint::step_dir(split.path(), 3)).unwrap();
    assert_eq!(distill(&config(5, 1e-3), &data, split.path()).unwrap(), 3);
    let state = |run: &Path| {
        let (_, dir) = checkpoint::list(run).pop().unwrap();
        std::fs::read(dir.join("optimizer.safetensors")).unwrap()
    };
    assert!(
        state(straight.path()) == state(split.path()),
        "optimizer.safetensors differ"
    );
}

#[test]
fn a_plain_teacher_and_bad_options_are_named() {
    let data = common::data(4);
    let device = Device::flex();
    let (c, unet) = teacher(7);
    let plain_config = common::config("steps = 1\nbatch_size = 1")
        .model
        .unet(4, 8, 16);
    let plain = seeded_init(&device, 0, || UNet::new(&plain_config, &device));
    let refused = |config: &UNetConfig, unet: UNet, options: ProgressiveOptions| {
        ProgressiveDistill::new(&config_of(), &data, (config, unet), options, &device)
            .err()
            .unwrap()
            .to_string()
    };
    let err = refused(&plain_config, plain, options(4));
    assert!(
        err.contains("time_cond_proj_dim") && err.contains("stage 1"),
        "{err}"
    );
    let err = refused(&c, unet.clone(), options(0));
    assert!(err.contains("progressive.student_steps = 0"), "{err}");
    let bad = ProgressiveOptions {
        w_min: 3.0,
        w_max: 1.0,
        ..options(4)
    };
    assert!(refused(&c, unet, bad).contains("progressive.w_max = 1"));
}

fn config_of() -> TrainConfig {
    config(1, 1e-3)
}
