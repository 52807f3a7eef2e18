//! A task from outside the crate plugs into the loop: per-row weighted batches (DreamBooth's
//! instance and prior rows) train through `train_task`, shard like the built-in task, and with
//! uniform weights train the same bits as text-to-image.

mod common;

use std::ops::Range;
use std::path::Path;

use burn::tensor::{Device, Tensor};
use ldmscale_diffusion::objective::{DiffusionObjective, weighted_mse};
use ldmscale_diffusion::{NoiseSchedule, PredictionType, SchedulerConfig};
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_train::params::read_named;
use ldmscale_train::tasks::{TextImageBatch, TextToImage};
use ldmscale_train::{
    DeviceThreads, ModelConfig, ShardLoss, SyntheticData, TrainConfig, TrainError, TrainTask,
    checkpoint, train, train_task,
};
use rand::rngs::StdRng;

/// Text-to-image batches whose rows weigh `weight(index)` in the loss.
struct Weighted<'d> {
    inner: TextToImage<'d>,
    loss: WeightedLoss,
}

struct WeightedBatch {
    inner: TextImageBatch,
    weights: Vec<f32>,
}

struct WeightedLoss {
    objective: DiffusionObjective,
    uniform: bool,
    inner: ldmscale_train::tasks::DenoisingLoss,
}

impl WeightedLoss {
    fn weight(&self, index: usize) -> f32 {
        match (self.uniform, index % 2) {
            (true, _) => 1.0,
            (false, 0) => 2.0,
            (false, _) => 0.5,
        }
    }
}

impl TrainTask for Weighted<'_> {
    type Batch = WeightedBatch;
    type Loss = WeightedLoss;

    fn data_key(&self) -> String {
        self.inner.data_key()
    }
    fn examples(&self) -> usize {
        self.inner.examples()
    }
    fn unet_config(&self, model: &ModelConfig) -> UNetConfig {
        self.inner.unet_config(model)
    }
    fn forward_size(&self) -> [usize; 3] {
        self.inner.forward_size()
    }
    fn draw(
        &self,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<WeightedBatch, TrainError> {
        Ok(WeightedBatch {
            inner: self.inner.draw(indices, rng, device)?,
            weights: indices.iter().map(|&i| self.loss.weight(i)).collect(),
        })
    }
    fn shard_loss(&self) -> &WeightedLoss {
        &self.loss
    }
}

impl ShardLoss<WeightedBatch> for WeightedLoss {
    fn rows(&self, batch: &WeightedBatch) -> usize {
        batch.weights.len()
    }
    fn shard(&self, batch: &WeightedBatch, rows: Range<usize>, device: &Device) -> WeightedBatch {
        WeightedBatch {
            inner: self.inner.shard(&batch.inner, rows.clone(), device),
            weights: batch.weights[rows].to_vec(),
        }
    }
    fn loss(&self, unet: &UNet, shard: WeightedBatch) -> Result<Tensor<1>, TrainError> {
        let b = shard.inner;
        let pair = self.objective.pair(b.x0, b.noise, &b.timesteps)?;
        let t: Vec<f32> = b.timesteps.iter().map(|&v| v as f32).collect();
        let out = unet.forward(pair.noisy.clone(), &t, b.context);
        let weights: Vec<f32> = pair
            .weights
            .iter()
            .zip(&shard.weights)
            .map(|(a, w)| a * w)
            .collect();
        Ok(weighted_mse(out, pair.target, &weights)?)
    }
}

fn config(batch: usize) -> TrainConfig {
    common::config(&format!(
        "steps = 3\nbatch_size = {batch}\ngrad_accum = 2\nlearning_rate = 2e-3\nwarmup_steps = 1\ngrad_clip = 1.0\ncheckpoint_every = 3"
    ))
}

fn data() -> SyntheticData {
    common::data(10)
}

/// Trains the weighted task on `devices` CPU threads into `run`.
fn train_weighted(config: &TrainConfig, uniform: bool, devices: usize, run: &Path) {
    let data = data();
    let cpu = Device::flex();
    let schedule = NoiseSchedule::new(&SchedulerConfig::sd()).unwrap();
    let objective = DiffusionObjective::new(schedule, PredictionType::Epsilon, None).unwrap();
    let task = Weighted {
        inner: TextToImage::new(config, &data, &cpu).unwrap(),
        loss: WeightedLoss {
            objective: objective.clone(),
            uniform,
            inner: ldmscale_train::tasks::DenoisingLoss::new(objective),
        },
    };
    let sync = DeviceThreads::new(&vec![cpu; devices]).unwrap();
    let summary = train_task(config, &task, &sync, run, false, None).unwrap();
    assert_eq!(summary.state.step, 3);
}

/// The final checkpoint's weights, AdamW moments and EMA, flattened in name order.
fn final_state(run: &Path) -> Vec<f32> {
    let (_, dir) = checkpoint::list(run).pop().expect("a checkpoint");
    let bytes = std::fs::read(dir.join("optimizer.safetensors")).unwrap();
    let mut out = Vec::new();
    for group in ["param/", "m/", "ema/"] {
        for (_, v) in read_named(&bytes, group, &Device::flex()).unwrap() {
            out.extend(v.into_data().try_to_vec::<f32>().unwrap());
        }
    }
    out
}

#[test]
fn uniform_weights_train_the_text_to_image_bits() {
    let (plain, weighted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(&config(4), &data(), plain.path(), &Device::flex(), false).unwrap();
    train_weighted(&config(4), true, 1, weighted.path());
    assert!(final_state(plain.path()) == final_state(weighted.path()));
}

#[test]
fn weighted_rows_shard_like_one_batch() {
    let (one, three) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train_weighted(&config(5), false, 1, one.path());
    train_weighted(&config(5), false, 3, three.path());
    let (a, b) = (final_state(one.path()), final_state(three.path()));
    let num: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    let rel = (num / den).sqrt();
    assert!(rel < 1e-5, "3 shards differ from one batch by {rel:e}");
    // The weights matter: they train other weights than uniform rows.
    let uniform = tempfile::tempdir().unwrap();
    train_weighted(&config(5), true, 1, uniform.path());
    assert!(final_state(uniform.path()) != a);
}
