//! CLIP score and CMMD against transformers 5.23 / torchmetrics 1.9 / the CMMD reference, on the
//! random-weight CLIPModel fixtures of tools/fixtures/make_clip_fixtures.py (fixtures/eval/clip/).

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_eval::RgbImage;
use ldmscale_eval::clip::{ClipModel, clip_score, pair_scores};
use ldmscale_eval::cmmd::cmmd;
use ldmscale_testkit::{
    assert_mentions, fixture_dir, max_abs_diff, read_json, read_safetensors, rel_l2, str_array,
    values,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    fixture_dir("eval/clip")
}

fn manifest() -> Value {
    read_json(fixtures().join("manifest.json"))
}

fn images() -> Vec<RgbImage> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| RgbImage::open(p).unwrap()).collect()
}

fn check_case(case: &str) {
    let device = Device::flex();
    let dir = fixtures().join(case);
    let model = ClipModel::load(&dir, &device).unwrap();
    let reference = read_safetensors(dir.join("reference.safetensors"));
    let images = images();

    // Preprocessing: pixel values equal transformers' CLIPImageProcessor (torchvision backend).
    let ours_pixels = model.pixel_values(&images);
    let px = &reference["pixel_values"];
    assert_eq!(ours_pixels.dims().to_vec(), px.shape);
    let worst = max_abs_diff(&values(ours_pixels), &px.f32());
    println!("{case}: pixel_values max |diff| {worst:.2e}");
    assert!(worst < 1e-5, "{case}: pixel values differ by {worst}");

    // The vision tower on the reference's own pixel values, then end to end.
    let x = Tensor::<4>::from_data(TensorData::new(px.f32(), px.shape.clone()), &device);
    let image_ref = &reference["image_embeds"].f32();
    let from_ref = values(model.vision().forward(x));
    let end_to_end = values(model.image_embeddings(&images).unwrap());
    println!(
        "{case}: image embeddings rel L2 {:.2e} (their pixels), {:.2e} (ours)",
        rel_l2(&from_ref, image_ref),
        rel_l2(&end_to_end, image_ref)
    );
    assert!(rel_l2(&from_ref, image_ref) < 1e-5);
    assert!(rel_l2(&end_to_end, image_ref) < 1e-5);

    // Tokens as torchmetrics feeds them (one caption is cut at 77), and the text tower.
    let m = manifest();
    let captions = str_array(&m["captions"]);
    let tokens = model.tokenize(&captions).unwrap();
    let ids: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
    assert_eq!(vec![tokens.batch, tokens.len], reference["input_ids"].shape);
    assert_eq!(ids, reference["input_ids"].i64(), "{case}: token ids");
    let text = values(model.text_embeddings(&captions).unwrap());
    let text_ref = &reference["text_embeds"].f32();
    println!(
        "{case}: text embeddings rel L2 {:.2e}",
        rel_l2(&text, text_ref)
    );
    assert!(rel_l2(&text, text_ref) < 1e-5);

    // torchmetrics' per-pair scores and the clamped mean.
    let d = model.config.projection_dim;
    let scores = pair_scores(&end_to_end, &text, d);
    let expected = &m["cases"][case];
    for (ours, theirs) in scores.iter().zip(&reference["scores"].f32()) {
        assert!(
            (ours - *theirs as f64).abs() < 1e-3,
            "{case}: {ours} vs {theirs}"
        );
    }
    let total = clip_score(&scores);
    let want = expected["clip_score"].as_f64().unwrap();
    println!("{case}: CLIP score {total:.6} (torchmetrics {want:.6}); per pair {scores:?}");
    assert!((total - want).abs() < 1e-3, "{case}: {total} vs {want}");
}

#[test]
fn vit_b32_like_matches_transformers_and_torchmetrics() {
    check_case("vit_b32_like");
}

#[test]
fn vit_l14_like_with_legacy_eos_pooling_matches() {
    check_case("vit_l14_like");
}

#[test]
fn cmmd_matches_the_reference_formula() {
    let arrays = read_safetensors(fixtures().join("cmmd.safetensors"));
    let d = arrays["x"].shape[1];
    let (x, y) = (arrays["x"].f32(), arrays["y"].f32());
    let m = manifest();
    let want = m["cmmd"]["float64"].as_f64().unwrap();
    let ours = cmmd(&x, &y, d).unwrap();
    println!(
        "CMMD ours {ours:.12} reference {want:.12} (float32 reference {})",
        m["cmmd"]["float32"]
    );
    assert!((ours - want).abs() / want < 1e-10);
    assert!(cmmd(&x, &x, d).unwrap().abs() < 1e-9);
}

#[test]
fn broken_model_directories_are_named_errors() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(fixtures().join("vit_b32_like")).unwrap() {
        let path = file.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let write = |text: String| std::fs::write(&config_path, text).unwrap();

    write(original.replace("\"patch_size\": 8", "\"patch_size\": 7"));
    let err = ClipModel::load(dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["config.json", "patch_size 7"]);

    write(original.replace(
        "\"hidden_act\": \"quick_gelu\"",
        "\"hidden_act\": \"swish\"",
    ));
    let err = ClipModel::load(dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("hidden_act"), "{err}");

    write(original.replace("\"projection_dim\": 24", "\"projection_dim\": 25"));
    let err = ClipModel::load(dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["model.safetensors", "visual_projection.weight"]);
}
