//! PSNR and SSIM of super-resolution results, equal to BasicSR 1.4.2's `calculate_psnr` and
//! `calculate_ssim` (`basicsr/metrics/psnr_ssim.py`).
//!
//! Images are interleaved RGB rows (`height * width * 3` values in [0, 255], u8 or f64). BasicSR's
//! conventions: `crop_border` pixels cut from every side; optionally the BT.601 luma only
//! (`to_y_channel`: `16 + (65.481 R + 128.553 G + 24.966 B) / 255`, scaled back to [0, 255], not
//! rounded, through float32 as BasicSR computes it); everything else in float64. PSNR is
//! `10 log10(255^2 / MSE)` over all channels (infinite for identical images); SSIM uses an 11x11
//! Gaussian window (sigma 1.5) over the valid region, `c1 = (0.01 * 255)^2`,
//! `c2 = (0.03 * 255)^2`, averaged over channels.

use std::path::Path;

use image::DynamicImage;

use crate::error::EvalError;
use crate::preprocess::{RgbImage, decode_limits};

/// The side of SSIM's Gaussian window (`cv2.getGaussianKernel(11, 1.5)`).
pub const SSIM_WINDOW: usize = 11;
const SSIM_SIGMA: f64 = 1.5;

/// Which pixels and channels BasicSR's metrics compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrMetricOptions {
    /// Pixels cut from each side before measuring (BasicSR's `crop_border`).
    pub crop_border: usize,
    /// Compare the BT.601 luma only (BasicSR's `test_y_channel`).
    pub y_channel: bool,
}

/// An interleaved RGB image borrowed as values in [0, 255].
#[derive(Clone, Copy, Debug)]
pub struct RgbView<'a, T> {
    /// `height * width * 3` values, rows of R, G, B.
    pub pixels: &'a [T],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl<'a, T> RgbView<'a, T> {
    /// Views `pixels` as a `width` x `height` RGB image.
    pub fn new(pixels: &'a [T], width: usize, height: usize) -> Self {
        Self {
            pixels,
            width,
            height,
        }
    }
}

/// PSNR in dB as BasicSR's `calculate_psnr`; `f64::INFINITY` when the images are equal.
pub fn psnr<T: Copy + Into<f64>>(
    a: RgbView<'_, T>,
    b: RgbView<'_, T>,
    options: SrMetricOptions,
) -> Result<f64, EvalError> {
    let (pa, pb) = compared_planes(a, b, options, 1)?;
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (x, y) in pa.iter().zip(&pb) {
        for (u, v) in x.values.iter().zip(&y.values) {
            sum += (u - v) * (u - v);
        }
        count += x.values.len();
    }
    let mse = sum / count as f64;
    if mse == 0.0 {
        return Ok(f64::INFINITY);
    }
    Ok(10.0 * (255.0 * 255.0 / mse).log10())
}

/// SSIM as BasicSR's `calculate_ssim`: the mean SSIM map of each channel, averaged.
pub fn ssim<T: Copy + Into<f64>>(
    a: RgbView<'_, T>,
    b: RgbView<'_, T>,
    options: SrMetricOptions,
) -> Result<f64, EvalError> {
    let (pa, pb) = compared_planes(a, b, options, SSIM_WINDOW)?;
    let window = gaussian_window();
    let per_channel: Vec<f64> = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| ssim_plane(x, y, &window))
        .collect();
    Ok(per_channel.iter().sum::<f64>() / per_channel.len() as f64)
}

/// `cv2.getGaussianKernel(11, 1.5)`: `exp(-x^2 / (2 sigma^2))` normalised to sum 1.
pub fn gaussian_window() -> [f64; SSIM_WINDOW] {
    let half = (SSIM_WINDOW / 2) as f64;
    let mut k = [0.0; SSIM_WINDOW];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - half;
        *v = (-x * x / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let sum: f64 = k.iter().sum();
    k.map(|v| v / sum)
}

/// Decodes an 8-bit image for PSNR / SSIM. RGB is taken as is; grey is replicated to RGB (as
/// `cv2.imread` gives BasicSR a grey PNG); RGBA only when every pixel is opaque (the alpha is
/// dropped). Translucent images and 16-bit or float images are errors naming the file: the
/// metrics compare 8-bit RGB values in [0, 255].
pub fn open_rgb8(path: &Path) -> Result<RgbImage, EvalError> {
    let error = |message: String| EvalError::Image {
        file: path.display().to_string(),
        message,
    };
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| error(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| error(e.to_string()))?;
    reader.limits(decode_limits());
    let decoded = reader.decode().map_err(|e| error(e.to_string()))?;
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    let rgb = match decoded {
        DynamicImage::ImageRgb8(img) => img.into_raw(),
        DynamicImage::ImageLuma8(_) => decoded.to_rgb8().into_raw(),
        DynamicImage::ImageRgba8(_) | DynamicImage::ImageLumaA8(_) => opaque_rgb(&decoded)
            .ok_or_else(|| {
                error(
                    "has translucent pixels; PSNR / SSIM compare opaque RGB: flatten the alpha \
                     channel onto a background first"
                        .into(),
                )
            })?,
        other => {
            return Err(error(format!(
                "{:?} pixels; PSNR / SSIM take 8-bit RGB or grey images (values 0..255)",
                other.color()
            )));
        }
    };
    RgbImage::new(width, height, rgb)
}

/// The RGB bytes of an image with alpha when every pixel is opaque.
fn opaque_rgb(image: &DynamicImage) -> Option<Vec<u8>> {
    let rgba = image.to_rgba8();
    let opaque = rgba.pixels().all(|p| p.0[3] == 255);
    opaque.then(|| image.to_rgb8().into_raw())
}

/// One channel of the compared region, row-major.
#[derive(Debug)]
struct Plane {
    width: usize,
    height: usize,
    values: Vec<f64>,
}

/// The planes BasicSR compares, in its BGR channel order (the luma alone with `y_channel`),
/// after checking both images and that at least `min_side` pixels remain after cropping.
fn compared_planes<T: Copy + Into<f64>>(
    a: RgbView<'_, T>,
    b: RgbView<'_, T>,
    options: SrMetricOptions,
    min_side: usize,
) -> Result<(Vec<Plane>, Vec<Plane>), EvalError> {
    check_view(&a, "first")?;
    check_view(&b, "second")?;
    if (a.width, a.height) != (b.width, b.height) {
        return Err(EvalError::Input(format!(
            "image sizes differ: {}x{} and {}x{}",
            a.width, a.height, b.width, b.height
        )));
    }
    let crop = options.crop_border;
    let (w, h) = (a.width, a.height);
    if w < 2 * crop + min_side || h < 2 * crop + min_side {
        return Err(EvalError::Input(format!(
            "a {w}x{h} image with crop border {crop} leaves less than {min_side}x{min_side} \
             pixels to compare"
        )));
    }
    Ok((planes(a, options), planes(b, options)))
}

fn check_view<T>(view: &RgbView<'_, T>, which: &str) -> Result<(), EvalError> {
    let expected = view.width * view.height * 3;
    if view.pixels.len() != expected || expected == 0 {
        return Err(EvalError::Input(format!(
            "the {which} image: a {}x{} RGB image needs {expected} values, got {}",
            view.width,
            view.height,
            view.pixels.len()
        )));
    }
    Ok(())
}

/// The cropped B, G, R planes, or the cropped luma.
fn planes<T: Copy + Into<f64>>(view: RgbView<'_, T>, options: SrMetricOptions) -> Vec<Plane> {
    let crop = options.crop_border;
    let (width, height) = (view.width - 2 * crop, view.height - 2 * crop);
    let pixel = |x: usize, y: usize, c: usize| -> f64 {
        view.pixels[((y + crop) * view.width + x + crop) * 3 + c].into()
    };
    let plane = |f: &dyn Fn(usize, usize) -> f64| {
        let values = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        Plane {
            width,
            height,
            values,
        }
    };
    if options.y_channel {
        vec![plane(&|x, y| {
            luma(pixel(x, y, 0), pixel(x, y, 1), pixel(x, y, 2))
        })]
    } else {
        [2, 1, 0]
            .into_iter()
            .map(|c| plane(&|x, y| pixel(x, y, c)))
            .collect()
    }
}

/// BasicSR's `to_y_channel` of one pixel in [0, 255], with its float32 steps: the input cast to
/// float32 and divided by 255, the BT.601 dot product in float64, divided by 255 and stored as
/// float32, then multiplied by 255 in float32.
pub fn luma(r: f64, g: f64, b: f64) -> f64 {
    let unit = |v: f64| ((v as f32) / 255.0f32) as f64;
    let y = unit(b) * 24.966 + unit(g) * 128.553 + unit(r) * 65.481 + 16.0;
    let y32 = (y / 255.0) as f32;
    (y32 * 255.0f32) as f64
}

/// The mean SSIM map of one plane pair over the valid region.
fn ssim_plane(a: &Plane, b: &Plane, window: &[f64; SSIM_WINDOW]) -> f64 {
    const C1: f64 = (0.01 * 255.0) * (0.01 * 255.0);
    const C2: f64 = (0.03 * 255.0) * (0.03 * 255.0);
    let filter = |f: &dyn Fn(f64, f64) -> f64| {
        let values: Vec<f64> = a
            .values
            .iter()
            .zip(&b.values)
            .map(|(&x, &y)| f(x, y))
            .collect();
        filter_valid(&values, a.width, a.height, window)
    };
    let mu1 = filter(&|x, _| x);
    let mu2 = filter(&|_, y| y);
    let s11 = filter(&|x, _| x * x);
    let s22 = filter(&|_, y| y * y);
    let s12 = filter(&|x, y| x * y);
    let mut sum = 0.0;
    for i in 0..mu1.len() {
        let (m1, m2) = (mu1[i], mu2[i]);
        let (v1, v2, c12) = (s11[i] - m1 * m1, s22[i] - m2 * m2, s12[i] - m1 * m2);
        sum +=
            ((2.0 * m1 * m2 + C1) * (2.0 * c12 + C2)) / ((m1 * m1 + m2 * m2 + C1) * (v1 + v2 + C2));
    }
    sum / mu1.len() as f64
}

/// Correlation with `outer(window, window)` where the window fits entirely (cv2.filter2D
/// cropped by 5 on each side), as a row pass then a column pass.
fn filter_valid(values: &[f64], width: usize, height: usize, window: &[f64]) -> Vec<f64> {
    let n = window.len();
    let out_w = width + 1 - n;
    let out_h = height + 1 - n;
    let mut rows = vec![0.0; out_w * height];
    for y in 0..height {
        let src = &values[y * width..(y + 1) * width];
        for x in 0..out_w {
            rows[y * out_w + x] = dot(&src[x..x + n], window);
        }
    }
    let mut out = vec![0.0; out_w * out_h];
    for y in 0..out_h {
        for (i, &k) in window.iter().enumerate() {
            let src = &rows[(y + i) * out_w..(y + i + 1) * out_w];
            for (o, &v) in out[y * out_w..(y + 1) * out_w].iter_mut().zip(src) {
                *o += k * v;
            }
        }
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pixels: &[u8], w: usize, h: usize) -> RgbView<'_, u8> {
        RgbView::new(pixels, w, h)
    }

    #[test]
    fn psnr_of_a_uniform_offset_is_closed_form() {
        let a = vec![100u8; 16 * 12 * 3];
        let b = vec![110u8; 16 * 12 * 3];
        let p = psnr(
            view(&a, 16, 12),
            view(&b, 16, 12),
            SrMetricOptions::default(),
        )
        .unwrap();
        assert!(
            (p - 10.0 * (255.0f64 * 255.0 / 100.0).log10()).abs() < 1e-12,
            "{p}"
        );
        let same = psnr(
            view(&a, 16, 12),
            view(&a, 16, 12),
            SrMetricOptions::default(),
        );
        assert_eq!(same.unwrap(), f64::INFINITY);
    }

    #[test]
    fn ssim_of_equal_images_is_one_and_of_flat_offsets_is_below() {
        let a: Vec<u8> = (0..20 * 15 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let opts = SrMetricOptions {
            crop_border: 2,
            y_channel: true,
        };
        let s = ssim(view(&a, 20, 15), view(&a, 20, 15), opts).unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{s}");
        let b: Vec<u8> = a.iter().map(|&v| v / 2).collect();
        let s = ssim(view(&a, 20, 15), view(&b, 20, 15), opts).unwrap();
        assert!(s < 0.9, "{s}");
    }

    #[test]
    fn window_is_normalised_and_symmetric() {
        let k = gaussian_window();
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert_eq!(k[0], k[10]);
        assert!(k[5] > k[4]);
    }

    #[test]
    fn luma_is_bt601_studio_swing() {
        assert!((luma(0.0, 0.0, 0.0) - 16.0).abs() < 1e-5);
        assert!((luma(255.0, 255.0, 255.0) - 235.0).abs() < 1e-4);
    }

    #[test]
    fn decoding_replicates_grey_drops_opaque_alpha_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let save = |name: &str, img: DynamicImage| {
            let path = dir.path().join(name);
            img.save(&path).unwrap();
            path
        };
        let grey = image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(10 * x + y) as u8]));
        let rgb = open_rgb8(&save("g.png", grey.into())).unwrap();
        assert_eq!(&rgb.data[..6], &[0, 0, 0, 10, 10, 10]);
        let opaque = image::RgbaImage::from_pixel(2, 2, image::Rgba([1, 2, 3, 255]));
        let rgb = open_rgb8(&save("o.png", opaque.into())).unwrap();
        assert_eq!(rgb.data, [1, 2, 3].repeat(4));
        let mut clear = image::RgbaImage::from_pixel(2, 2, image::Rgba([1, 2, 3, 255]));
        clear.put_pixel(1, 1, image::Rgba([1, 2, 3, 0]));
        let e = open_rgb8(&save("t.png", clear.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.png") && e.contains("translucent"), "{e}");
        let deep = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(2, 2, image::Rgb([9; 3]));
        let e = open_rgb8(&save("d.png", deep.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.png") && e.contains("8-bit"), "{e}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let a = vec![0u8; 12 * 12 * 3];
        let b = vec![0u8; 13 * 12 * 3];
        let o = SrMetricOptions::default();
        let e = psnr(view(&a, 12, 12), view(&b, 13, 12), o).unwrap_err();
        assert!(e.to_string().contains("12x12 and 13x12"), "{e}");
        let e = psnr(view(&a, 12, 12), view(&b, 12, 12), o).unwrap_err();
        assert!(e.to_string().contains("second image"), "{e}");
        let cropped = SrMetricOptions {
            crop_border: 1,
            y_channel: false,
        };
        let e = ssim(view(&a, 12, 12), view(&a, 12, 12), cropped).unwrap_err();
        assert!(e.to_string().contains("less than 11x11"), "{e}");
        assert!(psnr(view(&a, 12, 12), view(&a, 12, 12), cropped).is_ok());
        let big = SrMetricOptions {
            crop_border: 6,
            y_channel: false,
        };
        assert!(psnr(view(&a, 12, 12), view(&a, 12, 12), big).is_err());
    }
}
