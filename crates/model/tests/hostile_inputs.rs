//! Hostile and broken inputs to the model crate, generated here: configs whose sizes would hang,
//! divide by zero or exhaust memory, safetensors headers that do not fit their file, and atomic
//! writes that fail. Each must give an error naming the file and field, quickly, and leave
//! nothing behind.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use ldmscale_model::unet::config::MAX_SAMPLE_SIZE;
use ldmscale_model::weights::{load_safetensors, tensor_names, write_atomic};
use ldmscale_model::{AutoencoderKLConfig, UNet, UNetConfig};

/// The SD 1.5 config with `edit` applied to its JSON, written to `dir/config.json`.
fn edited_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let mut json: serde_json::Value = serde_json::from_str(&UNetConfig::sd15().to_json()).unwrap();
    edit(&mut json);
    let path = dir.join("config.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn config_sizes_that_would_hang_divide_by_zero_or_exhaust_memory_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, serde_json::Value, &str); 9] = [
        ("attention_head_dim", 0.into(), "attention_head_dim[0] = 0"),
        (
            "num_attention_heads",
            0.into(),
            "num_attention_heads[0] = 0",
        ),
        (
            "block_out_channels",
            serde_json::json!([1_000_000_000, 640, 1280, 1280]),
            "block_out_channels[0] = 1000000000",
        ),
        ("sample_size", 0.into(), "sample_size = 0"),
        ("in_channels", 0.into(), "in_channels = 0"),
        (
            "cross_attention_dim",
            100_000_000.into(),
            "cross_attention_dim[0] = 100000000",
        ),
        (
            "layers_per_block",
            100_000.into(),
            "layers_per_block[0] = 100000",
        ),
        ("norm_eps", (-1.0).into(), "norm_eps = -1"),
        (
            "conv_in_kernel",
            1_000_001.into(),
            "conv_in_kernel = 1000001",
        ),
    ];
    for (field, value, want) in cases {
        let path = edited_config(dir.path(), |j| j[field] = value);
        let err = UNetConfig::from_json_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains(want),
            "{field}: {err}"
        );
    }
}

#[test]
fn config_type_errors_name_the_field_not_just_a_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, serde_json::Value, &str); 3] = [
        (
            "block_out_channels",
            serde_json::json!([320, "640", 1280, 1280]),
            "field `block_out_channels[1]`",
        ),
        ("sample_size", "64".into(), "field `sample_size`"),
        ("norm_eps", serde_json::Value::Null, "field `norm_eps`"),
    ];
    for (field, value, want) in cases {
        let path = edited_config(dir.path(), |j| j[field] = value);
        let err = UNetConfig::from_json_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains(want),
            "{field}: {err}"
        );
    }
}

#[test]
fn latent_sizes_are_checked_and_the_cost_of_size_zero_ends() {
    let config = UNetConfig::small(8, 8, 2);
    for bad in [0, MAX_SAMPLE_SIZE + 1, 100_000] {
        let err = config
            .check_latent_size("--latent-size", bad, bad)
            .unwrap_err();
        assert!(err.contains(&format!("--latent-size = {bad}")), "{err}");
    }
    assert!(config.check_latent_size("--latent-size", 1, 7).is_ok());
    // The cost walk used to underflow `len + 2 * padding - kernel` and loop for ever.
    let unet = UNet::new(&config, &Device::default());
    let start = Instant::now();
    let cost = unet.cost(0, 0, 1);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(cost.conv_macs, 0);
}

#[test]
fn a_failed_atomic_write_removes_its_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a folder: the rename fails.
    let target = dir.path().join("weights.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let err = write_atomic(&target, b"data").unwrap_err().to_string();
    assert!(err.contains("weights.safetensors"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["weights.safetensors".to_string()], "leftovers");
    // The folder is untouched, and a normal write still works.
    assert!(target.join("keep").is_file());
    let file = dir.path().join("ok.bin");
    write_atomic(&file, b"data").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
}

fn safetensors_bytes(header_len: u64, header: &str, data: usize) -> Vec<u8> {
    let mut bytes = header_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data));
    bytes
}

#[test]
fn safetensors_headers_that_do_not_fit_the_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let n = header.len() as u64;
    let cases = [
        ("long_header", safetensors_bytes(1 << 40, header, 8)),
        ("near_limit", safetensors_bytes(99_999_999, header, 8)),
        ("short_data", safetensors_bytes(n, header, 4)),
        (
            "overflow",
            safetensors_bytes(
                n + 12,
                r#"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
    ];
    let config = UNetConfig::small(8, 8, 2);
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let unet = UNet::new(&config, &Device::default());
        let Err(err) = load_safetensors(unet, &path, &Device::default()) else {
            panic!("{name}: accepted");
        };
        let err = err.to_string();
        assert!(err.contains(&format!("{name}.safetensors")), "{err}");
    }
    // tensor_names reads the header alone: its length is checked against the file first.
    let path = dir.path().join("near_limit.safetensors");
    let err = tensor_names(&path).unwrap_err().to_string();
    assert!(
        err.contains("near_limit.safetensors") && err.contains("more than"),
        "{err}"
    );
}

#[test]
fn autoencoder_config_sizes_are_bounded_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, serde_json::Value, &str); 4] = [
        (
            "block_out_channels",
            serde_json::json!([128, 256, 512, 1_000_000_000]),
            "block_out_channels[3] = 1000000000",
        ),
        (
            "layers_per_block",
            1_000_000.into(),
            "layers_per_block = 1000000",
        ),
        (
            "latent_channels",
            100_000_000.into(),
            "latent_channels = 100000000",
        ),
        (
            "latents_std",
            serde_json::json!([1.0, 1.0, 1.0, -1.0]),
            "latents_std",
        ),
    ];
    for (field, value, want) in cases {
        let mut json: serde_json::Value =
            serde_json::from_str(&AutoencoderKLConfig::sd().to_json()).unwrap();
        json[field] = value;
        if field == "latents_std" {
            json["latents_mean"] = serde_json::json!([0.0, 0.0, 0.0, 0.0]);
        }
        let path = dir.path().join("config.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let err = AutoencoderKLConfig::from_json_file(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains(want),
            "{field}: {err}"
        );
    }
}
