//! Property tests over the WebDataset reader: tar shards with random bytes overwritten (headers,
//! sizes, checksums, names) or cut short. Whatever the bytes, opening and reading return `Ok`
//! or `Err`; a panic fails the case. `bench/fuzz.sh` sets PROPTEST_CASES to run many more.

use ldmscale_data::webdataset::expand_braces;
use ldmscale_data::{Dataset, Image, WebDataset};
use proptest::prelude::*;

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

/// A valid two-sample shard (PNG + txt, PNG + json).
fn shard() -> Vec<u8> {
    let png = Image::filled(3, 2, [1, 2, 3]).to_png();
    let mut builder = tar::Builder::new(Vec::new());
    let members: [(&str, &[u8]); 4] = [
        ("s/0001.png", &png),
        ("s/0001.txt", b"a cat"),
        ("s/0002.png", &png),
        ("s/0002.json", br#"{"caption": "a dog"}"#),
    ];
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, bytes).unwrap();
    }
    builder.into_inner().unwrap()
}

fn mutated_shard() -> impl Strategy<Value = Vec<u8>> {
    let base = shard();
    let len = base.len();
    (prop::collection::vec((0..len, any::<u8>()), 0..8), 0..=len).prop_map(move |(edits, cut)| {
        let mut bytes = base.clone();
        for (at, b) in edits {
            bytes[at] = b;
        }
        bytes.truncate(cut);
        bytes
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn webdataset_takes_mutated_shards(bytes in mutated_shard()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.tar");
        std::fs::write(&path, bytes).unwrap();
        match WebDataset::open(path.to_str().unwrap()) {
            Ok(wds) => {
                for i in 0..wds.len().unwrap() {
                    if let Err(e) = wds.get(i) {
                        prop_assert!(e.to_string().contains("fuzz.tar"), "{}", e);
                    }
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz.tar"), "{}", e),
        }
    }

    #[test]
    fn brace_patterns_take_any_text(pattern in "[a-z0-9{}.,]{0,24}") {
        let _ = expand_braces(&pattern);
    }
}
