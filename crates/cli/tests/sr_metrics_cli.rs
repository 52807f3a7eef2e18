//! `ldmscale psnr` / `ldmscale ssim` on image folders: the values of the library functions (which
//! equal BasicSR, see crates/eval/tests/sr_metrics_parity.rs), the mean last, and clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ldmscale_eval::sr_metrics::{RgbView, SrMetricOptions, psnr, ssim};

fn ldmscale(args: &[&str], dirs: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(&args[..1])
        .args(dirs)
        .args(&args[1..])
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// A deterministic textured RGB image; `shift` perturbs it like a restoration error.
fn pattern(width: u32, height: u32, shift: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let v = |c: u32| {
            let base = (x * 7 + y * 3 + c * 50) % 200 + (x * y) % 17;
            let noise = (x * 31 + y * 17 + c * 7 + shift * 13) % 23;
            (base + shift * noise / 8) as u8
        };
        image::Rgb([v(0), v(1), v(2)])
    })
}

/// Folders `a/` and `b/` with the same three names, of sizes incl. odd ones.
fn folders(root: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for (name, w, h) in [("x.png", 32, 24), ("y.png", 27, 31), ("z.png", 40, 40)] {
        pattern(w, h, 0).save(a.join(name)).unwrap();
        pattern(w, h, 3).save(b.join(name)).unwrap();
    }
    (a, b)
}

/// The library's value for one file of both folders.
fn library(a: &Path, b: &Path, name: &str, options: SrMetricOptions, ssim_not_psnr: bool) -> f64 {
    let ia = image::open(a.join(name)).unwrap().to_rgb8();
    let ib = image::open(b.join(name)).unwrap().to_rgb8();
    let (w, h) = (ia.width() as usize, ia.height() as usize);
    let (va, vb) = (
        RgbView::new(ia.as_raw(), w, h),
        RgbView::new(ib.as_raw(), w, h),
    );
    let metric = if ssim_not_psnr { ssim } else { psnr };
    metric(va, vb, options).unwrap()
}

fn last_number(text: &str) -> f64 {
    let last = text.lines().last().unwrap();
    last.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn per_image_values_and_the_mean_equal_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = folders(dir.path());
    let options = SrMetricOptions {
        crop_border: 4,
        y_channel: true,
    };
    for (command, is_ssim) in [("psnr", false), ("ssim", true)] {
        let args = [command, "--crop-border", "4", "--y-channel", "--per-image"];
        let text = stdout(&ldmscale(&args, &[&a, &b]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let mut sum = 0.0;
        for (line, name) in lines.iter().zip(["x.png", "y.png", "z.png"]) {
            let (file, value) = line.split_once('\t').unwrap();
            assert_eq!(file, name);
            let expected = library(&a, &b, name, options, is_ssim);
            assert!(
                (value.parse::<f64>().unwrap() - expected).abs() < 1e-6,
                "{line}"
            );
            sum += expected;
        }
        assert!((last_number(&text) - sum / 3.0).abs() < 1e-6, "{text}");
        assert!(
            lines[3].contains("over 3 images (Y, crop border 4)"),
            "{text}"
        );
    }
    let plain = stdout(&ldmscale(&["psnr"], &[&a, &b]));
    assert_eq!(plain.lines().count(), 1, "{plain}");
    let expected: f64 = ["x.png", "y.png", "z.png"]
        .iter()
        .map(|n| library(&a, &b, n, SrMetricOptions::default(), false))
        .sum::<f64>()
        / 3.0;
    assert!((last_number(&plain) - expected).abs() < 1e-6, "{plain}");
}

#[test]
fn grey_is_replicated_and_identical_images_give_inf() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let grey = image::GrayImage::from_fn(20, 20, |x, y| image::Luma([(x * 11 + y * 5) as u8]));
    image::DynamicImage::from(grey.clone())
        .to_rgb8()
        .save(a.join("g.png"))
        .unwrap();
    grey.save(b.join("g.png")).unwrap();
    let text = stdout(&ldmscale(&["psnr"], &[&a, &b]));
    assert!(text.trim_end().ends_with(": inf"), "{text}");
    let text = stdout(&ldmscale(&["ssim"], &[&a, &b]));
    assert_eq!(last_number(&text), 1.0, "{text}");
}

#[test]
fn bad_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = folders(dir.path());
    std::fs::remove_file(b.join("y.png")).unwrap();
    let e = stderr(&ldmscale(&["psnr"], &[&a, &b]));
    assert!(
        e.contains("no image named y.png") && e.contains(&*b.to_string_lossy()),
        "{e}"
    );

    pattern(10, 10, 0).save(b.join("y.png")).unwrap();
    let e = stderr(&ldmscale(&["ssim"], &[&a, &b]));
    assert!(
        e.contains("y.png is 27x31 but") && e.contains("is 10x10"),
        "{e}"
    );

    std::fs::write(b.join("y.png"), b"not a png").unwrap();
    let e = stderr(&ldmscale(&["psnr"], &[&a, &b]));
    assert!(
        e.contains("y.png") && e.contains("cannot read image"),
        "{e}"
    );

    let mut rgba = image::RgbaImage::from_pixel(27, 31, image::Rgba([5, 6, 7, 255]));
    rgba.put_pixel(0, 0, image::Rgba([5, 6, 7, 100]));
    rgba.save(b.join("y.png")).unwrap();
    let e = stderr(&ldmscale(&["psnr"], &[&a, &b]));
    assert!(e.contains("y.png") && e.contains("translucent"), "{e}");

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = stderr(&ldmscale(&["psnr"], &[&a, &empty]));
    assert!(e.contains("no images"), "{e}");

    let e = stderr(&ldmscale(&["ssim", "--crop-border", "10"], &[&a, &a]));
    assert!(e.contains("x.png") && e.contains("crop border 10"), "{e}");
}

#[test]
fn help_teaches_the_conventions() {
    let out = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(["psnr", "--help"])
        .output()
        .unwrap();
    let text = stdout(&out);
    for part in [
        "BasicSR 1.4.2",
        "--crop-border 4",
        "--y-channel --crop-border 4",
        "Grey",
    ] {
        assert!(text.contains(part), "help lacks {part:?}:\n{text}");
    }
}
