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
fn invalid_params_are_an_error() {
    let mut params = RealEsrganParams::x4plus();
    params.blur2.sizes = (7, 20);
    let err = realesrgan(&hr(32, 32), &params, 0).unwrap_err();
    assert!(err.to_string().contains("odd"), "{err}");
}
