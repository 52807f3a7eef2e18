//! Hostile and careless command lines through the built binary: sizes that used to hang or
//! abort, NaN inputs, batch 0, duplicate captions, huge array headers and symlink loops. Each
//! must exit non-zero (or warn) with a message naming the flag or file, quickly. The inputs are
//! generated here; no weights are needed, since every check runs before any model is loaded.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ldmscale_eval::npz::encode_npy_f32;

fn ldmscale(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    out
}

/// Runs `args`, expects a failure, and returns stderr.
fn fails(args: &[&str]) -> String {
    let out = ldmscale(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `sample` with prompt embeddings at `prompt` and `extra` flags; the UNet does not exist.
fn sample(dir: &Path, prompt: &Path, extra: &[&str]) -> String {
    let out = dir.join("out.npy");
    let mut args = vec![
        "sample",
        "--unet",
        "/nonexistent/unet",
        "--prompt-embeds",
        s(prompt),
        "--output-latents",
        s(&out),
    ];
    args.extend_from_slice(extra);
    let err = fails(&args);
    assert!(!out.exists());
    err
}

#[test]
fn sample_refuses_sizes_and_numbers_that_used_to_hang_or_abort() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("prompt.npy");
    std::fs::write(&prompt, encode_npy_f32(&[1, 2, 4], &[0.5; 8])).unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--latent-size", "0"], "--latent-size 0: expected 1..="),
        (
            &["--latent-size", "100000"],
            "--latent-size 100000: expected 1..=",
        ),
        (&["--steps", "0"], "--steps must be at least 1"),
        (&["--cfg", "NaN"], "--cfg NaN must be a finite number"),
        (&["--eta", "inf"], "--eta inf must be a finite"),
        (&["--batch", "0"], "--batch must be at least 1"),
    ];
    for (extra, want) in cases {
        let err = sample(dir.path(), &prompt, extra);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}

#[test]
fn sample_names_the_file_holding_nan_before_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("prompt.npy");
    std::fs::write(&good, encode_npy_f32(&[1, 2, 4], &[0.5; 8])).unwrap();
    let mut values = [0.5f32; 8];
    values[5] = f32::NAN;
    let nan = dir.path().join("nan_prompt.npy");
    std::fs::write(&nan, encode_npy_f32(&[1, 2, 4], &values)).unwrap();
    let err = sample(dir.path(), &nan, &[]);
    assert!(
        err.contains("nan_prompt.npy: value 5 (of 8) is NaN"),
        "{err}"
    );
    let latents = dir.path().join("nan_latents.npy");
    let mut init = vec![0.0f32; 16];
    init[3] = f32::INFINITY;
    std::fs::write(&latents, encode_npy_f32(&[1, 1, 4, 4], &init)).unwrap();
    let err = sample(dir.path(), &good, &["--init-latents", s(&latents)]);
    assert!(
        err.contains("nan_latents.npy: value 3 (of 16) is inf"),
        "{err}"
    );
    // Empty dimensions are refused too.
    let empty = dir.path().join("empty.npy");
    std::fs::write(&empty, encode_npy_f32(&[1, 0, 4], &[])).unwrap();
    let err = sample(dir.path(), &empty, &[]);
    assert!(
        err.contains("empty.npy") && err.contains("non-zero dimensions"),
        "{err}"
    );
}

#[test]
fn npy_headers_with_impossible_shapes_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let path = dir.path().join("overflow.npy");
    std::fs::write(&path, bytes).unwrap();
    let err = sample(dir.path(), &path, &[]);
    assert!(
        err.contains("overflow.npy") && err.contains("needs more than"),
        "{err}"
    );
}

fn write_png(path: &Path) {
    image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9]))
        .save(path)
        .unwrap();
}

#[test]
fn metric_commands_refuse_batch_zero_and_duplicate_captions() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    write_png(&images.join("a.png"));
    write_png(&images.join("b.png"));
    let err = fails(&["fid", s(&images), s(&images), "--batch", "0"]);
    assert!(err.contains("--batch must be at least 1"), "{err}");
    let captions = dir.path().join("captions.tsv");
    std::fs::write(&captions, "a.png\tone\nb.png\ttwo\n").unwrap();
    let clip = ["--clip", "/nonexistent/clip"];
    let base = [
        "clip-score",
        "--images",
        s(&images),
        "--captions",
        s(&captions),
    ];
    let err = fails(&[&base[..], &clip, &["--batch", "0"]].concat());
    assert!(err.contains("--batch must be at least 1"), "{err}");
    std::fs::write(&captions, "a.png\tone\nb.png\ttwo\na.png\tthree\n").unwrap();
    let err = fails(&[&base[..], &clip].concat());
    assert!(
        err.contains("captions.tsv line 3") && err.contains("second caption for \"a.png\""),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn symlink_loops_in_an_image_folder_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::os::unix::fs::symlink("loop.png", images.join("loop.png")).unwrap();
    let err = fails(&[
        "fid",
        s(&images),
        "--save-stats",
        s(&dir.path().join("o.npz")),
    ]);
    assert!(
        err.contains("warning: skipping") && err.contains("loop.png") && err.contains("no images"),
        "{err}"
    );
}
