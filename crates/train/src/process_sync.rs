//! Data parallelism across processes over any all-reduce engine (MPI on CPUs, NCCL on GPUs):
//! one process per rank, each computing its contiguous shard of every micro-batch
//! ([`shard_ranges`] over the world), the shard-size-weighted gradients summed by the engine.
//! Every rank then takes the same AdamW step on the same sums, so N ranks train the model one
//! process trains with the whole batch (up to float rounding); rank 0 alone writes the run.

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::TrainError;
use crate::parallel::shard_ranges;
use crate::params::Named;
use crate::sync::{GradSync, ShardGrads};

/// A world of processes that can sum numbers element-wise across all ranks.
pub trait AllReduce {
    /// Name of the engine, for errors.
    const ENGINE: &'static str;
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Replaces `values` by their element-wise sum over the ranks.
    fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError>;
    /// The sum of `value` over the ranks.
    fn sum_f64(&self, value: f64) -> Result<f64, TrainError>;
}

/// A [`GradSync`] with one shard per process, summed by `E`.
pub struct ProcessSync<E: AllReduce> {
    /// Autodiff device of this rank.
    device: Device,
    engine: E,
}

impl<E: AllReduce> ProcessSync<E> {
    /// This rank on `device`, for micro-batches of `batch_size` rows (each rank needs one).
    pub fn new(engine: E, device: &Device, batch_size: usize) -> Result<Self, TrainError> {
        let size = engine.size();
        if batch_size < size {
            return Err(TrainError::settings(
                "batch_size",
                format!(
                    "{batch_size} rows cannot be split over {size} {} ranks (each needs at \
                     least one); use a batch of at least {size} or fewer ranks",
                    E::ENGINE
                ),
            ));
        }
        Ok(Self {
            device: device.clone().inner().autodiff(),
            engine,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.engine.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.engine.size()
    }

    fn engine_error(&self, message: String) -> TrainError {
        TrainError::settings(E::ENGINE.to_lowercase(), message)
    }
}

impl<E: AllReduce> GradSync for ProcessSync<E> {
    fn weights_device(&self) -> &Device {
        &self.device
    }

    fn local_shards(&self, rows: usize) -> Vec<(Range<usize>, Device)> {
        let range = shard_ranges(rows, self.size()).swap_remove(self.rank());
        vec![(range, self.device.clone())]
    }

    fn reduce(&self, shards: Vec<ShardGrads>, rows: usize) -> Result<(f64, Named), TrainError> {
        let [shard] = <[ShardGrads; 1]>::try_from(shards)
            .map_err(|_| self.engine_error("one shard per rank expected".into()))?;
        let weight = shard.rows.len() as f64 / rows as f64;
        // Names in BTreeMap order: the same on every rank, as the model is the same.
        let mut flat = Vec::new();
        let mut lengths = Vec::with_capacity(shard.grads.len());
        for (name, g) in shard.grads {
            let data = g.mul_scalar(weight).into_data().convert::<f32>();
            let values = data
                .try_into_vec::<f32>()
                .map_err(|e| self.engine_error(format!("gradient {name}: {e:?}")))?;
            lengths.push((name, values.len()));
            flat.extend(values);
        }
        self.engine.sum_f32(&mut flat)?;
        let loss = self.engine.sum_f64(weight * shard.loss)?;
        let device = self.device.clone().inner();
        let mut grads = Named::new();
        let mut start = 0;
        for (name, len) in lengths {
            let values = flat[start..start + len].to_vec();
            start += len;
            grads.insert(
                name,
                Tensor::from_data(TensorData::new(values, [len]), &device),
            );
        }
        Ok((loss, grads))
    }

    fn writes(&self) -> bool {
        self.rank() == 0
    }
}
