//! `ldmscale study` from the command line: the device argument reaches the stages, `--only`
//! runs just the named stages, and `--dry-run` says which stored results it would reuse.

use std::path::Path;
use std::process::{Command, Output};

fn study(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(["study", "--preset", "tiny", "--out"])
        .arg(out)
        .args(extra)
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
fn the_device_and_only_arguments_reach_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let done = study(&out, &["--device", "cpu", "--only", "data,first-stage"]);
    assert!(done.status.success(), "{}", text(&done));
    let log = text(&done);
    let n = ldmscale_study::context::STAGES.len();
    assert!(
        log.contains(&format!("[1/{n}] data")) && log.contains(&format!("[2/{n}] first-stage")),
        "{log}"
    );
    assert!(
        !log.contains(&format!("[3/{n}]")),
        "--only ran a later stage: {log}"
    );
    assert!(out.join("first_stage/config.json").is_file());
    assert!(!out.join("latents").exists());

    let plan = study(&out, &["--dry-run"]);
    assert!(plan.status.success(), "{}", text(&plan));
    let plan = text(&plan);
    let line = |name: &str| {
        plan.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("first-stage").contains("reused"), "{plan}");
    assert!(line("family").contains("not yet run"), "{plan}");

    // A CPU build names the feature a GPU needs, and nothing runs.
    let gpu = study(&dir.path().join("gpu"), &["--device", "cuda:0"]);
    assert!(!gpu.status.success());
    let message = text(&gpu);
    assert!(
        message.contains("--device") && message.contains("cuda"),
        "{message}"
    );
    assert!(
        !dir.path().join("gpu").exists(),
        "a refused device still created the study"
    );

    let bogus = study(&out, &["--only", "sweeep"]);
    assert!(!bogus.status.success());
    assert!(text(&bogus).contains("no such stage"), "{}", text(&bogus));
}
