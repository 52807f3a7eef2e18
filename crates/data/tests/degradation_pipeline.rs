//! The whole RealESRGAN degradation: sizes, 8-bit output, and per-image reproducibility.

use ldmscale_data::degrade::{FloatImage, RealEsrganParams, realesrgan, seed_for};
use ldmscale_data::rng::SplitMix64;

/// A gradient with a noisy band: something for the blur, noise and JPEG to act on.
fn hr(width: usize, height: usize) -> FloatImage {
    let mut rng = SplitMix64::new(1);
    let mut img = FloatImage::zeros(width, height);
    for y in 0..height {
        for x in 0..width {
            for c in 0..3 {
                let ramp = (x + y * c) as f32 / (width + height * 2) as f32;
                let band = if (y / 8) % 2 == 0 {
                    rng.next_f64() as f32 * 0.3
                } else {
                    0.0
                };
                img.set(x, y, c, (ramp + band).min(1.0));
            }
        }
    }
    img
}

#[test]
fn output_is_a_quarter_size_in_8_bit_levels() {
    let params = RealEsrganParams::x4plus();
    for (w, h) in [(64, 48), (70, 53)] {
        for index in 0..6 {
            let lr = realesrgan(&hr(w, h), &params, seed_for("val", index)).unwrap();
            assert_eq!((lr.width, lr.height), (w / 4, h / 4));
            for &v in &lr.pixels {
                let level = v * 255.0;
                assert!(
                    (0.0..=255.0).contains(&level) && (level - level.round()).abs() < 1e-3,
                    "{v}"
                );
            }
        }
    }
}

#[test]
fn each_seed_gives_its_own_reproducible_degradation() {
    let (params, img) = (RealEsrganParams::x4plus(), hr(64, 64));
    let a = realesrgan(&img, &params, seed_for("val", 3)).unwrap();
    assert_eq!(a, realesrgan(&img, &params, seed_for("val", 3)).unwrap());
    assert_ne!(a, realesrgan(&img, &params, seed_for("val", 4)).unwrap());
    assert_ne!(a, realesrgan(&img, &params, seed_for("train", 3)).unwrap());
}

#[test]
fn scaled_variant_caps_kernels_only_for_small_images() {
    let params = RealEsrganParams::x4plus();
    assert_eq!(params.scaled_for(512, 512).unwrap(), params);
    assert_eq!(params.scaled_for(140, 300).unwrap(), params);
    let small = params.scaled_for(40, 32).unwrap();
    assert_eq!(small.usm.radius | 1, 31);
    assert_eq!(small.blur1.sizes, (7, 21));
    assert_eq!(small.blur2.sizes, (3, 3)); // 0.15 x 32 = 4.8 px after the first resize
    assert_eq!(small.final_sinc.sizes, (7, 7)); // the LR is 8 px
    let lr = realesrgan(&hr(40, 32), &small, seed_for("val", 0)).unwrap();
    assert_eq!((lr.width, lr.height), (10, 8));
    let err = params.scaled_for(15, 64).unwrap_err();
    assert!(err.to_string().contains("16 px"), "{err}");
}

#[test]
fn invalid_params_are_an_error() {
    let mut params = RealEsrganParams::x4plus();
    params.blur2.sizes = (7, 20);
    let err = realesrgan(&hr(32, 32), &params, 0).unwrap_err();
    assert!(err.to_string().contains("odd"), "{err}");
}

#[test]
fn every_field_is_checked_and_named() {
    RealEsrganParams::x4plus().validate().unwrap();
    type Break = fn(&mut RealEsrganParams);
    let cases: [(&str, Break); 5] = [
        ("noise2.gray_prob", |p| p.noise2.gray_prob = 1.5),
        ("jpeg1", |p| p.jpeg1 = (95.0, 30.0)),
        ("resize1.range", |p| p.resize1.range = (0.0, 1.5)),
        ("final_sinc.sizes", |p| p.final_sinc.sizes = (7, 201)),
        ("blur1.sigma", |p| p.blur1.sigma = (f64::NAN, 3.0)),
    ];
    for (field, break_it) in cases {
        let mut params = RealEsrganParams::x4plus();
        break_it(&mut params);
        let err = params.validate().unwrap_err().to_string();
        assert!(err.starts_with(field), "{field}: {err}");
    }
}

#[test]
fn params_round_trip_through_json_and_refuse_unknown_keys() {
    let params = RealEsrganParams::x4plus();
    let json = serde_json::to_string(&params).unwrap();
    assert_eq!(
        serde_json::from_str::<RealEsrganParams>(&json).unwrap(),
        params
    );
    let typo = json.replace("\"gray_prob\"", "\"grey_prob\"");
    let err = serde_json::from_str::<RealEsrganParams>(&typo).unwrap_err();
    assert!(err.to_string().contains("grey_prob"), "{err}");
}

/// `pattern_image` of tools/fixtures/make_degradation_fixtures.py: a ramp left, an integer
/// texture right, so both sides build the same 8-bit HR without storing it.
fn pattern_image(size: usize) -> FloatImage {
    let mut img = FloatImage::zeros(size, size);
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let ramp = (x * 2 + y + c * 40) % 256;
                let texture = (x * x * 7 + y * 13 + c * 101 + x * y * 3) % 256;
                let v = if x < size / 2 { ramp } else { texture };
                img.set(x, y, c, v as f32 / 255.0);
            }
        }
    }
    img
}

/// Mean |4-neighbour Laplacian| of the LR and mean |LR - 4x4-averaged HR|, in 8-bit units.
fn lr_statistics(lr: &FloatImage, hr: &FloatImage) -> (f64, f64) {
    let v = |img: &FloatImage, x: usize, y: usize, c: usize| img.get(x, y, c) as f64 * 255.0;
    let (mut laplacian, mut n_lap) = (0.0, 0.0);
    let (mut deviation, mut n_dev) = (0.0, 0.0);
    for y in 0..lr.height {
        for x in 0..lr.width {
            for c in 0..3 {
                if (1..lr.width - 1).contains(&x) && (1..lr.height - 1).contains(&y) {
                    let centre = 4.0 * v(lr, x, y, c);
                    let around = v(lr, x - 1, y, c)
                        + v(lr, x + 1, y, c)
                        + v(lr, x, y - 1, c)
                        + v(lr, x, y + 1, c);
                    laplacian += (centre - around).abs();
                    n_lap += 1.0;
                }
                let clean: f64 = (0..16)
                    .map(|i| v(hr, 4 * x + i % 4, 4 * y + i / 4, c))
                    .sum::<f64>()
                    / 16.0;
                deviation += (v(lr, x, y, c) - clean).abs();
                n_dev += 1.0;
            }
        }
    }
    (laplacian / n_lap, deviation / n_dev)
}

fn mean_and_std(xs: &[f64]) -> (f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
    (mean, var.sqrt())
}

#[test]
fn statistics_match_the_reference_pipeline() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/degradation/pipeline.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let draws = doc["draws"].as_u64().unwrap() as usize;
    let hr = pattern_image(doc["size"].as_u64().unwrap() as usize);
    let params = RealEsrganParams::x4plus();
    let stats: Vec<(f64, f64)> = (0..draws as u64)
        .map(|i| {
            lr_statistics(
                &realesrgan(&hr, &params, seed_for("stats", i)).unwrap(),
                &hr,
            )
        })
        .collect();
    for (name, ours) in [
        ("laplacian", stats.iter().map(|s| s.0).collect::<Vec<_>>()),
        ("deviation", stats.iter().map(|s| s.1).collect()),
    ] {
        let (mean, std) = mean_and_std(&ours);
        let reference = doc[format!("{name}_mean")].as_f64().unwrap();
        let reference_std = doc[format!("{name}_std")].as_f64().unwrap();
        // Both are means of independent draws: allow 3 standard errors of their difference.
        let tolerance = 3.0 * ((std * std + reference_std * reference_std) / draws as f64).sqrt();
        println!(
            "{name}: ours {mean:.3} (std {std:.3}), reference {reference:.3} (std {reference_std:.3}), tolerance {tolerance:.3}"
        );
        assert!(
            (mean - reference).abs() < tolerance,
            "{name}: {mean} vs {reference}"
        );
    }
}
