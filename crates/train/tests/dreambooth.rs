//! DreamBooth finetuning: it starts from the pretrained weights, fits the instance examples,
//! puts instance and class rows in one batch weighted `mse(instance) + w * mse(prior)`,
//! resumes bit-identically, refuses another model or data, and names bad input.

#[allow(dead_code)]
mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor};
use ldmscale_diffusion::objective::{add_noise, min_snr_weights, snr};
use ldmscale_diffusion::{NoiseSchedule, PredictionType, SchedulerConfig};
use ldmscale_model::init::seeded_init;
use ldmscale_model::weights::load_unet;
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_train::data::rng_for;
use ldmscale_train::params::snapshot;
use ldmscale_train::tasks::DreamBooth;
use ldmscale_train::{
    DeviceThreads, ShardLoss, SyntheticData, TrainConfig, TrainError, TrainTask, TrainingData,
    checkpoint, train_task,
};

/// The tiny family member the common config trains.
fn pretrained(seed: u64) -> (UNetConfig, UNet) {
    let device = Device::flex();
    let config = common::config("steps = 1\nbatch_size = 1")
        .model
        .unet(4, 8, 16);
    let unet = seeded_init(&device, seed, || UNet::new(&config, &device));
    (config, unet)
}

/// A subject: 4 examples of one pattern (small per-example variation), one caption.
fn instance() -> SyntheticData {
    SyntheticData {
        classes: 1,
        ..common::data(4)
    }
}

/// Class examples: 6 of 3 patterns.
fn class() -> SyntheticData {
    common::data(6)
}

fn config(steps: u64, lr: f64) -> TrainConfig {
    common::config(&format!(
        "steps = {steps}\nbatch_size = 2\nlearning_rate = {lr}\ngrad_clip = 1.0\ncheckpoint_every = 2\nkeep_last = 2\ntext_dropout = 0.5"
    ))
}

fn finetune(
    config: &TrainConfig,
    class: Option<(&dyn TrainingData, f64)>,
    run: &Path,
) -> Result<u64, TrainError> {
    let (c, unet) = pretrained(7);
    let inst = instance();
    let task = DreamBooth::new(config, &inst, class, (&c, unet))?;
    let sync = DeviceThreads::new(&[Device::flex()])?;
    Ok(train_task(config, &task, &sync, run, false, None)?.steps_run)
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (_, unet) = load_unet(dir, &Device::flex()).unwrap();
    values(&unet)
}

fn values(unet: &UNet) -> Vec<(String, Vec<f32>)> {
    snapshot(unet)
        .into_iter()
        .map(|(k, v)| (k, v.into_data().try_to_vec::<f32>().unwrap()))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn starts_from_the_pretrained_weights() {
    let run = tempfile::tempdir().unwrap();
    // A learning rate far below f32 resolution: one step leaves the starting point in place.
    let cls = class();
    finetune(&config(1, 1e-30), Some((&cls, 1.0)), run.path()).unwrap();
    let trained = weights(&run.path().join("unet"));
    let expected = values(&pretrained(7).1);
    assert_eq!(trained.len(), expected.len());
    for ((name, ours), (key, theirs)) in trained.iter().zip(&expected) {
        assert_eq!(name, key);
        let diff = max_diff(ours, theirs);
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
}

/// Mean instance-only loss of `model` over fixed draws of all instance examples.
fn instance_loss(model: &UNet) -> f64 {
    let (c, unet) = pretrained(7);
    let inst = instance();
    let task = DreamBooth::new(&config(1, 1e-3), &inst, None, (&c, unet)).unwrap();
    let indices: Vec<usize> = (0..16).collect();
    (0..4)
        .map(|draw| {
            let batch = task
                .draw(&indices, &mut rng_for(99, draw, 0), &Device::flex())
                .unwrap();
            let loss = task.shard_loss().loss(model, batch).unwrap();
            loss.into_scalar::<f32>() as f64 / 4.0
        })
        .sum()
}

#[test]
fn the_instance_loss_falls() {
    let run = tempfile::tempdir().unwrap();
    finetune(&config(40, 2e-3), None, run.path()).unwrap();
    let before = instance_loss(&pretrained(7).1);
    let (_, trained) = load_unet(&run.path().join("unet"), &Device::flex()).unwrap();
    let after = instance_loss(&trained);
    eprintln!("held-out instance loss: pretrained {before:.4}, after 40 steps {after:.4}");
    assert!(after < 0.7 * before, "{before:.4} -> {after:.4}");
}

#[test]
fn a_prior_batch_holds_both_halves_undropped() {
    let (c, unet) = pretrained(7);
    let (inst, cls) = (instance(), class());
    // text_dropout 0.5 in the config: DreamBooth must ignore it.
    let task = DreamBooth::new(&config(1, 1e-3), &inst, Some((&cls, 1.0)), (&c, unet)).unwrap();
    assert_eq!(task.examples(), 6);
    let device = Device::flex();
    let batch = task.draw(&[5, 2], &mut rng_for(3, 1, 0), &device).unwrap();
    assert_eq!(batch.prior, [false, false, true, true]);
    assert_eq!(batch.timesteps.len(), 4);
    let (ix, ic) = inst.batch(&[1, 2], &device).unwrap();
    let (cx, cc) = cls.batch(&[5, 2], &device).unwrap();
    let same = |a: Tensor<4>, b: Tensor<4>| a.equal(b).all().into_scalar::<bool>();
    assert!(same(batch.x0.clone(), Tensor::cat(vec![ix, cx], 0)));
    let context = Tensor::cat(vec![ic, cc], 0).unsqueeze_dim::<4>(0);
    assert!(same(batch.context.unsqueeze_dim(0), context));
}

/// The loss of one fixed prior batch at weight `w` under `config`, and by hand: separate
/// forwards of the instance and class halves, `mse(instance) + w * mse(prior)`, the instance
/// rows' squared errors times their min-SNR weights when the config sets `snr_gamma`.
fn weighted_and_by_hand(config: &TrainConfig, w: f64) -> (f32, f32) {
    let (c, unet) = pretrained(7);
    let (inst, cls) = (instance(), class());
    let task = DreamBooth::new(config, &inst, Some((&cls, w)), (&c, unet)).unwrap();
    let device = Device::flex();
    let batch = task
        .draw(&[0, 3, 4], &mut rng_for(5, 2, 0), &device)
        .unwrap();
    let model = pretrained(7).1;
    let schedule = NoiseSchedule::new(&SchedulerConfig::sd()).unwrap();
    let half_mse = |start: usize, snr_gamma: Option<f32>| {
        let rows = |t: &Tensor<4>| t.clone().narrow(0, start, 3);
        let steps = &batch.timesteps[start..start + 3];
        let noise = rows(&batch.noise);
        let noisy = add_noise(&schedule, rows(&batch.x0), noise.clone(), steps).unwrap();
        let t: Vec<f32> = steps.iter().map(|&v| v as f32).collect();
        let context = batch.context.clone().narrow(0, start, 3);
        let out = model.forward(noisy, &t, context);
        let per_row = (out - noise).square().reshape([3, 256]).mean_dim(1);
        let per_row = per_row.into_data().try_to_vec::<f32>().unwrap();
        let weights = match snr_gamma {
            Some(g) => min_snr_weights(PredictionType::Epsilon, &snr(&schedule, steps).unwrap(), g),
            None => vec![1.0; 3],
        };
        per_row.iter().zip(weights).map(|(e, w)| e * w).sum::<f32>() / 3.0
    };
    let by_hand = half_mse(0, config.snr_gamma) + w as f32 * half_mse(3, None);
    let loss = task.shard_loss().loss(&model, batch).unwrap();
    (loss.into_scalar::<f32>(), by_hand)
}

#[test]
fn the_prior_loss_is_instance_mse_plus_w_prior_mse() {
    let plain = config(1, 1e-3);
    let mut snr_weighted = plain.clone();
    snr_weighted.snr_gamma = Some(5.0);
    for (cfg, w) in [
        (&plain, 0.0),
        (&plain, 0.3),
        (&plain, 1.0),
        (&plain, 2.5),
        (&snr_weighted, 1.0),
    ] {
        let (loss, by_hand) = weighted_and_by_hand(cfg, w);
        let gamma = cfg.snr_gamma;
        eprintln!("w = {w}, snr_gamma {gamma:?}: loss {loss:.6}, by hand {by_hand:.6}");
        assert!(
            (loss - by_hand).abs() <= 1e-5 * by_hand,
            "w = {w}: {loss} vs {by_hand}"
        );
    }
}

#[test]
fn resumed_finetune_is_bit_identical() {
    let cls = class();
    let prior = Some((&cls as &dyn TrainingData, 1.0));
    let straight = tempfile::tempdir().unwrap();
    finetune(&config(5, 1e-3), prior, straight.path()).unwrap();
    let split = tempfile::tempdir().unwrap();
    finetune(&config(3, 1e-3), prior, split.path()).unwrap();
    // Killed after its step-2 checkpoint: drop the later one.
    std::fs::remove_dir_all(checkpoint::step_dir(split.path(), 3)).unwrap();
    assert_eq!(finetune(&config(5, 1e-3), prior, split.path()).unwrap(), 3);
    let state = |run: &Path| {
        let (_, dir) = checkpoint::list(run).pop().unwrap();
        std::fs::read(dir.join("optimizer.safetensors")).unwrap()
    };
    assert!(state(straight.path()) == state(split.path()));
    assert_eq!(
        weights(&straight.path().join("unet")),
        weights(&split.path().join("unet"))
    );
}

#[test]
fn another_model_data_or_weight_is_refused_on_resume() {
    let cls = class();
    let run = tempfile::tempdir().unwrap();
    finetune(&config(2, 1e-3), Some((&cls, 1.0)), run.path()).unwrap();
    let refused =
        |err: TrainError| assert!(matches!(err, TrainError::DataChanged { .. }), "{err:?}");
    refused(finetune(&config(4, 1e-3), Some((&cls, 0.5)), run.path()).unwrap_err());
    refused(finetune(&config(4, 1e-3), None, run.path()).unwrap_err());
    let other_class = common::data(7);
    refused(finetune(&config(4, 1e-3), Some((&other_class, 1.0)), run.path()).unwrap_err());
    let (c, other) = pretrained(8);
    let cfg = config(4, 1e-3);
    let inst = instance();
    let task = DreamBooth::new(&cfg, &inst, Some((&cls, 1.0)), (&c, other)).unwrap();
    let sync = DeviceThreads::new(&[Device::flex()]).unwrap();
    refused(train_task(&cfg, &task, &sync, run.path(), false, None).unwrap_err());
}

/// The error of building the task on `inst` with `class`.
fn error(inst: &dyn TrainingData, class: Option<(&dyn TrainingData, f64)>) -> String {
    let (c, unet) = pretrained(7);
    let err = DreamBooth::new(&config(2, 1e-3), inst, class, (&c, unet))
        .err()
        .unwrap();
    err.to_string()
}

#[test]
fn bad_inputs_name_the_field() {
    let (inst, cls) = (instance(), class());
    for w in [-0.5, f64::NAN, f64::INFINITY] {
        let err = error(&inst, Some((&cls, w)));
        assert!(
            err.starts_with(&format!("prior_loss_weight = {w}")),
            "{err}"
        );
    }
    let err = error(&common::data(0), None);
    assert!(
        err.contains("instance") && err.contains("no instance"),
        "{err}"
    );
    let err = error(&inst, Some((&common::data(0), 1.0)));
    assert!(err.contains("class") && err.contains("no class"), "{err}");
    let narrow = SyntheticData {
        context_shape: [3, 8],
        ..class()
    };
    let err = error(&inst, Some((&narrow, 1.0)));
    assert!(err.contains("class.context_shape"), "{err}");
    let small = SyntheticData {
        latent_shape: [4, 4, 4],
        ..class()
    };
    let err = error(&inst, Some((&small, 1.0)));
    assert!(err.contains("class.latent_shape"), "{err}");
    let wide = SyntheticData {
        context_shape: [3, 8],
        ..instance()
    };
    let err = error(&wide, None);
    assert!(
        err.contains("instance") && err.contains("cross_attention_dim"),
        "{err}"
    );
    let mut cfg = config(2, 1e-3);
    cfg.model.width = 16;
    let (c, unet) = pretrained(7);
    let err = DreamBooth::new(&cfg, &inst, None, (&c, unet))
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("model.width = 16"), "{err}");
}

/// The study finetunes several subjects from one loaded base: a finetune must train a copy
/// and leave the model it was given untouched.
#[test]
fn the_given_base_model_is_left_unchanged() {
    let run = tempfile::tempdir().unwrap();
    let (c, base) = pretrained(7);
    let before = values(&base);
    let inst = instance();
    let config = config(3, 1e-2);
    let task = DreamBooth::new(&config, &inst, None, (&c, base.clone())).unwrap();
    let sync = DeviceThreads::new(&[Device::flex()]).unwrap();
    train_task(&config, &task, &sync, run.path(), false, None).unwrap();
    assert_ne!(weights(&run.path().join("unet")), before, "it trained");
    for ((name, now), (_, then)) in values(&base).iter().zip(&before) {
        assert_eq!(max_diff(now, then), 0.0, "{name} changed in the base");
    }
}
