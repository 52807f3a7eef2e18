//! `ldmscale finetune-sr` end to end on a tiny UNet, autoencoder and HR folder: it trains, keeps
//! its snapshots, writes an SR UNet that `ldmscale sample` samples with `--lr-latents`, and
//! refuses bad inputs naming the file or flag.

#[allow(dead_code)]
#[path = "../src/npy.rs"]
mod npy;

#[path = "common/sr_setup.rs"]
mod sr_setup;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sr_setup::setup;

fn ldmscale(args: &[&str], root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .current_dir(root)
        .args(args)
        .output()
        .unwrap()
}

/// `finetune-sr` on `unet/`, `hr/` and crop 32 (entries 3, 7 and 13; the steps are 15).
const FINETUNE: [&str; 26] = [
    "-q",
    "finetune-sr",
    "--unet",
    "unet",
    "--first-stage",
    "vae",
    "--hr",
    "hr",
    "--empty-context",
    "empty.npy",
    "--out",
    "run",
    "--crop",
    "32",
    "--steps",
    "4",
    "--batch-size",
    "2",
    "--crops-per-image",
    "2",
    "--learning-rate",
    "1e-3",
    "--snapshot-steps",
    "2,4",
    "--checkpoint-every",
    "2",
];

fn finetune(root: &Path, unet: &str, hr: &str, crop: &str) -> Output {
    let mut args = FINETUNE.to_vec();
    (args[3], args[7], args[13]) = (unet, hr, crop);
    ldmscale(&args, root)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn finetunes_keeps_snapshots_and_the_result_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let out = finetune(root, "unet", "hr", "32");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("step 4") && stdout.contains("snapshots at steps [2, 4]"),
        "{stdout}"
    );
    for step in ["00000002", "00000004"] {
        let config: PathBuf = root.join(format!("run/snapshots/step-{step}/unet/config.json"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        assert_eq!(json["in_channels"], 8, "{}", config.display());
    }
    // Crop 32 and a factor-2 first stage: 16x16 latents.
    npy::write(&root.join("lr.npy"), &[2, 4, 16, 16], &[0.25; 2048]).unwrap();
    let out = ldmscale(
        &[
            "sample",
            "--unet",
            "run/unet",
            "--steps",
            "3",
            "--cfg",
            "1",
            "--prompt-embeds",
            "empty.npy",
            "--lr-latents",
            "lr.npy",
            "--output-latents",
            "sr.npy",
        ],
        root,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        npy::read(&root.join("sr.npy")).unwrap().shape,
        [2, 4, 16, 16]
    );
    // The same command resumes (nothing left to do); more steps extend the run.
    let stdout = |out: Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let again = stdout(finetune(root, "unet", "hr", "32"));
    assert!(again.contains("0 steps in"), "{again}");
    let mut args = FINETUNE.to_vec();
    args[15] = "6";
    let more = stdout(ldmscale(&args, root));
    assert!(
        more.contains("step 6") && more.contains("2 steps in"),
        "{more}"
    );
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let out = finetune(root, "unet", "empty", "32");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--hr empty: no images"),
        "{}",
        text(&out)
    );

    let out = finetune(root, "unet", "hr", "64");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("0.png: 40x36 is smaller than the 64x64 crop"),
        "{}",
        text(&out)
    );

    let out = finetune(root, "unet", "hr", "30");
    assert!(!out.status.success());
    assert!(text(&out).contains("--crop 30"), "{}", text(&out));

    // Ranks this build cannot synchronise train nothing (the MPI build's ranks: mpi_train.rs).
    if cfg!(not(feature = "mpi")) {
        let ranked = [&FINETUNE[..], &["--rank", "1", "--world-size", "2"]].concat();
        let out = ldmscale(&ranked, root);
        assert!(!out.status.success());
        assert!(
            text(&out).contains("world size 2 (rank 1)") && text(&out).contains("--features mpi"),
            "{}",
            text(&out)
        );
        assert!(
            !root.join("run/checkpoints").exists(),
            "a refused rank trained"
        );
    }

    // An SR UNet is not a text-to-image one.
    assert!(finetune(root, "unet", "hr", "32").status.success());
    std::fs::rename(root.join("run"), root.join("first")).unwrap();
    let out = finetune(root, "first/unet", "hr", "32");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("first/unet/config.json: in_channels: 8"),
        "{}",
        text(&out)
    );
}

#[test]
fn noise_augmentation_trains_and_samples_at_a_noise_level() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let mut args = FINETUNE.to_vec();
    args.extend(["--noise-augmentation", "350"]);
    let out = ldmscale(&args, root);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("run/unet/config.json")).unwrap())
            .unwrap();
    assert_eq!(json["num_class_embeds"], 1000);
    npy::write(&root.join("lr.npy"), &[1, 4, 16, 16], &[0.25; 1024]).unwrap();
    let sample = |level: &str| {
        let args = [
            "sample",
            "--unet",
            "run/unet",
            "--steps",
            "2",
            "--cfg",
            "1",
            "--prompt-embeds",
            "empty.npy",
            "--lr-latents",
            "lr.npy",
            "--output-latents",
            "sr.npy",
            "--noise-level",
            level,
        ];
        ldmscale(&args, root)
    };
    let out = sample("20");
    assert!(out.status.success(), "{}", text(&out));
    let out = sample("1000");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--noise-level 1000: expected 0..1000"),
        "{}",
        text(&out)
    );
}
