//! Property tests over the model crate's readers of untrusted bytes: `config.json` of a UNet and
//! of an autoencoder, and safetensors headers. Whatever the bytes, each returns `Ok` or `Err`;
//! a panic fails the case. `bench/fuzz.sh` sets PROPTEST_CASES to run many more cases.

use ldmscale_model::weights::tensor_names;
use ldmscale_model::{AutoencoderKLConfig, UNetConfig};
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

/// Values a hostile config might put in a field.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(1)),
        Just(serde_json::json!(3)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(null)),
        Just(serde_json::json!([])),
        Just(serde_json::json!([0, 0])),
        Just(serde_json::json!([8, 8, 8, 8])),
        Just(serde_json::json!("silu")),
        Just(serde_json::json!({})),
    ]
}

/// `base` with a few fields replaced by hostile values, as JSON text.
fn edited(base: String) -> impl Strategy<Value = String> {
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&base).unwrap();
    let keys: Vec<String> = json.keys().cloned().collect();
    prop::collection::vec((prop::sample::select(keys), json_value()), 1..4).prop_map(move |edits| {
        let mut j = json.clone();
        for (k, v) in edits {
            j.insert(k, v);
        }
        serde_json::Value::Object(j).to_string()
    })
}

/// `text` with up to 4 bytes replaced.
fn mutated(text: String) -> impl Strategy<Value = Vec<u8>> {
    let bytes = text.into_bytes();
    let len = bytes.len();
    prop::collection::vec((0..len, any::<u8>()), 0..4).prop_map(move |edits| {
        let mut b = bytes.clone();
        for (at, v) in edits {
            b[at] = v;
        }
        b
    })
}

fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Reads a UNet config and, when it is accepted, uses what validation promised.
fn read_unet(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp("config.json", bytes);
    match UNetConfig::from_json_file(&path) {
        Ok(config) => {
            for level in 0..config.num_levels() {
                let l = config.level(level);
                prop_assert!(l.num_heads > 0 && l.channels % l.num_heads == 0);
            }
        }
        Err(e) => prop_assert!(e.to_string().contains("config.json"), "{}", e),
    }
    Ok(())
}

fn read_vae(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp("config.json", bytes);
    if let Err(e) = AutoencoderKLConfig::from_json_file(&path) {
        prop_assert!(e.to_string().contains("config.json"), "{}", e);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unet_configs_with_hostile_fields(text in edited(UNetConfig::sd15().to_json())) {
        read_unet(text.as_bytes())?;
    }

    #[test]
    fn unet_configs_with_mutated_bytes(bytes in mutated(UNetConfig::sd21().to_json())) {
        read_unet(&bytes)?;
    }

    #[test]
    fn vae_configs_with_hostile_fields(text in edited(AutoencoderKLConfig::sd().to_json())) {
        read_vae(text.as_bytes())?;
    }

    #[test]
    fn vae_configs_with_mutated_bytes(bytes in mutated(AutoencoderKLConfig::sd().to_json())) {
        read_vae(&bytes)?;
    }

    #[test]
    fn safetensors_headers_with_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64), len in prop_oneof![Just(None), (0u64..200).prop_map(Some), any::<u64>().prop_map(Some)]) {
        let mut file = Vec::new();
        if let Some(len) = len {
            file.extend_from_slice(&len.to_le_bytes());
        }
        file.extend_from_slice(&bytes);
        let (_dir, path) = write_temp("w.safetensors", &file);
        if let Err(e) = tensor_names(&path) {
            prop_assert!(e.to_string().contains("w.safetensors"), "{}", e);
        }
    }
}
