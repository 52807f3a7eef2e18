//! Data parallelism: a batch split over several devices trains the same model as one device with
//! the whole batch (up to float rounding), step by step.

mod common;

use std::path::Path;

use burn::tensor::Device;
use ldmscale_train::checkpoint;
use ldmscale_train::params::{Named, read_named};
use ldmscale_train::{SyntheticData, TrainConfig, train};

fn config(batch: usize, devices: &str) -> TrainConfig {
    common::config(&format!(
        "steps = 4\nbatch_size = {batch}\ngrad_accum = 2\nlearning_rate = 2e-3\nwarmup_steps = 1\ngrad_clip = 1.0\ncheckpoint_every = 4\n{devices}"
    ))
}

fn data() -> SyntheticData {
    common::data(12)
}

/// Final weights, AdamW moments and EMA, by group and name.
fn final_state(run: &Path) -> Vec<(String, Vec<f32>)> {
    let (_, dir) = checkpoint::list(run).pop().expect("a checkpoint");
    let bytes = std::fs::read(dir.join("optimizer.safetensors")).unwrap();
    let mut out = Vec::new();
    for group in ["param/", "m/", "ema/"] {
        let named: Named = read_named(&bytes, group, &Device::flex()).unwrap();
        for (k, v) in named {
            out.push((
                format!("{group}{k}"),
                v.into_data().try_to_vec::<f32>().unwrap(),
            ));
        }
    }
    out
}

/// (loss, grad_norm) of every step.
fn metrics(run: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["loss"].as_f64().unwrap(),
                v["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn assert_same_training(devices: &str, batch: usize) {
    let device = Device::flex();
    let one = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    train(&config(batch, ""), &data(), one.path(), &device, false).unwrap();
    let s = train(
        &config(batch, devices),
        &data(),
        split.path(),
        &device,
        false,
    )
    .unwrap();
    assert_eq!(s.state.step, 4);

    // Loss and gradient norm are means over the whole batch: a shard weighted wrongly or a
    // sum instead of a mean shows here even where AdamW's scale invariance would hide it.
    let (m1, m2) = (metrics(one.path()), metrics(split.path()));
    assert_eq!(m1.len(), 4);
    for (step, ((l1, g1), (l2, g2))) in m1.iter().zip(&m2).enumerate() {
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1.abs(),
            "step {step}: loss {l1} vs {l2}"
        );
        assert!(
            (g1 - g2).abs() <= 1e-4 * g1.abs(),
            "step {step}: grad norm {g1} vs {g2}"
        );
    }
    let (a, b) = (final_state(one.path()), final_state(split.path()));
    assert_eq!(a.len(), b.len());
    let all_a: Vec<f32> = a.iter().flat_map(|(_, v)| v.clone()).collect();
    let all_b: Vec<f32> = b.iter().flat_map(|(_, v)| v.clone()).collect();
    let whole = rel_l2(&all_b, &all_a);
    assert!(whole < 1e-5, "{devices}: whole state differs by {whole:e}");
    for ((name, x), (name_b, y)) in a.iter().zip(&b) {
        assert_eq!(name, name_b);
        let e = rel_l2(y, x);
        assert!(e < 1e-3, "{devices}: {name} differs by {e:e}");
    }
}

#[test]
fn two_devices_equal_one_device_with_the_whole_batch() {
    assert_same_training("devices = [\"cpu\", \"cpu\"]", 4);
}

#[test]
fn uneven_shards_are_weighted_by_size() {
    // 5 samples over 3 devices: shards of 2, 2 and 1.
    assert_same_training("devices = [\"cpu\", \"cpu\", \"cpu\"]", 5);
}
