//! The restricted pickle reader on tiny TorchScript and `torch.save` archives written by
//! tools/fixtures/make_fid_fixtures.py (fixtures/eval/fid/archives/): names, values of
//! transposed and offset views, float16 / bfloat16 storages, module attributes.

use std::path::PathBuf;

use ldmscale_eval::weights::{Attribute, WeightMap};
use ldmscale_testkit::{assert_mentions, fixture_dir};

fn archives() -> PathBuf {
    fixture_dir("eval/fid/archives")
}

fn check_against_expected(map: &WeightMap, prefix: &str) {
    let expected = WeightMap::from_safetensors(&archives().join("expected.safetensors")).unwrap();
    let mut seen = 0;
    for (name, want) in &expected.tensors {
        let Some(key) = name.strip_prefix(prefix) else {
            continue;
        };
        let got = map
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {}", map.file));
        assert_eq!(got.shape, want.shape, "{key}");
        assert_eq!(got.values, want.values, "{key}");
        seen += 1;
    }
    assert_eq!(seen, map.tensors.len(), "{}: tensor count", map.file);
}

#[test]
fn torchscript_modules_are_read_with_their_attributes() {
    let map = WeightMap::from_torch_archive(&archives().join("scripted.pt")).unwrap();
    check_against_expected(&map, "scripted.");
    assert_eq!(map.attribute("net.stride"), Some(&Attribute::Int(2)));
    assert_eq!(
        map.attribute("net.padding"),
        Some(&Attribute::Ints(vec![0, 3]))
    );
    assert_eq!(map.attribute("net.training"), Some(&Attribute::Bool(true)));
}

#[test]
fn torch_save_dicts_share_storages_correctly() {
    let map = WeightMap::from_torch_archive(&archives().join("state_dict.pt")).unwrap();
    check_against_expected(&map, "state_dict.");
    assert_eq!(map.tensors["slice"].values, vec![2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn damaged_archives_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(archives().join("state_dict.pt")).unwrap();
    let truncated = dir.path().join("truncated.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = WeightMap::from_torch_archive(&truncated)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated.pt"), "{err}");
    let text = dir.path().join("text.pt");
    std::fs::write(&text, b"not a zip").unwrap();
    let err = WeightMap::open(&text).unwrap_err().to_string();
    assert_mentions(&err, &["text.pt", "zip"]);
}
