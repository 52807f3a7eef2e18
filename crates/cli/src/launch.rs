//! The rank flags of training commands, and what a rank may do in this build.

use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::Args;
#[cfg(feature = "mpi")]
use ldmscale_train::mpi_sync::MpiSync;
use ldmscale_train::parallel::training_devices;
use ldmscale_train::{
    DeviceThreads, EvalHook, GradSync, RunSummary, TrainConfig, TrainTask, TrainingData, train_task,
};
use ldmscale_util::launch::{self, Env, RankFlags, Ranks};
use ldmscale_util::lock::DirLock;

/// Who this process is in a multi-process run. Flags override the launcher's variables, read
/// in this order: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), srun
/// (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST), mpirun
/// (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK), a Kubernetes Indexed Job (JOB_COMPLETION_INDEX,
/// with --world-size). `--device cuda` then means cuda:LOCAL_RANK.
#[derive(Args, Debug, Clone, Default)]
pub struct LaunchArgs {
    /// This process's rank (default: from the launcher, else 0).
    #[arg(long, value_name = "N")]
    pub rank: Option<usize>,
    /// Number of processes (default: from the launcher, else 1).
    #[arg(long, value_name = "N")]
    pub world_size: Option<usize>,
    /// Rank on this host; picks the GPU (default: from the launcher, else 0).
    #[arg(long, value_name = "N")]
    pub local_rank: Option<usize>,
    /// Host of rank 0 (default: MASTER_ADDR, the first Slurm node, else 127.0.0.1).
    #[arg(long, value_name = "HOST")]
    pub master_addr: Option<String>,
    /// Port of rank 0 (default: MASTER_PORT, one derived from SLURM_JOB_ID, else 29500).
    #[arg(long, value_name = "PORT")]
    pub master_port: Option<u16>,
}

impl LaunchArgs {
    /// The ranks from these flags and `env`.
    pub fn ranks(&self, env: &Env) -> Result<Ranks> {
        let flags = RankFlags {
            rank: self.rank,
            world_size: self.world_size,
            local_rank: self.local_rank,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
        };
        Ok(launch::ranks(&flags, env)?)
    }
}

/// This process's ranks, its device (`device` names it; a bare `cuda` is the rank's GPU) and,
/// for a GPU, the GPU's index: what [`Rank::join`] takes.
pub fn resolve(device: &str, launch: &LaunchArgs) -> Result<(Device, Ranks, Option<usize>)> {
    let env = launch::process_env();
    let ranks = launch.ranks(&env)?;
    let name = rank_device(device, &ranks, &env)?;
    let parsed = ldmscale_train::parallel::parse_device(&name, "--device")?;
    Ok((parsed, ranks, gpu_index(&name)))
}

/// N of a `cuda:N` device name (a bare `cuda` is resolved by [`rank_device`] first).
pub fn gpu_index(name: &str) -> Option<usize> {
    name.trim().strip_prefix("cuda:")?.parse().ok()
}

/// The device name a rank trains on: a bare `cuda` becomes `cuda:N`, N the rank's GPU
/// (see [`launch::cuda_index`]); other names are kept.
pub fn rank_device(device: &str, ranks: &Ranks, env: &Env) -> Result<String> {
    if device.trim() == "cuda" {
        return Ok(format!("cuda:{}", launch::cuda_index(ranks, env)?));
    }
    Ok(device.to_string())
}

/// This process's part in training: alone (threads over its `--devices`), or one rank of a
/// multi-process world whose ranks split every batch: NCCL when the device is a GPU (builds
/// with `cuda`, which implies `nccl`), MPI otherwise (builds with `mpi`).
pub struct Rank {
    /// Who this process is.
    pub ranks: Ranks,
    /// The device it trains on.
    pub device: Device,
    world: Option<Box<dyn GradSync>>,
}

/// How long ranks wait for each other at start (rank 0's listener, the others' connection).
#[cfg(feature = "nccl")]
const RENDEZVOUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl Rank {
    /// Joins the run `ranks` describes, for batches of `batch_size` rows; the engine is
    /// started once and serves every run of this process.
    /// `gpu` is N when the device is `cuda:N`.
    pub fn join(
        ranks: Ranks,
        device: Device,
        gpu: Option<usize>,
        batch_size: usize,
    ) -> Result<Self> {
        let world = match (ranks.world_size, gpu) {
            (1, _) => None,
            (_, Some(gpu)) => Some(join_nccl(&ranks, &device, gpu, batch_size)?),
            (_, None) => Some(join_mpi(&ranks, &device, batch_size)?),
        };
        Ok(Rank {
            ranks,
            device,
            world,
        })
    }

    /// Whether this process writes outputs (rank 0).
    pub fn writes(&self) -> bool {
        self.ranks.writes()
    }

    /// The lock on `out` for `command`, taken by rank 0 alone (the others never write there).
    pub fn lock(&self, out: &Path, command: &str) -> Result<Option<DirLock>> {
        match self.writes() {
            true => Ok(Some(DirLock::acquire(out, command)?)),
            false => Ok(None),
        }
    }

    /// The devices this process trains on: its one device in a multi-process run, else
    /// `train.devices` (or `--devices`) when given, else its device.
    pub fn devices(&self, config: &TrainConfig) -> Result<Vec<Device>> {
        if self.world.is_none() {
            return Ok(training_devices(config, &self.device)?);
        }
        if !config.devices.is_empty() {
            bail!(
                "train.devices / --devices: a rank of a multi-process run trains on its one --device"
            );
        }
        Ok(vec![self.device.clone()])
    }

    /// Trains (or resumes) `task` in run `out` as this rank: with the world's sync, or alone
    /// over [`Self::devices`]. Only rank 0 shows progress.
    pub fn train_task<T: TrainTask>(
        &self,
        config: &TrainConfig,
        task: &T,
        out: &Path,
        show: bool,
    ) -> Result<RunSummary> {
        let show = show && self.writes();
        Ok(match &self.world {
            Some(sync) => train_task(config, task, sync.as_ref(), out, show, None)?,
            None => {
                let sync = DeviceThreads::new(&self.devices(config)?)?;
                train_task(config, task, &sync, out, show, None)?
            }
        })
    }

    /// Refuses work only one process may do (`what`) in a multi-process run.
    pub fn alone(&self, what: &str) -> Result<()> {
        if self.ranks.world_size > 1 {
            bail!(
                "{what} is done by one process; run it once without a launcher (world size {} \
                 from {}), then start the ranks",
                self.ranks.world_size,
                self.ranks.launcher
            );
        }
        Ok(())
    }

    /// Trains (or resumes) text-to-image run `out` as this rank.
    pub fn train(
        &self,
        config: &TrainConfig,
        data: &dyn TrainingData,
        out: &Path,
        show: bool,
        hook: Option<EvalHook<'_>>,
    ) -> Result<RunSummary> {
        if let Some(sync) = &self.world {
            self.devices(config)?;
            let task = ldmscale_train::TextToImage::new(config, data, &self.device)?;
            let show = show && self.writes();
            return Ok(ldmscale_train::train_task(
                config,
                &task,
                sync.as_ref(),
                out,
                show,
                hook,
            )?);
        }
        Ok(ldmscale_train::train_with_hook(
            config,
            data,
            out,
            &self.device,
            show,
            hook,
        )?)
    }
}

#[cfg(feature = "nccl")]
fn join_nccl(
    ranks: &Ranks,
    device: &Device,
    gpu: usize,
    batch_size: usize,
) -> Result<Box<dyn GradSync>> {
    use ldmscale_train::nccl_sync::{NcclRank, NcclSync};
    let who = NcclRank {
        rank: ranks.rank,
        world_size: ranks.world_size,
        gpu,
        master_addr: ranks.master_addr.clone(),
        master_port: ranks.master_port,
        timeout: RENDEZVOUS_TIMEOUT,
    };
    Ok(Box::new(NcclSync::join(&who, device, batch_size)?))
}

#[cfg(not(feature = "nccl"))]
fn join_nccl(
    ranks: &Ranks,
    _device: &Device,
    _gpu: usize,
    _batch_size: usize,
) -> Result<Box<dyn GradSync>> {
    bail!(
        "world size {} (rank {}) from {} on a GPU: this build has no NCCL; build with \
         `--features cuda`",
        ranks.world_size,
        ranks.rank,
        ranks.launcher
    )
}

#[cfg(feature = "mpi")]
fn join_mpi(ranks: &Ranks, device: &Device, batch_size: usize) -> Result<Box<dyn GradSync>> {
    let sync = MpiSync::join(device, batch_size)?;
    if (sync.rank(), sync.size()) != (ranks.rank, ranks.world_size) {
        bail!(
            "rank {} of {} from {}, but the MPI world has this process as rank {} of {}: \
             start the ranks with mpirun or srun --mpi=pmix",
            ranks.rank,
            ranks.world_size,
            ranks.launcher,
            sync.rank(),
            sync.size()
        );
    }
    Ok(Box::new(sync))
}

/// Refuses a multi-process run this build cannot synchronise: its ranks would train apart and
/// race on one output directory.
#[cfg(not(feature = "mpi"))]
fn join_mpi(ranks: &Ranks, _device: &Device, _batch_size: usize) -> Result<Box<dyn GradSync>> {
    bail!(
        "world size {} (rank {}) from {}: this build has no multi-process gradient sync for \
         the CPU, so the ranks would train separate models; build with `--features mpi` and \
         start the ranks with mpirun, train on GPUs (`--features cuda`, NCCL), run one \
         process, or split a batch over this process's devices with --devices",
        ranks.world_size,
        ranks.rank,
        ranks.launcher
    )
}
