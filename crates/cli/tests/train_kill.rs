//! `ldmscale train` killed with SIGKILL and resumed reaches the same bits as a run that was
//! never interrupted.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

fn run_file(dir: &Path, steps: u64) -> std::path::PathBuf {
    common::tiny_run_file(
        dir,
        &format!(
            "steps = {steps}\nbatch_size = 2\nlearning_rate = 1e-3\ncheckpoint_every = 2\nkeep_last = 2\n"
        ),
        "[train.ema]\nmax_decay = 0.99\n",
    )
}

fn train(config: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ldmscale"));
    cmd.args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out);
    cmd
}

fn newest(run: &Path) -> Option<(u64, std::path::PathBuf)> {
    let mut all: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(run.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let step = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            e.path()
                .join("state.json")
                .exists()
                .then(|| (step, e.path()))
        })
        .collect();
    all.sort();
    all.pop()
}

#[test]
fn sigkill_then_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 40;
    let config = run_file(dir.path(), steps);

    let straight = dir.path().join("straight");
    let status = train(&config, &straight).status().unwrap();
    assert!(status.success());

    let killed = dir.path().join("killed");
    let mut child = train(&config, &killed).spawn().unwrap();
    let start = Instant::now();
    let killed_at = loop {
        if let Some((step, _)) = newest(&killed)
            && step >= 4
        {
            break step;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        killed_at < steps,
        "the run finished before it could be killed"
    );
    let resumed = train(&config, &killed).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );

    let svg = std::fs::read_to_string(straight.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("8 filters"));
    let png = std::fs::read(straight.join("loss.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let (a_step, a) = newest(&straight).unwrap();
    let (b_step, b) = newest(&killed).unwrap();
    assert_eq!((a_step, b_step), (steps, steps));
    for file in [
        "optimizer.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "unet_ema/diffusion_pytorch_model.safetensors",
    ] {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{file} differs after kill at step {killed_at} and resume"
        );
    }
}

#[test]
fn bad_run_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = run_file(dir.path(), 4);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("width = 8", "width = 10");
    std::fs::write(&config, text).unwrap();
    let out = train(&config, &dir.path().join("o")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("run.toml") && err.contains("model.width = 10"),
        "{err}"
    );
}

/// Data-parallel training from the CLI, whose command runs on a rayon worker (`run_on_pool`)
/// while the replicas run on plain threads that call into the pool: it must finish with a
/// pool of one thread (where the command stays on the main thread) and of two.
#[test]
fn data_parallel_training_finishes_with_one_or_two_pool_threads() {
    let dir = tempfile::tempdir().unwrap();
    let config = run_file(dir.path(), 4);
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("threads-{threads}"));
        let mut child = train(&config, &out)
            .args(["--devices", "cpu,cpu"])
            .env("RAYON_NUM_THREADS", threads)
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(120) {
                child.kill().unwrap();
                panic!("{threads} pool thread(s): still running after 120 s (deadlock?)");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{threads} pool thread(s): {status}");
        assert!(
            newest(&out).is_some(),
            "{threads} pool thread(s): no checkpoint"
        );
    }
}
