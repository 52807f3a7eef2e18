//! Property tests over the eval crate's parsers of untrusted bytes: the restricted pickle reader,
//! `.npy` / `.npz`, PyTorch zip archives and safetensors files. Whatever the bytes, each returns
//! `Ok` or `Err`; a panic fails the case (proptest catches it and shrinks the input).
//!
//! The normal run tries a few hundred cases per property; `bench/fuzz.sh` sets PROPTEST_CASES
//! to run many more.

use std::io::Write;

use ldmscale_eval::npz::{encode_npy, parse_npy, read_npz};
use ldmscale_eval::pickle;
use ldmscale_eval::weights::WeightMap;
use proptest::prelude::*;

/// Cases per property: PROPTEST_CASES when set, else a count that keeps the run to seconds.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces of real pickles: every opcode the reader knows, with plausible arguments, and a few
/// it refuses; random sequences of them reach far deeper into the machine than random bytes.
const SNIPPETS: &[&[u8]] = &[
    b"\x80\x02",
    b"\x95\x08\x00\x00\x00\x00\x00\x00\x00",
    b"(",
    b")",
    b"t",
    b"\x85",
    b"\x86",
    b"\x87",
    b"]",
    b"a",
    b"e",
    b"}",
    b"s",
    b"u",
    b"N",
    b"\x88",
    b"\x89",
    b"J\xff\xff\xff\xff",
    b"K\x07",
    b"M\x00\x01",
    b"\x8a\x02\x00\x80",
    b"G\x3f\xf0\x00\x00\x00\x00\x00\x00",
    b"X\x01\x00\x00\x00k",
    b"\x8c\x03abc",
    b"q\x00",
    b"q\x01",
    b"r\x02\x00\x00\x00",
    b"\x94",
    b"h\x00",
    b"h\x01",
    b"j\x02\x00\x00\x00",
    b"c__torch__.m\nM\n",
    b"\x81",
    b"b",
    b"R",
    b"Q",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch._utils\n_rebuild_parameter\n",
    b"ctorch\nFloatStorage\n",
    b"ccollections\nOrderedDict\n",
    b"ctorch.jit._pickle\nbuild_intlist\n",
    b"X\x07\x00\x00\x00storage",
    b"X\x03\x00\x00\x00cpu",
    b"cos\nsystem\n",
    b"S'x'\n",
    b".",
];

fn pickle_program() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(SNIPPETS), 0..200).prop_map(|parts| parts.concat())
}

/// A valid `.npy` file, then up to 8 bytes overwritten with random values.
fn mutated_npy() -> impl Strategy<Value = Vec<u8>> {
    let base = encode_npy(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let len = base.len();
    prop::collection::vec((0..len, any::<u8>()), 0..8).prop_map(move |edits| {
        let mut bytes = base.clone();
        for (at, b) in edits {
            bytes[at] = b;
        }
        bytes
    })
}

/// A valid safetensors file of two tensors, with random bytes overwritten and a random cut.
fn mutated_safetensors() -> impl Strategy<Value = Vec<u8>> {
    let header = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[16,22]}}"#;
    let mut base = (header.len() as u64).to_le_bytes().to_vec();
    base.extend_from_slice(header.as_bytes());
    base.extend(std::iter::repeat_n(0x3c_u8, 22));
    let len = base.len();
    (prop::collection::vec((0..len, any::<u8>()), 0..6), 0..=len).prop_map(move |(edits, cut)| {
        let mut bytes = base.clone();
        for (at, b) in edits {
            bytes[at] = b;
        }
        bytes.truncate(cut.max(1));
        bytes
    })
}

fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pickle_reader_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = pickle::parse(&bytes);
    }

    #[test]
    fn pickle_reader_takes_any_opcode_sequence(program in pickle_program()) {
        if let Ok(value) = pickle::parse(&program) {
            // Printing a parsed value (as error messages do) must end, and stay short.
            let printed = format!("{:?}", value);
            prop_assert!(printed.len() < 100_000);
        }
    }

    #[test]
    fn torch_archives_take_any_pickle(program in pickle_program(), storage in prop::collection::vec(any::<u8>(), 0..64)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.pt");
        std::fs::write(&path, zip_of(&[("archive/data.pkl", &program), ("archive/data/0", &storage)])).unwrap();
        if let Err(e) = WeightMap::from_torch_archive(&path) {
            prop_assert!(e.to_string().contains("fuzz.pt"), "{}", e);
        }
    }

    #[test]
    fn npy_reader_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_npy(&bytes);
    }

    #[test]
    fn npy_reader_takes_mutated_arrays(bytes in mutated_npy()) {
        if let Ok(array) = parse_npy(&bytes) {
            let count: usize = array.shape.iter().product();
            prop_assert_eq!(count, array.data.len());
        }
    }

    #[test]
    fn npz_reader_takes_mutated_archives(npy in mutated_npy(), cut in any::<prop::sample::Index>()) {
        let mut bytes = zip_of(&[("mu.npy", &npy)]);
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.npz");
        std::fs::write(&path, bytes).unwrap();
        if let Err(e) = read_npz(&path) {
            prop_assert!(e.to_string().contains("fuzz.npz"), "{}", e);
        }
    }

    #[test]
    fn safetensors_reader_takes_mutated_files(bytes in mutated_safetensors()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.safetensors");
        std::fs::write(&path, bytes).unwrap();
        match WeightMap::from_safetensors(&path) {
            Ok(map) => {
                for t in map.tensors.values() {
                    prop_assert_eq!(t.shape.iter().product::<usize>(), t.values.len());
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz.safetensors"), "{}", e),
        }
    }
}
