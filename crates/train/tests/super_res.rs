//! Super-resolution finetuning: it starts from the pretrained text-to-image weights, learns to
//! read the LR latent (the loss falls, the new input weights leave zero, another example's LR
//! makes the loss worse, which it cannot at step 0), resumes bit-identically, and keeps its
//! snapshots.

#[allow(dead_code)]
mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor};
use ldmscale_model::init::seeded_init;
use ldmscale_model::weights::load_unet;
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_train::data::rng_for;
use ldmscale_train::params::snapshot;
use ldmscale_train::tasks::{SrData, SrOptions, SrPairs};
use ldmscale_train::{
    DeviceThreads, ShardLoss, SuperRes, TrainConfig, TrainError, TrainTask, checkpoint, train_task,
};

/// The tiny family member the common config trains, as a text-to-image UNet.
fn pretrained(seed: u64) -> (UNetConfig, UNet) {
    let device = Device::flex();
    let config = common::config("steps = 1\nbatch_size = 1")
        .model
        .unet(4, 8, 16);
    let unet = seeded_init(&device, seed, || UNet::new(&config, &device));
    (config, unet)
}

/// HR latents with class-specific detail; LR latents their 2x2 block means (the detail an SR
/// model must restore), so the LR latent tells much about the HR one.
fn pairs(len: usize) -> SrPairs {
    let hr: Vec<f32> = (0..len * 4 * 64)
        .map(|k| {
            let (i, ch, y, x) = (k / 256, (k / 64) % 4, (k / 8) % 8, k % 8);
            let phase = (i % 5) as f32 * 1.3 + ch as f32 * 0.7;
            (x as f32 * 1.9 + phase).sin() * (y as f32 * 1.1 - phase).cos() + (i % 3) as f32 - 1.0
        })
        .collect();
    let mut lr = hr.clone();
    for (k, v) in lr.iter_mut().enumerate() {
        let (base, y, x) = (k / 64 * 64, (k / 8) % 8 / 2 * 2, k % 8 / 2 * 2);
        let at = |dy: usize, dx: usize| hr[base + (y + dy) * 8 + x + dx];
        *v = (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0;
    }
    SrPairs::new(hr, lr, [4, 8, 8], "test pairs").unwrap()
}

fn empty_prompt() -> Tensor<3> {
    Tensor::zeros([1, 3, 16], &Device::flex())
}

fn config(steps: u64, lr: f64) -> TrainConfig {
    common::config(&format!(
        "steps = {steps}\nbatch_size = 4\nlearning_rate = {lr}\ngrad_clip = 1.0\ncheckpoint_every = 2\nkeep_last = 2\nsnapshot_steps = [2, 4]\ntext_dropout = 0.0"
    ))
}

fn finetune(config: &TrainConfig, data: &dyn SrData, run: &Path) -> Result<u64, TrainError> {
    finetune_with(config, data, run, SrOptions::default())
}

fn finetune_with(
    config: &TrainConfig,
    data: &dyn SrData,
    run: &Path,
    options: SrOptions,
) -> Result<u64, TrainError> {
    let (c, unet) = pretrained(7);
    let task = SuperRes::with_options(config, data, (&c, unet), empty_prompt(), options)?;
    let sync = DeviceThreads::new(&[Device::flex()])?;
    Ok(train_task(config, &task, &sync, run, false, None)?.steps_run)
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (_, unet) = load_unet(dir, &Device::flex()).unwrap();
    snapshot(&unet)
        .into_iter()
        .map(|(k, v)| (k, v.into_data().try_to_vec::<f32>().unwrap()))
        .collect()
}

#[test]
fn starts_from_the_pretrained_weights() {
    let run = tempfile::tempdir().unwrap();
    // A learning rate far below f32 resolution: one step leaves the starting point in place.
    let mut c = config(1, 1e-30);
    c.snapshot_steps.clear();
    finetune(&c, &pairs(8), run.path()).unwrap();
    let trained = weights(&run.path().join("unet"));
    let (config, unet) = pretrained(7);
    let (_, sr) = unet.into_super_res(&config, 4).unwrap();
    let expected = snapshot(&sr);
    assert_eq!(trained.len(), expected.len());
    for ((name, ours), (key, theirs)) in trained.iter().zip(expected) {
        assert_eq!(name, &key);
        let theirs = theirs.into_data().try_to_vec::<f32>().unwrap();
        let diff = max_diff(ours, &theirs);
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_loss_falls_and_the_model_learns_to_read_the_lr() {
    let run = tempfile::tempdir().unwrap();
    let mut c = config(150, 2e-3);
    c.snapshot_steps.clear();
    finetune(&c, &pairs(16), run.path()).unwrap();
    let l = losses(run.path());
    let (first, last) = (
        l[..8].iter().sum::<f64>() / 8.0,
        l[142..].iter().sum::<f64>() / 8.0,
    );
    eprintln!("loss, mean of steps 1-8: {first:.4}, of steps 143-150: {last:.4}");
    assert!(last < 0.7 * first, "loss {first:.4} -> {last:.4}");
    let trained = weights(&run.path().join("unet"));
    let conv_in = &trained
        .iter()
        .find(|(k, _)| k == "conv_in.weight")
        .unwrap()
        .1;
    // [out, 8, 3, 3]: inputs 4..8 read the LR latent.
    let lr_part: f32 = conv_in
        .chunks(72)
        .flat_map(|row| row[36..].iter())
        .map(|v| v.abs())
        .sum();
    assert!(lr_part > 1e-2, "LR input weights still {lr_part}");
    // The model reads the LR latent: another example's LR makes its loss worse.
    let (_, trained) = load_unet(&run.path().join("unet"), &Device::flex()).unwrap();
    let (matched, swapped) = held_out_losses(&c, &trained);
    eprintln!("loss with the matching LR {matched:.4}, with another example's {swapped:.4}");
    assert!(matched < 0.9 * swapped, "{matched} vs {swapped}");
    // Before finetuning the LR latent cannot matter.
    let (config, unet) = pretrained(7);
    let (_, start) = unet.into_super_res(&config, 4).unwrap();
    let (matched, swapped) = held_out_losses(&c, &start);
    assert_eq!(matched, swapped);
}

/// Mean losses of `model` over fixed draws with the matching LR latents and with
/// each example's LR replaced by the next example's.
fn held_out_losses(config: &TrainConfig, model: &UNet) -> (f64, f64) {
    let device = Device::flex();
    let data = pairs(16);
    let (c, unet) = pretrained(7);
    let task = SuperRes::new(config, &data, (&c, unet), empty_prompt()).unwrap();
    let indices: Vec<usize> = (0..16).collect();
    let (mut matched, mut swapped) = (0.0, 0.0);
    for draw in 0..4 {
        let loss = |roll: usize| {
            let mut rng = rng_for(99, draw, 0);
            let mut batch = task.draw(&indices, &mut rng, &device).unwrap();
            if roll > 0 {
                let lr = batch.lr.clone();
                let (head, tail) = (lr.clone().narrow(0, 0, roll), lr.narrow(0, roll, 16 - roll));
                batch.lr = Tensor::cat(vec![tail, head], 0);
            }
            let loss = task.shard_loss().loss(model, batch).unwrap();
            loss.into_scalar::<f32>() as f64
        };
        matched += loss(0) / 4.0;
        swapped += loss(1) / 4.0;
    }
    (matched, swapped)
}

#[test]
fn resumed_finetune_is_bit_identical_and_keeps_snapshots() {
    let data = pairs(6);
    let straight = tempfile::tempdir().unwrap();
    finetune(&config(5, 1e-3), &data, straight.path()).unwrap();
    let split = tempfile::tempdir().unwrap();
    finetune(&config(3, 1e-3), &data, split.path()).unwrap();
    // Killed after its step-2 checkpoint: drop the later one.
    std::fs::remove_dir_all(checkpoint::step_dir(split.path(), 3)).unwrap();
    assert_eq!(finetune(&config(5, 1e-3), &data, split.path()).unwrap(), 3);
    let state = |run: &Path| {
        let (_, dir) = checkpoint::list(run).pop().unwrap();
        std::fs::read(dir.join("optimizer.safetensors")).unwrap()
    };
    assert!(state(straight.path()) == state(split.path()));
    for run in [straight.path(), split.path()] {
        let kept: Vec<u64> = checkpoint::snapshots(run).iter().map(|(s, _)| *s).collect();
        assert_eq!(kept, [2, 4]);
    }
    for step in [2, 4] {
        let dir = |run: &Path| checkpoint::snapshots(run)[step / 2 - 1].1.join("unet_ema");
        assert_eq!(weights(&dir(straight.path())), weights(&dir(split.path())));
        let json = std::fs::read_to_string(dir(split.path()).with_file_name("state.json")).unwrap();
        let state: serde_json::Value = serde_json::from_str(&json).unwrap();
        let cost = state["normalized_cost_x_iterations"].as_f64().unwrap();
        assert!(cost > 0.0 && cost < step as f64, "{cost}");
    }
    // The snapshots are the SR models, loadable with in_channels 8.
    let (config, _) = load_unet(
        &checkpoint::snapshots(split.path())[0].1.join("unet"),
        &Device::flex(),
    )
    .unwrap();
    assert_eq!(config.in_channels, 8);
}

#[test]
fn another_pretrained_model_or_data_is_refused_on_resume() {
    let data = pairs(6);
    let run = tempfile::tempdir().unwrap();
    finetune(&config(2, 1e-3), &data, run.path()).unwrap();
    let (c, other) = pretrained(8);
    let cfg = config(4, 1e-3);
    let task = SuperRes::new(&cfg, &data, (&c, other), empty_prompt()).unwrap();
    let sync = DeviceThreads::new(&[Device::flex()]).unwrap();
    let err = train_task(&cfg, &task, &sync, run.path(), false, None).unwrap_err();
    assert!(matches!(err, TrainError::DataChanged { .. }), "{err:?}");
}

#[test]
fn bad_inputs_name_the_field() {
    let data = pairs(4);
    let (c, unet) = pretrained(7);
    let (sr_config, sr) = unet.into_super_res(&c, 4).unwrap();
    let err = SuperRes::new(&config(2, 1e-3), &data, (&sr_config, sr), empty_prompt())
        .err()
        .unwrap();
    assert!(err.to_string().contains("in_channels: 8"), "{err}");
    let (c, unet) = pretrained(7);
    let mut cfg = config(2, 1e-3);
    cfg.model.width = 16;
    let err = SuperRes::new(&cfg, &data, (&c, unet), empty_prompt())
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("model.width = 16"), "{err}");
    let (c, unet) = pretrained(7);
    let wide = Tensor::zeros([1, 3, 8], &Device::flex());
    let err = SuperRes::new(&config(2, 1e-3), &data, (&c, unet), wide)
        .err()
        .unwrap();
    assert!(err.to_string().contains("cross_attention_dim"), "{err}");
    let mut cfg = config(2, 1e-3);
    cfg.snapshot_steps = vec![3, 2];
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.starts_with("snapshot_steps[1] = 2"), "{err}");
}

#[test]
fn noise_augmentation_noises_the_lr_trains_the_level_embedding_and_resumes() {
    let data = pairs(6);
    let options = SrOptions {
        noise_augmentation: Some(350),
    };
    let (c, unet) = pretrained(7);
    let cfg = config(5, 1e-3);
    let task = SuperRes::with_options(&cfg, &data, (&c, unet), empty_prompt(), options).unwrap();
    assert_eq!(task.sr_config().num_class_embeds, Some(1000));
    let device = Device::flex();
    let batch = task
        .draw(&[0, 1, 2, 3], &mut rng_for(1, 1, 1), &device)
        .unwrap();
    assert_eq!(batch.noise_levels.len(), 4);
    assert!(
        batch.noise_levels.iter().all(|&l| l <= 350),
        "{:?}",
        batch.noise_levels
    );
    let (_, clean) = data.pairs(&[0, 1, 2, 3], &device).unwrap();
    let moved: f32 = (batch.lr - clean).abs().max().into_scalar();
    assert!(moved > 1e-2, "LR latents not noised: {moved}");

    let straight = tempfile::tempdir().unwrap();
    finetune_with(&cfg, &data, straight.path(), options).unwrap();
    let split = tempfile::tempdir().unwrap();
    finetune_with(&config(3, 1e-3), &data, split.path(), options).unwrap();
    std::fs::remove_dir_all(checkpoint::step_dir(split.path(), 3)).unwrap();
    assert_eq!(
        finetune_with(&cfg, &data, split.path(), options).unwrap(),
        3
    );
    let trained = weights(&split.path().join("unet"));
    assert_eq!(trained, weights(&straight.path().join("unet")));
    let table = &trained
        .iter()
        .find(|(k, _)| k == "class_embedding.weight")
        .unwrap()
        .1;
    assert!(
        table.iter().any(|&v| v != 0.0),
        "the level embedding never trained"
    );
    // Turning augmentation on for a run trained without it is refused.
    let plain = tempfile::tempdir().unwrap();
    finetune(&config(2, 1e-3), &data, plain.path()).unwrap();
    let err = finetune_with(&config(4, 1e-3), &data, plain.path(), options).unwrap_err();
    assert!(matches!(err, TrainError::DataChanged { .. }), "{err:?}");
    let (c, unet) = pretrained(7);
    let too_high = SrOptions {
        noise_augmentation: Some(1000),
    };
    let err = SuperRes::with_options(&cfg, &data, (&c, unet), empty_prompt(), too_high)
        .err()
        .unwrap();
    assert!(
        err.to_string().starts_with("noise_augmentation = 1000"),
        "{err}"
    );
}
