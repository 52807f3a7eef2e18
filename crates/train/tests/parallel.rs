//! Data parallelism: a batch split over several devices trains the same model as one device with
//! the whole batch (up to float rounding), step by step.

mod common;
#[path = "common/compare.rs"]
mod compare;

use burn::tensor::Device;
use ldmscale_train::{SyntheticData, TrainConfig, train};

fn config(batch: usize, devices: &str) -> TrainConfig {
    common::config(&format!(
        "steps = 4\nbatch_size = {batch}\ngrad_accum = 2\nlearning_rate = 2e-3\nwarmup_steps = 1\ngrad_clip = 1.0\ncheckpoint_every = 4\n{devices}"
    ))
}

fn data() -> SyntheticData {
    common::data(12)
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
    compare::assert_same_run(one.path(), split.path(), 4, devices);
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
