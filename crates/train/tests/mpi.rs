//! Data parallelism across processes (feature `mpi`): two MPI ranks started by `mpirun` train
//! the same model as one process with the whole batch (up to float rounding), with shards of
//! unequal size, and a run resumes under another world size. Skips, saying why, when
//! `mpirun` is not on PATH.
#![cfg(feature = "mpi")]

mod common;
#[path = "common/compare.rs"]
mod compare;

use std::path::Path;
use std::process::Command;

use burn::tensor::Device;
use ldmscale_train::mpi_sync::MpiSync;
use ldmscale_train::{TextToImage, TrainConfig, train, train_task};

/// 5 rows over 2 ranks: shards of 3 and 2.
const BATCH: usize = 5;

fn config(steps: u64) -> TrainConfig {
    common::config(&format!(
        "steps = {steps}\nbatch_size = {BATCH}\ngrad_accum = 2\nlearning_rate = 2e-3\nwarmup_steps = 1\ngrad_clip = 1.0\ncheckpoint_every = 2\n"
    ))
}

/// Trains `run` to `steps` as `ranks` MPI processes (this test binary's `mpi_rank`).
fn mpirun(ranks: usize, run: &Path, steps: u64) {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("mpirun")
        .args(["--oversubscribe", "-np", &ranks.to_string()])
        .arg(exe)
        .args(["--ignored", "--exact", "mpi_rank", "--nocapture"])
        .env("LDMSCALE_MPI_RUN", run)
        .env("LDMSCALE_MPI_STEPS", steps.to_string())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mpirun -np {ranks}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One rank of [`mpirun`]'s world (ignored: it only means something under mpirun).
#[test]
#[ignore = "a rank of the world that two_mpi_ranks_equal_one_process starts with mpirun"]
fn mpi_rank() {
    let run = std::env::var("LDMSCALE_MPI_RUN").expect("started by mpirun with LDMSCALE_MPI_RUN");
    let steps = std::env::var("LDMSCALE_MPI_STEPS")
        .unwrap()
        .parse()
        .unwrap();
    let config = config(steps);
    let device = Device::flex();
    let sync = MpiSync::join(&device, config.batch_size).unwrap();
    let data = common::data(12);
    let task = TextToImage::new(&config, &data, &device).unwrap();
    let summary = train_task(&config, &task, &sync, Path::new(&run), false, None).unwrap();
    assert_eq!(summary.state.step, steps);
}

#[test]
fn two_mpi_ranks_equal_one_process_with_the_whole_batch() {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("mpirun").is_file()));
    if !on_path {
        println!("skipped: mpirun is not on PATH (Debian: apt-get install openmpi-bin)");
        return;
    }
    let device = Device::flex();
    let one = tempfile::tempdir().unwrap();
    train(&config(4), &common::data(12), one.path(), &device, false).unwrap();

    let ranks = tempfile::tempdir().unwrap();
    mpirun(2, ranks.path(), 4);
    compare::assert_same_run(one.path(), ranks.path(), 4, "2 MPI ranks");

    // Half the steps in one process, the rest as two ranks, and the other way round.
    let resumed = tempfile::tempdir().unwrap();
    train(
        &config(2),
        &common::data(12),
        resumed.path(),
        &device,
        false,
    )
    .unwrap();
    mpirun(2, resumed.path(), 4);
    compare::assert_same_run(one.path(), resumed.path(), 4, "1 process, then 2 ranks");
    let back = tempfile::tempdir().unwrap();
    mpirun(2, back.path(), 2);
    train(&config(4), &common::data(12), back.path(), &device, false).unwrap();
    compare::assert_same_run(one.path(), back.path(), 4, "2 ranks, then 1 process");
}
