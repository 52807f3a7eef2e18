//! `ldmscale study --submit slurm`: the scripts it writes, its errors, and (on a real Slurm
//! cluster, which `.ci/slurm-cluster.sh` starts in CI) the tiny study submitted as dependent
//! jobs, whose merged store must equal a local run's: same cells, same FIDs.

use std::path::Path;
use std::process::{Command, Output};

use ldmscale_study::cell::Cell;
use ldmscale_study::config::StudyConfig;
use ldmscale_study::store::Store;

fn ldmscale(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_dry_run_writes_dependent_array_scripts_calling_this_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let args = [
        "study",
        "--preset",
        "tiny",
        "--submit",
        "slurm",
        "--dry-run",
        "--array-limit",
        "3",
        "--partition",
        "gpu",
        "--sbatch-arg=--time=1:00:00",
    ];
    let done = ldmscale(&args, &out);
    assert!(done.status.success(), "{}", text(&done));
    let out = std::fs::canonicalize(&out).unwrap();
    let read = |name: &str| std::fs::read_to_string(out.join("slurm").join(name)).unwrap();
    let train = read("2-train.sbatch");
    let binary = std::fs::canonicalize(env!("CARGO_BIN_EXE_ldmscale")).unwrap();
    for line in [
        "#SBATCH --array=0-1%3",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1:00:00",
        "--only family --shard auto",
        &format!("--out {}", out.display()),
        &binary.display().to_string(),
    ] {
        assert!(train.contains(line), "{line:?} missing from:\n{train}");
    }
    assert!(read("3-sweep.sbatch").contains("--only sweep --shard auto"));
    assert!(read("1-prepare.sbatch").contains(",evaluator,sr-data"));
    // The tiny preset's downstream sections train per width, one array each.
    for (i, stage) in ["super-res", "distill", "dreambooth"].iter().enumerate() {
        let script = read(&format!("{}-{stage}.sbatch", i + 4));
        assert!(
            script.contains(&format!("--only {stage} --shard auto")),
            "{script}"
        );
    }
    let report = read("7-report.sbatch");
    assert!(report.contains("results merge") && report.contains("results.shard1of2.sqlite"));
    assert!(read("study.toml").contains("name = \"tiny\""));
    // Nothing was submitted: no job ids, and the printout says so.
    assert!(text(&done).contains("nothing submitted"), "{}", text(&done));
}

#[test]
fn sbatch_missing_from_path_and_shard_auto_outside_an_array_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let missing = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(["study", "--preset", "tiny", "--submit", "slurm", "--out"])
        .arg(&out)
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("`sbatch` is not on PATH"),
        "{}",
        text(&missing)
    );
    assert!(
        !out.exists(),
        "a refused submission wrote {}",
        out.display()
    );
    for (extra, says) in [
        (
            &["--sweep-shards", "0"][..],
            "--sweep-shards 0: expected at least 1",
        ),
        (
            &["--only", "sweep"][..],
            "the jobs choose their own --only and --shard",
        ),
    ] {
        let args = [
            &[
                "study",
                "--preset",
                "tiny",
                "--submit",
                "slurm",
                "--dry-run",
            ],
            extra,
        ]
        .concat();
        let refused = ldmscale(&args, &out);
        assert!(
            !refused.status.success() && text(&refused).contains(says),
            "{}",
            text(&refused)
        );
    }
    let outside = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(["study", "--preset", "tiny", "--shard", "auto", "--out"])
        .arg(&out)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("RANK")
        .output()
        .unwrap();
    assert!(!outside.status.success());
    assert!(
        text(&outside).contains("--shard auto: not inside a job array"),
        "{}",
        text(&outside)
    );
}

/// Why the Slurm tests cannot run here, if they cannot.
fn slurm_missing() -> Option<String> {
    if std::env::var_os("LDMSCALE_SLURM_TESTS").is_none() {
        return Some(
            "LDMSCALE_SLURM_TESTS is unset (they submit jobs; .ci/run sets it after starting a \
             one-node cluster with .ci/slurm-cluster.sh)"
                .into(),
        );
    }
    match Command::new("sinfo").arg("-h").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("sinfo cannot run: {e}")),
    }
}

/// The cells of a store, without what differs between runs (wall time).
fn cells(store: &Path) -> Vec<Cell> {
    let mut cells = Store::open_read_only(store).unwrap().cells().unwrap();
    for c in &mut cells {
        c.wall_seconds = 0.0;
    }
    cells.sort_by_key(|c| c.key());
    cells
}

#[test]
fn the_tiny_study_through_slurm_equals_a_local_run() {
    if let Some(reason) = slurm_missing() {
        println!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (local, slurm) = (dir.path().join("local"), dir.path().join("slurm"));
    // The tiny preset on 600 training examples: its latent cache (256-example shards) is built
    // on Slurm by a two-task array, examples 0..256 and 256..600, and joined.
    let mut config = StudyConfig::preset("tiny").unwrap();
    config.train_examples = 600;
    let toml = dir.path().join("tiny-600.toml");
    std::fs::write(&toml, config.to_toml()).unwrap();
    let toml = toml.to_str().unwrap();
    let done = ldmscale(&["-q", "study", "--config", toml], &local);
    assert!(done.status.success(), "{}", text(&done));
    let submit = [
        "study",
        "--config",
        toml,
        "--submit",
        "slurm",
        "--latent-shards",
        "2",
        "--wait",
    ];
    let done = ldmscale(&submit, &slurm);
    assert!(done.status.success(), "{}", text(&done));
    let expected = cells(&local.join("results.sqlite"));
    assert!(!expected.is_empty());
    assert_eq!(cells(&slurm.join("results.sqlite")), expected);
    assert!(slurm.join("report/report.html").is_file());

    // The downstream sections trained in their own arrays, one log per width.
    let logs_of = |job: &str| -> Vec<String> {
        std::fs::read_dir(slurm.join("slurm/logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(job))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    let mut ranges: Vec<String> = logs_of("latents-")
        .iter()
        .filter_map(|log| log.lines().find(|l| l.contains("latent cache: examples")))
        .map(|line| {
            line.split("latent cache: examples ")
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    ranges.sort();
    assert_eq!(
        ranges,
        ["0..256, part 1 of 2", "256..600, part 2 of 2"],
        "one latents array task per range"
    );
    let finetuned = logs_of("super-res-");
    assert_eq!(finetuned.len(), 2, "one super-res array task per width");
    assert!(
        finetuned
            .iter()
            .all(|log| log.contains("super-res: finetuning width"))
    );

    // Resubmitted, every job finds its work stored.
    let again = ldmscale(&submit, &slurm);
    assert!(again.status.success(), "{}", text(&again));
    let logs = std::fs::read_dir(slurm.join("slurm/logs")).unwrap();
    let trained_again = logs
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .filter(|log| log.contains("training width"))
        .count();
    assert_eq!(
        trained_again, 2,
        "each width is trained once over both submissions"
    );
    assert_eq!(cells(&slurm.join("results.sqlite")), expected);

    // A failing job is named with its log, and the jobs after it never run.
    let failing = dir.path().join("failing");
    let args = [&submit[..], &["--binary", "/bin/false"]].concat();
    let failed = ldmscale(&args, &failing);
    assert!(!failed.status.success());
    let message = text(&failed);
    assert!(
        message.contains("job prepare (Slurm ") && message.contains("failed with exit code 1"),
        "{message}"
    );
    assert!(message.contains("slurm/logs/prepare-"), "{message}");
    assert!(!failing.join("slurm/status/train-0").exists());
}
