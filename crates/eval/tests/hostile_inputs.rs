//! Hostile and broken inputs to the eval crate's readers, generated here (no committed blobs):
//! each must give an error naming the file and what is wrong, quickly, without a panic, a stack
//! overflow or an allocation the file does not justify.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ldmscale_eval::npz::{encode_npy, parse_npy, read_npz, read_stats};
use ldmscale_eval::pickle::{self, MAX_DEPTH};
use ldmscale_eval::weights::WeightMap;
use ldmscale_eval::{RgbImage, fid::image_files};

/// Runs `f` and checks it took under `limit` (a hang or quadratic blow-up shows as a failure).
fn quick<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(start.elapsed() < limit, "took {:?}", start.elapsed());
    out
}

fn proto(body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend_from_slice(body);
    p.push(b'.');
    p
}

/// A PyTorch zip archive `archive/data.pkl` holding `pkl` (plus extra `data/<key>` members).
fn torch_zip(path: &Path, pkl: &[u8], storages: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pkl).unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn a_hundred_thousand_nested_lists_are_refused_not_a_stack_overflow() {
    let n = 100_000;
    // EMPTY_LIST n times, then APPEND n-1 times: each list inside the one below it.
    let mut body = vec![b']'; n];
    body.extend(std::iter::repeat_n(b'a', n - 1));
    let bytes = proto(&body);
    assert!(bytes.len() < 210_000);
    let err = quick(Duration::from_secs(5), || pickle::parse(&bytes)).unwrap_err();
    assert!(
        err.message.contains(&format!("deeper than {MAX_DEPTH}")),
        "{err}"
    );
    // The same through an archive: the error names the file and the member.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.pt");
    torch_zip(&path, &bytes, &[]);
    let err = WeightMap::from_torch_archive(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nested.pt") && err.contains("data.pkl") && err.contains("deeper"),
        "{err}"
    );
}

#[test]
fn nested_tuples_and_dicts_are_refused_too() {
    // EMPTY_LIST, then TUPLE1 100000 times.
    let mut body = vec![b']'];
    body.extend(std::iter::repeat_n(0x85, 100_000));
    let err = pickle::parse(&proto(&body)).unwrap_err();
    assert!(err.message.contains("deeper"), "{err}");
    let n = 50_000;
    let mut body = Vec::new();
    // Dicts: (EMPTY_DICT MARK K1) n times, EMPTY_DICT, then SETITEMS n times.
    for _ in 0..n {
        body.extend_from_slice(b"}(K\x01");
    }
    body.push(b'}');
    body.extend(std::iter::repeat_n(b'u', n));
    let err = quick(Duration::from_secs(5), || pickle::parse(&proto(&body))).unwrap_err();
    assert!(err.message.contains("deeper"), "{err}");
}

#[test]
fn a_list_that_holds_itself_is_refused_and_prints() {
    // EMPTY_LIST, BINPUT 0, BINGET 0, APPEND: the list is its own element.
    let err = pickle::parse(&proto(b"]q\x00h\x00a")).unwrap_err();
    assert!(err.message.contains("holds itself"), "{err}");
    // Printing such a value (as an error message does) stops.
    let err = pickle::parse(&proto(b"]q\x00h\x00a\x85Q")).unwrap_err();
    assert!(err.message.contains("persistent id"), "{err}");
    assert!(err.to_string().len() < 400, "{err}");
}

#[test]
fn memoised_tuples_doubled_sixty_times_cost_nothing() {
    // EMPTY_TUPLE, BINPUT 0, then 60x (BINGET 0, BINGET 0, TUPLE2, BINPUT 0): 2^60 leaves if
    // tuples were copied.
    let mut body = b")q\x00".to_vec();
    for _ in 0..60 {
        body.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    let value = quick(Duration::from_secs(2), || pickle::parse(&proto(&body))).unwrap();
    assert!(format!("{value:?}").len() < 400);
}

#[test]
fn modules_shared_exponentially_stop_the_walk() {
    // 40 levels of TorchScript objects, each holding the previous one under two names.
    let mut body = b"c__torch__.m\nM\n)\x81}bq\x00".to_vec();
    for _ in 0..40 {
        body.extend_from_slice(
            b"c__torch__.m\nM\n)\x81}(X\x01\x00\x00\x00ah\x00X\x01\x00\x00\x00bh\x00ubq\x00",
        );
    }
    let pkl = proto(&body);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.pt");
    torch_zip(&path, &pkl, &[]);
    let err = quick(Duration::from_secs(10), || {
        WeightMap::from_torch_archive(&path)
            .unwrap_err()
            .to_string()
    });
    assert!(
        err.contains("shared.pt") && err.contains("module attributes"),
        "{err}"
    );
}

#[test]
fn declared_lengths_beyond_the_bytes_are_refused() {
    // BINUNICODE of 4 GiB - 1 in a 12-byte file.
    let err = pickle::parse(&proto(b"X\xff\xff\xff\xffab")).unwrap_err();
    assert!(err.message.contains("truncated"), "{err}");
    // LONG_BINPUT far beyond anything the file could number.
    let err = pickle::parse(&proto(b"]r\xff\xff\x0f\x00")).unwrap_err();
    assert!(err.message.contains("memo index 1048575"), "{err}");
}

/// A `_rebuild_tensor_v2` of `shape` with stride 0 over a one-element storage.
fn broadcast_tensor_pickle(shape: &[u32]) -> Vec<u8> {
    let mut p = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    // persistent id ('storage', FloatStorage, '0', 'cpu', 1)
    p.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n");
    p.extend_from_slice(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ");
    p.extend_from_slice(b"K\x00(");
    for d in shape {
        p.push(b'J');
        p.extend_from_slice(&d.to_le_bytes());
    }
    p.extend_from_slice(b"t(");
    for _ in shape {
        p.extend_from_slice(b"K\x00");
    }
    p.extend_from_slice(b"t\x89}tR");
    // {'w': tensor}
    let mut out = b"}X\x01\x00\x00\x00w".to_vec();
    out.extend_from_slice(&p);
    out.push(b's');
    proto(&out)
}

#[test]
fn a_view_larger_than_its_storage_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broadcast.pt");
    // 2^30 x 2^30 elements (4 EiB as f32) over a storage of one float.
    let pkl = broadcast_tensor_pickle(&[1 << 30, 1 << 30]);
    torch_zip(&path, &pkl, &[("0", &1.0f32.to_le_bytes())]);
    let err = quick(Duration::from_secs(2), || {
        WeightMap::from_torch_archive(&path)
            .unwrap_err()
            .to_string()
    });
    assert!(
        err.contains("broadcast.pt") && err.contains("\"w\"") && err.contains("more elements"),
        "{err}"
    );
    // Sanity: the same pickle with a [1] view reads.
    torch_zip(
        &path,
        &broadcast_tensor_pickle(&[1]),
        &[("0", &2.5f32.to_le_bytes())],
    );
    let map = WeightMap::from_torch_archive(&path).unwrap();
    assert_eq!(map.tensors["w"].values, vec![2.5]);
}

/// Overwrites the uncompressed size of every central-directory entry of a zip file.
fn lie_about_sizes(path: &Path, size: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let start = at + i;
        bytes[start + 24..start + 28].copy_from_slice(&size.to_le_bytes());
        at = start + 4;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn archive_members_that_lie_about_their_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.pt");
    torch_zip(
        &path,
        &broadcast_tensor_pickle(&[1]),
        &[("0", &1.0f32.to_le_bytes())],
    );
    lie_about_sizes(&path, u32::MAX - 1);
    let err = quick(Duration::from_secs(2), || {
        WeightMap::from_torch_archive(&path)
            .unwrap_err()
            .to_string()
    });
    assert!(
        err.contains("liar.pt") && err.contains("its header declares 4294967294"),
        "{err}"
    );
}

fn npy_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn npy_headers_with_impossible_shapes_are_errors() {
    let cases = [
        // The product overflows usize.
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
            "needs more than",
        ),
        // Fits usize, but is 8 TiB.
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }",
            "needs more than",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': )",
            "malformed 'shape'",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': é",
            "malformed 'shape'",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }",
            "bad dimension",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
            "expected 24 bytes",
        ),
    ];
    for (header, want) in cases {
        let err = parse_npy(&npy_with_header(header, &[0; 8])).unwrap_err();
        assert!(err.contains(want), "{header}: {err}");
    }
    // A header length beyond the file.
    let mut bytes = encode_npy(&[1], &[1.0]);
    bytes[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
    let err = parse_npy(&bytes).unwrap_err();
    assert!(err.contains("header declares 65535 bytes"), "{err}");
}

fn npz(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn npz_members_are_checked_and_errors_name_the_file_and_member() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.npz");
    let huge = npy_with_header(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
        &[],
    );
    npz(
        &path,
        &[("mu.npy", encode_npy(&[1], &[0.0])), ("sigma.npy", huge)],
    );
    let err = read_stats(&path).unwrap_err().to_string();
    assert!(
        err.contains("stats.npz") && err.contains("sigma.npy") && err.contains("needs more than"),
        "{err}"
    );
    // A member whose directory entry claims 4 GiB.
    npz(&path, &[("mu.npy", encode_npy(&[1], &[0.0]))]);
    lie_about_sizes(&path, u32::MAX - 1);
    let err = read_npz(&path).unwrap_err().to_string();
    assert!(
        err.contains("stats.npz") && err.contains("mu.npy") && err.contains("declares"),
        "{err}"
    );
}

fn safetensors_file(dir: &Path, name: &str, header: &str, data_len: usize) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data_len));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn safetensors_headers_that_do_not_fit_the_file_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Offsets past the data.
        (
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        ),
        // Shape product overflows.
        (
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#,
            4,
        ),
        // Shape and offsets disagree.
        (
            r#"{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4]}}"#,
            4,
        ),
        // Deeply nested JSON in the header.
        (&"[".repeat(100_000), 0),
    ];
    for (i, (header, data)) in cases.iter().enumerate() {
        let path = safetensors_file(dir.path(), &format!("bad{i}.safetensors"), header, *data);
        let err = WeightMap::from_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("bad{i}.safetensors")), "{err}");
    }
    // A header length of 1 TiB in a 16-byte file.
    let path = dir.path().join("long.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    std::fs::write(&path, bytes).unwrap();
    let err = WeightMap::from_safetensors(&path).unwrap_err().to_string();
    assert!(err.contains("long.safetensors"), "{err}");
}

/// The CRC-32 of PNG chunks (ISO 3309), bitwise.
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

/// A PNG signature and an IHDR chunk declaring `width x height` RGB, then nothing.
pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&width.to_be_bytes());
    chunk.extend_from_slice(&height.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    png
}

#[test]
fn a_png_header_declaring_a_huge_image_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(100_000, 100_000), (u32::MAX >> 1, 1), (1, 20_000)] {
        let path = dir.path().join(format!("huge_{w}x{h}.png"));
        std::fs::write(&path, png_header(w, h)).unwrap();
        let err = quick(Duration::from_secs(1), || RgbImage::open(&path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("huge_{w}x{h}.png")) && err.contains("limit"),
            "{err}"
        );
    }
}

#[cfg(unix)]
#[test]
fn symlink_loops_in_an_image_folder_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.png"), b"x").unwrap();
    std::os::unix::fs::symlink("loop.png", dir.path().join("loop.png")).unwrap();
    std::os::unix::fs::symlink("missing.png", dir.path().join("broken.png")).unwrap();
    let files = quick(Duration::from_secs(1), || image_files(dir.path())).unwrap();
    assert_eq!(files, vec![dir.path().join("a.png")]);
}
