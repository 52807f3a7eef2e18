//! The rank flags of training commands, and what a rank may do in this build.

use anyhow::{Result, bail};
use clap::Args;
use ldmscale_util::launch::{self, Env, RankFlags, Ranks};

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

/// The device name a rank trains on: a bare `cuda` becomes `cuda:N`, N the rank's GPU
/// (see [`launch::cuda_index`]); other names are kept.
pub fn rank_device(device: &str, ranks: &Ranks, env: &Env) -> Result<String> {
    if device.trim() == "cuda" {
        return Ok(format!("cuda:{}", launch::cuda_index(ranks, env)?));
    }
    Ok(device.to_string())
}

/// Refuses a multi-process run this build cannot synchronise: its ranks would train apart and
/// race on one output directory.
pub fn single_process(ranks: &Ranks) -> Result<()> {
    if ranks.world_size > 1 {
        bail!(
            "world size {} (rank {}) from {}: this build has no multi-process gradient sync, \
             so the ranks would train separate models; run one process, or split a batch over \
             this process's devices with --devices",
            ranks.world_size,
            ranks.rank,
            ranks.launcher
        );
    }
    Ok(())
}
