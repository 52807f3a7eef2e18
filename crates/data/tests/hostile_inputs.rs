//! Hostile and broken inputs to the data crate's readers, generated here: WebDataset tars whose
//! headers declare absurd sizes, PNG headers declaring huge images, and image folders with
//! symlink loops. Each must give an error naming the shard and member (or skip with a warning),
//! quickly, without allocating what the header claims.

use std::path::Path;
use std::time::{Duration, Instant};

use ldmscale_data::{Dataset, Image, ImageFolder, WebDataset};

fn quick<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(start.elapsed() < limit, "took {:?}", start.elapsed());
    out
}

/// A tar of `(name, declared size, bytes)` members: the header says `declared`, the shard
/// holds `bytes`.
fn tar_with(path: &Path, members: &[(&str, u64, &[u8])]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, declared, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_size(*declared);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.finish().unwrap();
}

fn png() -> Vec<u8> {
    Image::filled(2, 2, [10, 20, 30]).to_png()
}

#[test]
fn a_member_declaring_a_terabyte_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let png = png();
    for (victim, kind) in [("0001.png", "png"), ("0001.txt", "txt")] {
        let shard = dir.path().join(format!("tb_{kind}.tar"));
        let members: Vec<(&str, u64, &[u8])> = [("0001.png", &png[..]), ("0001.txt", b"a cat")]
            .into_iter()
            .map(|(n, b)| (n, if n == victim { 1 << 40 } else { b.len() as u64 }, b))
            .collect();
        tar_with(&shard, &members);
        let err = quick(Duration::from_secs(2), || {
            WebDataset::open(shard.to_str().unwrap())
                .err()
                .expect("refused")
                .to_string()
        });
        assert!(
            err.contains(&format!("tb_{kind}.tar:{victim}"))
                && err.contains("declares 1099511627776 bytes"),
            "{err}"
        );
    }
}

#[test]
fn members_over_the_per_member_limit_are_refused_even_when_present() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("big_caption.tar");
    let caption = vec![b'x'; (1 << 20) + 1];
    tar_with(
        &shard,
        &[
            ("0001.png", png().len() as u64, &png()),
            ("0001.txt", caption.len() as u64, &caption),
        ],
    );
    let err = WebDataset::open(shard.to_str().unwrap())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("big_caption.tar:0001.txt") && err.contains("more than"),
        "{err}"
    );
}

#[test]
fn a_well_formed_shard_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("ok.tar");
    tar_with(
        &shard,
        &[
            ("0001.png", png().len() as u64, &png()),
            ("0001.txt", 5, b"a cat"),
        ],
    );
    let wds = WebDataset::open(shard.to_str().unwrap()).unwrap();
    let example = wds.get(0).unwrap();
    assert_eq!(
        (example.image.width(), example.caption.as_str()),
        (2, "a cat")
    );
}

/// The CRC-32 of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&width.to_be_bytes());
    chunk.extend_from_slice(&height.to_be_bytes());
    chunk.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    png
}

#[test]
fn a_png_header_declaring_a_huge_image_is_refused() {
    for (w, h) in [(100_000, 100_000), (1 << 31, 1), (16_385, 1)] {
        let name = format!("huge_{w}x{h}.png");
        let err = quick(Duration::from_secs(1), || {
            Image::decode(&png_header(w, h), &name)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(&name) && err.contains("limit"), "{err}");
    }
}

#[cfg(unix)]
#[test]
fn symlink_loops_in_an_image_folder_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("a.png"), png()).unwrap();
    std::fs::write(root.join("a.txt"), "a cat").unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
    std::os::unix::fs::symlink(".", root.join("here")).unwrap();
    std::os::unix::fs::symlink("self.png", root.join("self.png")).unwrap();
    let folder = quick(Duration::from_secs(2), || ImageFolder::open(root)).unwrap();
    assert_eq!(folder.len(), Some(1));
    assert_eq!(folder.id(0).unwrap(), "a.png");
}
