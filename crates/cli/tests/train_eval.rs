//! `ldmscale train` with `train.eval_every`: a fixed prompt grid (and FID, when the Inception
//! weights are present) every N steps, kept consistent across a resume.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn run_file(dir: &Path, eval: &str) -> PathBuf {
    common::tiny_run_file(
        dir,
        "steps = 4\nbatch_size = 2\nlearning_rate = 1e-3\ncheckpoint_every = 2\neval_every = 2\n",
        eval,
    )
}

fn train(config: &Path, out: &Path, steps: Option<u64>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ldmscale"));
    cmd.args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out);
    if let Some(s) = steps {
        cmd.args(["--steps", &s.to_string()]);
    }
    cmd.output().unwrap()
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn evaluations_follow_training_and_survive_resume() {
    let dir = tempfile::tempdir().unwrap();
    let fid = ldmscale_eval::default_inception_path().exists();
    let eval = format!(
        "[eval]\nprompts = 3\nsteps = 2\ncfg = 2.0\nfid_samples = {}\n",
        if fid { 8 } else { 0 }
    );
    let config = run_file(dir.path(), &eval);
    let run = dir.path().join("run");
    let out = train(&config, &run, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let first = records(&run);
    let steps: Vec<u64> = first.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![2, 4]);
    // Compute grows with the steps; the grid holds the 3 prompts at 16 px.
    assert!(first[1]["train_gflops"].as_f64() > first[0]["train_gflops"].as_f64());
    let grid = image::open(run.join("eval/step-00000004.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (3 * 16, 16));
    assert_eq!(
        std::fs::read_to_string(run.join("eval/prompts.txt"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    if fid {
        let f = first[1]["fid"].as_f64().unwrap();
        assert!(f.is_finite() && f > 0.0, "{f}");
        assert!(run.join("fid.svg").exists() && run.join("fid.png").exists());
    } else {
        assert!(first[1]["fid"].is_null());
    }

    // Extending the run evaluates the new steps only and keeps the earlier records.
    let out = train(&config, &run, Some(6));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = records(&run);
    let steps: Vec<u64> = second.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![2, 4, 6]);
    assert_eq!(second[..2], first[..]);
}

#[test]
fn eval_settings_that_cannot_run_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (eval, expected) in [
        ("[eval]\nsampler = \"euler\"\n", "sampler"),
        ("[eval]\ncfg = 0.5\n", "cfg"),
        ("[eval]\nprompt = 3\n", "prompt"),
    ] {
        let config = run_file(dir.path(), eval);
        let out = train(&config, &dir.path().join("o"), None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{eval}");
        assert!(
            err.contains("run.toml") && err.contains(expected),
            "{eval}: {err}"
        );
    }
    // [eval] without train.eval_every would silently never run.
    let config = run_file(dir.path(), "[eval]\nprompts = 2\n");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("eval_every = 2\n", "");
    std::fs::write(&config, text).unwrap();
    let out = train(&config, &dir.path().join("o2"), None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("eval_every"));
}
