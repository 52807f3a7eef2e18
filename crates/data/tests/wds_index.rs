//! The WebDataset's on-disk per-shard index: every index names the same example whether the
//! shards were just indexed, read back from their sidecar index files, or indexed again after a
//! shard changed or a sidecar was damaged; skipped members and corrupt shards count as before.

use std::path::{Path, PathBuf};

use ldmscale_data::webdataset::{INDEX_SUFFIX, index_file};
use ldmscale_data::{Dataset, Image, WebDataset};

fn member(builder: &mut tar::Builder<std::fs::File>, name: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, bytes).unwrap();
}

/// What an index must hold: (id, caption, top-left pixel).
type Expected = Vec<(String, String, [u8; 3])>;

/// Shard `n` of a mixed set: `3 + n` good samples (captions from .txt, or .json every third),
/// then one whose .jpg is an HTML page and one without a caption, both skipped.
fn mixed_shard(path: &Path, n: usize, expected: &mut Expected) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    for k in 0..3 + n {
        let key = format!("s{n}/{k:04}");
        let colour = [n as u8 * 10, k as u8, 200];
        member(
            &mut b,
            &format!("{key}.png"),
            &Image::filled(8, 6, colour).to_png(),
        );
        let caption = format!("shard {n} sample {k}");
        if k % 3 == 2 {
            let json = serde_json::json!({ "caption": caption }).to_string();
            member(&mut b, &format!("{key}.json"), json.as_bytes());
        } else {
            member(&mut b, &format!("{key}.txt"), caption.as_bytes());
        }
        expected.push((format!("{name}/{key}"), caption, colour));
    }
    member(&mut b, &format!("s{n}/html.jpg"), b"<html>403</html>");
    member(&mut b, &format!("s{n}/html.txt"), b"an error page");
    member(
        &mut b,
        &format!("s{n}/bare.png"),
        &Image::filled(4, 4, [1, 2, 3]).to_png(),
    );
    b.into_inner().unwrap();
}

/// Five mixed shards, the fourth cut short (corrupt), and what the three good ones hold.
fn shard_set(dir: &Path) -> (Vec<PathBuf>, String, Expected) {
    let mut expected = Vec::new();
    let paths: Vec<PathBuf> = (0..5)
        .map(|n| dir.join(format!("part-{n:03}.tar")))
        .collect();
    for (n, p) in paths.iter().enumerate() {
        let mut held = Vec::new();
        mixed_shard(p, n, &mut held);
        if n == 3 {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..bytes.len() / 2 + 7]).unwrap();
        } else {
            expected.extend(held);
        }
    }
    let pattern = format!("{}/part-{{000..004}}.tar", dir.display());
    (paths, pattern, expected)
}

fn check(ds: &WebDataset, expected: &Expected) {
    assert_eq!(ds.len(), Some(expected.len()));
    for (i, (id, caption, pixel)) in expected.iter().enumerate() {
        assert_eq!(&ds.id(i).unwrap(), id, "index {i}");
        let e = ds.get(i).unwrap();
        assert_eq!((&e.id, &e.caption), (id, caption), "index {i}");
        assert_eq!(e.image.pixel(0, 0), *pixel, "index {i}");
        assert_eq!((e.image.width(), e.image.height()), (8, 6));
    }
    let err = ds.get(expected.len()).expect_err("past the end");
    assert!(err.to_string().contains("out of range"), "{err}");
}

fn skipped(ds: &WebDataset) -> Vec<(String, String)> {
    ds.skipped()
        .iter()
        .map(|s| (s.what.clone(), s.reason.clone()))
        .collect()
}

#[test]
fn the_same_examples_under_the_same_indices_on_every_open() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, pattern, expected) = shard_set(dir.path());
    let first = WebDataset::open_tolerating(&pattern, 0.2).unwrap();
    check(&first, &expected);
    // 2 skipped samples in each of the 4 readable shards, then the corrupt shard.
    let first_skipped = skipped(&first);
    assert_eq!(first_skipped.len(), 9, "{first_skipped:?}");
    assert!(first_skipped[0].0.ends_with("part-000.tar:s0/html"));
    assert!(first_skipped[1].0.ends_with("part-000.tar:s0/bare"));
    assert!(first_skipped[8].0.ends_with("part-003.tar"));
    assert_eq!(first.corrupt_shards().len(), 1);
    for (n, p) in paths.iter().enumerate() {
        assert_eq!(index_file(p).exists(), n != 3, "{}", p.display());
    }
    let again = WebDataset::open_tolerating(&pattern, 0.2).unwrap();
    check(&again, &expected);
    assert_eq!(skipped(&again), first_skipped);
    assert!(WebDataset::open(&pattern).is_err(), "1 of 5 is over 1%");
}

#[test]
fn a_changed_shard_or_a_damaged_index_file_is_indexed_again() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, pattern, mut expected) = shard_set(dir.path());
    WebDataset::open_tolerating(&pattern, 0.2).unwrap();
    // Shard 1 rewritten with shard 4's content under its own name: a different length.
    let mut redone = Vec::new();
    mixed_shard(&paths[1], 4, &mut redone);
    let name = "part-001.tar";
    let redone: Expected = redone
        .into_iter()
        .map(|(id, c, p)| (format!("{name}/{}", id.split_once('/').unwrap().1), c, p))
        .collect();
    expected.splice(3..7, redone);
    check(
        &WebDataset::open_tolerating(&pattern, 0.2).unwrap(),
        &expected,
    );
    // Damaged index files: cut short, and garbage.
    let index = index_file(&paths[0]);
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(index_file(&paths[2]), b"not an index").unwrap();
    check(
        &WebDataset::open_tolerating(&pattern, 0.2).unwrap(),
        &expected,
    );
    assert_eq!(std::fs::read(&index).unwrap(), bytes, "rewritten whole");
}

#[test]
fn index_files_sit_beside_their_shards() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("one.tar");
    mixed_shard(&shard, 0, &mut Vec::new());
    let index = index_file(&shard);
    assert_eq!(
        index.file_name().unwrap().to_string_lossy(),
        format!("one.tar{INDEX_SUFFIX}")
    );
    WebDataset::open(shard.to_str().unwrap()).unwrap();
    assert!(index.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "no temporary file left: {leftovers:?}");
}

#[test]
fn an_unwritable_place_beside_the_shard_sends_the_index_to_the_cache() {
    let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shard = dir.path().join("one.tar");
    let mut expected = Vec::new();
    mixed_shard(&shard, 1, &mut expected);
    // A folder where the index file would go: as unwritable as a read-only shard folder, even
    // to root.
    std::fs::create_dir(index_file(&shard)).unwrap();
    // SAFETY: no other test of this file reads LDMSCALE_CACHE's value for anything but index
    // files, and none of theirs goes to the cache.
    unsafe { std::env::set_var("LDMSCALE_CACHE", cache.path()) };
    let pattern = shard.to_str().unwrap();
    check(&WebDataset::open(pattern).unwrap(), &expected);
    let cached: Vec<_> = std::fs::read_dir(cache.path().join("wds-index"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].ends_with(&format!("-one.tar{INDEX_SUFFIX}")));
    check(&WebDataset::open(pattern).unwrap(), &expected);
}
