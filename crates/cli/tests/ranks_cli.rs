//! `ldmscale train` started by a launcher: ranks it cannot synchronise are refused before any
//! data is read, naming the launcher's variables.

mod common;

use std::process::Command;

#[test]
fn a_world_this_build_cannot_synchronise_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = common::tiny_run_file(dir.path(), "steps = 1\nbatch_size = 2", "");
    let out = dir.path().join("out");
    let train = |env: &[(&str, &str)], extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ldmscale"))
            .args(["train", "--config"])
            .arg(&run)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    let torchrun = train(&[("RANK", "1"), ("WORLD_SIZE", "2")], &[]);
    assert!(!torchrun.status.success());
    if cfg!(not(feature = "mpi")) {
        let message = text(&torchrun);
        assert!(
            message.contains("world size 2 (rank 1) from torchrun (RANK, WORLD_SIZE)")
                && message.contains("--features mpi"),
            "{message}"
        );
    }
    let k8s = train(&[("JOB_COMPLETION_INDEX", "0")], &[]);
    assert!(
        text(&k8s).contains("--world-size: JOB_COMPLETION_INDEX is set"),
        "{}",
        text(&k8s)
    );
    let beyond = train(&[], &["--rank", "2", "--world-size", "2"]);
    assert!(
        text(&beyond).contains("not below the world size 2"),
        "{}",
        text(&beyond)
    );
    assert!(
        !out.join("checkpoints").exists(),
        "a refused rank wrote a checkpoint"
    );
}
