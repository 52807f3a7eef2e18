//! Images to network inputs, step for step as the reference libraries do it.
//!
//! - Decoding: `PIL.Image.open(path).convert('RGB')` (grey replicated, alpha dropped, palette
//!   expanded), here through the `image` crate.
//! - [`FidMode::PytorchFid`] (pytorch-fid 0.3.0): `ToTensor` (u8 / 255 in f32), bilinear resize
//!   to 299x299 as `F.interpolate(mode='bilinear', align_corners=False)` computes it in f32,
//!   then `2x - 1`.
//! - [`FidMode::Clean`] (clean-fid 0.1.35 "clean"): each channel as a float32 PIL image (mode
//!   "F") resized with PIL's antialiased bicubic filter to 299x299, clipped to [0, 255], not
//!   re-quantised, then `(x - 128) / 128`.

use std::path::Path;

use crate::error::EvalError;
use crate::inception::INPUT_SIZE;

/// An 8-bit RGB image, rows of interleaved R, G, B.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps `data` (`height * width * 3` bytes, HWC).
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, EvalError> {
        if data.len() != width * height * 3 || width == 0 || height == 0 {
            return Err(EvalError::Input(format!(
                "an RGB image of {width}x{height} needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Quantises `3 x height x width` floats in [-1, 1] (clamped) as a saved PNG would hold
    /// them: `round((x + 1) * 127.5)`.
    pub fn from_signed_chw(width: usize, height: usize, chw: &[f32]) -> Result<Self, EvalError> {
        let n = width * height;
        if chw.len() != 3 * n {
            return Err(EvalError::Input(format!(
                "a 3x{height}x{width} image needs {} values, got {}",
                3 * n,
                chw.len()
            )));
        }
        let mut data = Vec::with_capacity(3 * n);
        for p in 0..n {
            for c in 0..3 {
                data.push(((chw[c * n + p] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8);
            }
        }
        Self::new(width, height, data)
    }

    /// Decodes an image file (PNG, JPEG, WebP, BMP) to RGB as `PIL.Image.convert('RGB')` does:
    /// grey is replicated, alpha is dropped (not composited), palettes are expanded.
    pub fn open(path: &Path) -> Result<Self, EvalError> {
        let image_error = |message: String| EvalError::Image {
            file: path.display().to_string(),
            message,
        };
        let mut reader = image::ImageReader::open(path)
            .map_err(|e| image_error(e.to_string()))?
            .with_guessed_format()
            .map_err(|e| image_error(e.to_string()))?;
        reader.limits(decode_limits());
        let decoded = reader.decode().map_err(|e| image_error(e.to_string()))?;
        let rgb = decoded.to_rgb8();
        let (width, height) = rgb.dimensions();
        Self::new(width as usize, height as usize, rgb.into_raw())
    }

    /// One channel as f32 values in [0, 255], row-major.
    pub fn channel_f32(&self, c: usize) -> Vec<f32> {
        self.data
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f32)
            .collect()
    }
}

/// The largest image side decoded (a header may declare up to 2^32 - 1).
pub const MAX_IMAGE_SIDE: u32 = 1 << 14;

/// Decoder limits: the header's size is checked against these before any pixel is allocated.
pub fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(1 << 30);
    limits
}

/// How images become Inception inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FidMode {
    /// pytorch-fid 0.3.0: bilinear resize of [0, 1] values, then `2x - 1`.
    PytorchFid,
    /// clean-fid 0.1.35 "clean": PIL bicubic resize of float channels, clip, `(x - 128) / 128`.
    Clean,
}

impl FidMode {
    /// The mode's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FidMode::PytorchFid => "pytorch-fid",
            FidMode::Clean => "clean",
        }
    }
}

impl std::str::FromStr for FidMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pytorch-fid" | "pytorch_fid" | "legacy" => Ok(FidMode::PytorchFid),
            "clean" => Ok(FidMode::Clean),
            other => Err(format!(
                "unknown FID mode {other:?}; expected \"pytorch-fid\" or \"clean\""
            )),
        }
    }
}

/// The network input for `image`: `[3, 299, 299]` f32, channel-major.
pub fn fid_input(image: &RgbImage, mode: FidMode) -> Vec<f32> {
    let (h, w, s) = (image.height, image.width, INPUT_SIZE);
    match mode {
        FidMode::PytorchFid => {
            let mut chw = Vec::with_capacity(3 * h * w);
            for c in 0..3 {
                chw.extend(image.channel_f32(c).into_iter().map(|v| v / 255.0));
            }
            let mut out = resize_bilinear(&chw, 3, h, w, s, s);
            for v in &mut out {
                *v = 2.0 * *v - 1.0;
            }
            out
        }
        FidMode::Clean => {
            let mut out = Vec::with_capacity(3 * s * s);
            for c in 0..3 {
                let resized = resize_bicubic_pil(&image.channel_f32(c), h, w, s, s);
                out.extend(
                    resized
                        .into_iter()
                        .map(|v| (v.clamp(0.0, 255.0) - 128.0) / 128.0),
                );
            }
            out
        }
    }
}

/// Source index pair and weights of one output position of PyTorch's linear interpolation
/// (`align_corners=False`, no scale factor given), in f32 like its CPU kernel.
fn linear_taps(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32, f32)> {
    if in_size == out_size {
        return (0..out_size).map(|i| (i, i, 1.0, 0.0)).collect();
    }
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|i| {
            let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_size - 1);
            let lambda1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - lambda1, lambda1)
        })
        .collect()
}

/// `F.interpolate(x, size=(out_h, out_w), mode='bilinear', align_corners=False)` of a
/// `[channels, h, w]` f32 tensor, with PyTorch's f32 index and weight arithmetic.
pub fn resize_bilinear(
    src: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), channels * h * w, "resize_bilinear: input size");
    let rows = linear_taps(h, out_h);
    let cols = linear_taps(w, out_w);
    let mut out = Vec::with_capacity(channels * out_h * out_w);
    for c in 0..channels {
        let plane = &src[c * h * w..(c + 1) * h * w];
        for &(y0, y1, wy0, wy1) in &rows {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for &(x0, x1, wx0, wx1) in &cols {
                let top = r0[x0] * wx0 + r0[x1] * wx1;
                let bottom = r1[x0] * wx0 + r1[x1] * wx1;
                out.push(top * wy0 + bottom * wy1);
            }
        }
    }
    out
}

/// PIL's bicubic kernel (a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's `precompute_coeffs`: for each output position the first source index and the
/// normalised weights, the filter widened by the scale when shrinking (antialiasing).
pub(crate) fn pil_taps(in_size: usize, out_size: usize, support: f64) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = support * filter_scale;
    let inv = 1.0 / filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
            let xmax = ((center + support + 0.5).trunc() as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                for v in &mut k {
                    *v /= total;
                }
            }
            (xmin, k)
        })
        .collect()
}

/// `Image.fromarray(x, mode='F').resize((out_w, out_h), Image.BICUBIC)` of one `[h, w]` f32
/// channel: horizontal pass into an f32 image (only the rows the vertical pass reads), then
/// vertical, each summing in f64 like PIL's 32-bit path.
pub fn resize_bicubic_pil(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "resize_bicubic_pil: input size");
    if h == out_h && w == out_w {
        return src.to_vec(); // PIL returns a copy when the size does not change
    }
    let vert = pil_taps(h, out_h, 2.0);
    let (first_row, rows_used) = if h == out_h {
        (0, h)
    } else {
        let first = vert[0].0;
        let (last_min, last_k) = &vert[out_h - 1];
        (first, last_min + last_k.len() - first)
    };
    let horizontal: Vec<f32> = if w == out_w {
        src[first_row * w..(first_row + rows_used) * w].to_vec()
    } else {
        let horiz = pil_taps(w, out_w, 2.0);
        let mut tmp = Vec::with_capacity(rows_used * out_w);
        for y in first_row..first_row + rows_used {
            let row = &src[y * w..(y + 1) * w];
            for (xmin, k) in &horiz {
                let mut ss = 0.0f64;
                for (i, kv) in k.iter().enumerate() {
                    ss += row[xmin + i] as f64 * kv;
                }
                tmp.push(ss as f32);
            }
        }
        tmp
    };
    if h == out_h {
        return horizontal;
    }
    let mut out = vec![0.0f32; out_h * out_w];
    for (yy, (ymin, k)) in vert.iter().enumerate() {
        let ymin = ymin - first_row;
        for xx in 0..out_w {
            let mut ss = 0.0f64;
            for (i, kv) in k.iter().enumerate() {
                ss += horizontal[(ymin + i) * out_w + xx] as f64 * kv;
            }
            out[yy * out_w + xx] = ss as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_resizes_are_copies() {
        let src: Vec<f32> = (0..12).map(|v| v as f32 * 0.3).collect();
        assert_eq!(resize_bilinear(&src, 1, 3, 4, 3, 4), src);
        assert_eq!(resize_bicubic_pil(&src, 3, 4, 3, 4), src);
    }

    #[test]
    fn constant_images_stay_constant() {
        let src = vec![7.25f32; 5 * 9];
        for (oh, ow) in [(11, 3), (2, 20), (5, 4)] {
            for v in resize_bicubic_pil(&src, 5, 9, oh, ow) {
                assert!((v - 7.25).abs() < 1e-5, "{v}");
            }
            for v in resize_bilinear(&src, 1, 5, 9, oh, ow) {
                assert!((v - 7.25).abs() < 1e-5, "{v}");
            }
        }
    }

    #[test]
    fn pil_taps_widen_when_shrinking() {
        let up = pil_taps(10, 40, 2.0);
        assert!(up.iter().all(|(_, k)| k.len() <= 5));
        let down = pil_taps(40, 10, 2.0);
        assert!(down.iter().any(|(_, k)| k.len() > 10));
        for (_, k) in up.iter().chain(&down) {
            assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn signed_floats_quantise_like_a_saved_png() {
        // 1x2 image: channel-major in, interleaved out.
        let chw = [-1.0, 1.0, 0.0, 0.002, 0.5, -2.0];
        let img = RgbImage::from_signed_chw(2, 1, &chw).unwrap();
        assert_eq!(img.data, vec![0, 128, 191, 255, 128, 0]);
        assert!(RgbImage::from_signed_chw(2, 2, &chw).is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("clean".parse::<FidMode>(), Ok(FidMode::Clean));
        assert_eq!("pytorch-fid".parse::<FidMode>(), Ok(FidMode::PytorchFid));
        assert!("tf".parse::<FidMode>().unwrap_err().contains("pytorch-fid"));
    }
}
