//! How the gradients of a batch's shards become the gradients of the batch.
//!
//! [`GradSync`] places a batch's rows on this process's devices and combines what they
//! computed. [`DeviceThreads`], today's data parallelism, runs every shard in this process, one
//! thread per device. A multi-process back-end (NCCL across GPUs, MPI across hosts) gives each
//! rank its range from the same pure [`shard_ranges`], so N ranks equal one process with the
//! whole batch, and all-reduces the weighted sums in `reduce`.

use std::ops::Range;

use burn::tensor::Device;

use crate::error::TrainError;
use crate::parallel::shard_ranges;
use crate::params::Named;

/// The loss and gradients (by parameter name) of one shard, on the device that computed them.
pub struct ShardGrads {
    /// The batch rows of the shard.
    pub rows: Range<usize>,
    /// The shard's loss (a mean over its rows).
    pub loss: f64,
    /// The shard's gradients.
    pub grads: Named,
}

/// Where the shards of a batch run and how their gradients are combined.
///
/// Shaped as placement plus reduction over a process's shards (rather than one call per
/// shard): the threads back-end sums shards of one process without a barrier, and a
/// multi-process back-end reduces its one local shard with the other ranks'.
pub trait GradSync {
    /// The autodiff device holding the weights, the optimizer state and the EMA.
    fn weights_device(&self) -> &Device;
    /// The shards of a batch of `rows` rows this process computes, each with the autodiff
    /// device it runs on; the first runs on [`GradSync::weights_device`].
    fn local_shards(&self, rows: usize) -> Vec<(Range<usize>, Device)>;
    /// The loss and gradients of the whole batch on the weights' plain device: each shard
    /// weighted by its share of the `rows`, summed by parameter name.
    fn reduce(&self, shards: Vec<ShardGrads>, rows: usize) -> Result<(f64, Named), TrainError>;
    /// Whether this process writes the run directory (checkpoints, metrics, models, the
    /// evaluation hook's files): rank 0 alone in a multi-process run.
    fn writes(&self) -> bool {
        true
    }
}

/// Data parallelism in one process: contiguous shards over the devices, one thread each, the
/// gradients moved to the first device and summed there.
pub struct DeviceThreads {
    /// Autodiff devices; the first holds the weights.
    devices: Vec<Device>,
}

impl DeviceThreads {
    /// Shards over `devices` (plain or autodiff; the first holds the weights).
    pub fn new(devices: &[Device]) -> Result<Self, TrainError> {
        if devices.is_empty() {
            return Err(TrainError::settings("devices", "name at least one device"));
        }
        Ok(Self {
            devices: devices
                .iter()
                .map(|d| d.clone().inner().autodiff())
                .collect(),
        })
    }
}

impl GradSync for DeviceThreads {
    fn weights_device(&self) -> &Device {
        &self.devices[0]
    }

    fn local_shards(&self, rows: usize) -> Vec<(Range<usize>, Device)> {
        let ranges = shard_ranges(rows, self.devices.len());
        ranges
            .into_iter()
            .zip(self.devices.iter().cloned())
            .collect()
    }

    fn reduce(&self, shards: Vec<ShardGrads>, rows: usize) -> Result<(f64, Named), TrainError> {
        if let [one] = &shards[..]
            && one.rows.len() == rows
        {
            // One device: no weighting, no copies (keeps the single-device arithmetic).
            let one = shards.into_iter().next().expect("one shard");
            return Ok((one.loss, one.grads));
        }
        let main = self.devices[0].clone().inner();
        let mut loss = 0.0;
        let mut sum = Named::new();
        for shard in shards {
            let weight = shard.rows.len() as f64 / rows as f64;
            loss += weight * shard.loss;
            for (name, g) in shard.grads {
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
}
