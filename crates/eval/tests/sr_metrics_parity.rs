//! PSNR / SSIM against BasicSR 1.4.2's `calculate_psnr` / `calculate_ssim` on the images of
//! `fixtures/eval/sr_metrics/` (made by `tools/fixtures/make_sr_metric_fixtures.py`).

use std::collections::BTreeMap;

use ldmscale_eval::sr_metrics::{RgbView, SrMetricOptions, gaussian_window, psnr, ssim};
use ldmscale_testkit::{RawTensor, fixture_dir, read_json, read_safetensors};
use safetensors::Dtype;
use serde_json::Value;

/// An RGB fixture image as f64 values and its size.
struct Image {
    values: Vec<f64>,
    width: usize,
    height: usize,
}

fn image(t: &RawTensor) -> Image {
    assert_eq!(t.shape.len(), 3, "images are [height, width, 3]");
    let values = match t.dtype {
        Dtype::U8 => t.data.iter().map(|&v| v as f64).collect(),
        Dtype::F64 => t
            .data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    };
    Image {
        values,
        width: t.shape[1],
        height: t.shape[0],
    }
}

fn load() -> (BTreeMap<String, RawTensor>, Value) {
    let dir = fixture_dir("eval/sr_metrics");
    (
        read_safetensors(dir.join("images.safetensors")),
        read_json(dir.join("expected.json")),
    )
}

fn expected_psnr(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "inf" => f64::INFINITY,
        other => other.as_f64().expect("psnr is a number or \"inf\""),
    }
}

#[test]
fn window_equals_cv2_gaussian_kernel() {
    let (_, doc) = load();
    let reference: Vec<f64> = serde_json::from_value(doc["gaussian_window"].clone()).unwrap();
    let ours = gaussian_window();
    let err = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("gaussian window: max abs diff {err:.1e}");
    assert!(err < 1e-16, "{err}");
}

#[test]
fn psnr_and_ssim_equal_basicsr() {
    let (tensors, doc) = load();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let (mut worst_psnr, mut worst_ssim) = (0.0f64, 0.0f64);
    for case in cases {
        let a = image(&tensors[case["a"].as_str().unwrap()]);
        let b = image(&tensors[case["b"].as_str().unwrap()]);
        let options = SrMetricOptions {
            crop_border: case["crop_border"].as_u64().unwrap() as usize,
            y_channel: case["y_channel"].as_bool().unwrap(),
        };
        let va = RgbView::new(&a.values, a.width, a.height);
        let vb = RgbView::new(&b.values, b.width, b.height);
        let (p, s) = (
            psnr(va, vb, options).unwrap(),
            ssim(va, vb, options).unwrap(),
        );
        let (p_ref, s_ref) = (expected_psnr(&case["psnr"]), case["ssim"].as_f64().unwrap());
        let what = format!(
            "{} vs {} {options:?} ({}x{})",
            case["a"], case["b"], a.width, a.height
        );
        if p_ref.is_infinite() {
            assert_eq!(p, p_ref, "{what}: psnr");
        } else {
            worst_psnr = worst_psnr.max((p - p_ref).abs());
            assert!(
                (p - p_ref).abs() < 1e-9,
                "{what}: psnr {p} vs BasicSR {p_ref}"
            );
        }
        worst_ssim = worst_ssim.max((s - s_ref).abs());
        assert!(
            (s - s_ref).abs() < 1e-10,
            "{what}: ssim {s} vs BasicSR {s_ref}"
        );
    }
    eprintln!(
        "{} cases: PSNR max |diff| {worst_psnr:.1e} dB, SSIM max |diff| {worst_ssim:.1e}",
        cases.len()
    );
}

/// The u8 path (what the CLI passes) gives the f64 path's values.
#[test]
fn u8_and_f64_inputs_agree() {
    let (tensors, _) = load();
    let (a, b) = (&tensors["p2_a"], &tensors["p2_b"]);
    let (w, h) = (a.shape[1], a.shape[0]);
    let options = SrMetricOptions {
        crop_border: 4,
        y_channel: true,
    };
    let (fa, fb) = (image(a), image(b));
    let from_u8 = ssim(
        RgbView::new(&a.data, w, h),
        RgbView::new(&b.data, w, h),
        options,
    );
    let from_f64 = ssim(
        RgbView::new(&fa.values, w, h),
        RgbView::new(&fb.values, w, h),
        options,
    );
    assert_eq!(from_u8.unwrap(), from_f64.unwrap());
}
