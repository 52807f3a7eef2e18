//! CoDi-style distillation: the step-0 student is the teacher, a tiny distillation lowers the
//! held-out guided consistency loss, the student samples in 4 guided steps at 2 evaluations
//! each, resume is bit-identical (the EMA target included), and bad inputs name their field.

#[allow(dead_code)]
mod common;

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::{Cfg, CodiSampler, LcmOptions, NoNoise, SchedulerConfig, sample};
use ldmscale_model::init::seeded_init;
use ldmscale_model::unet::config::{DOWN_PLAIN, UP_PLAIN};
use ldmscale_model::weights::load_unet;
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_pipeline::UNetDenoiser;
use ldmscale_train::data::rng_for;
use ldmscale_train::params::unet_holding;
use ldmscale_train::tasks::codi_distill::EVALUATIONS_PER_STEP;
use ldmscale_train::tasks::{CodiOptions, CodiStudent};
use ldmscale_train::{
    CodiDistill, DeviceThreads, ShardLoss, SyntheticData, TrainConfig, TrainError, TrainTask,
    TrainingData, checkpoint, train_task,
};

/// The tiny family member the common config trains, as a (random) text-to-image teacher.
fn teacher(seed: u64) -> (UNetConfig, UNet) {
    let device = Device::flex();
    let config = common::config("steps = 1\nbatch_size = 1")
        .model
        .unet(4, 8, 16);
    let unet = seeded_init(&device, seed, || UNet::new(&config, &device));
    (config, unet)
}

fn config(steps: u64, lr: f64) -> TrainConfig {
    common::config(&format!(
        "steps = {steps}\nbatch_size = 4\nlearning_rate = {lr}\ngrad_clip = 1.0\ncheckpoint_every = 2\nkeep_last = 2\ntext_dropout = 0.0"
    ))
}

fn task_of<'d>(
    config: &TrainConfig,
    data: &'d SyntheticData,
    teacher_seed: u64,
) -> Result<CodiDistill<'d>, TrainError> {
    let (c, unet) = teacher(teacher_seed);
    let options = CodiOptions::default();
    CodiDistill::new(config, data, (&c, unet), options, &Device::flex())
}

fn distill(config: &TrainConfig, data: &SyntheticData, run: &Path) -> Result<u64, TrainError> {
    let task = task_of(config, data, 7)?;
    let sync = DeviceThreads::new(&[Device::flex()])?;
    Ok(train_task(config, &task, &sync, run, false, None)?.steps_run)
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn the_step_0_student_is_the_teacher() {
    let data = common::data(8);
    let task = task_of(&config(1, 1e-3), &data, 7).unwrap();
    let (teacher_config, teacher) = teacher(7);
    assert_eq!(task.student_config(), &teacher_config);
    assert_eq!(task.forward_passes(), 9.0);
    let student = unet_holding(
        task.student_config(),
        task.initial_weights().unwrap(),
        &Device::flex(),
    );
    let device = Device::flex();
    let z: Vec<f32> = (0..3 * 256)
        .map(|k| (k * 37 % 101) as f32 / 50.0 - 1.0)
        .collect();
    let z = Tensor::from_data(TensorData::new(z, [3, 4, 8, 8]), &device);
    let (_, context) = data.batch(&[0, 1, 2], &device).unwrap();
    let t = [999.0, 499.0, 19.0];
    let expected = values(teacher.forward(z.clone(), &t, context.clone()));
    let got = values(student.forward(z, &t, context));
    let diff = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // The same weights in a freshly built UNet: equal up to f32 summation order.
    eprintln!("step-0 student vs teacher: max diff {diff:e}");
    assert!(diff <= 1e-6, "the step-0 student differs by {diff}");
}

/// Mean guided consistency loss of `student` against the fixed model `target` on fixed draws
/// of held-out examples (8..16; training sees 0..8).
fn held_out_loss(student: &UNet, target: &UNet) -> f64 {
    let cfg = config(1, 1e-3);
    let data = common::data(16);
    let task = task_of(&cfg, &data, 7).unwrap();
    let indices: Vec<usize> = (8..16).collect();
    let mut total = 0.0;
    for draw in 0..4 {
        let mut rng = rng_for(99, draw, 0);
        let batch = task
            .draw_against(target, &indices, &mut rng, &Device::flex())
            .unwrap();
        let loss = task.shard_loss().loss(student, batch).unwrap();
        total += loss.into_scalar::<f32>() as f64 / 4.0;
    }
    total
}

#[test]
fn a_tiny_distillation_lowers_the_held_out_consistency_loss() {
    let data = common::data(8);
    let run = tempfile::tempdir().unwrap();
    // Guidance up to 11 amplifies every weight change in the guided output: at 1e-3 (LCM's
    // test rate) the loss rises 5x within 30 steps, at 3e-5 it falls.
    let mut cfg = config(120, 3e-5);
    cfg.checkpoint_every = 120;
    distill(&cfg, &data, run.path()).unwrap();
    let task = task_of(&cfg, &data, 7).unwrap();
    let start = unet_holding(
        task.student_config(),
        task.initial_weights().unwrap(),
        &Device::flex(),
    );
    let (_, trained) = load_unet(&run.path().join("unet"), &Device::flex()).unwrap();
    // With decay 0.999 the EMA target stays near the step-0 student over 120 steps: measure
    // both against that fixed target, what the run minimises.
    let before = held_out_loss(&start, &start);
    let after = held_out_loss(&trained, &start);
    eprintln!("held-out guided consistency loss: step 0 {before:.4e}, after 120 steps {after:.4e}");
    assert!(after < 0.75 * before, "{before:.4e} -> {after:.4e}");
}

#[test]
fn the_student_samples_in_4_guided_steps_at_2_evaluations_each() {
    let data = common::data(4);
    let device = Device::flex();
    let (_, student) = teacher(7);
    let (_, context) = data.batch(&[0, 1], &device).unwrap();
    let null = data.null_context(&device).expand([2, 3, 16]);
    let mut guided = Cfg::new(UNetDenoiser(&student), context, null, 6.0).unwrap();
    let schedule = SchedulerConfig::sd();
    let mut sampler = CodiSampler::new(&schedule, LcmOptions::default(), 4).unwrap();
    let init = Tensor::<4>::ones([2, 4, 8, 8], &device);
    let run = |sampler: &mut CodiSampler, guided: &mut Cfg<_>| {
        sample(sampler, guided, init.clone(), &mut NoNoise, None).unwrap()
    };
    let (a, b) = (
        run(&mut sampler, &mut guided),
        run(&mut sampler, &mut guided),
    );
    assert_eq!(a.steps, 4);
    assert_eq!(a.evaluations, 4 * EVALUATIONS_PER_STEP);
    assert!(values(a.latents) == values(b.latents), "not deterministic");
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
    let tensors = safetensors::SafeTensors::deserialize(&a).unwrap();
    let count = |prefix: &str| {
        let names = tensors.names();
        names.iter().filter(|n| n.starts_with(prefix)).count()
    };
    assert!(count("task/") > 0 && count("task/") == count("param/"));
    // The EMA target moved off the teacher (decay 0.999 still moves it).
    let target = tensors.tensor("task/conv_in.weight").unwrap();
    let teacher = tensors.tensor("param/conv_in.weight").unwrap();
    assert!(target.data() != teacher.data());
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

fn refused(options: CodiOptions, teacher: (&UNetConfig, UNet)) -> String {
    let data = common::data(4);
    CodiDistill::new(&config(2, 1e-3), &data, teacher, options, &Device::flex())
        .err()
        .expect("refused")
        .to_string()
}

#[test]
fn bad_inputs_name_the_field() {
    for (options, start) in [
        ((11.0, 1.0, 50), "codi.w_max = 1: "),
        ((-1.0, 11.0, 50), "codi.w_min = -1: "),
        ((1.0, f64::NAN, 50), "codi.w_max = NaN: "),
        ((1.0, 11.0, 7), "codi.ddim_steps = 7: "),
    ] {
        let (w_min, w_max, ddim_steps) = options;
        let options = CodiOptions {
            w_min,
            w_max,
            ddim_steps,
            ..CodiOptions::default()
        };
        let (c, unet) = teacher(7);
        let err = refused(options, (&c, unet));
        assert!(err.starts_with(start), "{err}");
    }
    // A teacher without any text context.
    let (mut c, _) = teacher(7);
    c.down_block_types = vec![DOWN_PLAIN.to_string(); c.down_block_types.len()];
    c.up_block_types = vec![UP_PLAIN.to_string(); c.up_block_types.len()];
    c.mid_block_type = None;
    let unet = seeded_init(&Device::flex(), 0, || UNet::new(&c, &Device::flex()));
    let err = refused(CodiOptions::default(), (&c, unet));
    assert!(err.contains("no cross-attention block"), "{err}");
    // An LCM student as the teacher.
    let (c, unet) = teacher(7);
    let lcm = c.with_guidance_embedding(16).unwrap();
    let err = refused(
        CodiOptions::default(),
        (&lcm, unet.with_guidance_embedding(16)),
    );
    assert!(err.contains("time_cond_proj_dim: 16"), "{err}");
}

#[test]
fn the_options_read_from_toml() {
    let options: CodiOptions = toml::from_str("w_max = 8.0\nema_decay = 0.99").unwrap();
    assert_eq!((options.w_min, options.w_max), (1.0, 8.0));
    assert_eq!((options.ema_decay, options.ddim_steps), (0.99, 50));
    assert_eq!(CodiOptions::default().ema_decay, 0.999);
    let err = toml::from_str::<CodiOptions>("w_mn = 2.0").unwrap_err();
    assert!(err.to_string().contains("w_mn"), "{err}");
}

// The adapter student: a ControlNet-style encoder copy on the frozen teacher.

fn adapter_task<'d>(config: &TrainConfig, data: &'d SyntheticData) -> CodiDistill<'d> {
    let (c, unet) = teacher(7);
    let recipe = (CodiOptions::default(), CodiStudent::Adapter);
    CodiDistill::with_student(config, data, (&c, unet), recipe, &Device::flex()).unwrap()
}

fn distill_adapter(config: &TrainConfig, data: &SyntheticData, run: &Path) -> u64 {
    let task = adapter_task(config, data);
    let sync = DeviceThreads::new(&[Device::flex()]).unwrap();
    train_task(config, &task, &sync, run, false, None)
        .unwrap()
        .steps_run
}

/// Fixed latents, timesteps and text of examples 0..3.
fn probe(data: &SyntheticData) -> (Tensor<4>, [f32; 3], Tensor<3>) {
    let device = Device::flex();
    let z: Vec<f32> = (0..3 * 256)
        .map(|k| (k * 37 % 101) as f32 / 50.0 - 1.0)
        .collect();
    let z = Tensor::from_data(TensorData::new(z, [3, 4, 8, 8]), &device);
    let (_, context) = data.batch(&[0, 1, 2], &device).unwrap();
    (z, [999.0, 499.0, 19.0], context)
}

#[test]
fn the_step_0_adapter_student_is_exactly_the_teacher() {
    let data = common::data(8);
    let task = adapter_task(&config(1, 1e-3), &data);
    let (teacher_config, teacher) = teacher(7);
    assert!(task.student_config().encoder_adapter);
    assert_eq!(task.student(), CodiStudent::Adapter);
    // 8 student passes with the adapter, the teacher's forward at its own (smaller) cost.
    assert!(task.forward_passes() > 8.0 && task.forward_passes() < 9.0);
    let student = unet_holding(
        task.student_config(),
        task.initial_weights().unwrap(),
        &Device::flex(),
    );
    assert!(student.num_params() > UNet::new(&teacher_config, &Device::flex()).num_params());
    let (z, t, context) = probe(&data);
    let expected = values(teacher.forward(z.clone(), &t, context.clone()));
    let got = values(student.forward(z, &t, context));
    let diff = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    // Rebuilt from its weights by name: equal up to f32 summation order (the model crate's
    // test holds the adapter student itself to the teacher bit for bit).
    assert!(diff <= 1e-6, "the step-0 adapter student differs by {diff}");
}

#[test]
fn a_tiny_adapter_distillation_lowers_the_loss_and_keeps_the_unet_frozen() {
    let data = common::data(8);
    let run = tempfile::tempdir().unwrap();
    // Only the zero-initialised fusion convolutions reach the output at first: a larger rate
    // than the whole UNet's (3e-5 lowers the loss 6.24e-2 -> 5.92e-2, 5e-4 to 4.24e-2, 1e-3
    // diverges).
    let mut cfg = config(120, 5e-4);
    cfg.checkpoint_every = 120;
    distill_adapter(&cfg, &data, run.path());
    let task = adapter_task(&cfg, &data);
    let start = unet_holding(
        task.student_config(),
        task.initial_weights().unwrap(),
        &Device::flex(),
    );
    let (trained_config, trained) = load_unet(&run.path().join("unet"), &Device::flex()).unwrap();
    assert!(trained_config.encoder_adapter && trained.has_encoder_adapter());
    let before = held_out_loss(&start, &start);
    let after = held_out_loss(&trained, &start);
    eprintln!("adapter student, held-out guided consistency loss: {before:.4e} -> {after:.4e}");
    assert!(after < 0.75 * before, "{before:.4e} -> {after:.4e}");
    // The UNet's own files are the teacher's, bit for bit.
    let (_, teacher) = teacher(7);
    let saved = ldmscale_model::weights::load_safetensors(
        teacher.clone(),
        &run.path()
            .join("unet")
            .join(ldmscale_model::weights::WEIGHTS_FILE),
        &Device::flex(),
    )
    .unwrap();
    let (z, t, context) = probe(&data);
    let ours = values(saved.forward(z.clone(), &t, context.clone()));
    assert!(ours == values(teacher.forward(z.clone(), &t, context.clone())));
    // The guidance changes the trained student's guided output.
    let null = data.null_context(&Device::flex()).expand([3, 3, 16]);
    let loss = task.shard_loss();
    let steps = [999, 499, 19];
    let at = |w: f32| {
        let halves = (context.clone(), null.clone());
        values(
            loss.guided_x0(&trained, z.clone(), &steps, halves, &[w; 3])
                .unwrap(),
        )
    };
    let (low, high) = (at(1.0), at(7.0));
    let diff = low
        .iter()
        .zip(&high)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff > 1e-3, "guidance 1 vs 7: max diff {diff}");
}

#[test]
fn a_resumed_adapter_distillation_is_bit_identical() {
    let data = common::data(6);
    let straight = tempfile::tempdir().unwrap();
    distill_adapter(&config(5, 1e-3), &data, straight.path());
    let split = tempfile::tempdir().unwrap();
    distill_adapter(&config(3, 1e-3), &data, split.path());
    std::fs::remove_dir_all(checkpoint::step_dir(split.path(), 3)).unwrap();
    assert_eq!(distill_adapter(&config(5, 1e-3), &data, split.path()), 3);
    let state = |run: &Path| {
        let (_, dir) = checkpoint::list(run).pop().unwrap();
        std::fs::read(dir.join("optimizer.safetensors")).unwrap()
    };
    let (a, b) = (state(straight.path()), state(split.path()));
    assert!(a == b, "optimizer.safetensors differ");
    // Only the adapter is optimised; the target's frozen UNet is the student's.
    let tensors = safetensors::SafeTensors::deserialize(&a).unwrap();
    let names = tensors.names();
    let moments: Vec<&&str> = names.iter().filter(|n| n.starts_with("m/")).collect();
    assert!(!moments.is_empty() && moments.iter().all(|n| n.starts_with("m/adapter.")));
    let frozen = |prefix: &str| tensors.tensor(&format!("{prefix}/conv_in.weight")).unwrap();
    assert!(frozen("task").data() == frozen("param").data());
    let moved = |prefix: &str| {
        let name = format!("{prefix}/adapter.controlnet_mid_block.weight");
        tensors.tensor(&name).unwrap().data().to_vec()
    };
    assert!(moved("task") != moved("param"));
    // A whole-UNet run is not resumed as an adapter run.
    let cfg = config(7, 1e-3);
    let task = task_of(&cfg, &data, 7).unwrap();
    let sync = DeviceThreads::new(&[Device::flex()]).unwrap();
    let err = train_task(&cfg, &task, &sync, split.path(), false, None).unwrap_err();
    assert!(matches!(err, TrainError::DataChanged { .. }), "{err:?}");
}

#[test]
fn a_teacher_with_a_class_embedding_gets_no_adapter() {
    let data = common::data(4);
    let (c, _) = teacher(7);
    let c = c.with_noise_level_embedding(10);
    let unet = seeded_init(&Device::flex(), 0, || UNet::new(&c, &Device::flex()));
    let recipe = (CodiOptions::default(), CodiStudent::Adapter);
    let err =
        CodiDistill::with_student(&config(2, 1e-3), &data, (&c, unet), recipe, &Device::flex())
            .err()
            .expect("refused")
            .to_string();
    assert!(err.contains("num_class_embeds: 10"), "{err}");
}
