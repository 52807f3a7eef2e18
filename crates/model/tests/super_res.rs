//! The super-resolution UNet made from a text-to-image one: at finetune step 0 it ignores the
//! LR latent (its output is the text-to-image model's), it saves in diffusers layout with
//! `in_channels` doubled, and UNets that cannot be converted are refused naming the field.

use burn::tensor::{Device, Distribution, Int, Tensor};
use ldmscale_model::init::seeded;
use ldmscale_model::weights::{CONFIG_FILE, WEIGHTS_FILE, load_unet, save_unet};
use ldmscale_model::{ExtraConditioning, UNetConfig};
use ldmscale_testkit::{
    RawTensor, fixture_dir, max_abs_diff, read_safetensors, values, write_safetensors,
};

const CASE: &str = "sd_like_linear";

fn inputs(device: &Device) -> (Tensor<4>, Tensor<3>) {
    seeded(device, 11, || {
        let x = Tensor::random([2, 4, 16, 16], Distribution::Normal(0.0, 1.0), device);
        let context = Tensor::random([2, 5, 32], Distribution::Normal(0.0, 1.0), device);
        (x, context)
    })
}

#[test]
fn at_step_zero_the_sr_model_equals_the_text_to_image_model_for_any_lr() {
    let device = Device::flex();
    let (config, t2i) = load_unet(&fixture_dir("unet").join(CASE), &device).unwrap();
    let (sr_config, sr) = t2i.clone().into_super_res(&config, 4).unwrap();
    assert_eq!(sr_config.in_channels, 8);
    assert_eq!(sr_config.concat_channels(), Some(4));
    let (x, context) = inputs(&device);
    for (draw, t) in [[0.0, 999.0], [250.0, 500.0], [731.0, 17.0]]
        .into_iter()
        .enumerate()
    {
        let reference = values(t2i.forward(x.clone(), &t, context.clone()));
        // LR latents of growing scale: nothing of them may leak through the zero weights.
        let scale = 10f32.powi(draw as i32);
        let lr = seeded(&device, 12 + draw as u64, || {
            Tensor::<4>::random([2, 4, 16, 16], Distribution::Normal(0.0, 1.0), &device)
        });
        let input = Tensor::cat(vec![x.clone(), lr * scale], 1);
        let ours = values(sr.forward(input, &t, context.clone()));
        let diff = max_abs_diff(&ours, &reference);
        eprintln!("timesteps {t:?}, LR scale {scale}: max |SR - text-to-image| = {diff:e}");
        assert!(diff <= 1e-6, "timesteps {t:?}, LR scale {scale}: {diff}");
    }
}

#[test]
fn a_zero_noise_level_embedding_keeps_the_text_to_image_output() {
    let device = Device::flex();
    let (config, t2i) = load_unet(&fixture_dir("unet").join(CASE), &device).unwrap();
    let (sr_config, sr) = t2i.clone().into_super_res(&config, 4).unwrap();
    let sr_config = sr_config.with_noise_level_embedding(1000);
    let sr = sr.with_noise_level_embedding(1000);
    assert_eq!(sr_config.num_class_embeds, Some(1000));
    let (x, context) = inputs(&device);
    let lr = seeded(&device, 15, || {
        Tensor::<4>::random([2, 4, 16, 16], Distribution::Normal(0.0, 1.0), &device)
    });
    let t = [40.0, 600.0];
    let extra = ExtraConditioning {
        class_labels: Some(Tensor::<1, Int>::from_ints([20, 349], &device)),
        timestep_cond: None,
    };
    let input = Tensor::cat(vec![x.clone(), lr], 1);
    let ours = values(sr.forward_with(input, &t, context.clone(), &extra));
    let reference = values(t2i.forward(x, &t, context));
    assert!(max_abs_diff(&ours, &reference) <= 1e-6);
    // Saved and loaded in diffusers layout with its table.
    let dir = tempfile::tempdir().unwrap();
    save_unet(dir.path(), &sr_config, &sr).unwrap();
    let saved = read_safetensors(dir.path().join(WEIGHTS_FILE));
    assert_eq!(saved["class_embedding.weight"].shape, [1000, 32]);
    let (loaded, _) = load_unet(dir.path(), &device).unwrap();
    assert_eq!(loaded.num_class_embeds, Some(1000));
}

/// Saves `sr`'s weights and returns the dir and its tensors.
fn saved_sr() -> (
    tempfile::TempDir,
    UNetConfig,
    std::collections::BTreeMap<String, RawTensor>,
) {
    let device = Device::flex();
    let (config, t2i) = load_unet(&fixture_dir("unet").join(CASE), &device).unwrap();
    let (sr_config, sr) = t2i.into_super_res(&config, 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_unet(dir.path(), &sr_config, &sr).unwrap();
    let tensors = read_safetensors(dir.path().join(WEIGHTS_FILE));
    (dir, sr_config, tensors)
}

#[test]
fn saved_in_diffusers_layout_with_the_old_weights_and_bias_copied() {
    let (dir, sr_config, saved) = saved_sr();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(json["in_channels"], 8);
    assert_eq!(json["out_channels"], 4);
    let original = read_safetensors(fixture_dir("unet").join(CASE).join(WEIGHTS_FILE));
    let (old, new) = (&original["conv_in.weight"], &saved["conv_in.weight"]);
    assert_eq!(new.shape, [8, 8, 3, 3]);
    let (old_w, new_w) = (old.f32(), new.f32());
    for o in 0..8 {
        let row = &new_w[o * 72..(o + 1) * 72];
        assert_eq!(
            row[..36],
            old_w[o * 36..(o + 1) * 36],
            "old weights of output {o}"
        );
        assert!(
            row[36..].iter().all(|&v| v == 0.0),
            "new weights of output {o}"
        );
    }
    let bias = original["conv_in.bias"].f32();
    assert!(
        bias.iter().any(|&b| b != 0.0),
        "the fixture's bias must matter"
    );
    assert_eq!(saved["conv_in.bias"].f32(), bias);
    for (name, t) in &original {
        if !name.starts_with("conv_in.weight") {
            assert_eq!(&saved[name], t, "{name}");
        }
    }
    let (loaded_config, _) = load_unet(dir.path(), &Device::flex()).unwrap();
    assert_eq!(loaded_config, sr_config);
}

#[test]
fn a_dropped_bias_would_be_caught() {
    // The check above must be able to fail: the same model with conv_in's bias zeroed (the
    // instruct-pix2pix mistake) differs from the text-to-image model.
    let device = Device::flex();
    let (dir, _, mut saved) = saved_sr();
    let bias = saved.get_mut("conv_in.bias").unwrap();
    *bias = RawTensor::from_f32(bias.shape.clone(), &[0.0; 8]);
    write_safetensors(dir.path().join(WEIGHTS_FILE), &saved);
    let (_, broken) = load_unet(dir.path(), &device).unwrap();
    let (_, t2i) = load_unet(&fixture_dir("unet").join(CASE), &device).unwrap();
    let (x, context) = inputs(&device);
    let input = Tensor::cat(vec![x.clone(), x.clone()], 1);
    let t = [10.0, 900.0];
    let diff = max_abs_diff(
        &values(broken.forward(input, &t, context.clone())),
        &values(t2i.forward(x, &t, context)),
    );
    assert!(diff > 1e-3, "{diff}");
}

#[test]
fn unets_that_cannot_become_sr_models_are_refused_naming_the_field() {
    let config =
        UNetConfig::from_json_file(&fixture_dir("unet").join(CASE).join(CONFIG_FILE)).unwrap();
    let sr = config.super_res(4).unwrap();
    let err = sr.super_res(4).unwrap_err();
    assert!(err.starts_with("in_channels: 8"), "{err}");
    let err = config.super_res(3).unwrap_err();
    assert!(err.starts_with("in_channels: 4"), "{err}");
    assert_eq!(config.concat_channels(), None);
    let mut upscaler =
        UNetConfig::from_json_file(&fixture_dir("unet").join("upscaler_like").join(CONFIG_FILE))
            .unwrap();
    assert_eq!(upscaler.concat_channels(), Some(3));
    upscaler.in_channels = 4;
    let err = upscaler.super_res(4).unwrap_err();
    assert!(err.starts_with("num_class_embeds: 1000"), "{err}");
}

/// diffusers' own widening of the `one_level` fixture (tools/fixtures/make_sr_unet_fixture.py).
const DIFFUSERS_SR: &str = "sr_widened";

#[test]
fn saved_tensors_and_config_equal_diffusers_widened_model() {
    let device = Device::flex();
    let (config, t2i) = load_unet(&fixture_dir("unet").join("one_level"), &device).unwrap();
    let (sr_config, sr) = t2i.into_super_res(&config, 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_unet(dir.path(), &sr_config, &sr).unwrap();
    let theirs = fixture_dir("unet").join(DIFFUSERS_SR);
    assert!(
        read_safetensors(dir.path().join(WEIGHTS_FILE))
            == read_safetensors(theirs.join(WEIGHTS_FILE)),
        "weights differ from diffusers' widened model"
    );
    let json = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join(CONFIG_FILE)).unwrap()).unwrap()
    };
    let (ours, theirs) = (json(dir.path()), json(&theirs));
    for key in [
        "in_channels",
        "out_channels",
        "block_out_channels",
        "cross_attention_dim",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
}

#[test]
fn diffusers_widened_model_loads_and_matches_its_outputs() {
    let device = Device::flex();
    let dir = fixture_dir("unet").join(DIFFUSERS_SR);
    let (config, sr) = load_unet(&dir, &device).unwrap();
    assert_eq!(config.concat_channels(), Some(4));
    let io = read_safetensors(dir.join("io.safetensors"));
    let tensor = |name: &str| io[name].clone();
    let sample = tensor("sample");
    let context = tensor("encoder_hidden_states");
    let out = sr.forward(
        Tensor::from_data(
            burn::tensor::TensorData::new(sample.f32(), sample.shape.clone()),
            &device,
        ),
        &tensor("timesteps").f32(),
        Tensor::from_data(
            burn::tensor::TensorData::new(context.f32(), context.shape.clone()),
            &device,
        ),
    );
    let ours = values(out);
    ldmscale_testkit::assert_parity("sr_widened", &ours, &tensor("out").f32(), 1e-5, 1e-5);
    assert_eq!(tensor("out").f32(), tensor("out_text_to_image").f32());
}
