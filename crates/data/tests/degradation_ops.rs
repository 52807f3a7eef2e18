//! The degradation's operations against BasicSR 1.4.2 and PyTorch (fixtures/degradation/*.json,
//! made by tools/fixtures/make_degradation_fixtures.py).

use ldmscale_data::degrade::{
    FloatImage, ResizeMode, ResizeTo, UsmParams, add_gaussian_noise, add_poisson_noise, jpeg,
    resize, usm_sharp,
};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../fixtures/degradation/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read fixture")).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// An image stored as `height x width x 3` values under `key`, its size in `doc`'s `width` and
/// `height`; `scale` 255 for 8-bit ones.
fn image(doc: &Value, key: &str, scale: f64) -> FloatImage {
    sized_image(doc, &doc[key], scale)
}

/// `values` as an image of the size `sized` gives.
fn sized_image(sized: &Value, values: &Value, scale: f64) -> FloatImage {
    let pixels = floats(values)
        .into_iter()
        .map(|v| (v / scale) as f32)
        .collect();
    FloatImage::from_pixels(
        usize_of(&sized["width"]),
        usize_of(&sized["height"]),
        pixels,
    )
    .unwrap()
}

fn max_error(got: &FloatImage, want: &[f64]) -> f64 {
    assert_eq!(got.pixels.len(), want.len());
    got.pixels
        .iter()
        .zip(want)
        .map(|(&a, b)| (a as f64 - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn usm_sharp_matches_basicsr() {
    let doc = fixture("usm");
    let out = usm_sharp(&image(&doc, "image", 255.0), UsmParams::default());
    for key in ["usm_sharp_torch", "usm_sharp_numpy"] {
        let err = max_error(&out, &floats(&doc[key]));
        println!("{key}: max error {err:e}");
        assert!(err < 1e-5, "{key}: max error {err}");
    }
}

#[test]
fn resize_matches_torch_interpolate() {
    let doc = fixture("resize");
    let img = image(&doc, "image", 1.0);
    let mut worst = 0.0f64;
    for case in doc["cases"].as_array().unwrap() {
        let mode = match case["mode"].as_str().unwrap() {
            "area" => ResizeMode::Area,
            "bilinear" => ResizeMode::Bilinear,
            "bicubic" => ResizeMode::Bicubic,
            other => panic!("unknown mode {other}"),
        };
        let (width, height) = (usize_of(&case["out_width"]), usize_of(&case["out_height"]));
        let to = match case["scale"].as_f64() {
            Some(s) => ResizeTo::Scale(s),
            None => ResizeTo::Size { width, height },
        };
        let out = resize(&img, to, mode).unwrap();
        assert_eq!((out.width, out.height), (width, height), "{mode:?} {to:?}");
        let err = max_error(&out, &floats(&case["output"]));
        assert!(err < 1e-5, "{mode:?} {to:?}: max error {err}");
        worst = worst.max(err);
    }
    println!("resize max error {worst:e}");
}

#[test]
fn noise_matches_basicsr_given_torch_draws() {
    let doc = fixture("noise");
    let mut worst = 0.0f64;
    for case in doc["cases"].as_array().unwrap() {
        let img = sized_image(&doc, &doc["images"][case["image"].as_str().unwrap()], 1.0);
        let gray = case["gray"].as_bool().unwrap();
        let out = match case["kind"].as_str().unwrap() {
            "gaussian" => {
                let normals: Vec<f32> = floats(&case["normals"])
                    .into_iter()
                    .map(|v| v as f32)
                    .collect();
                add_gaussian_noise(&img, case["sigma"].as_f64().unwrap() as f32, gray, &normals)
            }
            _ => {
                let mut counts = floats(&case["counts"]).into_iter();
                let scale = case["scale"].as_f64().unwrap() as f32;
                add_poisson_noise(&img, scale, gray, |_| {
                    counts.next().expect("a count per value")
                })
            }
        };
        let err = max_error(&out, &floats(&case["output"]));
        assert!(
            err < 1e-6,
            "{} {}: max error {err}",
            case["kind"],
            case["image"]
        );
        worst = worst.max(err);
    }
    println!("noise max error {worst:e}");
}

#[test]
fn jpeg_matches_basicsr_diffjpeg() {
    let doc = fixture("jpeg");
    let mut worst = 0.0f64;
    for case in doc["cases"].as_array().unwrap() {
        let img = image(case, "image", 1.0);
        let quality = case["quality"].as_f64().unwrap() as f32;
        let err = max_error(&jpeg(&img, quality), &floats(&case["output"]));
        println!(
            "jpeg {}x{} quality {quality}: max error {err:e}",
            img.width, img.height
        );
        assert!(
            err < 1e-4,
            "{}x{} quality {quality}: max error {err}",
            img.width,
            img.height
        );
        worst = worst.max(err);
    }
    println!("jpeg max error {worst:e}");
}
