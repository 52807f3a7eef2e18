//! `mpirun -np 2 ldmscale train` (feature `mpi`): the binary reads its ranks from Open MPI's
//! variables, the two ranks split every batch (shards of 3 and 2) and train the model one
//! `ldmscale train` trains with the whole batch, and rank 0 alone writes the run. Skips, saying
//! why, when `mpirun` is not on PATH.
#![cfg(feature = "mpi")]

mod common;
#[path = "../../train/tests/common/compare.rs"]
mod compare;

use std::path::Path;
use std::process::{Command, Output};

const STEPS: usize = 3;

fn train(launcher: &[&str], run: &Path, out: &Path) -> Output {
    let ldmscale = env!("CARGO_BIN_EXE_ldmscale");
    let (program, args) = match launcher.split_first() {
        Some((first, rest)) => (*first, [rest, &[ldmscale]].concat()),
        None => (ldmscale, Vec::new()),
    };
    Command::new(program)
        .args(args)
        .args(["-q", "train", "--config"])
        .arg(run)
        .arg("--out")
        .arg(out)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap()
}

fn assert_ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn mpirun_ldmscale_train_equals_one_process() {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("mpirun").is_file()));
    if !on_path {
        println!("skipped: mpirun is not on PATH (Debian: apt-get install openmpi-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = format!(
        "steps = {STEPS}\nbatch_size = 5\nlearning_rate = 2e-3\nwarmup_steps = 1\ncheckpoint_every = 1"
    );
    let run = common::tiny_run_file(dir.path(), &recipe, "");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    assert_ok(&train(&[], &run, &one), "one process");
    let mpirun = ["mpirun", "--oversubscribe", "-np", "2"];
    assert_ok(&train(&mpirun, &run, &two), "mpirun -np 2");
    compare::assert_same_run(&one, &two, STEPS, "mpirun -np 2 ldmscale train");
}
