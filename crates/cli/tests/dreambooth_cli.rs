//! `ldmscale dreambooth` end to end on a tiny base trained by `ldmscale train`: it finetunes
//! with and without a class folder, writes a UNet that loads, resumes and extends like
//! `train`, and refuses bad inputs naming the flag or folder.

use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::Device;
use ldmscale_data::Image;
use ldmscale_model::weights::load_unet;

mod common;

fn ldmscale(args: &[&str], root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .current_dir(root)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `count` 20x18 images with a pattern seeded by `salt` into `root/dir`.
fn images(root: &Path, dir: &str, count: u32, salt: u32) {
    std::fs::create_dir_all(root.join(dir)).unwrap();
    for i in 0..count {
        let mut image = Image::filled(20, 18, [30, 60, 90]);
        for y in 0..18 {
            for x in 0..20 {
                let v = ((x * (i + 2) + y * (salt + 3)) % 255) as u8;
                image.set_pixel(x, y, [v, 255 - v, v / 2 + 40]);
            }
        }
        std::fs::write(root.join(format!("{dir}/{i}.png")), image.to_png()).unwrap();
    }
}

/// The base: `base/unet` and `base/text_encoder` from 2 steps of `train` with `vae/`, and the
/// folders `instance/` (3 images) and `class/` (4 images).
fn setup(root: &Path) {
    common::tiny_run_file(root, "steps = 2\nbatch_size = 2", "");
    let out = ldmscale(
        &["-q", "train", "--config", "run.toml", "--out", "base"],
        root,
    );
    assert!(out.status.success(), "{}", text(&out));
    images(root, "instance", 3, 0);
    images(root, "class", 4, 7);
}

/// `dreambooth` into `out` with `extra` flags: those of the common flags replace their values,
/// the others follow.
fn dreambooth(root: &Path, out: &str, extra: &[&str]) -> Output {
    let mut pairs = vec![
        ("--unet", "base/unet"),
        ("--first-stage", "vae"),
        ("--text-encoder", "base/text_encoder"),
        ("--instance-dir", "instance"),
        ("--instance-prompt", "a sks circle"),
        ("--out", out),
        ("--resolution", "16"),
        ("--batch-size", "2"),
        ("--learning-rate", "1e-3"),
        ("--checkpoint-every", "2"),
    ];
    let mut rest = Vec::new();
    for flag in extra.chunks(2) {
        match pairs.iter_mut().find(|(f, _)| *f == flag[0]) {
            Some(pair) => pair.1 = flag[1],
            None => rest.extend_from_slice(flag),
        }
    }
    let mut args = vec!["-q", "dreambooth"];
    args.extend(pairs.iter().flat_map(|&(f, v)| [f, v]));
    args.extend(rest);
    ldmscale(&args, root)
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CLASS: [&str; 6] = [
    "--class-dir",
    "class",
    "--class-prompt",
    "a circle",
    "--prior-loss-weight",
    "0.5",
];

#[test]
fn finetunes_with_and_without_the_prior_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let device = Device::flex();
    for (run, class) in [("plain", &[][..]), ("prior", &CLASS[..])] {
        let steps = |n: &'static str| [&["--steps", n][..], class].concat();
        let report = stdout(&dreambooth(root, run, &steps("3")));
        assert!(
            report.contains("step 3") && report.contains("3 steps in"),
            "{report}"
        );
        let prior = if class.is_empty() {
            "no prior preservation"
        } else {
            "prior preservation w 0.5"
        };
        assert!(report.contains(prior), "{report}");
        let (config, _) = load_unet(&root.join(run).join("unet"), &device).unwrap();
        let (base, _) = load_unet(&root.join("base/unet"), &device).unwrap();
        assert_eq!(
            config, base,
            "{run}: the finetuned UNet keeps the base's config"
        );
        // The same command resumes with nothing left; more steps extend the run.
        let again = stdout(&dreambooth(root, run, &steps("3")));
        assert!(
            again.contains("step 3") && again.contains("0 steps in"),
            "{again}"
        );
        let more = stdout(&dreambooth(root, run, &steps("5")));
        assert!(
            more.contains("step 5") && more.contains("2 steps in"),
            "{more}"
        );
    }
    // The prior's weight is part of the run: a resume with another one is refused.
    let mut other = CLASS.to_vec();
    other[5] = "2";
    let out = dreambooth(root, "prior", &[&["--steps", "6"][..], &other].concat());
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn class_images_are_generated_by_the_base_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let gen_class = ["--class-dir", "made", "--class-prompt", "a circle"];
    let flags = [&gen_class[..], &["--num-class-images", "3", "--steps", "1"]].concat();
    let report = stdout(&dreambooth(root, "gen", &flags));
    assert!(report.contains("prior preservation w 1"), "{report}");
    let png = |i: usize| std::fs::read(root.join(format!("made/{i:05}.png"))).unwrap();
    let first: Vec<Vec<u8>> = (0..3).map(png).collect();
    assert!(root.join("made/class_images.json").is_file());
    // A second run reuses them; another prompt on the same folder is refused.
    stdout(&dreambooth(root, "gen2", &flags));
    assert_eq!((0..3).map(png).collect::<Vec<_>>(), first);
    let other = [&flags[..3], &["a square", "--num-class-images", "3"]].concat();
    let out = dreambooth(root, "gen3", &other);
    assert!(!out.status.success() && text(&out).contains("another prompt"));
}

#[test]
fn bad_inputs_name_the_flag_or_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("empty/notes.txt"), "no images").unwrap();
    let refused = |extra: &[&str], expect: &[&str]| {
        let out = dreambooth(root, "bad", &[&["--steps", "1"][..], extra].concat());
        let message = text(&out);
        assert!(!out.status.success(), "{message}");
        for e in expect {
            assert!(message.contains(e), "expected {e:?} in: {message}");
        }
        assert!(!root.join("bad").exists(), "a refused run leaves no --out");
    };
    // An instance folder with no images.
    refused(
        &["--instance-dir", "empty"],
        &["--instance-dir", "instance folder empty", "no images"],
    );
    // A class folder with no images.
    refused(
        &["--class-dir", "empty", "--class-prompt", "a circle"],
        &["--class-dir", "class folder empty", "no images"],
    );
    // A class prompt identical to the instance prompt (case and punctuation aside).
    refused(
        &["--class-dir", "class", "--class-prompt", "A sks circle."],
        &["--class-prompt", "identical to --instance-prompt"],
    );
    // Ranks this build cannot synchronise.
    if cfg!(not(feature = "mpi")) {
        refused(
            &["--rank", "1", "--world-size", "2"],
            &["world size 2 (rank 1)", "--features mpi"],
        );
    }
    // One of --class-dir / --class-prompt without the other.
    refused(&["--class-prompt", "a circle"], &["--class-dir"]);
    refused(&["--class-dir", "class"], &["--class-prompt"]);
    refused(&["--prior-loss-weight", "1"], &["--class-dir"]);
    // A negative prior weight; a resolution the first stage cannot encode.
    refused(
        &[
            "--class-dir",
            "class",
            "--class-prompt",
            "a circle",
            "--prior-loss-weight",
            "-1",
        ],
        &["--prior-loss-weight"],
    );
    refused(&["--resolution", "15"], &["--resolution 15"]);
    // Identifiers: not in the instance prompt, in the class prompt, unknown to the encoder.
    refused(
        &["--identifier", "zwx"],
        &["--identifier \"zwx\"", "not a word"],
    );
    refused(
        &[
            "--class-dir",
            "class",
            "--class-prompt",
            "a sks",
            "--identifier",
            "sks",
        ],
        &["--identifier \"sks\"", "--class-prompt"],
    );
    refused(&["--identifier", "sks"], &["--identifier \"sks\"", "[UNK]"]);
    refused(&["--identifier", "Sks!"], &["--identifier", "lowercase"]);
    // A folder of one's own class images with fewer than asked for.
    refused(
        &[&CLASS[..4], &["--num-class-images", "5"]].concat(),
        &["--class-dir", "holds 4 images", "at most 4"],
    );
    refused(&["--instance-prompt", " "], &["--instance-prompt"]);
}
