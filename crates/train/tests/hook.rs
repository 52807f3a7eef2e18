//! The evaluation hook: called every `eval_every` steps with a model on the training device;
//! its failure stops the run as `TrainError::Hook`.

mod common;

use burn::module::Module;
use burn::tensor::Device;
use ldmscale_train::{SyntheticData, TrainConfig, TrainError, train_with_hook};

fn config() -> TrainConfig {
    common::config("steps = 4\nbatch_size = 2\neval_every = 2\ncheckpoint_every = 2")
}

fn data() -> SyntheticData {
    common::data(6)
}

#[test]
fn the_hook_sees_the_training_device_and_its_failure_is_typed() {
    let device = Device::flex();
    let run = tempfile::tempdir().unwrap();
    let mut calls = Vec::new();
    let mut hook = |unet: &ldmscale_model::UNet, state: &ldmscale_train::TrainState| {
        assert_eq!(unet.devices(), vec![device.clone()]);
        calls.push(state.step);
        if state.step == 4 {
            return Err("no sampler today".to_string());
        }
        Ok(())
    };
    let err = train_with_hook(
        &config(),
        &data(),
        run.path(),
        &device,
        false,
        Some(&mut hook),
    )
    .unwrap_err();
    assert_eq!(calls, [2, 4]);
    assert!(
        matches!(&err, TrainError::Hook { step: 4, message } if message == "no sampler today"),
        "{err:?}"
    );
}
