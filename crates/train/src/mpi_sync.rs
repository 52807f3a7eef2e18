//! Data parallelism across processes through MPI (feature `mpi`): one process per rank, each
//! computing its contiguous shard of every micro-batch ([`shard_ranges`] over the world), the
//! shard-size-weighted gradients summed by an all-reduce. Every rank then takes the same AdamW
//! step on the same sums, so N ranks train the model one process trains with the whole batch
//! (up to float rounding); rank 0 alone writes the run directory.

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use crate::error::TrainError;
use crate::parallel::shard_ranges;
use crate::params::Named;
use crate::sync::{GradSync, ShardGrads};

/// The MPI world as a [`GradSync`]; MPI is finalised when it is dropped.
pub struct MpiSync {
    /// Autodiff device of this rank.
    device: Device,
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    _universe: Universe,
}

impl MpiSync {
    /// Joins the MPI world (started by `mpirun` / `srun --mpi=pmix`, or a world of one) and
    /// checks that every rank gets rows of a `batch_size` micro-batch.
    pub fn new(device: &Device, batch_size: usize) -> Result<Self, TrainError> {
        // Funneled: only the thread that calls `reduce` talks to MPI.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| TrainError::settings("mpi", "MPI is already initialised"))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if batch_size < size {
            return Err(TrainError::settings(
                "batch_size",
                format!(
                    "{batch_size} rows cannot be split over {size} MPI ranks (each needs at \
                     least one); use a batch of at least {size} or fewer ranks"
                ),
            ));
        }
        Ok(Self {
            device: device.clone().inner().autodiff(),
            world,
            rank,
            size,
            _universe: universe,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl GradSync for MpiSync {
    fn weights_device(&self) -> &Device {
        &self.device
    }

    fn local_shards(&self, rows: usize) -> Vec<(Range<usize>, Device)> {
        let range = shard_ranges(rows, self.size).swap_remove(self.rank);
        vec![(range, self.device.clone())]
    }

    fn reduce(&self, shards: Vec<ShardGrads>, rows: usize) -> Result<(f64, Named), TrainError> {
        let [shard] = <[ShardGrads; 1]>::try_from(shards)
            .map_err(|_| TrainError::settings("mpi", "one shard per rank expected"))?;
        let weight = shard.rows.len() as f64 / rows as f64;
        let device = self.device.clone().inner();
        // Names in BTreeMap order: the same on every rank, as the model is the same.
        let mut flat = Vec::new();
        let mut lengths = Vec::with_capacity(shard.grads.len());
        for (name, g) in shard.grads {
            let data = g.mul_scalar(weight).into_data().convert::<f32>();
            let values = data
                .try_into_vec::<f32>()
                .map_err(|e| TrainError::settings("mpi", format!("gradient {name}: {e:?}")))?;
            lengths.push((name, values.len()));
            flat.extend(values);
        }
        let mut summed = vec![0f32; flat.len()];
        self.world
            .all_reduce_into(&flat[..], &mut summed[..], SystemOperation::sum());
        let mut loss = 0f64;
        self.world
            .all_reduce_into(&(weight * shard.loss), &mut loss, SystemOperation::sum());
        let mut grads = Named::new();
        let mut start = 0;
        for (name, len) in lengths {
            let values = summed[start..start + len].to_vec();
            start += len;
            let tensor = Tensor::from_data(TensorData::new(values, [len]), &device);
            grads.insert(name, tensor);
        }
        Ok((loss, grads))
    }

    fn writes(&self) -> bool {
        self.rank == 0
    }
}
