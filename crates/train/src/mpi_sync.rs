//! Data parallelism across processes through MPI (feature `mpi`), for CPUs: the ranks started
//! by `mpirun` or `srun --mpi=pmix` sum their gradients with MPI's all-reduce
//! ([`ProcessSync`] does the rest).

use burn::tensor::Device;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use crate::error::TrainError;
use crate::process_sync::{AllReduce, ProcessSync};

/// The MPI world; MPI is finalised when it is dropped.
pub struct MpiWorld {
    world: SimpleCommunicator,
    _universe: Universe,
}

/// Data parallelism over the MPI world.
pub type MpiSync = ProcessSync<MpiWorld>;

impl MpiWorld {
    /// Joins the MPI world (started by `mpirun` / `srun --mpi=pmix`, or a world of one).
    pub fn join() -> Result<Self, TrainError> {
        // Funneled: only the thread that calls `reduce` talks to MPI.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| TrainError::settings("mpi", "MPI is already initialised"))?;
        Ok(Self {
            world: universe.world(),
            _universe: universe,
        })
    }
}

impl MpiSync {
    /// Joins the MPI world and checks that every rank gets rows of a `batch_size` micro-batch.
    pub fn join(device: &Device, batch_size: usize) -> Result<Self, TrainError> {
        ProcessSync::new(MpiWorld::join()?, device, batch_size)
    }
}

impl AllReduce for MpiWorld {
    const ENGINE: &'static str = "MPI";

    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError> {
        let mut summed = vec![0f32; values.len()];
        self.world
            .all_reduce_into(&values[..], &mut summed[..], SystemOperation::sum());
        values.copy_from_slice(&summed);
        Ok(())
    }

    fn sum_f64(&self, value: f64) -> Result<f64, TrainError> {
        let mut sum = 0f64;
        self.world
            .all_reduce_into(&value, &mut sum, SystemOperation::sum());
        Ok(sum)
    }
}
