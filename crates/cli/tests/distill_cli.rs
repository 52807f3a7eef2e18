//! `ldmscale distill --method lcm|codi|guided|progressive` end to end on a tiny teacher trained
//! by `ldmscale train`: LCM distils a student that `sample --sampler lcm` accepts, CoDi a plain
//! UNet that samples with guidance, guided distillation a w-conditioned student whose
//! progressive round samples with `--sampler guided-ddim`; they extend and resume like
//! `train`, and bad options and teachers are refused naming the field.

#[allow(dead_code)]
#[path = "../src/npy.rs"]
mod npy;

use std::path::Path;
use std::process::{Command, Output};

mod common;

fn ldmscale(args: &[&str], root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .current_dir(root)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The teacher: `teacher/unet` (and `teacher/text_encoder`) from 2 steps of `train`; the
/// distillation file `distill.toml` with the same data and `lcm` table `lcm`.
fn setup(root: &Path, lcm: &str) {
    setup_with(root, &format!("[lcm]\nembedding_dim = 16\n{lcm}"));
}

/// As [`setup`], with `tables` after `[train]`.
fn setup_with(root: &Path, tables: &str) {
    let run = common::tiny_run_file(root, "steps = 2\nbatch_size = 2", "");
    let out = ldmscale(
        &["-q", "train", "--config", "run.toml", "--out", "teacher"],
        root,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(run).unwrap();
    let data = &text[..text.find("[train]").unwrap()];
    let train = "[train]\nsteps = 3\nbatch_size = 2\nlearning_rate = 1e-3\ncheckpoint_every = 2\n";
    let file = format!("{data}{train}\n{tables}");
    std::fs::write(root.join("distill.toml"), file).unwrap();
}

fn distill(root: &Path, extra: &[&str]) -> Output {
    distill_with(root, "lcm", extra)
}

fn distill_with(root: &Path, method: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "-q",
        "distill",
        "--teacher",
        "teacher/unet",
        "--method",
        method,
    ];
    args.extend(["--config", "distill.toml", "--out", "student"]);
    args.extend(extra);
    ldmscale(&args, root)
}

#[test]
fn distils_a_student_the_lcm_sampler_takes_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root, "loss = \"huber\"\n");
    let out = distill(root, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(report.contains("step 3"), "{report}");
    let config = std::fs::read_to_string(root.join("student/unet/config.json")).unwrap();
    assert!(config.contains("\"time_cond_proj_dim\": 16"), "{config}");
    // Extended by two steps: it resumes from step 3 instead of starting again.
    let out = distill(root, &["--steps", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("step 5") && report.contains("2 steps"),
        "{report}"
    );
    // The student samples with the LCM sampler (the teacher would be refused).
    let json: serde_json::Value = serde_json::from_str(&config).unwrap();
    let width = json["cross_attention_dim"].as_u64().unwrap() as usize;
    npy::write(&root.join("e.npy"), &[1, 3, width], &vec![0.1; 3 * width]).unwrap();
    let sample = |unet: &str| {
        let args = [
            "-q",
            "sample",
            "--unet",
            unet,
            "--sampler",
            "lcm",
            "--steps",
            "2",
        ];
        let rest = [
            "--cfg",
            "8",
            "--prompt-embeds",
            "e.npy",
            "--output-latents",
            "x.npy",
        ];
        ldmscale(&[&args[..], &rest[..]].concat(), root)
    };
    let out = sample("student/unet");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.join("x.npy").exists());
    let out = sample("teacher/unet");
    assert!(
        stderr(&out).contains("time_cond_proj_dim")
            && stderr(&out).contains("distill --method lcm"),
        "{}",
        stderr(&out)
    );
    // The LCM student is refused by the CoDi sampler, which names the right one.
    let codi = [
        "sample",
        "--unet",
        "student/unet",
        "--sampler",
        "codi",
        "--prompt-embeds",
        "e.npy",
    ];
    let out = ldmscale(&[&codi[..], &["--output-latents", "y.npy"]].concat(), root);
    assert!(
        stderr(&out).contains("sample it with --sampler lcm"),
        "{}",
        stderr(&out)
    );
    // Other options on the same run directory are refused.
    let text = std::fs::read_to_string(root.join("distill.toml")).unwrap();
    std::fs::write(root.join("distill.toml"), text.replace("huber", "l2")).unwrap();
    let out = distill(root, &["--steps", "6"]);
    assert!(!out.status.success());
}

#[test]
fn bad_options_and_teachers_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root, "w_min = 15.0\nw_max = 5.0\n");
    let out = distill(root, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lcm.w_max = 5"), "{}", stderr(&out));
    assert!(!root.join("student/checkpoints").exists());
    let out = ldmscale(
        &[
            "-q",
            "distill",
            "--teacher",
            "teacher/unet",
            "--method",
            "meng",
            "--config",
            "distill.toml",
            "--out",
            "student",
        ],
        root,
    );
    assert!(
        stderr(&out).contains("possible values: lcm, codi, guided, progressive"),
        "{}",
        stderr(&out)
    );
    // An LCM student is no teacher.
    let text = std::fs::read_to_string(root.join("distill.toml")).unwrap();
    std::fs::write(
        root.join("distill.toml"),
        text.replace("w_min = 15.0", "w_min = 1.0"),
    )
    .unwrap();
    assert!(distill(root, &[]).status.success());
    let out = ldmscale(
        &[
            "-q",
            "distill",
            "--teacher",
            "student/unet",
            "--method",
            "lcm",
            "--config",
            "distill.toml",
            "--out",
            "again",
        ],
        root,
    );
    assert!(
        stderr(&out).contains("time_cond_proj_dim: 16"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("student/unet/config.json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn codi_distils_a_plain_student_that_samples_with_guidance() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup_with(root, "[codi]\nw_max = 4.0\n");
    let out = distill_with(root, "codi", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(report.contains("step 3"), "{report}");
    assert!(report.contains("2 evaluations per step"), "{report}");
    let config = std::fs::read_to_string(root.join("student/unet/config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(json["time_cond_proj_dim"].is_null(), "{config}");
    let out = distill_with(root, "codi", &["--steps", "5"]);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("step 5") && report.contains("2 steps"),
        "{report}"
    );
    // A plain UNet: the CoDi sampler runs it with classifier-free guidance, 2 evaluations
    // per step; a plain DDIM run takes it too.
    let width = json["cross_attention_dim"].as_u64().unwrap() as usize;
    npy::write(&root.join("e.npy"), &[1, 3, width], &vec![0.1; 3 * width]).unwrap();
    let sample = |sampler: &str| {
        let args = ["sample", "--unet", "student/unet", "--sampler", sampler];
        let rest = ["--steps", "4", "--cfg", "4", "--prompt-embeds", "e.npy"];
        ldmscale(
            &[&args[..], &rest[..], &["--output-latents", "x.npy"]].concat(),
            root,
        )
    };
    let out = sample("codi");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("4 steps of codi, CFG 4: 8 evaluations"),
        "{}",
        stderr(&out)
    );
    assert!(root.join("x.npy").exists());
    assert!(sample("ddim").status.success());
}

#[test]
fn codi_refuses_bad_options_and_the_lcm_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup_with(root, "[codi]\nw_min = 11.0\nw_max = 1.0\n");
    let out = distill_with(root, "codi", &[]);
    assert!(stderr(&out).contains("codi.w_max = 1"), "{}", stderr(&out));
    setup_with(root, "[lcm]\nw_min = 2.0\n");
    let out = distill_with(root, "codi", &[]);
    assert!(
        stderr(&out).contains("[lcm] is for --method lcm"),
        "{}",
        stderr(&out)
    );
    assert!(!root.join("student/checkpoints").exists());
}

/// Copies the files of `from` (no subfolders) into `to`.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn guided_then_progressive_students_sample_with_guided_ddim() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup_with(root, "[guided]\nembedding_dim = 16\n");
    let out = distill_with(root, "guided", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(report.contains("--sampler guided-ddim"), "{report}");
    let config = std::fs::read_to_string(root.join("student/unet/config.json")).unwrap();
    assert!(config.contains("\"time_cond_proj_dim\": 16"), "{config}");
    // A round halving the steps, the guided student as its teacher (with its text encoder).
    copy_files(
        &root.join("teacher/text_encoder"),
        &root.join("student/text_encoder"),
    );
    let text = std::fs::read_to_string(root.join("distill.toml")).unwrap();
    let round = text.replace("[guided]\nembedding_dim = 16\n", "");
    std::fs::write(root.join("round.toml"), &round).unwrap();
    let progressive = |file: &str| {
        let args = [
            "-q",
            "distill",
            "--teacher",
            "student/unet",
            "--method",
            "progressive",
        ];
        ldmscale(
            &[&args[..], &["--config", file, "--out", "s8"]].concat(),
            root,
        )
    };
    let out = progressive("round.toml");
    assert!(
        stderr(&out).contains("needs a [progressive] table"),
        "{}",
        stderr(&out)
    );
    let table = "[progressive]\nstudent_steps = 8\nw_min = 1.0\nw_max = 4.0\n";
    std::fs::write(root.join("round.toml"), format!("{round}\n{table}")).unwrap();
    let out = progressive("round.toml");
    assert!(out.status.success(), "{}", stderr(&out));
    // The s8 student samples with DDIM, guidance embedded: 1 evaluation per step.
    let json: serde_json::Value = serde_json::from_str(&config).unwrap();
    let width = json["cross_attention_dim"].as_u64().unwrap() as usize;
    npy::write(&root.join("e.npy"), &[1, 3, width], &vec![0.1; 3 * width]).unwrap();
    let sample = |unet: &str| {
        let args = [
            "sample",
            "--unet",
            unet,
            "--sampler",
            "guided-ddim",
            "--steps",
            "8",
        ];
        let rest = [
            "--cfg",
            "3",
            "--prompt-embeds",
            "e.npy",
            "--output-latents",
            "x.npy",
        ];
        ldmscale(&[&args[..], &rest[..]].concat(), root)
    };
    let out = sample("s8/unet");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("8 steps of guided-ddim, guidance (embedded) 3: 8 evaluations"),
        "{}",
        stderr(&out)
    );
    // The plain teacher is refused, naming the methods that make such a student.
    let out = sample("teacher/unet");
    assert!(
        stderr(&out).contains("distill --method guided or progressive"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn codi_distils_an_adapter_student_that_samples_with_guidance() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup_with(root, "[codi]\nw_max = 4.0\n");
    let out = distill_with(root, "lcm", &["--student", "adapter"]);
    assert!(
        stderr(&out).contains("--student is for --method codi"),
        "{}",
        stderr(&out)
    );
    let out = distill_with(root, "codi", &["--student", "adapter"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(report.contains("encoder adapter"), "{report}");
    // The teacher's own files and config, with the adapter beside them.
    let same = |file: &str| {
        let read = |dir: &str| std::fs::read(root.join(dir).join(file)).unwrap();
        read("teacher/unet") == read("student/unet")
    };
    assert!(same("diffusion_pytorch_model.safetensors") && same("config.json"));
    let adapter = root.join("student/unet/adapter");
    assert!(adapter.join("config.json").exists());
    // Extended from its checkpoint, still an adapter run.
    let out = distill_with(root, "codi", &["--student", "adapter", "--steps", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(root.join("student/unet/config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&config).unwrap();
    let width = json["cross_attention_dim"].as_u64().unwrap() as usize;
    npy::write(&root.join("e.npy"), &[1, 3, width], &vec![0.1; 3 * width]).unwrap();
    let sample = |unet: &str, out: &str| {
        let args = ["sample", "--unet", unet, "--sampler", "codi", "--seed", "3"];
        let rest = ["--steps", "4", "--cfg", "4", "--prompt-embeds", "e.npy"];
        ldmscale(
            &[&args[..], &rest[..], &["--output-latents", out]].concat(),
            root,
        )
    };
    let out = sample("student/unet", "x.npy");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("8 evaluations"), "{}", stderr(&out));
    // The trained adapter changes the samples; without it the teacher's come back.
    assert!(sample("teacher/unet", "t.npy").status.success());
    let read = |f: &str| std::fs::read(root.join(f)).unwrap();
    assert!(read("x.npy") != read("t.npy"));
    std::fs::remove_dir_all(&adapter).unwrap();
    assert!(sample("student/unet", "y.npy").status.success());
    assert!(read("y.npy") == read("t.npy"));
}
