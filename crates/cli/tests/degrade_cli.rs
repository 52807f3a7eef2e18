//! `ldmscale degrade` through the built binary on tiny generated images: byte-identical output
//! for the same input, a manifest that matches the files, and every bad input refused with the
//! file or field named and nothing left at `--out`.

use std::path::Path;
use std::process::{Command, Output};

use image::{ImageBuffer, Luma, Rgb, Rgba};

fn ldmscale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .arg("-q")
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A colourful test pattern, so blur, noise and JPEG all change something.
fn rgb(path: &Path, w: u32, h: u32) {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 % 256) as u8,
            (y * 11 % 256) as u8,
            ((x ^ y) * 5 % 256) as u8,
        ])
    })
    .save(path)
    .unwrap();
}

/// Runs `degrade` from `input` to `dir/out`, expects a failure naming `needle`, and checks that
/// nothing (not even a hidden partial folder) was left beside it.
fn refused(input: &Path, dir: &Path, extra: &[&str], needle: &str) {
    let out = dir.join("out");
    let mut args = vec!["degrade", "--input", s(input), "--out", s(&out)];
    args.extend_from_slice(extra);
    let result = ldmscale(&args);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{args:?} succeeded");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("out"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn same_input_gives_byte_identical_sets_and_a_true_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("hr");
    std::fs::create_dir(&input).unwrap();
    rgb(&input.join("b.png"), 40, 32);
    rgb(&input.join("a.png"), 48, 48);
    ImageBuffer::from_fn(32, 36, |x, y| Luma([(x * 9 + y) as u8]))
        .save(input.join("grey.png"))
        .unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let result = ldmscale(&[
            "degrade",
            "--input",
            s(&input),
            "--out",
            s(&out),
            "--seed",
            seed,
        ]);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        out
    };
    let (first, second, other) = (run("one", "7"), run("two", "7"), run("three", "8"));
    let read = |dir: &Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    for name in ["a.png", "b.png", "grey.png", "manifest.json"] {
        assert_eq!(read(&first, name), read(&second, name), "{name}");
    }
    assert_ne!(read(&first, "a.png"), read(&other, "a.png"));

    let manifest: serde_json::Value =
        serde_json::from_slice(&read(&first, "manifest.json")).unwrap();
    let files = manifest["files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["input"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.png", "b.png", "grey.png"]);
    assert_eq!(files[2]["conversion"], "grey replicated to RGB");
    assert_eq!(files[1]["lr_size"], serde_json::json!([10, 8]));
    let lr = image::open(first.join("b.png")).unwrap();
    assert_eq!((lr.width(), lr.height()), (10, 8));
    assert_eq!(manifest["params"]["noise2"]["gray_prob"], 0.4);
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let case = |name: &str| {
        let folder = root.join(name);
        std::fs::create_dir(&folder).unwrap();
        rgb(&folder.join("fine.png"), 32, 32);
        folder
    };
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();

    let empty = root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(&empty, &work, &[], "no images");

    let corrupt = case("corrupt");
    std::fs::write(corrupt.join("broken.png"), b"\x89PNG not really").unwrap();
    refused(&corrupt, &work, &[], "broken.png");
    // A readable header over missing pixels fails only mid-run: the partial set is removed.
    let truncated = case("truncated");
    let whole = std::fs::read(truncated.join("fine.png")).unwrap();
    std::fs::write(truncated.join("cut.png"), &whole[..whole.len() / 2]).unwrap();
    refused(&truncated, &work, &[], "cut.png: unreadable image");

    let odd = case("odd");
    rgb(&odd.join("odd.png"), 34, 32);
    rgb(&odd.join("tiny.png"), 12, 40);
    refused(
        &odd,
        &work,
        &[],
        "odd.png: 34x32 is not divisible by the scale 4",
    );
    refused(
        &odd,
        &work,
        &[],
        "tiny.png: 12x40 has a side below the 16 px minimum",
    );

    let clash = case("clash");
    rgb(&clash.join("fine.bmp"), 32, 32);
    refused(&clash, &work, &[], "same output fine.png");

    let alpha = case("alpha");
    ImageBuffer::from_fn(32, 32, |x, _| Rgba([1, 2, 3, (x * 8) as u8]))
        .save(alpha.join("see-through.png"))
        .unwrap();
    refused(
        &alpha,
        &work,
        &[],
        "see-through.png: has transparent pixels",
    );

    let fine = case("fine");
    refused(&fine, &work, &["--params", "paper"], "use --params scaled");
    refused(
        &fine,
        &work,
        &["--params", "nope"],
        "unknown degradation \"nope\"",
    );
    let typo = root.join("typo.toml");
    std::fs::write(&typo, "[blur1]\nsinc_probability = 0.2\n").unwrap();
    refused(
        &fine,
        &work,
        &["--params", s(&typo)],
        "unknown key `blur1.sinc_probability`",
    );
    let range = root.join("range.toml");
    std::fs::write(&range, "blur2_prob = 2\n").unwrap();
    refused(
        &fine,
        &work,
        &["--params", s(&range)],
        "blur2_prob: 2 is not a probability",
    );
}

#[test]
fn an_existing_set_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("hr");
    std::fs::create_dir(&input).unwrap();
    rgb(&input.join("a.png"), 32, 32);
    let out = dir.path().join("lr");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let result = ldmscale(&["degrade", "--input", s(&input), "--out", s(&out)]);
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("never overwritten"));
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn hr_source_crops_are_kept_beside_their_lr_images() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    rgb(&photos.join("a.png"), 80, 60);
    rgb(&photos.join("sub/b.png"), 64, 96);
    let source = format!("folder:{}", s(&photos));
    let run = |name: &str| {
        let out = dir.path().join(name);
        let args = ["degrade", "--hr-source", &source, "--out", s(&out)];
        let extra = [
            "--crops",
            "5",
            "--crop-size",
            "32",
            "--downscale",
            "paper-view",
        ];
        let result = ldmscale(&[&args[..], &extra[..]].concat());
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "{stderr}");
        out
    };
    let (first, second) = (run("one"), run("two"));
    for name in ["hr/crop-00004.png", "crop-00004.png", "manifest.json"] {
        let read = |d: &Path| std::fs::read(d.join(name)).unwrap();
        assert_eq!(read(&first), read(&second), "{name}");
    }
    let hr = image::open(first.join("hr/crop-00000.png")).unwrap();
    assert_eq!((hr.width(), hr.height()), (32, 32));
    let lr = image::open(first.join("crop-00000.png")).unwrap();
    assert_eq!((lr.width(), lr.height()), (8, 8));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["hr_crops"]["source"], source.as_str());
    assert_eq!(manifest["hr_crops"]["spec"]["downscale"], "paper-view");
    assert_eq!(manifest["files"].as_array().unwrap().len(), 5);
}

#[test]
fn hr_source_bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    rgb(&photos.join("small.png"), 24, 24);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let folder = format!("folder:{}", s(&photos));
    let cases: [(&[&str], &str); 5] = [
        (
            &["--hr-source", &folder, "--crop-size", "30"],
            "--crop-size 30",
        ),
        (
            &["--hr-source", &folder, "--crop-size", "32"],
            "small.png: 24x24 image is smaller than a 32x32 crop",
        ),
        (&["--hr-source", "imagenet"], "unknown HR source `imagenet`"),
        (
            &["--hr-source", &folder, "--input", s(&photos)],
            "cannot be used with",
        ),
        (
            &["--input", s(&photos), "--crops", "3"],
            "cannot be used with '--crops <CROPS>'",
        ),
    ];
    for (extra, needle) in cases {
        let out = work.join("out");
        let result = ldmscale(&[&["degrade", "--out", s(&out)][..], extra].concat());
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            !result.status.success() && stderr.contains(needle),
            "{extra:?}: {stderr}"
        );
        assert_eq!(
            std::fs::read_dir(&work).unwrap().count(),
            0,
            "{extra:?} left files"
        );
    }
    let empty_cache = dir.path().join("cache");
    let result = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .env("LDMSCALE_CACHE", &empty_cache)
        .args([
            "-q",
            "degrade",
            "--hr-source",
            "photos",
            "--out",
            s(&work.join("out")),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("tools/fetch-assets.sh photos"), "{stderr}");
}
