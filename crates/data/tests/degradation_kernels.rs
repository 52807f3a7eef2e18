//! Blur kernels and filter2D against BasicSR 1.4.2 (fixtures/degradation/kernels.json,
//! made by tools/fixtures/make_degradation_kernel_fixtures.py).

use ldmscale_data::degrade::{FloatImage, Kernel, KernelShape, filter2d};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/degradation/kernels.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read kernels.json")).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn max_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn kernels_match_basicsr() {
    let doc = fixture();
    let mut worst = 0.0f64;
    for case in doc["kernels"].as_array().unwrap() {
        let size = case["size"].as_u64().unwrap() as usize;
        let shape = KernelShape {
            sigma_x: case["sig_x"].as_f64().unwrap(),
            sigma_y: case["sig_y"].as_f64().unwrap(),
            theta: case["theta"].as_f64().unwrap(),
            isotropic: case["isotropic"].as_bool().unwrap(),
        };
        let beta = case["beta"].as_f64().unwrap();
        let kernel = match case["kind"].as_str().unwrap() {
            "gaussian" => Kernel::gaussian(size, shape),
            "generalized" => Kernel::generalized_gaussian(size, shape, beta),
            "plateau" => Kernel::plateau(size, shape, beta),
            other => panic!("unknown kind {other}"),
        };
        let err = max_error(&kernel.weights, &floats(&case["kernel"]));
        assert!(err < 1e-12, "{case:?}: max error {err}");
        worst = worst.max(err);
    }
    for case in doc["sinc"].as_array().unwrap() {
        let size = case["size"].as_u64().unwrap() as usize;
        let kernel = Kernel::circular_lowpass(size, case["omega"].as_f64().unwrap()).pad_to(21);
        let err = max_error(&kernel.weights, &floats(&case["kernel"]));
        assert!(err < 1e-10, "sinc size {size}: max error {err}");
        worst = worst.max(err);
    }
    println!("kernel max error {worst:e}");
}

#[test]
fn filter2d_matches_basicsr() {
    let doc = fixture();
    let f = &doc["filter2d"];
    let (w, h) = (
        f["width"].as_u64().unwrap() as usize,
        f["height"].as_u64().unwrap() as usize,
    );
    let pixels = floats(&f["image"]).into_iter().map(|v| v as f32).collect();
    let img = FloatImage::from_pixels(w, h, pixels).unwrap();
    for case in f["cases"].as_array().unwrap() {
        let size = case["size"].as_u64().unwrap() as usize;
        let kernel = Kernel {
            size,
            weights: floats(&case["kernel"]),
        };
        let out = filter2d(&img, &kernel);
        let got: Vec<f64> = out.pixels.iter().map(|&v| v as f64).collect();
        let err = max_error(&got, &floats(&case["output"]));
        println!("filter2d size {size}: max error {err:e}");
        assert!(err < 1e-6, "filter2d size {size}: max error {err}");
    }
}
