//! Guided distillation, stage 1: the step-0 student is the teacher's conditional model for
//! every guidance, a tiny distillation brings its one-evaluation output towards the teacher's
//! two-evaluation guided one on held-out examples and makes it read the guidance, resume is
//! bit-identical, and bad options name their field.

#[allow(dead_code)]
mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_model::init::seeded_init;
use ldmscale_model::weights::load_unet;
use ldmscale_model::{ExtraConditioning, UNet, UNetConfig};
use ldmscale_train::data::rng_for;
use ldmscale_train::params::unet_holding;
use ldmscale_train::tasks::lcm_distill::embeddings;
use ldmscale_train::tasks::{GuidedDistill, GuidedOptions};
use ldmscale_train::{
    DeviceThreads, ShardLoss, SyntheticData, TrainConfig, TrainError, TrainTask, TrainingData,
    checkpoint, train_task,
};

fn teacher(seed: u64) -> (UNetConfig, UNet) {
    let device = Device::flex();
    let config = common::config("steps = 1\nbatch_size = 1")
        .model
        .unet(4, 8, 16);
    let unet = seeded_init(&device, seed, || UNet::new(&config, &device));
    (config, unet)
}

fn options() -> GuidedOptions {
    GuidedOptions {
        w_min: 1.0,
        w_max: 6.0,
        embedding_dim: 16,
    }
}

fn config(steps: u64, lr: f64) -> TrainConfig {
    common::config(&format!(
        "steps = {steps}\nbatch_size = 4\nlearning_rate = {lr}\ngrad_clip = 1.0\ncheckpoint_every = 2\nkeep_last = 2\ntext_dropout = 0.0"
    ))
}

fn task<'d>(config: &TrainConfig, data: &'d SyntheticData) -> GuidedDistill<'d> {
    let (c, unet) = teacher(7);
    GuidedDistill::new(config, data, (&c, unet), options(), &Device::flex()).unwrap()
}

fn distill(config: &TrainConfig, data: &SyntheticData, run: &Path) -> Result<u64, TrainError> {
    let task = task(config, data);
    let sync = DeviceThreads::new(&[Device::flex()])?;
    Ok(train_task(config, &task, &sync, run, false, None)?.steps_run)
}

/// The student's output at LCM-form guidance `w` on fixed latents, timesteps and text.
fn student_output(student: &UNet, w: f32) -> Vec<f32> {
    let device = Device::flex();
    let z: Vec<f32> = (0..3 * 256)
        .map(|k| ((k * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let z = Tensor::from_data(TensorData::new(z, [3, 4, 8, 8]), &device);
    let (_, context) = common::data(3).batch(&[0, 1, 2], &device).unwrap();
    let extra = ExtraConditioning {
        timestep_cond: Some(embeddings(&[w; 3], 16, &device).unwrap()),
        ..ExtraConditioning::default()
    };
    let out = student.forward_with(z, &[999.0, 499.0, 19.0], context, &extra);
    out.into_data().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_step_0_student_is_the_teachers_conditional_model_for_any_guidance() {
    let data = common::data(4);
    let task = task(&config(1, 1e-3), &data);
    let student = unet_holding(
        task.student_config(),
        task.initial_weights().unwrap(),
        &Device::flex(),
    );
    let (_, teacher) = teacher(7);
    let device = Device::flex();
    let z: Vec<f32> = (0..3 * 256)
        .map(|k| ((k * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let z = Tensor::from_data(TensorData::new(z, [3, 4, 8, 8]), &device);
    let (_, context) = common::data(3).batch(&[0, 1, 2], &device).unwrap();
    let plain = teacher.forward(z, &[999.0, 499.0, 19.0], context);
    let plain = plain.into_data().try_to_vec::<f32>().unwrap();
    for w in [0.0, 3.0, 9.0] {
        let d = max_diff(&student_output(&student, w), &plain);
        assert!(d <= 1e-6, "w = {w}: {d:e}");
    }
}

/// Mean stage-1 loss of `student` on fixed draws of held-out examples (8..16).
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
fn a_tiny_distillation_lowers_the_held_out_loss_and_reads_the_guidance() {
    let data = common::data(8);
    let run = tempfile::tempdir().unwrap();
    let mut cfg = config(80, 1e-3);
    cfg.checkpoint_every = 80;
    distill(&cfg, &data, run.path()).unwrap();
    let task = task(&cfg, &data);
    let start = unet_holding(
        task.student_config(),
        task.initial_weights().unwrap(),
        &Device::flex(),
    );
    let (_, trained) = load_unet(&run.path().join("unet"), &Device::flex()).unwrap();
    let (before, after) = (held_out_loss(&start), held_out_loss(&trained));
    eprintln!("held-out guided regression loss: step 0 {before:.4e}, after 80 steps {after:.4e}");
    assert!(after < 0.85 * before, "{before:.4e} -> {after:.4e}");
    let d = max_diff(
        &student_output(&trained, 1.0),
        &student_output(&trained, 6.0),
    );
    assert!(d > 1e-3, "the trained student ignores the guidance: {d:e}");
}

#[test]
fn resumed_distillation_is_bit_identical() {
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
fn bad_options_name_the_field() {
    let data = common::data(4);
    let (c, unet) = teacher(7);
    let bad = GuidedOptions {
        w_min: 5.0,
        w_max: 1.0,
        ..options()
    };
    let err = GuidedDistill::new(&config(1, 1e-3), &data, (&c, unet), bad, &Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("guided.w_max = 1"), "{err}");
}
