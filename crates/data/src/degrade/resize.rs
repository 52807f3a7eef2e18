//! Resizing with PyTorch `F.interpolate` semantics (CPU kernels, `align_corners=False`, no
//! antialias), as Real-ESRGAN calls it: `area` (adaptive average pooling), `bilinear`, and
//! `bicubic` (A = -0.75, border indices clamped).

use super::float_image::FloatImage;
use crate::DataError;

/// `F.interpolate`'s `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    Area,
    Bilinear,
    Bicubic,
}

impl ResizeMode {
    /// Real-ESRGAN's `random.choice(['area', 'bilinear', 'bicubic'])` order.
    pub const ALL: [ResizeMode; 3] = [ResizeMode::Area, ResizeMode::Bilinear, ResizeMode::Bicubic];
}

/// What `F.interpolate` is given: `scale_factor=s` (output `floor(size * s)`, and bilinear /
/// bicubic map coordinates with `1 / s`, not with the rounded size ratio) or `size=(h, w)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeTo {
    Scale(f64),
    Size { width: usize, height: usize },
}

/// One output position's source indices and weights along an axis.
type Taps = Vec<(usize, f32)>;

/// `F.interpolate(img, ..., mode)` on one image.
pub fn resize(img: &FloatImage, to: ResizeTo, mode: ResizeMode) -> Result<FloatImage, DataError> {
    let (out_w, out_h, scale) = match to {
        // Python's `math.floor(float(size) * scale_factor)`.
        ResizeTo::Scale(s) => {
            let out = |len: usize| (len as f64 * s).floor().max(0.0) as usize;
            (out(img.width), out(img.height), Some(s))
        }
        ResizeTo::Size { width, height } => (width, height, None),
    };
    if out_w == 0 || out_h == 0 || img.width == 0 || img.height == 0 {
        return Err(DataError::Spec {
            spec: format!("resize {}x{} to {to:?}", img.width, img.height),
            message: "input and output sizes must be at least 1 pixel".into(),
        });
    }
    let taps = |len, out| match mode {
        // `area` goes through adaptive_avg_pool2d: the size alone decides.
        ResizeMode::Area => area_taps(len, out),
        ResizeMode::Bilinear => bilinear_taps(len, out, scale),
        ResizeMode::Bicubic => bicubic_taps(len, out, scale),
    };
    Ok(apply_separable(
        img,
        &taps(img.width, out_w),
        &taps(img.height, out_h),
    ))
}

/// ATen `area_pixel_compute_scale` with `align_corners=False`: `1 / scale_factor` when one was
/// given, else the size ratio; single precision, as the float kernels compute it.
fn coordinate_scale(len: usize, out: usize, scale: Option<f64>) -> f32 {
    match scale {
        Some(s) if s > 0.0 => (1.0 / s) as f32,
        _ => len as f32 / out as f32,
    }
}

/// ATen `guard_index_and_lambda`: the integer part (at most `len - 1`) and the fraction in [0, 1].
fn index_and_fraction(src: f32, len: usize) -> (isize, f32) {
    let index = (src.floor() as isize).min(len as isize - 1);
    (index, (src - index as f32).clamp(0.0, 1.0))
}

fn bilinear_taps(len: usize, out: usize, scale: Option<f64>) -> Vec<Taps> {
    if len == out {
        // ATen's shortcut: equal sizes copy, whatever the scale factor.
        return (0..len).map(|i| vec![(i, 1.0)]).collect();
    }
    let s = coordinate_scale(len, out, scale);
    (0..out)
        .map(|o| {
            let src = (s * (o as f32 + 0.5) - 0.5).max(0.0);
            let (i0, l1) = index_and_fraction(src, len);
            let i0 = i0 as usize;
            let i1 = if i0 + 1 < len { i0 + 1 } else { i0 };
            vec![(i0, 1.0 - l1), (i1, l1)]
        })
        .collect()
}

/// Keys' cubic convolution weights for the four taps around `t` in [0, 1], A = -0.75.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

fn bicubic_taps(len: usize, out: usize, scale: Option<f64>) -> Vec<Taps> {
    let s = coordinate_scale(len, out, scale);
    let last = len as isize - 1;
    (0..out)
        .map(|o| {
            // No clamp at 0 for cubic: the taps' indices are clamped instead.
            let src = s * (o as f32 + 0.5) - 0.5;
            let (index, t) = index_and_fraction(src, len);
            let weights = cubic_weights(t);
            (0..4)
                .map(|k| ((index - 1 + k as isize).clamp(0, last) as usize, weights[k]))
                .collect()
        })
        .collect()
}

/// ATen adaptive average pooling: output `o` averages `floor(o len / out) .. ceil((o+1) len / out)`.
fn area_taps(len: usize, out: usize) -> Vec<Taps> {
    (0..out)
        .map(|o| {
            let start = o * len / out;
            let end = ((o + 1) * len).div_ceil(out);
            let w = 1.0 / (end - start) as f32;
            (start..end).map(|i| (i, w)).collect()
        })
        .collect()
}

/// Weighted sums along columns, then along rows.
fn apply_separable(img: &FloatImage, col_taps: &[Taps], row_taps: &[Taps]) -> FloatImage {
    let (out_w, out_h) = (col_taps.len(), row_taps.len());
    let mut horizontal = vec![0.0f64; out_w * img.height * 3];
    for y in 0..img.height {
        for (x, taps) in col_taps.iter().enumerate() {
            for &(src, w) in taps {
                for c in 0..3 {
                    horizontal[(y * out_w + x) * 3 + c] += w as f64 * img.get(src, y, c) as f64;
                }
            }
        }
    }
    let mut out = FloatImage::zeros(out_w, out_h);
    for (y, taps) in row_taps.iter().enumerate() {
        for x in 0..out_w {
            for c in 0..3 {
                let sum: f64 = taps
                    .iter()
                    .map(|&(src, w)| w as f64 * horizontal[(src * out_w + x) * 3 + c])
                    .sum();
                out.set(x, y, c, sum as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_weights_sum_to_one() {
        for t in [0.0, 0.25, 0.5, 0.9] {
            let sum: f32 = cubic_weights(t).iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "t {t}: {sum}");
        }
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn area_windows_cover_the_input() {
        let taps = area_taps(5, 3);
        let starts_ends: Vec<(usize, usize)> = taps
            .iter()
            .map(|t| (t[0].0, t.last().unwrap().0 + 1))
            .collect();
        assert_eq!(starts_ends, vec![(0, 2), (1, 4), (3, 5)]);
    }

    #[test]
    fn empty_output_is_an_error() {
        let img = FloatImage::zeros(4, 4);
        assert!(resize(&img, ResizeTo::Scale(0.1), ResizeMode::Area).is_err());
    }
}
