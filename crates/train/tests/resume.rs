//! Exact resume: a run stopped after a checkpoint and resumed ends with the same bits as an
//! uninterrupted run; bad inputs fail clearly without touching checkpoints.

mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor};
use ldmscale_train::checkpoint;
use ldmscale_train::{SyntheticData, TrainConfig, TrainError, TrainingData, train};

fn config(steps: u64) -> TrainConfig {
    common::config(&format!(
        "steps = {steps}\nbatch_size = 2\ngrad_accum = 2\nlearning_rate = 1e-3\nwarmup_steps = 2\ngrad_clip = 1.0\ncheckpoint_every = 2\nkeep_last = 2"
    ))
}

fn data() -> SyntheticData {
    common::data(6)
}

fn final_bytes(run: &Path) -> Vec<u8> {
    let (_, dir) = checkpoint::list(run).pop().expect("a checkpoint");
    std::fs::read(dir.join("optimizer.safetensors")).unwrap()
}

#[test]
fn resumed_run_is_bit_identical() {
    let device = Device::flex();
    let straight = tempfile::tempdir().unwrap();
    let a = train(&config(5), &data(), straight.path(), &device, false).unwrap();
    assert_eq!(a.state.step, 5);
    assert!(a.state.last_loss.is_finite());

    let split = tempfile::tempdir().unwrap();
    let first = train(&config(3), &data(), split.path(), &device, false).unwrap();
    assert_eq!(first.state.step, 3);
    // A run killed after its step-2 checkpoint: drop the later checkpoint and final models.
    std::fs::remove_dir_all(checkpoint::step_dir(split.path(), 3)).unwrap();
    let resumed = train(&config(5), &data(), split.path(), &device, false).unwrap();
    assert_eq!(resumed.steps_run, 3, "resumed from step 2");
    assert_eq!(final_bytes(straight.path()), final_bytes(split.path()));
    assert_eq!(a.state, resumed.state);
    // keep_last = 2
    assert_eq!(checkpoint::list(split.path()).len(), 2);
    // Metrics are not duplicated by the resume.
    let lines = std::fs::read_to_string(split.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 5, "{lines}");
    // Final models in diffusers layout, EMA beside.
    for dir in &resumed.model_dirs {
        assert!(
            dir.join("diffusion_pytorch_model.safetensors").exists(),
            "{}",
            dir.display()
        );
    }
    // Finished runs are not trained again.
    let again = train(&config(5), &data(), split.path(), &device, false).unwrap();
    assert_eq!(again.steps_run, 0);
}

#[test]
fn a_changed_config_is_refused() {
    let device = Device::flex();
    let run = tempfile::tempdir().unwrap();
    train(&config(2), &data(), run.path(), &device, false).unwrap();
    let mut other = config(4);
    other.learning_rate = 5e-4;
    let err = train(&other, &data(), run.path(), &device, false).unwrap_err();
    assert!(matches!(err, TrainError::ConfigChanged { .. }), "{err:?}");
    let mut other_data = data();
    other_data.len = 7;
    let err = train(&config(4), &other_data, run.path(), &device, false).unwrap_err();
    assert!(
        matches!(&err, TrainError::DataChanged { saved, current, .. } if *saved == data().key() && *current == other_data.key()),
        "{err:?}"
    );
}

/// Data whose latents turn NaN after the first few batches.
struct Poisoned(SyntheticData);

impl TrainingData for Poisoned {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn latent_shape(&self) -> [usize; 3] {
        self.0.latent_shape()
    }
    fn context_shape(&self) -> [usize; 2] {
        self.0.context_shape()
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>), String> {
        let (x, c) = self.0.batch(indices, device)?;
        if indices.contains(&5) {
            return Ok((x.div_scalar(0.0), c));
        }
        Ok((x, c))
    }
    fn null_context(&self, device: &Device) -> Tensor<3> {
        self.0.null_context(device)
    }
    fn key(&self) -> String {
        self.0.key()
    }
}

#[test]
fn a_nan_loss_stops_without_overwriting_checkpoints() {
    let device = Device::flex();
    let run = tempfile::tempdir().unwrap();
    let mut c = config(20);
    c.grad_accum = 1;
    c.checkpoint_every = 1;
    let err = train(&c, &Poisoned(data()), run.path(), &device, false).unwrap_err();
    assert!(
        matches!(err, TrainError::Diverged { loss, .. } if loss.is_nan()),
        "{err:?}"
    );
    let kept = checkpoint::list(run.path());
    assert!(!kept.is_empty());
    let (step, dir) = kept.last().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64().unwrap(), *step);
    assert!(state["last_loss"].as_f64().unwrap().is_finite());
}
