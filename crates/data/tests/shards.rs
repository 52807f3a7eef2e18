//! Shard-set robustness of the WebDataset reader: missing shards are an error naming them,
//! corrupt shards are left out with a counted warning up to the documented threshold.

use std::path::{Path, PathBuf};

use ldmscale_data::webdataset::MAX_CORRUPT_SHARD_FRACTION;
use ldmscale_data::{Dataset, Image, WebDataset};
use ldmscale_testkit::assert_mentions;

fn member(builder: &mut tar::Builder<std::fs::File>, name: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, bytes).unwrap();
}

/// A shard of two captioned samples (a 24 x 24 PNG each, coloured by `n`).
fn good_shard(path: &Path, n: usize) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for k in 0..2 {
        let png = Image::filled(24, 24, [n as u8, k as u8 * 100, 7]).to_png();
        member(&mut b, &format!("{n:05}{k}.png"), &png);
        member(&mut b, &format!("{n:05}{k}.txt"), b"a square");
    }
    b.into_inner().unwrap();
}

/// Cuts a shard inside its data (not on a 512-byte block boundary).
fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() * 3 / 5 + 7]).unwrap();
}

fn gzip(path: &Path) {
    use std::io::Write;
    let bytes = std::fs::read(path).unwrap();
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&bytes).unwrap();
    std::fs::write(path, z.finish().unwrap()).unwrap();
}

/// `count` good shards `shard-00000.tar ...` and their brace pattern.
fn shard_set(dir: &Path, count: usize) -> (Vec<PathBuf>, String) {
    let paths: Vec<PathBuf> = (0..count)
        .map(|n| dir.join(format!("shard-{n:05}.tar")))
        .collect();
    for (n, p) in paths.iter().enumerate() {
        good_shard(p, n);
    }
    let pattern = format!("{}/shard-{{00000..{:05}}}.tar", dir.display(), count - 1);
    (paths, pattern)
}

#[test]
fn missing_shards_in_a_brace_range_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, pattern) = shard_set(dir.path(), 6);
    std::fs::remove_file(&paths[2]).unwrap();
    std::fs::remove_file(&paths[4]).unwrap();
    let err = WebDataset::open(&pattern)
        .err()
        .expect("refused")
        .to_string();
    assert_mentions(
        &err,
        &[
            "2 of 6 shard(s) missing",
            "shard-00002.tar",
            "shard-00004.tar",
        ],
    );
    assert!(!err.contains("shard-00003.tar"), "{err}");
}

#[test]
fn one_corrupt_shard_in_a_hundred_and_one_is_left_out_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, pattern) = shard_set(dir.path(), 101);
    truncate(&paths[50]);
    let ds = WebDataset::open(&pattern).unwrap();
    assert_eq!(
        ds.len(),
        Some(200),
        "the 100 good shards' samples, none of the cut one"
    );
    assert_eq!(ds.corrupt_shards().len(), 1);
    let bad = &ds.corrupt_shards()[0];
    assert!(bad.what.ends_with("shard-00050.tar"), "{bad:?}");
    assert_mentions(&bad.reason, &["corrupt shard left out", "truncated"]);
    assert_eq!(ds.skipped().last(), Some(bad), "skipped() counts it too");
    // The samples after the left-out shard still read, with their own content.
    let e = ds.get(100).unwrap();
    assert_eq!(e.id, "shard-00051.tar/000510");
    assert_eq!(e.image.pixel(0, 0), [51, 0, 7]);
}

#[test]
fn corrupt_shards_past_the_threshold_are_an_error_naming_each() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, pattern) = shard_set(dir.path(), 101);
    truncate(&paths[10]);
    gzip(&paths[90]);
    let err = WebDataset::open(&pattern)
        .err()
        .expect("refused")
        .to_string();
    assert_mentions(
        &err,
        &[
            "2 of 101 shard(s) corrupt",
            "more than the 1 tolerated",
            "shard-00010.tar",
            "truncated",
            "shard-00090.tar",
            "gzip-compressed",
        ],
    );
}

#[test]
fn the_threshold_is_one_percent_rounded_down() {
    assert_eq!(MAX_CORRUPT_SHARD_FRACTION, 0.01);
    let dir = tempfile::tempdir().unwrap();
    let (paths, pattern) = shard_set(dir.path(), 3);
    truncate(&paths[1]);
    let err = WebDataset::open(&pattern)
        .err()
        .expect("none of 3 tolerated");
    assert_mentions(
        &err.to_string(),
        &["1 of 3 shard(s) corrupt", "shard-00001.tar"],
    );
    let ds = WebDataset::open_tolerating(&pattern, 0.34).unwrap();
    assert_eq!((ds.len(), ds.corrupt_shards().len()), (Some(4), 1));
    let err = WebDataset::open_tolerating(&pattern, 1.5)
        .err()
        .expect("a fraction");
    assert_mentions(&err.to_string(), &["corrupt shard fraction", "[0, 1]"]);
}

#[test]
fn a_member_that_is_not_an_image_is_skipped_while_indexing() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("mixed.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&shard).unwrap());
        member(&mut b, "a.png", &Image::filled(4, 4, [1, 2, 3]).to_png());
        member(&mut b, "a.txt", b"fine");
        member(&mut b, "b.jpg", b"<html>403 Forbidden</html>");
        member(&mut b, "b.txt", b"an error page saved as an image");
        b.into_inner().unwrap();
    }
    let ds = WebDataset::open(shard.to_str().unwrap()).unwrap();
    assert_eq!(ds.len(), Some(1));
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].what.ends_with("mixed.tar:b"));
    assert_mentions(
        &ds.skipped()[0].reason,
        &["mixed.tar:b.jpg", "not an image"],
    );
}
