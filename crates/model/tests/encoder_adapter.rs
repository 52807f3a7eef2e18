//! The ControlNet-style encoder adapter (a CoDi adapter student): at step 0 the student's
//! output is exactly its teacher's, it saves as the frozen UNet plus `adapter/`, loads back
//! with its adapter, counts its cost and parameters, and a mismatched adapter is named.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use ldmscale_model::init::{seeded, seeded_init};
use ldmscale_model::unet::adapter::ADAPTER_DIR;
use ldmscale_model::weights::{CONFIG_FILE, WEIGHTS_FILE, load_unet, save_unet, tensor_names};
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_testkit::{fixture_dir, max_abs_diff, values};

const CASE: &str = "sd_like_linear";

fn inputs(device: &Device) -> (Tensor<4>, Tensor<3>) {
    seeded(device, 5, || {
        let x = Tensor::random([2, 4, 16, 16], Distribution::Normal(0.0, 1.0), device);
        let context = Tensor::random([2, 5, 32], Distribution::Normal(0.0, 1.0), device);
        (x, context)
    })
}

fn student() -> (UNetConfig, UNet, UNet) {
    let device = Device::flex();
    let (config, teacher) = load_unet(&fixture_dir("unet").join(CASE), &device).unwrap();
    let student_config = config.with_encoder_adapter().unwrap();
    let student = teacher.clone().with_encoder_adapter(&student_config);
    (student_config, student, teacher)
}

#[test]
fn at_step_zero_the_adapter_student_equals_its_teacher_exactly() {
    let (_, student, teacher) = student();
    assert!(student.has_encoder_adapter());
    let (x, context) = inputs(&Device::flex());
    for t in [[0.0, 999.0], [259.0, 759.0]] {
        let ours = values(student.forward(x.clone(), &t, context.clone()));
        let theirs = values(teacher.forward(x.clone(), &t, context.clone()));
        assert_eq!(max_abs_diff(&ours, &theirs), 0.0, "timesteps {t:?}");
    }
}

#[test]
fn a_nonzero_adapter_changes_the_output() {
    let (config, student, teacher) = student();
    // The teacher's files with a randomly initialised adapter (fusion convolutions included):
    // any change of the output comes through the residuals.
    let (ours_dir, random_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    save_unet(ours_dir.path(), &config, &student).unwrap();
    let device = Device::flex();
    let random = seeded_init(&device, 6, || UNet::new(&config, &device));
    save_unet(random_dir.path(), &config, &random).unwrap();
    let adapter_weights = |dir: &std::path::Path| dir.join(ADAPTER_DIR).join(WEIGHTS_FILE);
    std::fs::copy(
        adapter_weights(random_dir.path()),
        adapter_weights(ours_dir.path()),
    )
    .unwrap();
    let (_, student) = load_unet(ours_dir.path(), &Device::flex()).unwrap();
    let (x, context) = inputs(&Device::flex());
    let t = [100.0, 500.0];
    let ours = values(student.forward(x.clone(), &t, context.clone()));
    let theirs = values(teacher.forward(x, &t, context));
    assert!(max_abs_diff(&ours, &theirs) > 1e-3);
}

#[test]
fn the_student_saves_as_its_frozen_unet_plus_an_adapter_and_loads_back() {
    let (config, student, teacher) = student();
    let dir = tempfile::tempdir().unwrap();
    save_unet(dir.path(), &config, &student).unwrap();
    let adapter = dir.path().join(ADAPTER_DIR);
    let names = tensor_names(&adapter.join(WEIGHTS_FILE)).unwrap();
    assert!(names.contains(&"controlnet_mid_block.weight".to_string()));
    assert!(names.contains(&"controlnet_down_blocks.0.weight".to_string()));
    assert!(names.contains(&"down_blocks.0.resnets.0.conv1.weight".to_string()));
    // The directory's own files are the teacher's, readable without the adapter.
    let base = tensor_names(&dir.path().join(WEIGHTS_FILE)).unwrap();
    assert!(!base.iter().any(|n| n.starts_with("controlnet")));
    let config_json = std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap();
    assert!(!config_json.contains("encoder_adapter"));
    let (loaded_config, loaded) = load_unet(dir.path(), &Device::flex()).unwrap();
    assert!(loaded_config.encoder_adapter && loaded.has_encoder_adapter());
    let (x, context) = inputs(&Device::flex());
    let t = [19.0, 999.0];
    let ours = values(loaded.forward(x.clone(), &t, context.clone()));
    let theirs = values(teacher.forward(x, &t, context));
    assert_eq!(max_abs_diff(&ours, &theirs), 0.0);
    // Saving a plain UNet over it removes the adapter.
    let (plain_config, plain) =
        load_unet(&fixture_dir("unet").join(CASE), &Device::flex()).unwrap();
    save_unet(dir.path(), &plain_config, &plain).unwrap();
    assert!(!adapter.exists());
}

#[test]
fn the_adapter_counts_in_cost_and_parameters() {
    let (config, student, teacher) = student();
    let (ours, theirs) = (student.cost(16, 16, 5), teacher.cost(16, 16, 5));
    assert!(ours.flops() > theirs.flops());
    assert_eq!(
        UNet::new(&config, &Device::flex()).cost(16, 16, 5),
        ours,
        "cost of the lazily built student"
    );
    let adapter = student.adapter_params();
    assert_eq!(student.num_params(), teacher.num_params() + adapter);
    // The encoder copy plus one square 1x1 fusion per skip and one for the mid output.
    assert!(adapter > 0 && adapter < teacher.num_params());
}

#[test]
fn an_adapter_of_another_unet_is_named() {
    let (config, student, _) = student();
    let dir = tempfile::tempdir().unwrap();
    save_unet(dir.path(), &config, &student).unwrap();
    let file = dir.path().join(ADAPTER_DIR).join(CONFIG_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["layers_per_block"] = 3.into();
    std::fs::write(&file, json.to_string()).unwrap();
    let err = load_unet(dir.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter/config.json"), "{err}");
    assert!(err.contains("layers_per_block"), "{err}");
    json["_class_name"] = "ControlNetModel".into();
    std::fs::write(&file, json.to_string()).unwrap();
    let err = load_unet(dir.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(err.contains("_class_name"), "{err}");
}

#[test]
fn a_unet_with_a_guidance_embedding_gets_no_adapter() {
    let config = UNetConfig::small(8, 16, 2)
        .with_guidance_embedding(16)
        .unwrap();
    let err = config.with_encoder_adapter().unwrap_err();
    assert!(err.contains("time_cond_proj_dim"), "{err}");
}

#[test]
fn an_adapter_beside_an_lcm_student_is_named() {
    let (config, student, teacher) = student();
    let dir = tempfile::tempdir().unwrap();
    save_unet(dir.path(), &config, &student).unwrap();
    // The directory's UNet becomes an LCM student; the adapter beside it stays.
    let base = teacher.with_guidance_embedding(16);
    let plain = UNetConfig {
        encoder_adapter: false,
        ..config.clone()
    };
    let lcm = plain.with_guidance_embedding(16).unwrap();
    let keep = tempfile::tempdir().unwrap();
    std::fs::rename(dir.path().join(ADAPTER_DIR), keep.path().join(ADAPTER_DIR)).unwrap();
    save_unet(dir.path(), &lcm, &base).unwrap();
    std::fs::rename(keep.path().join(ADAPTER_DIR), dir.path().join(ADAPTER_DIR)).unwrap();
    let err = load_unet(dir.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter/config.json"), "{err}");
    assert!(err.contains("time_cond_proj_dim"), "{err}");
}
