//! LCM distillation: the step-0 student is the teacher whatever the guidance, the guidance
//! embedding is trained and read, a tiny distillation makes the student more consistent
//! along the guided teacher's ODE on held-out examples, resume is bit-identical (the EMA
//! target included), and bad inputs name their field.

#[allow(dead_code)]
mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::{
    Cfg, NoNoise, NoiseSource, SamplerId, SchedulerConfig, SeededNoise, sample,
};
use ldmscale_model::init::seeded_init;
use ldmscale_model::unet::config::{DOWN_PLAIN, UP_PLAIN};
use ldmscale_model::weights::load_unet;
use ldmscale_model::{ExtraConditioning, UNet, UNetConfig};
use ldmscale_pipeline::{LcmDenoiser, UNetDenoiser};
use ldmscale_train::data::rng_for;
use ldmscale_train::params::{snapshot, unet_holding};
use ldmscale_train::tasks::lcm_distill::embeddings;
use ldmscale_train::tasks::{ConsistencyLoss, LcmOptions};
use ldmscale_train::{
    DeviceThreads, LcmDistill, ShardLoss, SyntheticData, TrainConfig, TrainError, TrainTask,
    TrainingData, checkpoint, train_task,
};

/// The tiny family member the common config trains, as a (random) text-to-image teacher.
fn teacher(seed: u64) -> (UNetConfig, UNet) {
    teacher_with_context(seed, 16)
}

fn teacher_with_context(seed: u64, context: usize) -> (UNetConfig, UNet) {
    let device = Device::flex();
    let config = common::config("steps = 1\nbatch_size = 1")
        .model
        .unet(4, 8, context);
    let unet = seeded_init(&device, seed, || UNet::new(&config, &device));
    (config, unet)
}

fn options() -> LcmOptions {
    LcmOptions {
        embedding_dim: 16,
        ..LcmOptions::default()
    }
}

fn config(steps: u64, lr: f64) -> TrainConfig {
    common::config(&format!(
        "steps = {steps}\nbatch_size = 4\nlearning_rate = {lr}\ngrad_clip = 1.0\ncheckpoint_every = 2\nkeep_last = 2\ntext_dropout = 0.0"
    ))
}

fn task<'d>(config: &TrainConfig, data: &'d SyntheticData) -> LcmDistill<'d> {
    task_of(config, data, 7).unwrap()
}

fn task_of<'d>(
    config: &TrainConfig,
    data: &'d SyntheticData,
    teacher_seed: u64,
) -> Result<LcmDistill<'d>, TrainError> {
    let (c, unet) = teacher(teacher_seed);
    LcmDistill::new(config, data, (&c, unet), options(), &Device::flex())
}

fn distill(config: &TrainConfig, data: &SyntheticData, run: &Path) -> Result<u64, TrainError> {
    let task = task(config, data);
    let sync = DeviceThreads::new(&[Device::flex()])?;
    Ok(train_task(config, &task, &sync, run, false, None)?.steps_run)
}

/// Fixed inputs: latents `[3, 4, 8, 8]`, timesteps, text states of three classes.
fn inputs() -> (Tensor<4>, Vec<f32>, Tensor<3>) {
    let device = Device::flex();
    let z: Vec<f32> = (0..3 * 256)
        .map(|k| ((k * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let z = Tensor::from_data(TensorData::new(z, [3, 4, 8, 8]), &device);
    let (_, context) = common::data(3).batch(&[0, 1, 2], &device).unwrap();
    (z, vec![999.0, 499.0, 19.0], context)
}

/// The student's output at guidance `w` (LCM form) for every row of [`inputs`].
fn student_output(student: &UNet, w: f32) -> Vec<f32> {
    let (z, t, context) = inputs();
    let guidance = embeddings(&[w; 3], 16, &Device::flex()).unwrap();
    let extra = ExtraConditioning {
        timestep_cond: Some(guidance),
        ..ExtraConditioning::default()
    };
    values(student.forward_with(z, &t, context, &extra))
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_step_0_student_is_the_teacher_for_any_guidance() {
    let data = common::data(8);
    let cfg = config(1, 1e-3);
    let task = task(&cfg, &data);
    assert_eq!(task.student_config().time_cond_proj_dim, Some(16));
    let student = unet_holding(
        task.student_config(),
        task.initial_weights().unwrap(),
        &Device::flex(),
    );
    assert_eq!(student.time_cond_proj_dim(), Some(16));
    let (_, teacher) = teacher(7);
    let (z, t, context) = inputs();
    let expected = values(teacher.forward(z, &t, context));
    let unguided = student_output(&student, 0.0);
    let diff = max_diff(&unguided, &expected);
    eprintln!("step-0 student vs teacher: max diff {diff:e}");
    assert!(diff <= 1e-6, "the step-0 student differs by {diff}");
    // The zero projection makes every guidance give the same bits.
    for w in [1.0, 4.5, 7.0, 15.0, 100.0] {
        assert!(student_output(&student, w) == unguided, "w = {w}");
    }
}

#[test]
fn the_guidance_embedding_is_trained_and_changes_the_output() {
    let data = common::data(8);
    let run = tempfile::tempdir().unwrap();
    let cfg = config(6, 1e-3);
    distill(&cfg, &data, run.path()).unwrap();
    let (student_config, student) = load_unet(&run.path().join("unet"), &Device::flex()).unwrap();
    assert_eq!(student_config.time_cond_proj_dim, Some(16));
    let proj = snapshot(&student)["time_embedding.cond_proj.weight"]
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let moved = proj.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(moved > 1e-4, "cond_proj never trained: max |w| {moved}");
    let (low, high) = (
        student_output(&student, 5.0),
        student_output(&student, 15.0),
    );
    let scale = low.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_diff(&low, &high);
    eprintln!("student output w=5 vs w=15: max diff {diff:.3e} (max |out| {scale:.3})");
    assert!(
        diff > 1e-3 * scale,
        "the guidance does not reach the output: {diff}"
    );
}

/// Mean consistency loss of `student` against itself on fixed draws of held-out examples
/// (8..16; training sees 0..8): how far its outputs at `(z_t, t)` and at the guided
/// teacher's DDIM step `(z_s, s)` disagree.
fn held_out_loss(student: &UNet) -> f64 {
    let cfg = config(1, 1e-3);
    let data = common::data(16);
    let task = task(&cfg, &data);
    let indices: Vec<usize> = (8..16).collect();
    let mut total = 0.0;
    for draw in 0..4 {
        let mut rng = rng_for(99, draw, 0);
        let batch = task
            .draw_against(student, &indices, &mut rng, &Device::flex())
            .unwrap();
        let loss = task.shard_loss().loss(student, batch).unwrap();
        total += loss.into_scalar::<f32>() as f64 / 4.0;
    }
    total
}

/// Mean squared distance between `student`'s 4-step LCM samples at CFG scale 8 (w = 7) and
/// the guided teacher's 50-step DDIM samples from the same initial noise, on held-out text
/// states: the gap distillation closes.
fn four_step_gap(student: &UNet) -> f64 {
    let device = Device::flex();
    let data = common::data(16);
    let indices: Vec<usize> = (8..16).collect();
    let (_, context) = data.batch(&indices, &device).unwrap();
    let null = data.null_context(&device);
    let (_, teacher) = teacher(7);
    let init = SeededNoise::new(3).noise([8, 4, 8, 8], &device).unwrap();
    let schedule = SchedulerConfig::sd();
    let mut guided = Cfg::new(UNetDenoiser(&teacher), context.clone(), null, 8.0).unwrap();
    let mut ddim = SamplerId::Ddim.kind().build(&schedule, 50).unwrap();
    let reference = sample(ddim.as_mut(), &mut guided, init.clone(), &mut NoNoise, None).unwrap();
    let mut lcm = LcmDenoiser::new(student, context, 8.0).unwrap();
    let mut sampler = SamplerId::Lcm.kind().build(&schedule, 4).unwrap();
    let mut noise = SeededNoise::new(5);
    let ours = sample(sampler.as_mut(), &mut lcm, init, &mut noise, None).unwrap();
    let gap = (ours.latents - reference.latents).powi_scalar(2).mean();
    gap.into_scalar::<f32>() as f64
}

#[test]
fn a_tiny_distillation_lowers_the_consistency_loss_and_the_4_step_gap() {
    let data = common::data(8);
    let run = tempfile::tempdir().unwrap();
    let mut cfg = config(120, 1e-3);
    cfg.checkpoint_every = 120;
    distill(&cfg, &data, run.path()).unwrap();
    let task = task(&cfg, &data);
    let start = unet_holding(
        task.student_config(),
        task.initial_weights().unwrap(),
        &Device::flex(),
    );
    let (_, trained) = load_unet(&run.path().join("unet"), &Device::flex()).unwrap();
    let (before, after) = (held_out_loss(&start), held_out_loss(&trained));
    eprintln!("held-out consistency loss: step 0 {before:.4e}, after 120 steps {after:.4e}");
    assert!(after < 0.75 * before, "{before:.4e} -> {after:.4e}");
    let (before, after) = (four_step_gap(&start), four_step_gap(&trained));
    eprintln!("4-step LCM vs guided DDIM-50, mean sq: step 0 {before:.4e}, after {after:.4e}");
    assert!(after < 0.9 * before, "{before:.4e} -> {after:.4e}");
}

#[test]
fn resumed_distillation_is_bit_identical_with_its_target() {
    let data = common::data(6);
    let straight = tempfile::tempdir().unwrap();
    distill(&config(5, 1e-3), &data, straight.path()).unwrap();
    let split = tempfile::tempdir().unwrap();
    distill(&config(3, 1e-3), &data, split.path()).unwrap();
    // Killed after its step-2 checkpoint: drop the later one.
    std::fs::remove_dir_all(checkpoint::step_dir(split.path(), 3)).unwrap();
    assert_eq!(distill(&config(5, 1e-3), &data, split.path()).unwrap(), 3);
    let state = |run: &Path| {
        let (_, dir) = checkpoint::list(run).pop().unwrap();
        std::fs::read(dir.join("optimizer.safetensors")).unwrap()
    };
    let (a, b) = (state(straight.path()), state(split.path()));
    assert!(a == b, "optimizer.safetensors differ");
    // The EMA target is saved beside the weights, one tensor per parameter.
    let tensors = safetensors::SafeTensors::deserialize(&a).unwrap();
    let count = |prefix: &str| {
        tensors
            .names()
            .iter()
            .filter(|n| n.starts_with(prefix))
            .count()
    };
    assert!(count("task/") > 0 && count("task/") == count("param/"));
    let (_, dir) = checkpoint::list(split.path()).pop().unwrap();
    let json = std::fs::read_to_string(dir.join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(state["train_gflops"].as_f64().unwrap() > 0.0);
}

#[test]
fn another_teacher_is_refused_on_resume() {
    let data = common::data(6);
    let run = tempfile::tempdir().unwrap();
    distill(&config(2, 1e-3), &data, run.path()).unwrap();
    let cfg = config(4, 1e-3);
    let task = task_of(&cfg, &data, 8).unwrap();
    let sync = DeviceThreads::new(&[Device::flex()]).unwrap();
    let err = train_task(&cfg, &task, &sync, run.path(), false, None).unwrap_err();
    assert!(matches!(err, TrainError::DataChanged { .. }), "{err:?}");
}

fn refused(options: LcmOptions, teacher: (&UNetConfig, UNet)) -> String {
    let data = common::data(4);
    LcmDistill::new(&config(2, 1e-3), &data, teacher, options, &Device::flex())
        .err()
        .expect("refused")
        .to_string()
}

#[test]
fn bad_inputs_name_the_field() {
    let swapped = LcmOptions {
        w_min: 15.0,
        w_max: 5.0,
        ..options()
    };
    let (c, unet) = teacher(7);
    let err = refused(swapped, (&c, unet));
    assert!(err.starts_with("lcm.w_max = 5: "), "{err}");
    assert!(err.contains("lcm.w_min = 15"), "{err}");
    let flat_huber = LcmOptions {
        loss: ConsistencyLoss::Huber,
        huber_c: 0.0,
        ..options()
    };
    let (c, unet) = teacher(7);
    let err = refused(flat_huber, (&c, unet));
    assert!(err.starts_with("lcm.huber_c = 0"), "{err}");
    // A teacher trained on another text encoder's states.
    let (c, unet) = teacher_with_context(7, 8);
    let err = refused(options(), (&c, unet));
    assert!(err.contains("cross_attention_dim: 8"), "{err}");
    // A teacher without any text context.
    let (mut c, _) = teacher(7);
    c.down_block_types = vec![DOWN_PLAIN.to_string(); c.down_block_types.len()];
    c.up_block_types = vec![UP_PLAIN.to_string(); c.up_block_types.len()];
    c.mid_block_type = None;
    let unet = seeded_init(&Device::flex(), 0, || UNet::new(&c, &Device::flex()));
    let err = refused(options(), (&c, unet));
    assert!(err.contains("no cross-attention block"), "{err}");
    // An LCM student as the teacher.
    let (c, unet) = teacher(7);
    let student_config = c.with_guidance_embedding(16).unwrap();
    let err = refused(
        options(),
        (&student_config, unet.with_guidance_embedding(16)),
    );
    assert!(err.contains("time_cond_proj_dim: 16"), "{err}");
    // The run's width label must be the teacher's.
    let mut cfg = config(2, 1e-3);
    cfg.model.width = 16;
    let data = common::data(4);
    let err = task_of(&cfg, &data, 7).err().unwrap().to_string();
    assert!(err.starts_with("model.width = 16"), "{err}");
}

#[test]
fn the_options_read_from_toml() {
    let options: LcmOptions =
        toml::from_str("w_min = 2.0\nw_max = 8.0\nloss = \"huber\"\nhuber_c = 0.01").unwrap();
    assert_eq!(options.loss, ConsistencyLoss::Huber);
    assert_eq!(
        (options.w_min, options.w_max, options.huber_c),
        (2.0, 8.0, 0.01)
    );
    assert_eq!(options.ema_decay, 0.95);
    let err = toml::from_str::<LcmOptions>("w_mn = 2.0").unwrap_err();
    assert!(err.to_string().contains("w_mn"), "{err}");
}
