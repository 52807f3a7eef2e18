//! Hostile and careless command lines through the built binary, as a table of trials: sizes
//! that used to hang or abort, NaN inputs, zero / negative / huge numbers, missing, empty and
//! truncated files, folders given for files, wrong dtypes, duplicate captions, symlink loops.
//! Every trial must end without a panic or a signal, with the exit status it expects and a
//! message holding the expected words (the flag or file, and what was expected). The inputs
//! are generated in a temporary folder; the only committed files read are the small UNet and
//! pipeline fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ldmscale_eval::npz::encode_npy_f32;

mod common;

/// One command line and what it must give.
struct Trial {
    class: &'static str,
    args: Vec<String>,
    /// Words the output (stderr, then stdout) must hold, each.
    expect: Vec<String>,
    /// Whether it must succeed (a warning case) rather than fail.
    succeeds: bool,
}

fn trial(class: &'static str, args: &[&str], expect: &str) -> Trial {
    Trial {
        class,
        args: args.iter().map(|a| a.to_string()).collect(),
        expect: vec![expect.into()],
        succeeds: false,
    }
}

/// Runs one trial; returns what went wrong, if anything.
fn check(t: &Trial) -> Option<String> {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(&t.args)
        .output()
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{stderr}{}", String::from_utf8_lossy(&out.stdout));
    let problem = if out.status.code().is_none() {
        "killed by a signal".to_string()
    } else if out.status.code() == Some(101) || text.contains("panicked at") {
        "panicked".into()
    } else if text.contains("RUST_BACKTRACE") {
        "printed a backtrace hint".into()
    } else if out.status.success() != t.succeeds {
        format!("exit status {:?}", out.status.code())
    } else if let Some(missing) = t.expect.iter().find(|w| !text.contains(w.as_str())) {
        format!("no {missing:?} in the message")
    } else if took > Duration::from_secs(30) {
        format!("took {took:?}")
    } else {
        return None;
    };
    Some(format!("[{}] {:?}: {problem}\n{text}", t.class, t.args))
}

/// Runs the table, printing the count per class, and fails naming every trial that failed.
fn run(trials: &[Trial]) {
    let failures: Vec<String> = trials.iter().filter_map(check).collect();
    let mut counts = std::collections::BTreeMap::new();
    for t in trials {
        *counts.entry(t.class).or_insert(0) += 1;
    }
    eprintln!("hostile trials by class: {counts:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write_png(path: &Path, side: u32) {
    image::RgbImage::from_pixel(side, side, image::Rgb([9, 9, 9]))
        .save(path)
        .unwrap();
}

/// A `.npy` file with a hand-written header (for shapes and dtypes the writer refuses).
fn raw_npy(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// The generated inputs every table uses.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for folder in ["img", "img2", "empty", "imgt", "big"] {
            std::fs::create_dir(p.join(folder)).unwrap();
        }
        for name in ["a.png", "b.png"] {
            write_png(&p.join("img").join(name), 16);
            write_png(&p.join("img2").join(name), 16);
            write_png(&p.join("big").join(name), 32);
        }
        let png = std::fs::read(p.join("img/a.png")).unwrap();
        std::fs::write(p.join("imgt/a.png"), &png[..40]).unwrap();
        write_png(&p.join("imgt/b.png"), 16);
        std::fs::write(p.join("prompt.npy"), encode_npy_f32(&[1, 2, 4], &[0.5; 8])).unwrap();
        std::fs::write(p.join("empty.txt"), b"").unwrap();
        std::fs::write(p.join("captions.tsv"), "a.png\tone\nb.png\ttwo\n").unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> String {
        s(&self.dir.path().join(name)).to_string()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::write(self.dir.path().join(name), bytes).unwrap();
        self.path(name)
    }
}

/// `command` with `extra` flags, then each default `(flag, value)` that `extra` does not give.
fn with_defaults(command: &[&str], defaults: &[(&str, String)], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = command.iter().chain(extra).map(|a| a.to_string()).collect();
    for (flag, value) in defaults {
        if !extra.contains(flag) {
            args.extend([flag.to_string(), value.clone()]);
        }
    }
    args
}

/// `sample` over the committed tiny UNet and pipeline inputs, with `extra` flags.
fn sample_args(f: &Fixture, extra: &[&str]) -> Vec<String> {
    let pipeline = root().join("fixtures/pipeline");
    let file = |name: &str| s(&pipeline.join(name)).to_string();
    let mut defaults = vec![
        (
            "--unet",
            s(&root().join("fixtures/unet/sd_like_linear")).to_string(),
        ),
        ("--scheduler-config", file("scheduler_config.json")),
        ("--steps", "2".to_string()),
        ("--prompt-embeds", file("prompt_embeds.npy")),
        ("--output-latents", f.path("out.npy")),
    ];
    if !extra.contains(&"--latent-size") {
        defaults.push(("--init-latents", file("init_latents.npy")));
    }
    with_defaults(&["sample"], &defaults, extra)
}

fn sample_trial(f: &Fixture, class: &'static str, extra: &[&str], expect: &str) -> Trial {
    Trial {
        class,
        args: sample_args(f, extra),
        expect: vec![expect.into()],
        succeeds: false,
    }
}

/// Arrays of the fixture pipeline's shapes ([2, 3, 32] text, [2, 4, 16, 16] latents) with one
/// value not finite.
fn non_finite_inputs(f: &Fixture) -> [String; 4] {
    let mut text = vec![0.5f32; 2 * 3 * 32];
    text[5] = f32::NAN;
    let mut latents = vec![0.0f32; 2 * 4 * 16 * 16];
    latents[3] = f32::INFINITY;
    let mut noise = vec![0.0f32; 4 * 2 * 4 * 16 * 16];
    noise[7] = f32::NEG_INFINITY;
    [
        f.write("nan_prompt.npy", &encode_npy_f32(&[2, 3, 32], &text)),
        f.write(
            "nan_negative.npy",
            &encode_npy_f32(&[1, 3, 32], &text[..96]),
        ),
        f.write(
            "inf_latents.npy",
            &encode_npy_f32(&[2, 4, 16, 16], &latents),
        ),
        f.write("inf_noise.npy", &encode_npy_f32(&[4, 2, 4, 16, 16], &noise)),
    ]
}

#[test]
fn sample_checks_numbers_and_inputs_before_sampling() {
    let f = Fixture::new();
    let [nan_prompt, nan_negative, inf_latents, inf_noise] = non_finite_inputs(&f);
    let header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }";
    let overflow = f.path("overflow.npy");
    raw_npy(Path::new(&overflow), header, &[]);
    let int = f.path("int.npy");
    let header = "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2, 4), }";
    raw_npy(Path::new(&int), header, &[0; 32]);
    let good = std::fs::read(root().join("fixtures/pipeline/prompt_embeds.npy")).unwrap();
    let truncated = f.write("truncated.npy", &good[..good.len() - 10]);
    let empty_dims = f.write("empty_dims.npy", &encode_npy_f32(&[2, 0, 32], &[]));
    let big_endian = f.path("big_endian.npy");
    let header = "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3, 32), }";
    raw_npy(Path::new(&big_endian), header, &[0; 768]);
    let half = f.path("half.npy");
    let header = "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3, 32), }";
    raw_npy(Path::new(&half), header, &[0; 384]);
    // The fixture UNet's config beside its weights cut to 3000 bytes.
    let cut = f.dir.path().join("cut_unet");
    std::fs::create_dir(&cut).unwrap();
    let unet = root().join("fixtures/unet/sd_like_linear");
    std::fs::copy(unet.join("config.json"), cut.join("config.json")).unwrap();
    let weights = std::fs::read(unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        cut.join("diffusion_pytorch_model.safetensors"),
        &weights[..3000],
    )
    .unwrap();
    let (empty_file, folder) = (f.path("empty.txt"), f.path("img"));
    let missing_dir = f.path("no/such/out.npy");
    let trials = vec![
        sample_trial(
            &f,
            "size",
            &["--latent-size", "0"],
            "--latent-size 0: expected 1..=",
        ),
        sample_trial(
            &f,
            "size",
            &["--latent-size", "100000"],
            "--latent-size 100000: expected",
        ),
        sample_trial(&f, "size", &["--steps", "0"], "--steps must be at least 1"),
        sample_trial(
            &f,
            "size",
            &["--steps", "100000000"],
            "--steps 100000000: the scheduler has 1000",
        ),
        sample_trial(&f, "size", &["--batch", "0"], "--batch must be at least 1"),
        sample_trial(&f, "size", &["--prompt-embeds", &overflow], "overflow.npy"),
        sample_trial(
            &f,
            "number",
            &["--cfg", "NaN"],
            "--cfg NaN must be a finite number",
        ),
        sample_trial(
            &f,
            "number",
            &["--eta", "inf"],
            "--eta inf: expected a number from 0 to 1",
        ),
        sample_trial(
            &f,
            "number",
            &["--eta", "-1"],
            "--eta -1: expected a number from 0 to 1",
        ),
        sample_trial(
            &f,
            "number",
            &["--eta", "5"],
            "--eta 5: expected a number from 0 to 1",
        ),
        sample_trial(
            &f,
            "number",
            &["--noise-level", "5"],
            "--noise-level given but",
        ),
        sample_trial(
            &f,
            "nan",
            &["--prompt-embeds", &nan_prompt],
            "nan_prompt.npy: value 5 (of 192) is NaN",
        ),
        sample_trial(
            &f,
            "nan",
            &["--negative-embeds", &nan_negative],
            "nan_negative.npy: value 5 (of 96) is NaN",
        ),
        sample_trial(
            &f,
            "nan",
            &["--init-latents", &inf_latents],
            "inf_latents.npy: value 3 (of 2048) is inf",
        ),
        sample_trial(
            &f,
            "nan",
            &["--sampler", "ddpm", "--noise", &inf_noise],
            "inf_noise.npy: value 7 (of 8192) is -inf",
        ),
        sample_trial(
            &f,
            "file",
            &["--prompt-embeds", &int],
            "dtype '<i4' is not supported",
        ),
        sample_trial(
            &f,
            "file",
            &["--prompt-embeds", &truncated],
            "truncated.npy: not a supported .npy array: expected 768 bytes",
        ),
        sample_trial(
            &f,
            "file",
            &["--prompt-embeds", &empty_file],
            "empty.txt: not a supported .npy array: missing the .npy magic",
        ),
        sample_trial(
            &f,
            "file",
            &["--prompt-embeds", &empty_dims],
            "empty_dims.npy: --prompt-embeds must have 3 non-zero dimensions",
        ),
        sample_trial(&f, "path", &["--prompt-embeds", &folder], "Is a directory"),
        sample_trial(
            &f,
            "path",
            &["--output-latents", &folder],
            "--output-latents",
        ),
        sample_trial(
            &f,
            "path",
            &["--output-latents", &missing_dir],
            "does not exist",
        ),
        sample_trial(&f, "path", &["--unet", &folder], "config.json"),
        sample_trial(
            &f,
            "file",
            &["--prompt-embeds", &big_endian],
            "dtype '>f4' is not supported",
        ),
        sample_trial(
            &f,
            "file",
            &["--prompt-embeds", &half],
            "dtype '<f2' is not supported",
        ),
        sample_trial(
            &f,
            "file",
            &["--unet", s(&cut)],
            "diffusion_pytorch_model.safetensors: not a readable safetensors file",
        ),
        sample_trial(
            &f,
            "path",
            &["--scheduler-config", &empty_file],
            "empty.txt: cannot parse scheduler config",
        ),
        trial(
            "path",
            &[
                "sample",
                "--unet",
                "/nonexistent/unet",
                "--prompt-embeds",
                &f.path("prompt.npy"),
                "--output-latents",
                &f.path("o.npy"),
            ],
            "/nonexistent/unet/config.json",
        ),
    ];
    run(&trials);
    assert!(!Path::new(&f.path("out.npy")).exists());
}

#[test]
fn metric_commands_refuse_bad_numbers_paths_and_captions() {
    let f = Fixture::new();
    let (img, img2, empty, imgt) = (
        f.path("img"),
        f.path("img2"),
        f.path("empty"),
        f.path("imgt"),
    );
    let captions = f.path("captions.tsv");
    let dup = f.write("dup.tsv", b"a.png\tone\nb.png\ttwo\na.png\tthree\n");
    let short = f.write("short.txt", b"one\n");
    let unknown = f.write("unknown.tsv", b"a.png\tone\nzzz.png\ttwo\n");
    let empty_caps = f.path("empty.txt");
    let st_trunc = f.write("trunc.safetensors", b"\xe8\x03\0\0\0\0\0\0{\"a\":");
    let st_huge = f.write("huge.safetensors", b"\0\0\0\0\0\x01\0\0{}");
    let bad_npz = f.write("bad.npz", b"PK\x03\x04garbage");
    let npy = f.path("prompt.npy");
    let missing_dir = f.path("no/such/stats.npz");
    let clip = |extra: &[&str]| {
        let mut a = vec![
            "clip-score",
            "--images",
            &img,
            "--clip",
            "/nonexistent/clip",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let clip_trial = |extra: &[&str], expect: &str| Trial {
        class: "metric",
        args: clip(extra),
        expect: vec![expect.into()],
        succeeds: false,
    };
    let trials = vec![
        trial(
            "number",
            &["fid", &img, &img2, "--batch", "0"],
            "--batch 0: expected 1 to 4096",
        ),
        trial(
            "number",
            &["fid", &img, &img2, "--batch", "100000000"],
            "--batch 100000000: expected 1 to 4096",
        ),
        clip_trial(
            &["--captions", &captions, "--batch", "0"],
            "--batch 0: expected 1 to 4096",
        ),
        clip_trial(
            &["--captions", &captions, "--batch", "100000000"],
            "--batch 100000000: expected",
        ),
        clip_trial(
            &["--captions", &dup],
            "dup.tsv line 3: a second caption for \"a.png\"",
        ),
        clip_trial(
            &["--captions", &short],
            "short.txt: 1 captions for 2 images",
        ),
        clip_trial(
            &["--captions", &unknown],
            "unknown.tsv line 2: no image \"zzz.png\"",
        ),
        clip_trial(&["--captions", &empty_caps], "empty.txt: no captions"),
        clip_trial(&["--captions", &img], "Is a directory"),
        clip_trial(
            &["--captions", &captions],
            "loading the CLIP model in /nonexistent/clip",
        ),
        trial(
            "path",
            &["fid", &empty, &img2],
            "no images (png, jpg, jpeg, webp, bmp)",
        ),
        trial(
            "path",
            &["fid", &npy, &img2],
            "prompt.npy: not a folder of images or an .npz",
        ),
        trial(
            "path",
            &["fid", &img, &img2, "--inception", &img],
            "--inception",
        ),
        trial("path", &["fid", &img, "--save-stats", &img], "--save-stats"),
        trial(
            "path",
            &["fid", &img, "--save-stats", &missing_dir],
            "does not exist",
        ),
        trial(
            "file",
            &["fid", &bad_npz, &img2],
            "bad.npz: not an .npz archive",
        ),
        trial(
            "file",
            &["fid", &img, &img2, "--inception", &st_trunc],
            "trunc.safetensors: not a readable safetensors file",
        ),
        trial(
            "file",
            &["fid", &img, &img2, "--inception", &st_huge],
            "huge.safetensors: not a readable safetensors file",
        ),
        trial(
            "file",
            &["psnr", &img, &imgt],
            "imgt/a.png: cannot read image",
        ),
        trial(
            "size",
            &["psnr", &img, &img2, "--crop-border", "100000000"],
            "crop border 100000000 leaves less than 1x1",
        ),
        trial(
            "size",
            &["ssim", &img, &img2, "--crop-border", "3"],
            "leaves less than 11x11",
        ),
        trial(
            "size",
            &["ssim", &img, &f.path("big")],
            "must have the same size",
        ),
        trial("path", &["psnr", &img, &empty], "no images"),
        trial("path", &["psnr", &img, &npy], "prompt.npy"),
        trial(
            "file",
            &[
                "lpips", &img, &img2, "--trunk", &st_trunc, "--heads", &st_huge,
            ],
            "trunc.safetensors: not a readable safetensors file",
        ),
    ];
    run(&trials);
}

#[cfg(unix)]
#[test]
fn symlink_loops_are_named_and_quiet_keeps_warnings() {
    let f = Fixture::new();
    let dir = f.dir.path().join("loops");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink("loop.png", dir.join("loop.png")).unwrap();
    let stats = f.path("o.npz");
    let trials = vec![
        trial(
            "warn",
            &["fid", s(&dir), "--save-stats", &stats],
            "skipping",
        ),
        trial(
            "warn",
            &["-q", "fid", s(&dir), "--save-stats", &stats],
            "loop.png",
        ),
    ];
    run(&trials);
    // The warning comes through the log subscriber, and says which file and that none is left.
    let out = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(["fid", s(&dir), "--save-stats", &stats])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARN") && err.contains("loop.png") && err.contains("no images"),
        "{err}"
    );
}

#[test]
fn model_free_commands_refuse_bad_numbers_and_paths() {
    let f = Fixture::new();
    let vae = f.path("vae_out");
    let file = f.path("prompt.npy");
    let store = f.dir.path().join("store.sqlite");
    std::fs::copy(root().join("fixtures/store/results-v2.sqlite"), &store).unwrap();
    let store = s(&store).to_string();
    let before = std::fs::read(&store).unwrap();
    let tv = |extra: &[&str]| {
        let defaults = [("--steps", "1".to_string()), ("--output", vae.clone())];
        with_defaults(&["train-vae"], &defaults, extra)
    };
    let tv_trial = |extra: &[&str], expect: &str| Trial {
        class: "number",
        args: tv(extra),
        expect: vec![expect.into()],
        succeeds: false,
    };
    let study = |extra: &[&str]| {
        let defaults = [("--preset", "tiny".to_string()), ("--out", f.path("study"))];
        with_defaults(&["study", "--dry-run"], &defaults, extra)
    };
    let study_trial = |extra: &[&str], expect: &str| Trial {
        class: "number",
        args: study(extra),
        expect: vec![expect.into()],
        succeeds: false,
    };
    let trials = vec![
        tv_trial(&["--lr", "NaN"], "--lr NaN: expected a finite rate > 0"),
        tv_trial(&["--lr", "-1"], "--lr -1: expected a finite rate > 0"),
        tv_trial(&["--lr", "0"], "--lr 0: expected a finite rate > 0"),
        tv_trial(
            &["--kl-weight=-1"],
            "--kl-weight -1: expected a finite weight >= 0",
        ),
        tv_trial(
            &["--kl-weight", "NaN"],
            "--kl-weight NaN: expected a finite weight",
        ),
        tv_trial(&["--batch-size", "0"], "--batch-size 0: expected 1 to 4096"),
        tv_trial(
            &["--batch-size", "100000000"],
            "--batch-size 100000000: expected 1 to 4096",
        ),
        tv_trial(
            &["--resolution", "1000000"],
            "--resolution 1000000: expected a multiple",
        ),
        tv_trial(&["--factor", "3"], "--factor 3: expected a power of two"),
        tv_trial(
            &["--base-channels", "100000"],
            "--base-channels 100000: expected 1 to 1024",
        ),
        tv_trial(&["--eval-images", "0"], "--eval-images 0: expected 1 to"),
        tv_trial(&["--data", "bogus"], "unknown dataset kind \"bogus\""),
        tv_trial(
            &["--data", "shapes:resolution=1000000"],
            "the resolution must be 16 to 16384 pixels",
        ),
        tv_trial(
            &["--seed=-1"],
            "'-1' for '--seed <SEED>': expected a whole number",
        ),
        tv_trial(
            &["--steps", "abc"],
            "'abc' for '--steps <STEPS>': expected a whole number",
        ),
        Trial {
            class: "path",
            ..tv_trial(&["--output", &file], "exists and is not a folder")
        },
        study_trial(
            &["--shard", "1/-1"],
            "--shard 1/-1: expected i/N with whole numbers 0 <= i < N",
        ),
        study_trial(&["--shard", "-1/4"], "--shard -1/4: expected i/N"),
        study_trial(&["--shard", "4/4"], "--shard 4/4: expected i/N"),
        study_trial(&["--shard", "1/0"], "--shard 1/0: expected i/N"),
        study_trial(
            &["--only", "bogus"],
            "--only \"bogus\": no such stage \"bogus\"",
        ),
        study_trial(&["--device", "gpu"], "--device = \"gpu\": expected"),
        Trial {
            class: "path",
            ..study_trial(&["--out", &file], "exists and is not a folder")
        },
        trial(
            "path",
            &["study", "--config", &f.path("img"), "--dry-run"],
            "Is a directory",
        ),
        trial(
            "path",
            &["study", "--config", &f.path("empty.txt"), "--dry-run"],
            "missing field `name`",
        ),
        trial(
            "size",
            &["zoo", "--widths", "100000000"],
            "--widths: 100000000 is too wide",
        ),
        trial(
            "size",
            &["zoo", "--widths", "7"],
            "--widths: 7 is not a positive multiple of 32",
        ),
        trial(
            "number",
            &["zoo", "--widths=-32"],
            "'-32' for '--widths <WIDTHS>': expected a whole",
        ),
        trial(
            "size",
            &["zoo", "--latent", "0"],
            "--latent 0: expected 1..=512",
        ),
        trial(
            "size",
            &["zoo", "--latent", "100000"],
            "--latent 100000: expected 1..=512",
        ),
        trial(
            "size",
            &["zoo", "--context", "100000000"],
            "--context 100000000: expected",
        ),
        trial(
            "number",
            &["plan", "--store", &store, "--budget-gflops", "NaN"],
            "--budget-gflops NaN: expected a finite number above 0",
        ),
        trial(
            "number",
            &["plan", "--store", &store, "--budget-gflops", "-1"],
            "--budget-gflops -1: expected",
        ),
        trial(
            "number",
            &["plan", "--store", &store, "--budget-gflops", "inf"],
            "--budget-gflops inf: expected",
        ),
        trial(
            "number",
            &["plan", "--store", &store, "--budget-ms", "0"],
            "--budget-ms 0: expected",
        ),
        trial(
            "path",
            &["plan", "--store", &f.path("img"), "--budget-gflops", "1"],
            "--store",
        ),
        trial(
            "path",
            &[
                "plan",
                "--store",
                &f.path("empty.txt"),
                "--budget-gflops",
                "1",
            ],
            "not an ldmscale results store",
        ),
        trial(
            "silent",
            &["results", "merge", &store, &store],
            "is also an input",
        ),
        trial("path", &["results", "merge", &f.path("img"), &store], "OUT"),
        trial(
            "path",
            &["results", "merge", &f.path("no/m.sqlite"), &store],
            "does not exist",
        ),
        trial(
            "path",
            &["results", "report", "--store", &store, "--out", &file],
            "exists and is not a folder",
        ),
    ];
    run(&trials);
    assert_eq!(
        std::fs::read(&store).unwrap(),
        before,
        "a refused command changed the store"
    );
    assert!(!Path::new(&vae).exists());
}

#[test]
fn train_run_files_with_impossible_sizes_are_refused_before_any_work() {
    let f = Fixture::new();
    let good = "steps = 1\nbatch_size = 2\nlearning_rate = 1e-3\n";
    let run_file = |name: &str, train: &str, edit: &dyn Fn(String) -> String| {
        let dir = f.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = common::tiny_run_file(&dir, train, "");
        let text = edit(std::fs::read_to_string(&path).unwrap());
        std::fs::write(&path, text).unwrap();
        s(&path).to_string()
    };
    let same = |t: String| t;
    let cases: Vec<(String, &str)> = vec![
        (
            run_file("bs", "steps = 1\nbatch_size = 100000000\n", &same),
            "batch_size = 100000000: must be at most 65536",
        ),
        (
            run_file("bs0", "steps = 1\nbatch_size = 0\n", &same),
            "batch_size, grad_accum: must be at least 1",
        ),
        (
            run_file(
                "lr",
                "steps = 1\nbatch_size = 2\nlearning_rate = nan\n",
                &same,
            ),
            "learning_rate = NaN: must be positive",
        ),
        (
            run_file("w", good, &|t| t.replace("width = 8", "width = 100000000")),
            "model.width = 100000000",
        ),
        (
            run_file("h", good, &|t| t.replace("heads = 2", "heads = 0")),
            "model.heads = 0",
        ),
        (
            run_file("res", good, &|t| {
                t.replace("resolution = 16", "resolution = 1000000")
            }),
            "[data] resolution = 1000000: expected 1 to 8192",
        ),
        (
            run_file("ex", good, &|t| t.replace("examples = 24", "examples = 0")),
            "[data] examples = 0: expected at least 1",
        ),
        (
            run_file("steps", good, &|t| t.replace("steps = 1", "steps = -1")),
            "expected u64",
        ),
    ];
    let out = f.path("run");
    let mut trials: Vec<Trial> = cases
        .iter()
        .map(|(config, expect)| {
            trial(
                "config",
                &["train", "--config", config, "--out", &out],
                expect,
            )
        })
        .collect();
    let ok = &run_file("ok", good, &same);
    let file = f.path("prompt.npy");
    trials.extend([
        trial(
            "path",
            &["train", "--config", ok, "--out", &file],
            "exists and is not a folder",
        ),
        trial(
            "path",
            &["train", "--config", &f.path("img"), "--out", &out],
            "Is a directory",
        ),
        trial(
            "number",
            &["train", "--config", ok, "--out", &out, "--width", "0"],
            "model.width = 0",
        ),
        trial(
            "number",
            &[
                "degrade",
                "--input",
                &f.path("img"),
                "--out",
                &out,
                "--scale",
                "0",
            ],
            "--scale 0: expected a downscaling factor",
        ),
        trial(
            "number",
            &["train", "--config", ok, "--out", &out, "--widths", "8,16"],
            "--widths is for `ldmscale train-family`",
        ),
        trial(
            "number",
            &[
                "train-family",
                "--config",
                ok,
                "--out",
                &out,
                "--widths",
                "8,8",
            ],
            "--widths: 8 is named twice",
        ),
        trial(
            "number",
            &[
                "train-family",
                "--config",
                ok,
                "--out",
                &out,
                "--widths",
                "0",
            ],
            "model.width = 0",
        ),
    ]);
    run(&trials);
    assert!(!Path::new(&out).exists(), "a refused run made its --out");
}

/// A tiny UNet, autoencoder and empty context under the fixture folder for `finetune-sr`.
fn finetune_inputs(f: &Fixture) -> Vec<String> {
    use burn::tensor::Device;
    use ldmscale_model::init::seeded_init;
    use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig};
    let device = Device::flex();
    let mut config = UNetConfig::small(8, 16, 2);
    config.norm_num_groups = 4;
    let unet = f.dir.path().join("unet");
    let model = seeded_init(&device, 1, || UNet::new(&config, &device));
    ldmscale_model::weights::save_unet(&unet, &config, &model).unwrap();
    let vae_config = AutoencoderKLConfig::small(2, 8);
    let vae = f.dir.path().join("vae");
    let model = seeded_init(&device, 2, || AutoencoderKL::new(&vae_config, &device));
    ldmscale_model::vae::save_vae(&vae, &vae_config, &model).unwrap();
    let empty = f.write("context.npy", &encode_npy_f32(&[1, 3, 16], &[0.0; 48]));
    let mut args = vec!["finetune-sr", "--unet", s(&unet), "--first-stage", s(&vae)];
    let hr = f.path("img");
    args.extend(["--hr", &hr, "--empty-context", &empty]);
    args.extend(["--crop", "16", "--steps", "1"]);
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn finetune_sr_names_the_flag_before_making_its_output() {
    let f = Fixture::new();
    let base = finetune_inputs(&f);
    let out = f.path("run");
    let mut nan = vec![0.0f32; 48];
    nan[2] = f32::NAN;
    let nan = f.write("nan_context.npy", &encode_npy_f32(&[1, 3, 16], &nan));
    // The autoencoder's config beside its weights cut to 500 bytes.
    let cut_vae = f.path("cut_vae");
    std::fs::create_dir(&cut_vae).unwrap();
    let vae = f.dir.path().join("vae");
    std::fs::copy(
        vae.join("config.json"),
        Path::new(&cut_vae).join("config.json"),
    )
    .unwrap();
    let weights = std::fs::read(vae.join("diffusion_pytorch_model.safetensors")).unwrap();
    let cut_weights = Path::new(&cut_vae).join("diffusion_pytorch_model.safetensors");
    std::fs::write(cut_weights, &weights[..500]).unwrap();
    let cases: [(&str, &[&str], &str); 14] = [
        (
            "number",
            &["--crops-per-image", "0"],
            "--crops-per-image 0: expected 1 to 4096",
        ),
        (
            "size",
            &["--crops-per-image", "100000000"],
            "--crops-per-image 100000000: expected",
        ),
        (
            "number",
            &["--ema-max-decay", "2"],
            "--ema-max-decay: ema.max_decay = 2: must be in [0, 1]",
        ),
        (
            "number",
            &["--ema-max-decay", "NaN"],
            "--ema-max-decay: ema.max_decay = NaN",
        ),
        (
            "number",
            &["--ema-max-decay", "-1"],
            "--ema-max-decay: ema.max_decay = -1",
        ),
        (
            "number",
            &["--learning-rate", "NaN"],
            "--learning-rate: learning_rate = NaN",
        ),
        (
            "number",
            &["--batch-size", "100000000"],
            "--batch-size: batch_size = 100000000: must be at most",
        ),
        (
            "number",
            &["--snapshot-steps", "5,3"],
            "--snapshot-steps: snapshot_steps[1] = 3",
        ),
        (
            "number",
            &["--checkpoint-every", "0"],
            "--checkpoint-every: checkpoint_every",
        ),
        (
            "number",
            &["--noise-augmentation", "100000"],
            "--noise-augmentation: noise_augmentation = 100000",
        ),
        ("size", &["--crop", "0"], "--crop 0: must be at least 16"),
        (
            "nan",
            &["--empty-context", &nan],
            "nan_context.npy: value 2 (of 48) is NaN",
        ),
        ("path", &["--hr", &f.path("empty")], "--hr"),
        (
            "file",
            &["--first-stage", &cut_vae],
            "not a readable safetensors file",
        ),
    ];
    let mut trials: Vec<Trial> = cases
        .iter()
        .map(|(class, extra, expect)| {
            let mut args = base.clone();
            // A later flag replaces the base's value of the same flag.
            if let Some(i) = args.iter().position(|a| a == extra[0]) {
                args.drain(i..i + 2);
            }
            args.extend(extra.iter().map(|a| a.to_string()));
            args.extend(["--out".to_string(), out.clone()]);
            Trial {
                class,
                args,
                expect: vec![expect.to_string()],
                succeeds: false,
            }
        })
        .collect();
    let mut onto_file = base.clone();
    onto_file.extend(["--out".to_string(), f.path("prompt.npy")]);
    trials.push(Trial {
        class: "path",
        args: onto_file,
        expect: vec!["exists and is not a directory".into()],
        succeeds: false,
    });
    run(&trials);
    assert!(
        !Path::new(&out).exists(),
        "a refused finetune made its --out"
    );
}

/// A tar of one member whose header declares 1 TiB (GNU base-256 size) and 1 KiB after it.
fn tar_declaring_a_tebibyte(path: &Path) {
    let mut header = [0u8; 512];
    header[..7].copy_from_slice(b"000.png");
    header[100..108].copy_from_slice(b"0000644\0");
    header[124] = 0x80;
    header[124 + 6] = 0x01; // 2^40, big-endian in bytes 124..136
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar ");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&[0; 1024]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn study_configs_and_shards_that_cannot_run_fail_the_dry_run() {
    let f = Fixture::new();
    let out = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args([
            "study",
            "--preset",
            "tiny",
            "--dry-run",
            "--out",
            &f.path("s"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let marker = "# the config, as TOML:\n";
    let tiny = &text[text.find(marker).expect("the dry run prints its config") + marker.len()..];
    let edits: [(&str, &str, &str, &str); 10] = [
        (
            "heads0",
            "heads = 2\n",
            "heads = 0\n",
            "heads: 0 is outside 1..=",
        ),
        (
            "cfg",
            "cfg = [\n    1.0,",
            "cfg = [\n    nan,",
            "sweep.cfg[0]: NaN is not a number",
        ),
        (
            "steps",
            "steps = [\n    2,",
            "steps = [\n    0,",
            "sweep.steps[0]: 0 is outside 1..=",
        ),
        (
            "batch0",
            "batch_size = 8\nlearning_rate",
            "batch_size = 0\nlearning_rate",
            "recipe.batch_size: 0 is outside",
        ),
        (
            "batch",
            "batch_size = 8\nlearning_rate",
            "batch_size = 100000000\nlearning_rate",
            "recipe.batch_size: 100000000 is outside",
        ),
        (
            "lr",
            "learning_rate = 0.001\nwarmup_steps = 10",
            "learning_rate = nan\nwarmup_steps = 10",
            "recipe.learning_rate: NaN",
        ),
        (
            "samplers",
            "samplers = [\n    \"ddim\",\n    \"dpmpp-2m\",\n]",
            "samplers = []",
            "sweep.samplers: must name at least one",
        ),
        (
            "res",
            "resolution = 16\n",
            "resolution = 1000000\n",
            "resolution: 1000000 is outside 1..=",
        ),
        (
            "width",
            "    16,\n]",
            "    100000000,\n]",
            "widths[1]: 100000000 must be",
        ),
        (
            "key",
            "heads = 2\n",
            "heads = 2\nbogus = 1\n",
            "unknown field `bogus`",
        ),
    ];
    let mut trials = Vec::new();
    for (name, from, to, expect) in edits {
        assert!(tiny.contains(from), "the tiny preset changed: no {from:?}");
        let config = f.write(
            &format!("{name}.toml"),
            tiny.replacen(from, to, 1).as_bytes(),
        );
        let args = [
            "study",
            "--config",
            &config,
            "--dry-run",
            "--out",
            &f.path("s"),
        ];
        let mut t = trial("config", &args, expect);
        t.expect.push(format!("{name}.toml"));
        trials.push(t);
    }
    let tar = f.dir.path().join("huge.tar");
    tar_declaring_a_tebibyte(&tar);
    let data = format!("wds:{}", s(&tar));
    let args = [
        "train-vae",
        "--data",
        &data,
        "--steps",
        "1",
        "--output",
        &f.path("v"),
    ];
    trials.push(trial("size", &args, "header declares 1099511627776 bytes"));
    run(&trials);
    assert!(!Path::new(&f.path("s")).exists() && !Path::new(&f.path("v")).exists());
}
