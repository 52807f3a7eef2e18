//! Where a training step runs: device names (`cpu`, `cuda:N`) and data parallelism over several
//! devices.
//!
//! A micro-batch is drawn exactly as on one device (same examples, timesteps, noise and text
//! dropout), split into contiguous shards, one per device; each device runs forward and backward
//! on its shard with its own replica of the model; the gradients are moved to the first device,
//! weighted by shard size and summed by parameter name ([`crate::sync::DeviceThreads`]). The
//! caller then takes one AdamW step there and the next step forks the updated weights to the
//! replicas again. The result equals one device with the whole batch up to float rounding (the
//! loss is a mean over samples).
//!
//! burn-train's multi-device strategy does the same fork / gradients-to-main-device / one
//! optimizer step, but inside its `Learner`: its optimizer state is keyed by burn's `ParamId`
//! (our checkpoints key AdamW moments and EMA by parameter name for bit-identical resume), each
//! device reads its own data-loader batch (so the step differs from one device with the whole
//! batch), and its accumulator adds the per-device gradients unweighted. So this module keeps
//! the loop and borrows only the pattern.

use std::ops::Range;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use ldmscale_model::UNet;

use crate::error::{DeviceProblem, TrainError};
use crate::params::{self, Named};
use crate::sync::{GradSync, ShardGrads};
use crate::task::ShardLoss;

/// The device a name denotes: `cpu` (burn's flex backend) or `cuda` / `cuda:N` (burn's CUDA
/// backend, in builds with the `cuda` feature). `field` names the setting in errors.
pub fn parse_device(name: &str, field: &str) -> Result<Device, TrainError> {
    let name = name.trim();
    let problem = |reason| TrainError::Device {
        field: field.into(),
        name: name.into(),
        reason,
    };
    if name == "cpu" {
        return Ok(Device::flex());
    }
    let index = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| problem(DeviceProblem::UnknownName))?,
        None => return Err(problem(DeviceProblem::UnknownName)),
    };
    cuda(index).ok_or_else(|| problem(DeviceProblem::NoCuda))
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Option<Device> {
    Some(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Option<Device> {
    None
}

/// Parses a list of device names (see [`parse_device`]); `field` names the setting in errors.
pub fn parse_devices(names: &[String], field: &str) -> Result<Vec<Device>, TrainError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| parse_device(n, &format!("{field}[{i}]")))
        .collect()
}

/// The plain devices a run's steps run on: `config.devices` when given, else `device`. The
/// first holds the weights, the optimizer state and the EMA, and is where the evaluation hook
/// gets its model.
pub fn training_devices(
    config: &crate::TrainConfig,
    device: &Device,
) -> Result<Vec<Device>, TrainError> {
    if config.devices.is_empty() {
        return Ok(vec![device.clone()]);
    }
    parse_devices(&config.devices, "train.devices")
}

/// Contiguous shards of `n` samples over `k` devices, sizes differing by at most one (the first
/// ones larger); devices beyond `n` get none and are left out.
pub fn shard_ranges(n: usize, k: usize) -> Vec<Range<usize>> {
    let k = k.max(1);
    let (base, extra) = (n / k, n % k);
    let mut start = 0;
    (0..k)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// The loss (mean over `batch`) and its gradients by parameter name, flattened, on the
/// weights' plain device, from the shards `sync` places in this process: the first runs on
/// `model` (which lives on [`GradSync::weights_device`]), the others at the same time on
/// replicas forked to their devices, one thread each.
pub fn batch_gradients<B: Sync, L: ShardLoss<B>>(
    model: &UNet,
    sync: &dyn GradSync,
    loss: &L,
    batch: B,
) -> Result<(f64, Named), TrainError> {
    let rows = loss.rows(&batch);
    let shards = sync.local_shards(rows);
    let results = std::thread::scope(|scope| {
        let batch = &batch;
        let handles: Vec<_> = shards[1..]
            .iter()
            .map(|(range, device)| {
                let replica = model.clone();
                scope.spawn(move || {
                    let replica = replica.fork(device);
                    shard_gradients(&replica, device, loss, batch, range.clone())
                })
            })
            .collect();
        let (range, device) = &shards[0];
        let mut out = vec![shard_gradients(model, device, loss, batch, range.clone())];
        out.extend(handles.into_iter().enumerate().map(|(i, h)| {
            h.join().unwrap_or_else(|panic| {
                Err(TrainError::WorkerPanicked {
                    shard: i + 1,
                    message: panic_message(panic.as_ref()),
                })
            })
        }));
        out
    });
    let results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    sync.reduce(results, rows)
}

/// Forward and backward of `model` (on autodiff device `device`) over rows `rows` of `batch`.
fn shard_gradients<B, L: ShardLoss<B>>(
    model: &UNet,
    device: &Device,
    loss: &L,
    batch: &B,
    rows: Range<usize>,
) -> Result<ShardGrads, TrainError> {
    let shard = loss.shard(batch, rows.clone(), device);
    let value = loss.loss(model, shard)?;
    let scalar = value.clone().into_scalar::<f32>() as f64;
    let grads =
        params::named_gradients(model, GradientsParams::from_grads(value.backward(), model));
    Ok(ShardGrads {
        rows,
        loss: scalar,
        grads,
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_evenly() {
        assert_eq!(shard_ranges(8, 2), vec![0..4, 4..8]);
        assert_eq!(shard_ranges(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(shard_ranges(2, 4), vec![0..1, 1..2]);
        assert_eq!(shard_ranges(5, 1), vec![0..5]);
    }

    fn problem(name: &str, field: &str) -> (String, DeviceProblem) {
        match parse_device(name, field) {
            Err(TrainError::Device { field, reason, .. }) => (field, reason),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn device_names_are_checked() {
        assert!(parse_device("cpu", "train.devices[0]").is_ok());
        let unknown = DeviceProblem::UnknownName;
        assert_eq!(
            problem("gpu0", "train.devices[1]"),
            ("train.devices[1]".into(), unknown.clone())
        );
        assert_eq!(problem("cuda:x", "--device"), ("--device".into(), unknown));
        #[cfg(not(feature = "cuda"))]
        assert_eq!(
            problem("cuda:1", "--device"),
            ("--device".into(), DeviceProblem::NoCuda)
        );
    }
}
