//! Where a training step runs: device names (`cpu`, `cuda:N`) and data parallelism over several
//! devices.
//!
//! A micro-batch is drawn exactly as on one device (same examples, timesteps, noise and text
//! dropout), split into contiguous shards, one per device; each device runs forward and backward
//! on its shard with its own replica of the model; the gradients are moved to the first device,
//! weighted by shard size and summed by parameter name. The caller then takes one AdamW step
//! there and the next step forks the updated weights to the replicas again. The result equals one
//! device with the whole batch up to float rounding (the loss is a mean over samples).
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
use burn::tensor::{Device, Tensor};
use ldmscale_diffusion::objective::DiffusionObjective;
use ldmscale_model::UNet;

use crate::params::{self, Named};

/// The device a name denotes: `cpu` (burn's flex backend) or `cuda` / `cuda:N` (burn's CUDA
/// backend, in builds with the `cuda` feature). `field` names the setting in errors.
pub fn parse_device(name: &str, field: &str) -> Result<Device, String> {
    let name = name.trim();
    if name == "cpu" {
        return Ok(Device::flex());
    }
    let index = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| {
                format!("{field} = {name:?}: expected \"cpu\", \"cuda\" or \"cuda:N\"")
            })?,
        None => {
            return Err(format!(
                "{field} = {name:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""
            ));
        }
    };
    cuda(index, name, field)
}

#[cfg(feature = "cuda")]
fn cuda(index: usize, _name: &str, _field: &str) -> Result<Device, String> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize, name: &str, field: &str) -> Result<Device, String> {
    Err(format!(
        "{field} = {name:?}: this build has no CUDA support; rebuild with the cargo feature `cuda` (README.md, section GPUs)"
    ))
}

/// Parses a list of device names (see [`parse_device`]); `field` names the setting in errors.
pub fn parse_devices(names: &[String], field: &str) -> Result<Vec<Device>, String> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| parse_device(n, &format!("{field}[{i}]")))
        .collect()
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

/// One micro-batch before splitting, on the first device's plain (non-autodiff) side.
pub struct MicroBatch {
    /// Clean latents `[B, C, h, w]`.
    pub x0: Tensor<4>,
    /// Noise `[B, C, h, w]`.
    pub noise: Tensor<4>,
    /// Text states after dropout `[B, L, D]`.
    pub context: Tensor<3>,
    /// One training timestep per sample.
    pub timesteps: Vec<usize>,
}

/// The loss (mean over the micro-batch) and its gradients by parameter name, flattened, on the
/// plain side of `devices[0]`, where `model` lives. `devices` are the autodiff devices of the
/// replicas; the first must be `model`'s own.
pub fn gradients(
    model: &UNet,
    devices: &[Device],
    objective: &DiffusionObjective,
    batch: MicroBatch,
) -> Result<(f64, Named), String> {
    let n = batch.timesteps.len();
    let shards = shard_ranges(n, devices.len());
    if shards.len() == 1 {
        // One device: no split, no weighting, no copies (keeps the single-device arithmetic).
        return shard_gradients(model, &devices[0], objective, &batch, 0..n);
    }
    let main = devices[0].clone().inner();
    let results: Vec<Result<(f64, Named), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .enumerate()
            .skip(1)
            .map(|(k, range)| {
                let replica = model.clone();
                let device = devices[k].clone();
                let batch = &batch;
                let range = range.clone();
                scope.spawn(move || {
                    let replica = replica.fork(&device);
                    shard_gradients(&replica, &device, objective, batch, range)
                })
            })
            .collect();
        // The first shard runs here, on the model itself, while the others run on theirs.
        let mut out = vec![shard_gradients(
            model,
            &devices[0],
            objective,
            &batch,
            shards[0].clone(),
        )];
        out.extend(handles.into_iter().map(|h| {
            h.join()
                .unwrap_or_else(|e| Err(format!("a data-parallel worker panicked: {e:?}")))
        }));
        out
    });
    let mut loss = 0.0;
    let mut sum = Named::new();
    for (result, range) in results.into_iter().zip(&shards) {
        let (shard_loss, grads) = result?;
        let weight = range.len() as f64 / n as f64;
        loss += weight * shard_loss;
        for (name, g) in grads {
            let g = g.to_device(&main).mul_scalar(weight);
            let next = match sum.remove(&name) {
                Some(acc) => acc.add(g),
                None => g,
            };
            sum.insert(name, next);
        }
    }
    Ok((loss, sum))
}

/// Forward and backward of `model` (on autodiff device `device`) over samples `range`.
fn shard_gradients(
    model: &UNet,
    device: &Device,
    objective: &DiffusionObjective,
    batch: &MicroBatch,
    range: Range<usize>,
) -> Result<(f64, Named), String> {
    let whole = range.len() == batch.timesteps.len();
    let take4 = |t: &Tensor<4>| {
        let t = if whole {
            t.clone()
        } else {
            t.clone().narrow(0, range.start, range.len())
        };
        t.to_device(device).autodiff()
    };
    let x0 = take4(&batch.x0);
    let noise = take4(&batch.noise);
    let context = if whole {
        batch.context.clone()
    } else {
        batch.context.clone().narrow(0, range.start, range.len())
    }
    .to_device(device)
    .autodiff();
    let t = &batch.timesteps[range];
    let pair = objective.pair(x0, noise, t).map_err(|e| e.to_string())?;
    let t_f32: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let out = model.forward(pair.noisy.clone(), &t_f32, context);
    let loss = objective.loss(out, &pair).map_err(|e| e.to_string())?;
    let value = loss.clone().into_scalar::<f32>() as f64;
    let grads = params::named_gradients(model, GradientsParams::from_grads(loss.backward(), model));
    Ok((value, grads))
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

    #[test]
    fn device_names_are_checked() {
        assert!(parse_device("cpu", "train.devices[0]").is_ok());
        let e = parse_device("gpu0", "train.devices[1]").unwrap_err();
        assert!(
            e.contains("train.devices[1]") && e.contains("cuda:N"),
            "{e}"
        );
        let e = parse_device("cuda:x", "--device").unwrap_err();
        assert!(e.contains("--device"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = parse_device("cuda:1", "--device").unwrap_err();
            assert!(e.contains("feature `cuda`"), "{e}");
        }
    }
}
