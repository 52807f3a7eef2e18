//! Who this process is in a multi-process run, read from the launcher that started it, and
//! which shard of a job array it computes.
//!
//! Every function takes the environment as a map ([`process_env`] gives the real one), so the
//! conventions are tested on fabricated environments of each launcher. Ranks come from, in
//! this order: flags; torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`); Slurm `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, the first host
//! of `SLURM_JOB_NODELIST`); Open MPI (`OMPI_COMM_WORLD_*`); a Kubernetes Indexed Job
//! (`JOB_COMPLETION_INDEX`, with the count given explicitly); else a single process.

use std::collections::BTreeMap;
use std::fmt;

/// A process environment, variable name to value.
pub type Env = BTreeMap<String, String>;

/// The environment of this process (variables that are not UTF-8 are left out).
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Where the master (rank 0) listens when no launcher says.
pub const DEFAULT_MASTER: (&str, u16) = ("127.0.0.1", 29500);

/// What started the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// Ranks given as flags only.
    Flags,
    /// `torchrun --no-python`.
    Torchrun,
    /// Slurm `srun`.
    Slurm,
    /// Open MPI's `mpirun`.
    OpenMpi,
    /// A Kubernetes Indexed Job.
    KubernetesIndexed,
    /// Nothing: one process.
    Single,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::Flags => "flags",
            Launcher::Torchrun => "torchrun (RANK, WORLD_SIZE)",
            Launcher::Slurm => "srun (SLURM_PROCID, SLURM_NTASKS)",
            Launcher::OpenMpi => "mpirun (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE)",
            Launcher::KubernetesIndexed => "a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)",
            Launcher::Single => "no launcher (one process)",
        })
    }
}

/// Ranks given on the command line; each overrides what the launcher says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RankFlags {
    /// `--rank`.
    pub rank: Option<usize>,
    /// `--world-size`.
    pub world_size: Option<usize>,
    /// `--local-rank`.
    pub local_rank: Option<usize>,
    /// `--master-addr`.
    pub master_addr: Option<String>,
    /// `--master-port`.
    pub master_port: Option<u16>,
}

/// This process's place in the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranks {
    /// Global rank, 0-based.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank among the processes of this host (picks the GPU).
    pub local_rank: usize,
    /// Host of rank 0.
    pub master_addr: String,
    /// Port rank 0 listens on.
    pub master_port: u16,
    /// Where the ranks came from.
    pub launcher: Launcher,
}

impl Ranks {
    /// Whether this process writes checkpoints, logs and metrics (rank 0 alone does).
    pub fn writes(&self) -> bool {
        self.rank == 0
    }
}

/// A launcher variable or flag that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchError {
    /// The variable or flag.
    pub name: String,
    /// What is wrong and what was expected.
    pub problem: String,
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.problem)
    }
}

impl std::error::Error for LaunchError {}

fn error(name: &str, problem: impl Into<String>) -> LaunchError {
    LaunchError {
        name: name.into(),
        problem: problem.into(),
    }
}

/// A whole number from variable `name`, if set.
fn number<T: std::str::FromStr>(env: &Env, name: &str) -> Result<Option<T>, LaunchError> {
    let Some(text) = env.get(name) else {
        return Ok(None);
    };
    text.trim().parse().map(Some).map_err(|_| {
        error(
            name,
            format!("{text:?} is not a whole number (set by the launcher; expected e.g. 0)"),
        )
    })
}

/// The ranks of this process: flags first, then the first launcher whose variables are set.
pub fn ranks(flags: &RankFlags, env: &Env) -> Result<Ranks, LaunchError> {
    let mut ranks = from_launcher(env)?;
    if flags.rank.is_some() || flags.world_size.is_some() {
        if ranks.launcher == Launcher::Single {
            ranks.launcher = Launcher::Flags;
        }
    } else if ranks.launcher == Launcher::KubernetesIndexed {
        return Err(error(
            "--world-size",
            "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but it carries no count: \
             pass --world-size N, N the Job's completions",
        ));
    }
    ranks.rank = flags.rank.unwrap_or(ranks.rank);
    ranks.world_size = flags.world_size.unwrap_or(ranks.world_size);
    ranks.local_rank = flags.local_rank.unwrap_or(ranks.local_rank);
    if let Some(addr) = &flags.master_addr {
        ranks.master_addr = addr.clone();
    }
    ranks.master_port = flags.master_port.unwrap_or(ranks.master_port);
    check(&ranks)?;
    Ok(ranks)
}

fn check(ranks: &Ranks) -> Result<(), LaunchError> {
    if ranks.world_size == 0 {
        return Err(error("world size", "0 processes; expected at least 1"));
    }
    if ranks.rank >= ranks.world_size {
        return Err(error(
            "rank",
            format!(
                "rank {} from {} is not below the world size {}",
                ranks.rank, ranks.launcher, ranks.world_size
            ),
        ));
    }
    if ranks.master_addr.trim().is_empty() {
        return Err(error("master address", "empty; expected a host name or IP"));
    }
    Ok(())
}

/// The ranks the environment's launcher gives (rank 0 of 1 when none is found).
fn from_launcher(env: &Env) -> Result<Ranks, LaunchError> {
    let master = || master_from(env, DEFAULT_MASTER.0.to_string(), DEFAULT_MASTER.1);
    let found = |launcher, rank, world_size, local_rank, (master_addr, master_port)| Ranks {
        rank,
        world_size,
        local_rank,
        master_addr,
        master_port,
        launcher,
    };
    let (rank, world) = (number(env, "RANK")?, number(env, "WORLD_SIZE")?);
    if let (Some(rank), Some(world)) = (rank, world) {
        let local = number(env, "LOCAL_RANK")?.unwrap_or(0);
        return Ok(found(Launcher::Torchrun, rank, world, local, master()?));
    }
    let (rank, world) = (number(env, "SLURM_PROCID")?, number(env, "SLURM_NTASKS")?);
    if let (Some(rank), Some(world)) = (rank, world) {
        let local = number(env, "SLURM_LOCALID")?.unwrap_or(0);
        return Ok(found(
            Launcher::Slurm,
            rank,
            world,
            local,
            slurm_master(env)?,
        ));
    }
    let rank = number(env, "OMPI_COMM_WORLD_RANK")?;
    let world = number(env, "OMPI_COMM_WORLD_SIZE")?;
    if let (Some(rank), Some(world)) = (rank, world) {
        let local = number(env, "OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(0);
        return Ok(found(Launcher::OpenMpi, rank, world, local, master()?));
    }
    if let Some(index) = number(env, "JOB_COMPLETION_INDEX")? {
        // The count comes from a flag; `ranks` refuses the job without it.
        let world = index + 1;
        return Ok(found(
            Launcher::KubernetesIndexed,
            index,
            world,
            0,
            master()?,
        ));
    }
    Ok(found(Launcher::Single, 0, 1, 0, master()?))
}

/// MASTER_ADDR / MASTER_PORT when set, else the defaults given.
fn master_from(env: &Env, addr: String, port: u16) -> Result<(String, u16), LaunchError> {
    let addr = env.get("MASTER_ADDR").cloned().unwrap_or(addr);
    let port = number(env, "MASTER_PORT")?.unwrap_or(port);
    Ok((addr, port))
}

/// Under srun: the first host of the job's node list, on a port derived from the job id (so
/// two jobs sharing a node do not collide), unless MASTER_ADDR / MASTER_PORT say otherwise.
fn slurm_master(env: &Env) -> Result<(String, u16), LaunchError> {
    let host = match env.get("SLURM_JOB_NODELIST") {
        Some(list) => first_host(list)
            .ok_or_else(|| error("SLURM_JOB_NODELIST", format!("{list:?} names no host")))?,
        None => DEFAULT_MASTER.0.to_string(),
    };
    let port = match number::<u64>(env, "SLURM_JOB_ID")? {
        Some(id) => 15000 + (id % 20000) as u16,
        None => DEFAULT_MASTER.1,
    };
    master_from(env, host, port)
}

/// The first host of a Slurm host list: `node[03-05,9],gpu1` -> `node03`.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list.find(',').unwrap_or(list.len());
    let bracket = list.find('[');
    let host = match bracket {
        Some(open) if open < end => {
            let close = list[open..].find(']')? + open;
            let first = list[open + 1..close].split([',', '-']).next()?;
            format!("{}{}", &list[..open], first)
        }
        _ => list[..end].to_string(),
    };
    (!host.is_empty()).then_some(host)
}

/// The CUDA device index of a rank: `local_rank`, or 0 when the launcher left the process
/// exactly one visible GPU (`CUDA_VISIBLE_DEVICES` renumbers the visible ones from 0).
pub fn cuda_index(ranks: &Ranks, env: &Env) -> Result<usize, LaunchError> {
    let Some(visible) = env.get("CUDA_VISIBLE_DEVICES") else {
        return Ok(ranks.local_rank);
    };
    let count = visible.split(',').filter(|d| !d.trim().is_empty()).count();
    match count {
        1 => Ok(0),
        n if ranks.local_rank < n => Ok(ranks.local_rank),
        n => Err(error(
            "CUDA_VISIBLE_DEVICES",
            format!(
                "{visible:?} shows {n} GPUs but this process has local rank {}; \
                 start one process per visible GPU",
                ranks.local_rank
            ),
        )),
    }
}

/// The shard `(index, count)` of a job array this process computes: a Slurm array task
/// (`(SLURM_ARRAY_TASK_ID - MIN) / STEP` of `SLURM_ARRAY_TASK_COUNT`), a Kubernetes Indexed
/// Job (`JOB_COMPLETION_INDEX` of `count`, which such a job does not carry), or
/// `RANK` / `WORLD_SIZE`.
pub fn array_shard(env: &Env, count: Option<usize>) -> Result<(usize, usize), LaunchError> {
    if let Some(task) = number::<usize>(env, "SLURM_ARRAY_TASK_ID")? {
        let min = number(env, "SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = number(env, "SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let n = number(env, "SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
            error(
                "SLURM_ARRAY_TASK_COUNT",
                "unset in an array task; expected the task count",
            )
        })?;
        let offset = task.checked_sub(min).ok_or_else(|| {
            error(
                "SLURM_ARRAY_TASK_ID",
                format!("{task} is below SLURM_ARRAY_TASK_MIN {min}"),
            )
        })?;
        return shard(offset / step, n, "SLURM_ARRAY_TASK_ID");
    }
    if let Some(index) = number(env, "JOB_COMPLETION_INDEX")? {
        let n = count.ok_or_else(|| {
            error(
                "JOB_COMPLETION_INDEX",
                "set (a Kubernetes Indexed Job) but the Job carries no count: \
                 give it, e.g. --shard auto/8 for 8 completions",
            )
        })?;
        return shard(index, n, "JOB_COMPLETION_INDEX");
    }
    if let (Some(rank), Some(world)) = (number(env, "RANK")?, number(env, "WORLD_SIZE")?) {
        return shard(rank, world, "RANK");
    }
    Err(error(
        "--shard auto",
        "not inside a job array: expected SLURM_ARRAY_TASK_ID (sbatch --array), \
         JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) or RANK and WORLD_SIZE; \
         outside one, name the shard, e.g. --shard 0/4",
    ))
}

fn shard(index: usize, count: usize, name: &str) -> Result<(usize, usize), LaunchError> {
    if index < count {
        Ok((index, count))
    } else {
        Err(error(
            name,
            format!("shard {index} is not below the count {count}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn of(pairs: &[(&str, &str)]) -> Ranks {
        ranks(&RankFlags::default(), &env(pairs)).unwrap()
    }

    #[test]
    fn torchrun() {
        let r = of(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.7"),
            ("MASTER_PORT", "29400"),
            // An outer srun is overridden by the torchrun inside it.
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "4"),
        ]);
        assert_eq!(
            (r.rank, r.world_size, r.local_rank, r.launcher),
            (3, 8, 1, Launcher::Torchrun)
        );
        assert_eq!((r.master_addr.as_str(), r.master_port), ("10.0.0.7", 29400));
        assert!(!r.writes());
    }

    #[test]
    fn slurm_srun() {
        let r = of(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[03-06,9],login1"),
            ("SLURM_JOB_ID", "123456"),
        ]);
        assert_eq!(
            (r.rank, r.world_size, r.local_rank, r.launcher),
            (5, 8, 1, Launcher::Slurm)
        );
        assert_eq!((r.master_addr.as_str(), r.master_port), ("gpu03", 18456));
        // A batch script without --ntasks is one process.
        assert_eq!(of(&[("SLURM_PROCID", "0")]).launcher, Launcher::Single);
    }

    #[test]
    fn open_mpi() {
        let r = of(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ]);
        assert_eq!(
            (r.rank, r.world_size, r.launcher),
            (0, 2, Launcher::OpenMpi)
        );
        assert_eq!((r.master_addr.as_str(), r.master_port), DEFAULT_MASTER);
        assert!(r.writes());
    }

    #[test]
    fn kubernetes_indexed_job_needs_the_count() {
        let e = env(&[
            ("JOB_COMPLETION_INDEX", "2"),
            ("MASTER_ADDR", "train-0.svc"),
        ]);
        let err = ranks(&RankFlags::default(), &e).unwrap_err();
        assert_eq!(err.name, "--world-size");
        let flags = RankFlags {
            world_size: Some(4),
            ..Default::default()
        };
        let r = ranks(&flags, &e).unwrap();
        assert_eq!(
            (r.rank, r.world_size, r.launcher),
            (2, 4, Launcher::KubernetesIndexed)
        );
        assert_eq!(r.master_addr, "train-0.svc");
    }

    #[test]
    fn flags_come_first_and_are_checked() {
        let flags = RankFlags {
            rank: Some(1),
            world_size: Some(2),
            local_rank: Some(1),
            master_addr: Some("head".into()),
            master_port: Some(1234),
        };
        let r = ranks(&flags, &env(&[("RANK", "0"), ("WORLD_SIZE", "4")])).unwrap();
        assert_eq!((r.rank, r.world_size, r.local_rank), (1, 2, 1));
        assert_eq!((r.master_addr.as_str(), r.master_port), ("head", 1234));
        assert_eq!(
            ranks(&flags, &Env::new()).unwrap().launcher,
            Launcher::Flags
        );
        let single = of(&[]);
        assert_eq!(
            (single.rank, single.world_size, single.launcher),
            (0, 1, Launcher::Single)
        );
        let bad = ranks(
            &RankFlags::default(),
            &env(&[("RANK", "x"), ("WORLD_SIZE", "2")]),
        );
        assert_eq!(bad.unwrap_err().name, "RANK");
        let beyond = ranks(
            &RankFlags::default(),
            &env(&[("RANK", "2"), ("WORLD_SIZE", "2")]),
        );
        assert!(
            beyond
                .unwrap_err()
                .problem
                .contains("not below the world size 2")
        );
    }

    #[test]
    fn host_lists() {
        assert_eq!(first_host("n1").as_deref(), Some("n1"));
        assert_eq!(first_host("n[7-9]").as_deref(), Some("n7"));
        assert_eq!(first_host("a1,b[1-2]").as_deref(), Some("a1"));
        assert_eq!(first_host("rack2-n[012,5]").as_deref(), Some("rack2-n012"));
        assert_eq!(first_host(""), None);
    }

    #[test]
    fn cuda_index_respects_visible_devices() {
        let r = of(&[("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "3")]);
        assert_eq!(cuda_index(&r, &Env::new()), Ok(3));
        assert_eq!(
            cuda_index(&r, &env(&[("CUDA_VISIBLE_DEVICES", "5")])),
            Ok(0)
        );
        assert_eq!(
            cuda_index(&r, &env(&[("CUDA_VISIBLE_DEVICES", "0,1,2,3")])),
            Ok(3)
        );
        let err = cuda_index(&r, &env(&[("CUDA_VISIBLE_DEVICES", "0,1")])).unwrap_err();
        assert_eq!(err.name, "CUDA_VISIBLE_DEVICES");
    }

    #[test]
    fn array_shards() {
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
        ]);
        assert_eq!(array_shard(&slurm, None), Ok((3, 4)));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "2")]);
        assert_eq!(array_shard(&k8s, Some(3)), Ok((2, 3)));
        assert_eq!(
            array_shard(&k8s, None).unwrap_err().name,
            "JOB_COMPLETION_INDEX"
        );
        assert_eq!(
            array_shard(&k8s, Some(2)).unwrap_err().name,
            "JOB_COMPLETION_INDEX"
        );
        let torch = env(&[("RANK", "1"), ("WORLD_SIZE", "2")]);
        assert_eq!(array_shard(&torch, None), Ok((1, 2)));
        let outside = array_shard(&Env::new(), None).unwrap_err();
        assert_eq!(outside.name, "--shard auto");
        assert!(outside.problem.contains("not inside a job array"));
    }
}
