//! Fixture paths and JSON files.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// `fixtures/<sub>` at the workspace root (`sub` may name nested folders, `"eval/fid"`).
pub fn fixture_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(sub)
}

/// The JSON file at `path`, parsed as `T` (panics naming the file).
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> T {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The strings of a JSON array (panics on anything else).
pub fn str_array(v: &serde_json::Value) -> Vec<&str> {
    let items = v
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {v}"));
    items
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a JSON string: {s}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_dir_is_the_workspace_fixtures_folder() {
        let dir = fixture_dir("eval/fid");
        assert!(dir.ends_with("fixtures/eval/fid"), "{}", dir.display());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert_eq!(
            fixture_dir("").canonicalize().ok(),
            root.join("fixtures").canonicalize().ok()
        );
    }

    #[test]
    fn read_json_parses_into_the_asked_type() {
        let dir =
            std::env::temp_dir().join(format!("ldmscale-testkit-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.json");
        std::fs::write(&path, r#"{"a": [1, 2], "b": "c"}"#).unwrap();
        let v: serde_json::Value = read_json(&path);
        assert_eq!(v["b"], "c");
        let a: Vec<u32> = serde_json::from_value(v["a"].clone()).unwrap();
        assert_eq!(a, [1, 2]);
        assert_eq!(str_array(&serde_json::json!(["x", "y"])), ["x", "y"]);
        let words: std::collections::BTreeMap<String, serde_json::Value> = read_json(&path);
        assert_eq!(words.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
