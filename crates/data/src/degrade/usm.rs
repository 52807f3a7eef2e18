//! Unsharp masking as Real-ESRGAN sharpens its ground truth (BasicSR `USMSharp`, the torch twin
//! of `usm_sharp`): a Gaussian blur from OpenCV's `getGaussianKernel(radius + 1, 0)` (radius 50:
//! 51 taps, sigma 8), reflect-101 borders, a hard threshold on the residual, softened by the same
//! blur.

use super::float_image::FloatImage;
use super::kernels::reflected_taps;
use super::rows::{Tap, padded_row, store_row, weighted_sum};

/// BasicSR's `USMSharp` / `usm_sharp` settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsmParams {
    /// Blur size; an even value is raised to the next odd one, as BasicSR does.
    pub radius: usize,
    /// Weight of the residual added back.
    pub weight: f32,
    /// Residuals above this (in 8-bit units) are sharpened.
    pub threshold: f32,
}

impl Default for UsmParams {
    /// Real-ESRGAN's: radius 50, weight 0.5, threshold 10.
    fn default() -> Self {
        UsmParams {
            radius: 50,
            weight: 0.5,
            threshold: 10.0,
        }
    }
}

/// OpenCV `getGaussianKernel(size, sigma)` in double precision. `sigma <= 0` derives it from the
/// size, and then sizes up to 7 take OpenCV's fixed binomial-like tables.
pub fn gaussian_kernel_1d(size: usize, sigma: f64) -> Vec<f64> {
    const SMALL: [&[f64]; 4] = [
        &[1.0],
        &[0.25, 0.5, 0.25],
        &[0.0625, 0.25, 0.375, 0.25, 0.0625],
        &[
            0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125,
        ],
    ];
    if sigma <= 0.0 && size % 2 == 1 && size <= 7 {
        return SMALL[size / 2].to_vec();
    }
    let sigma = if sigma > 0.0 {
        sigma
    } else {
        0.3 * ((size as f64 - 1.0) * 0.5 - 1.0) + 0.8
    };
    let centre = (size as f64 - 1.0) / 2.0;
    let weights: Vec<f64> = (0..size)
        .map(|i| (-(i as f64 - centre).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// Correlates each channel with `k` along rows, then along columns (the separable form of
/// BasicSR's `filter2D` with the outer-product kernel), reflect-101 borders, odd `k.len()`.
/// Whole rows at a time, in the per-pixel tap order (see [`super::rows`]).
pub fn filter_separable(img: &FloatImage, k: &[f64]) -> FloatImage {
    let size = k.len();
    let (w, h) = (img.width, img.height);
    let mut horizontal = vec![0.0f64; w * h * 3];
    let mut padded = Vec::new();
    for (y, acc) in horizontal.chunks_exact_mut(w * 3).enumerate() {
        padded_row(&img.pixels, w, y, size / 2, &mut padded);
        let taps: Vec<Tap> = k
            .iter()
            .enumerate()
            .map(|(t, &wt)| (wt, &padded[t * 3..]))
            .collect();
        weighted_sum(acc, &taps);
    }
    let rows = reflected_taps(h, size);
    let mut out = FloatImage::zeros(w, h);
    let mut acc = vec![0.0f64; w * 3];
    for y in 0..h {
        let taps: Vec<Tap> = k
            .iter()
            .zip(&rows[y * size..(y + 1) * size])
            .map(|(&wt, &src_y)| (wt, &horizontal[src_y * w * 3..(src_y + 1) * w * 3]))
            .collect();
        weighted_sum(&mut acc, &taps);
        store_row(&mut out.pixels[y * w * 3..(y + 1) * w * 3], &acc);
    }
    out
}

/// BasicSR `USMSharp.forward`: `mask * clip(I + w (I - B)) + (1 - mask) * I`, where the mask is
/// the blurred indicator of `|I - B| * 255 > threshold`.
pub fn usm_sharp(img: &FloatImage, params: UsmParams) -> FloatImage {
    let size = params.radius | 1;
    let kernel = gaussian_kernel_1d(size, 0.0);
    let blur = filter_separable(img, &kernel);
    let residual: Vec<f32> = img
        .pixels
        .iter()
        .zip(&blur.pixels)
        .map(|(i, b)| i - b)
        .collect();
    let mask = residual
        .iter()
        .map(|r| {
            if r.abs() * 255.0 > params.threshold {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let mask = FloatImage::from_pixels(img.width, img.height, mask).expect("same size");
    let soft_mask = filter_separable(&mask, &kernel);
    let pixels = img
        .pixels
        .iter()
        .zip(&residual)
        .zip(&soft_mask.pixels)
        .map(|((&i, &r), &m)| {
            let sharp = (i + params.weight * r).clamp(0.0, 1.0);
            m * sharp + (1.0 - m) * i
        })
        .collect();
    FloatImage::from_pixels(img.width, img.height, pixels).expect("same size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radius_50_gives_opencv_sigma_8() {
        let k = gaussian_kernel_1d(51, 0.0);
        let sigma8 = gaussian_kernel_1d(51, 8.0);
        let err = k
            .iter()
            .zip(&sigma8)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-15, "{err}");
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    /// The per-pixel form `filter_separable` replaced: same tap order, so the same bits.
    fn filter_separable_direct(img: &FloatImage, k: &[f64]) -> FloatImage {
        let size = k.len();
        let (w, h) = (img.width, img.height);
        let cols = reflected_taps(w, size);
        let rows = reflected_taps(h, size);
        let mut horizontal = vec![0.0f64; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                for (t, &weight) in k.iter().enumerate() {
                    let src = cols[x * size + t];
                    for c in 0..3 {
                        horizontal[(y * w + x) * 3 + c] += weight * img.get(src, y, c) as f64;
                    }
                }
            }
        }
        let mut out = FloatImage::zeros(w, h);
        for y in 0..h {
            for x in 0..w {
                let mut acc = [0.0f64; 3];
                for (t, &weight) in k.iter().enumerate() {
                    let src = (rows[y * size + t] * w + x) * 3;
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += weight * horizontal[src + c];
                    }
                }
                for (c, a) in acc.into_iter().enumerate() {
                    out.set(x, y, c, a as f32);
                }
            }
        }
        out
    }

    #[test]
    fn filter_separable_gives_the_bits_of_the_direct_form() {
        let mut rng = crate::rng::SplitMix64::new(5);
        for (w, h, size) in [(40, 31, 51), (7, 60, 13), (3, 2, 5)] {
            let pixels = (0..w * h * 3).map(|_| rng.next_f64() as f32).collect();
            let img = FloatImage::from_pixels(w, h, pixels).unwrap();
            let k = gaussian_kernel_1d(size, 0.0);
            assert_eq!(
                filter_separable(&img, &k),
                filter_separable_direct(&img, &k)
            );
        }
    }

    #[test]
    fn flat_image_is_unchanged() {
        let img = FloatImage::from_pixels(3, 2, vec![0.3; 18]).unwrap();
        let out = usm_sharp(&img, UsmParams::default());
        assert!(
            out.pixels.iter().all(|v| (v - 0.3).abs() < 1e-6),
            "{:?}",
            out.pixels
        );
    }
}
