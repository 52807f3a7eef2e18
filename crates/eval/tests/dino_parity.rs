//! DINO ViT embeddings against transformers 5.23's ViTModel and ViTImageProcessor, on the
//! random-weight fixture of tools/fixtures/make_dino_fixtures.py (fixtures/eval/dino/).

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_eval::RgbImage;
use ldmscale_eval::clip::Resample;
use ldmscale_eval::dino::DinoModel;
use ldmscale_testkit::{fixture_dir, max_abs_diff, read_safetensors, rel_l2, values};

fn images() -> Vec<RgbImage> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture_dir("eval/clip/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| RgbImage::open(p).unwrap()).collect()
}

#[test]
fn embeddings_match_transformers_vit_model() {
    let device = Device::flex();
    let dir = fixture_dir("eval/dino/vit_s_like");
    let model = DinoModel::load(&dir, &device).unwrap();
    assert_eq!(model.processor.resample, Resample::Bilinear);
    assert_eq!(model.processor.crop, None);
    let reference = read_safetensors(dir.join("reference.safetensors"));
    let images = images();

    // Bilinear antialiased resize to a square (down for three images, up for the small one).
    let px = &reference["pixel_values"];
    let ours = model.pixel_values(&images);
    assert_eq!(ours.dims().to_vec(), px.shape);
    let worst = max_abs_diff(&values(ours), &px.f32());
    println!("pixel_values max |diff| {worst:.2e}");
    assert!(worst < 1e-5, "pixel values differ by {worst}");

    let x = Tensor::<4>::from_data(TensorData::new(px.f32(), px.shape.clone()), &device);
    let expected = reference["embeds"].f32();
    let from_theirs = values(model.forward(x));
    let end_to_end = values(model.image_embeddings(&images).unwrap());
    println!(
        "embeddings rel L2 {:.2e} (their pixels), {:.2e} (ours)",
        rel_l2(&from_theirs, &expected),
        rel_l2(&end_to_end, &expected)
    );
    assert!(rel_l2(&from_theirs, &expected) < 1e-5);
    assert!(rel_l2(&end_to_end, &expected) < 1e-5);
}

#[test]
fn a_config_or_weights_that_do_not_fit_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture_dir("eval/dino/vit_s_like");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let device = Device::flex();
    let load = |text: String| {
        std::fs::write(tmp.path().join("config.json"), text).unwrap();
        DinoModel::load(tmp.path(), &device)
            .unwrap_err()
            .to_string()
    };
    let err = load(config.replace("\"patch_size\": 8", "\"patch_size\": 7"));
    assert!(
        err.contains("config.json") && err.contains("patch_size 7"),
        "{err}"
    );
    let err = load(config.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"swish\""));
    assert!(err.contains("hidden_act"), "{err}");
    let err = load(config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"));
    assert!(err.contains("encoder.layer.1"), "unused layer named: {err}");
}
