//! Weights in diffusers layout: names, round trip, and clear errors for bad files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_model::weights::{CONFIG_FILE, WEIGHTS_FILE, load_unet, parameter_shapes, save_unet};
use ldmscale_model::{ModelError, UNet, UNetConfig};
use ldmscale_testkit::{
    RawTensor, assert_mentions, fixture_dir, read_json, read_safetensors, write_safetensors,
};
use safetensors::Dtype;

fn case_dir(case: &str) -> PathBuf {
    fixture_dir("unet").join(case)
}

/// A copy of a fixture directory whose weights `edit` may change.
fn edited_copy(edit: impl FnOnce(&mut BTreeMap<String, RawTensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = case_dir("sd15_like_conv");
    std::fs::copy(src.join(CONFIG_FILE), dir.path().join(CONFIG_FILE)).unwrap();
    let mut tensors = read_safetensors(src.join(WEIGHTS_FILE));
    edit(&mut tensors);
    write_safetensors(dir.path().join(WEIGHTS_FILE), &tensors);
    dir
}

#[test]
fn names_and_shapes_equal_diffusers() {
    for case in [
        "sd_like_linear",
        "sd15_like_conv",
        "lcm_timestep_cond",
        "upscaler_like",
    ] {
        let dir = case_dir(case);
        let config = UNetConfig::from_json_file(&dir.join(CONFIG_FILE)).unwrap();
        let ours = parameter_shapes(&UNet::new(&config, &Device::flex()));
        let theirs: BTreeMap<String, Vec<usize>> = read_safetensors(dir.join(WEIGHTS_FILE))
            .into_iter()
            .map(|(k, t)| (k, t.shape))
            .collect();
        assert_eq!(ours, theirs, "{case}");
    }
}

#[test]
fn save_then_load_gives_the_same_bytes_and_outputs() {
    let device = Device::flex();
    let src = case_dir("sd_like_linear");
    let (config, model) = load_unet(&src, &device).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    save_unet(out_dir.path(), &config, &model).unwrap();
    assert_eq!(
        read_safetensors(src.join(WEIGHTS_FILE)),
        read_safetensors(out_dir.path().join(WEIGHTS_FILE)),
        "saved weights differ from the diffusers file they were loaded from"
    );
    let (config2, model2) = load_unet(out_dir.path(), &device).unwrap();
    assert_eq!(config.block_out_channels, config2.block_out_channels);
    let x = Tensor::<4>::from_data(
        TensorData::new(
            (0..2 * 4 * 16 * 16)
                .map(|i| (i as f32 * 0.37).sin())
                .collect(),
            [2, 4, 16, 16],
        ),
        &device,
    );
    let ctx = Tensor::<3>::from_data(
        TensorData::new(
            (0..2 * 3 * 32).map(|i| (i as f32 * 0.11).cos()).collect(),
            [2, 3, 32],
        ),
        &device,
    );
    let a = model
        .forward(x.clone(), &[10.0, 900.0], ctx.clone())
        .into_data();
    let b = model2.forward(x, &[10.0, 900.0], ctx).into_data();
    assert_eq!(a, b);
}

fn load_err(dir: &Path) -> String {
    match load_unet(dir, &Device::flex()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let key = "mid_block.attentions.0.proj_in.weight";
    let dir = edited_copy(|t| {
        t.remove(key).unwrap();
    });
    let err = load_err(dir.path());
    assert_mentions(&err, &[key, "missing"]);
    assert!(err.contains(WEIGHTS_FILE), "{err}");
}

#[test]
fn a_wrong_shape_is_named() {
    let key = "conv_in.weight";
    let dir = edited_copy(|t| {
        t.get_mut(key).unwrap().shape.swap(0, 1);
    });
    let err = load_err(dir.path());
    assert_mentions(&err, &[key, "shape"]);
}

#[test]
fn an_unexpected_tensor_is_named() {
    let dir = edited_copy(|t| {
        t.insert(
            "add_embedding.linear_1.weight".into(),
            RawTensor {
                shape: vec![2],
                dtype: Dtype::F32,
                data: vec![0; 8],
            },
        );
    });
    let err = load_err(dir.path());
    assert_mentions(&err, &["add_embedding.linear_1.weight", "unexpected"]);
}

#[test]
fn a_corrupt_file_is_named() {
    let dir = edited_copy(|_| {});
    let file = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert_mentions(&err, &[WEIGHTS_FILE, "safetensors"]);
}

#[test]
fn a_bad_config_names_the_field() {
    let dir = edited_copy(|_| {});
    let file = dir.path().join(CONFIG_FILE);
    let mut config: serde_json::Value = read_json(&file);
    config["block_out_channels"] = serde_json::json!([8, 8, 16, 18]);
    std::fs::write(&file, config.to_string()).unwrap();
    let err = load_err(dir.path());
    assert_mentions(&err, &["block_out_channels[3]", CONFIG_FILE]);
    assert!(matches!(
        load_unet(dir.path(), &Device::flex()),
        Err(ModelError::Config { .. })
    ));
}
