//! What protects a study's work from bad input and from other runs: a config is checked whole
//! before anything is made, an output directory serves one run at a time, read-only commands
//! never change a store, and stores of different studies do not merge.

use std::path::Path;
use std::process::{Command, Output};

use ldmscale_study::config::StudyConfig;
use ldmscale_util::lock::DirLock;

fn ldmscale(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ldmscale"));
    command.args(args);
    for p in paths {
        command.arg(p);
    }
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_bad_config_fails_the_dry_run_naming_every_field_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StudyConfig::preset("tiny").unwrap().to_toml();
    for (from, to) in [
        ("cfg = [", "cfg = [nan, "),
        ("batch_size = 8", "batch_size = 0"),
        ("learning_rate = 0.001", "learning_rate = nan"),
    ] {
        assert!(config.contains(from), "{from}");
        config = config.replacen(from, to, 1);
    }
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = dir.path().join("out");
    for extra in [&["--dry-run"][..], &[]] {
        let mut args = vec!["study", "--config", path.to_str().unwrap(), "--out"];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        let run = ldmscale(&args, &[]);
        let message = text(&run);
        assert!(!run.status.success(), "{message}");
        for field in [
            "bad.toml",
            "sweep.cfg[0]",
            "recipe.batch_size",
            "recipe.learning_rate",
        ] {
            assert!(message.contains(field), "{field} missing: {message}");
        }
        assert!(!out.exists(), "a refused config made its output directory");
    }
}

#[test]
fn a_second_run_on_a_locked_directory_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let held = DirLock::acquire(&out, "a test holding the lock").unwrap();
    let run = ldmscale(
        &["study", "--preset", "tiny", "--only", "data", "--out"],
        &[&out],
    );
    let message = text(&run);
    assert!(!run.status.success(), "{message}");
    assert!(
        message.contains(&format!("in use by pid {}", std::process::id()))
            && message.contains("a test holding the lock"),
        "{message}"
    );
    assert!(!out.join("stages.json").exists(), "the second run wrote");
    drop(held);
    let run = ldmscale(
        &["study", "--preset", "tiny", "--only", "data", "--out"],
        &[&out],
    );
    assert!(run.status.success(), "{}", text(&run));
}

#[test]
fn plan_and_report_leave_a_foreign_database_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("app.sqlite");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');")
        .unwrap();
    let before = std::fs::read(&foreign).unwrap();
    let plan = ldmscale(&["plan", "--budget-gflops", "1", "--store"], &[&foreign]);
    let report_dir = dir.path().join("report");
    let report = ldmscale(
        &[
            "results",
            "report",
            "--out",
            report_dir.to_str().unwrap(),
            "--store",
        ],
        &[&foreign],
    );
    for run in [plan, report] {
        let message = text(&run);
        assert!(!run.status.success(), "{message}");
        assert!(
            message.contains("app.sqlite") && message.contains("not an ldmscale results store"),
            "{message}"
        );
    }
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    let merge = ldmscale(
        &["results", "merge"],
        &[&foreign, &dir.path().join("none.sqlite")],
    );
    assert!(!merge.status.success());
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
}
