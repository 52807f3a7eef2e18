//! The float JPEG simulation Real-ESRGAN compresses with (BasicSR `DiffJPEG(differentiable=False)`):
//! zero-pad to a multiple of 16, RGB to YCbCr (JFIF), 4:2:0 chroma by 2x2 averaging, 8x8 DCT,
//! quantisation by the IJG tables scaled by a float factor (the luma table transposed, as BasicSR
//! stores it) with round-half-even, then the inverse, nearest chroma upsampling, clamping to
//! [0, 1] and cropping. Unlike a real encoder it takes float quality and float input.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use super::float_image::FloatImage;

/// IJG luma table, row = vertical frequency, as in the JPEG standard.
const LUMA_TABLE: [[f32; 8]; 8] = [
    [16.0, 11.0, 10.0, 16.0, 24.0, 40.0, 51.0, 61.0],
    [12.0, 12.0, 14.0, 19.0, 26.0, 58.0, 60.0, 55.0],
    [14.0, 13.0, 16.0, 24.0, 40.0, 57.0, 69.0, 56.0],
    [14.0, 17.0, 22.0, 29.0, 51.0, 87.0, 80.0, 62.0],
    [18.0, 22.0, 37.0, 56.0, 68.0, 109.0, 103.0, 77.0],
    [24.0, 35.0, 55.0, 64.0, 81.0, 104.0, 113.0, 92.0],
    [49.0, 64.0, 78.0, 87.0, 103.0, 121.0, 120.0, 101.0],
    [72.0, 92.0, 95.0, 98.0, 112.0, 100.0, 103.0, 99.0],
];

/// IJG chroma table's low frequencies; the rest is 99. Symmetric, so transposing changes nothing.
const CHROMA_CORNER: [[f32; 4]; 4] = [
    [17.0, 18.0, 24.0, 47.0],
    [18.0, 21.0, 26.0, 66.0],
    [24.0, 26.0, 56.0, 99.0],
    [47.0, 66.0, 99.0, 99.0],
];

/// BasicSR `quality_to_factor`: the IJG scaling (`5000 / q` below 50, `200 - 2 q` from 50) / 100,
/// in single precision as it runs on the float32 quality tensor.
pub fn quality_to_factor(quality: f32) -> f32 {
    let percent = if quality < 50.0 {
        5000.0 / quality
    } else {
        200.0 - quality * 2.0
    };
    percent / 100.0
}

/// The quantisation step of each (row, column) coefficient: BasicSR uses the luma table
/// transposed, so its row index is the horizontal frequency.
fn steps(luma: bool, factor: f32) -> [[f32; 8]; 8] {
    let mut table = [[99.0f32; 8]; 8];
    for (u, row) in table.iter_mut().enumerate() {
        for (v, step) in row.iter_mut().enumerate() {
            if luma {
                *step = LUMA_TABLE[v][u];
            } else if u < 4 && v < 4 {
                *step = CHROMA_CORNER[v][u];
            }
            *step *= factor;
        }
    }
    table
}

/// One plane of samples, row-major.
struct Plane {
    width: usize,
    height: usize,
    values: Vec<f32>,
}

/// How the image is padded to whole 16 px blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JpegPadding {
    /// Zeros, as BasicSR's `DiffJPEG`.
    #[default]
    Zero,
    /// The nearest edge pixel, as real encoders do (for images much smaller than a block).
    Edge,
}

/// `DiffJPEG(differentiable=False)(img, quality)` on one image.
pub fn jpeg(img: &FloatImage, quality: f32) -> FloatImage {
    jpeg_padded(img, quality, JpegPadding::Zero)
}

/// [`jpeg`] with the padding chosen.
pub fn jpeg_padded(img: &FloatImage, quality: f32, padding: JpegPadding) -> FloatImage {
    let factor = quality_to_factor(quality);
    let (y, cb, cr) = to_ycbcr_420(img, padding);
    let y = compress_plane(y, &steps(true, factor));
    let cb = compress_plane(cb, &steps(false, factor));
    let cr = compress_plane(cr, &steps(false, factor));
    to_rgb(&y, &cb, &cr, img.width, img.height)
}

/// Pads to a multiple of 16, scales to [0, 255] and converts to Y and 2x2-averaged Cb, Cr.
fn to_ycbcr_420(img: &FloatImage, padding: JpegPadding) -> (Plane, Plane, Plane) {
    let (w, h) = (img.width.div_ceil(16) * 16, img.height.div_ceil(16) * 16);
    let mut planes: [Vec<f32>; 3] = std::array::from_fn(|_| vec![0.0; w * h]);
    let inside = |xx: usize, yy: usize| xx < img.width && yy < img.height;
    for yy in 0..h {
        for xx in 0..w {
            let [r, g, b] = match padding {
                _ if inside(xx, yy) => [0, 1, 2].map(|c| img.get(xx, yy, c) * 255.0),
                JpegPadding::Zero => [0.0; 3],
                JpegPadding::Edge => {
                    let (x, y) = (xx.min(img.width - 1), yy.min(img.height - 1));
                    [0, 1, 2].map(|c| img.get(x, y, c) * 255.0)
                }
            };
            planes[0][yy * w + xx] = 0.299 * r + 0.587 * g + 0.114 * b;
            planes[1][yy * w + xx] = -0.168736 * r + -0.331264 * g + 0.5 * b + 128.0;
            planes[2][yy * w + xx] = 0.5 * r + -0.418688 * g + -0.081312 * b + 128.0;
        }
    }
    let [y, cb, cr] = planes;
    let full = Plane {
        width: w,
        height: h,
        values: y,
    };
    (full, subsample(&cb, w, h), subsample(&cr, w, h))
}

/// 2x2 average pooling.
fn subsample(values: &[f32], w: usize, h: usize) -> Plane {
    let (hw, hh) = (w / 2, h / 2);
    let mut out = vec![0.0; hw * hh];
    for y in 0..hh {
        for x in 0..hw {
            let at = |dy: usize, dx: usize| values[(2 * y + dy) * w + 2 * x + dx];
            out[y * hw + x] = (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0;
        }
    }
    Plane {
        width: hw,
        height: hh,
        values: out,
    }
}

/// `cos((2 x + 1) u pi / 16)`, indexed `[u][x]`.
fn cosines() -> [[f64; 8]; 8] {
    std::array::from_fn(|u| {
        std::array::from_fn(|x| ((2 * x + 1) as f64 * u as f64 * PI / 16.0).cos())
    })
}

fn alpha(u: usize) -> f64 {
    if u == 0 {
        std::f64::consts::FRAC_1_SQRT_2
    } else {
        1.0
    }
}

/// Every 8x8 block through DCT, quantise-round, dequantise and inverse DCT.
fn compress_plane(mut plane: Plane, steps: &[[f32; 8]; 8]) -> Plane {
    let cos = cosines();
    for by in (0..plane.height).step_by(8) {
        for bx in (0..plane.width).step_by(8) {
            let mut block = [[0.0f64; 8]; 8];
            for (x, row) in block.iter_mut().enumerate() {
                for (y, v) in row.iter_mut().enumerate() {
                    *v = plane.values[(by + x) * plane.width + bx + y] as f64 - 128.0;
                }
            }
            let decoded = idct(&quantise(&dct(&block, &cos), steps), &cos);
            for (x, row) in decoded.iter().enumerate() {
                for (y, v) in row.iter().enumerate() {
                    plane.values[(by + x) * plane.width + bx + y] = *v as f32;
                }
            }
        }
    }
    plane
}

/// BasicSR `DCT8x8`: `0.25 a(u) a(v) sum_xy block[x][y] cos_u(x) cos_v(y)`, separably.
fn dct(block: &[[f64; 8]; 8], cos: &[[f64; 8]; 8]) -> [[f32; 8]; 8] {
    let rows: [[f64; 8]; 8] = std::array::from_fn(|x| {
        std::array::from_fn(|v| (0..8).map(|y| block[x][y] * cos[v][y]).sum())
    });
    std::array::from_fn(|u| {
        std::array::from_fn(|v| {
            let sum: f64 = (0..8).map(|x| rows[x][v] * cos[u][x]).sum();
            (0.25 * alpha(u) * alpha(v) * sum) as f32
        })
    })
}

/// Divide by the step and round half to even (`torch.round`), then multiply back.
fn quantise(coefficients: &[[f32; 8]; 8], steps: &[[f32; 8]; 8]) -> [[f32; 8]; 8] {
    std::array::from_fn(|u| {
        std::array::from_fn(|v| (coefficients[u][v] / steps[u][v]).round_ties_even() * steps[u][v])
    })
}

/// BasicSR `iDCT8x8`: `0.25 sum_uv a(u) a(v) coef[u][v] cos_u(x) cos_v(y) + 128`.
fn idct(coefficients: &[[f32; 8]; 8], cos: &[[f64; 8]; 8]) -> [[f64; 8]; 8] {
    let scaled: [[f64; 8]; 8] = std::array::from_fn(|u| {
        std::array::from_fn(|v| coefficients[u][v] as f64 * alpha(u) * alpha(v))
    });
    let rows: [[f64; 8]; 8] = std::array::from_fn(|u| {
        std::array::from_fn(|y| (0..8).map(|v| scaled[u][v] * cos[v][y]).sum())
    });
    std::array::from_fn(|x| {
        std::array::from_fn(|y| 0.25 * (0..8).map(|u| rows[u][y] * cos[u][x]).sum::<f64>() + 128.0)
    })
}

/// Nearest chroma upsampling, YCbCr to RGB, clamp to [0, 255], back to [0, 1], crop.
fn to_rgb(y: &Plane, cb: &Plane, cr: &Plane, width: usize, height: usize) -> FloatImage {
    let mut out = FloatImage::zeros(width, height);
    for yy in 0..height {
        for xx in 0..width {
            let luma = y.values[yy * y.width + xx];
            let chroma = (yy / 2) * cb.width + xx / 2;
            let (b_diff, r_diff) = (cb.values[chroma] - 128.0, cr.values[chroma] - 128.0);
            let rgb = [
                luma + 1.402 * r_diff,
                luma + -0.344136 * b_diff + -0.714136 * r_diff,
                luma + 1.772 * b_diff,
            ];
            for (c, v) in rgb.into_iter().enumerate() {
                out.set(xx, yy, c, v.clamp(0.0, 255.0) / 255.0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_factor_is_ijg_scaling() {
        assert_eq!(quality_to_factor(50.0), 1.0);
        assert_eq!(quality_to_factor(25.0), 2.0);
        assert!((quality_to_factor(95.0) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn dct_round_trips_without_quantisation() {
        let cos = cosines();
        let block: [[f64; 8]; 8] =
            std::array::from_fn(|x| std::array::from_fn(|y| (x * 8 + y) as f64 - 30.0));
        let back = idct(&dct(&block, &cos), &cos);
        for x in 0..8 {
            for y in 0..8 {
                assert!((back[x][y] - 128.0 - block[x][y]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn flat_mid_grey_survives_and_size_is_kept() {
        // Y = Cb = Cr = 128: every coefficient is zero, nothing to quantise.
        let img = FloatImage::from_pixels(16, 16, vec![128.0 / 255.0; 16 * 16 * 3]).unwrap();
        let out = jpeg(&img, 40.0);
        assert!(out.pixels.iter().all(|v| (v - 128.0 / 255.0).abs() < 1e-6));
        let odd = jpeg(&FloatImage::zeros(5, 3), 40.0);
        assert_eq!((odd.width, odd.height), (5, 3));
    }

    /// A flat colour 4 px image: zero padding (BasicSR) darkens and desaturates it, edge
    /// padding keeps it (the whole 16 px block is then flat).
    #[test]
    fn edge_padding_keeps_a_tiny_flat_image() {
        let colour = [0.9f32, 0.3, 0.2];
        let pixels: Vec<f32> = (0..16).flat_map(|_| colour).collect();
        let img = FloatImage::from_pixels(4, 4, pixels).unwrap();
        let edge = jpeg_padded(&img, 50.0, JpegPadding::Edge);
        let zero = jpeg(&img, 50.0);
        let error = |out: &FloatImage| {
            out.pixels
                .iter()
                .zip(img.pixels.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(error(&edge) < 0.02, "edge padding moved {}", error(&edge));
        assert!(
            error(&zero) > 0.1,
            "zero padding moved only {}",
            error(&zero)
        );
    }
}
