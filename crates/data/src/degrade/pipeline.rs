//! The whole two-stage degradation, in the order of Real-ESRGAN's `RealESRGANModel.feed_data`
//! (kernels drawn first, as its dataset does), with one generator seeded per image.

use super::float_image::FloatImage;
use super::jpeg::jpeg;
use super::kernels::filter2d;
use super::noise::NoiseParams;
use super::random_kernels::{BlurParams, FinalSincParams, weighted_index};
use super::resize::{ResizeMode, ResizeTo, resize};
use super::usm::{UsmParams, usm_sharp};
use crate::DataError;
use crate::rng::{SplitMix64, hash_str, hash_u64s};

/// One random resize (Real-ESRGAN's `resize_prob` for up / down / keep and `resize_range`).
#[derive(Clone, Debug, PartialEq)]
pub struct ResizeParams {
    /// Probabilities of up, down, keep.
    pub prob: [f64; 3],
    /// Down scales are drawn from [lo, 1], up scales from [1, hi].
    pub range: (f64, f64),
}

impl ResizeParams {
    fn draw_scale(&self, rng: &mut SplitMix64) -> f64 {
        match weighted_index(&self.prob, rng) {
            0 => rng.uniform(1.0, self.range.1),
            1 => rng.uniform(self.range.0, 1.0),
            _ => 1.0,
        }
    }
}

/// Every setting of the degradation; [`RealEsrganParams::x4plus`] is the paper's.
#[derive(Clone, Debug, PartialEq)]
pub struct RealEsrganParams {
    /// Downscaling factor of the whole degradation.
    pub scale: usize,
    /// Sharpening of the ground truth before the first blur.
    pub usm: UsmParams,
    pub blur1: BlurParams,
    pub resize1: ResizeParams,
    pub noise1: NoiseParams,
    /// JPEG quality range of the first stage.
    pub jpeg1: (f64, f64),
    /// Probability of the second blur.
    pub blur2_prob: f64,
    pub blur2: BlurParams,
    pub resize2: ResizeParams,
    pub noise2: NoiseParams,
    pub jpeg2: (f64, f64),
    pub final_sinc: FinalSincParams,
}

impl RealEsrganParams {
    /// `train_realesrgan_x4plus.yml`.
    pub fn x4plus() -> Self {
        RealEsrganParams {
            scale: 4,
            usm: UsmParams::default(),
            blur1: BlurParams::x4plus_first(),
            resize1: ResizeParams {
                prob: [0.2, 0.7, 0.1],
                range: (0.15, 1.5),
            },
            noise1: NoiseParams::x4plus_first(),
            jpeg1: (30.0, 95.0),
            blur2_prob: 0.8,
            blur2: BlurParams::x4plus_second(),
            resize2: ResizeParams {
                prob: [0.3, 0.4, 0.3],
                range: (0.3, 1.2),
            },
            noise2: NoiseParams::x4plus_second(),
            jpeg2: (30.0, 95.0),
            final_sinc: FinalSincParams::x4plus(),
        }
    }
}

/// The largest odd number not above `n` (at least 1).
fn odd_at_most(n: usize) -> usize {
    if n % 2 == 1 {
        n
    } else {
        n.saturating_sub(1).max(1)
    }
}

impl RealEsrganParams {
    /// The variant for small images: every kernel capped to the smallest side it can meet (the
    /// USM blur and blur 1 to the HR, blur 2 to the smallest first-stage resize, the final sinc to
    /// the LR), sizes drawn from `min(lo, cap)..=cap`. Unchanged for sides of 140 px and up (the
    /// paper's 512 px crops included). An error below 16 px, where the second resize would reach
    /// zero pixels.
    pub fn scaled_for(&self, width: usize, height: usize) -> Result<Self, DataError> {
        let side = width.min(height);
        if side < 4 * self.scale {
            return Err(DataError::Spec {
                spec: format!("realesrgan on {width}x{height}"),
                message: format!(
                    "images need at least {} px per side for x{}",
                    4 * self.scale,
                    self.scale
                ),
            });
        }
        let cap = |sizes: (usize, usize), limit: usize| {
            let hi = sizes.1.min(odd_at_most(limit));
            (sizes.0.min(hi), hi)
        };
        let mut scaled = self.clone();
        scaled.usm.radius = self.usm.radius.min(odd_at_most(side) - 1);
        scaled.blur1.sizes = cap(self.blur1.sizes, side);
        let first_stage = (side as f64 * self.resize1.range.0).floor() as usize;
        scaled.blur2.sizes = cap(self.blur2.sizes, first_stage.max(1));
        scaled.final_sinc.sizes = cap(self.final_sinc.sizes, side / self.scale);
        Ok(scaled)
    }
}

/// The seed of image `index` of `split`, so that every image's degradation is reproducible alone.
pub fn seed_for(split: &str, index: u64) -> u64 {
    hash_u64s(&[hash_str(split), index])
}

/// Degrades `hr` to a low-resolution image of `hr / scale` (floored), rounded to 8-bit levels.
pub fn realesrgan(
    hr: &FloatImage,
    params: &RealEsrganParams,
    seed: u64,
) -> Result<FloatImage, DataError> {
    params.blur1.validate()?;
    params.blur2.validate()?;
    let mut rng = SplitMix64::new(seed);
    // The dataset draws all three kernels before the model's feed_data draws the rest.
    let kernel1 = params.blur1.draw(&mut rng).kernel();
    let kernel2 = params.blur2.draw(&mut rng).kernel();
    let sinc = params.final_sinc.draw(&mut rng).map(|draw| draw.kernel());
    let (w, h) = (hr.width, hr.height);

    let mut out = filter2d(&usm_sharp(hr, params.usm), &kernel1);
    let scale = params.resize1.draw_scale(&mut rng);
    out = resize(&out, ResizeTo::Scale(scale), draw_mode(&mut rng))?;
    out = params.noise1.draw(&mut rng).apply(&out, &mut rng);
    out = clamped_jpeg(&out, draw_quality(params.jpeg1, &mut rng));

    if rng.chance(params.blur2_prob) {
        out = filter2d(&out, &kernel2);
    }
    let scale = params.resize2.draw_scale(&mut rng);
    // Python's `int(ori_h / scale * s)`: truncation of the float size.
    let size = |len: usize| (len as f64 / params.scale as f64 * scale) as usize;
    out = resize(
        &out,
        ResizeTo::Size {
            width: size(w),
            height: size(h),
        },
        draw_mode(&mut rng),
    )?;
    out = params.noise2.draw(&mut rng).apply(&out, &mut rng);

    let target = ResizeTo::Size {
        width: w / params.scale,
        height: h / params.scale,
    };
    let resize_and_sinc =
        |img: &FloatImage, rng: &mut SplitMix64| -> Result<FloatImage, DataError> {
            let resized = resize(img, target, draw_mode(rng))?;
            Ok(sinc
                .as_ref()
                .map_or(resized.clone(), |k| filter2d(&resized, k)))
        };
    out = if rng.chance(0.5) {
        let resized = resize_and_sinc(&out, &mut rng)?;
        clamped_jpeg(&resized, draw_quality(params.jpeg2, &mut rng))
    } else {
        let compressed = clamped_jpeg(&out, draw_quality(params.jpeg2, &mut rng));
        resize_and_sinc(&compressed, &mut rng)?
    };
    Ok(round_to_8_bits(out))
}

/// Real-ESRGAN clamps to [0, 1] before every JPEG ("otherwise JPEGer will result in unpleasant
/// artifacts"): the sinc's negative lobes overshoot.
fn clamped_jpeg(img: &FloatImage, quality: f32) -> FloatImage {
    let mut clamped = img.clone();
    clamped
        .pixels
        .iter_mut()
        .for_each(|v| *v = v.clamp(0.0, 1.0));
    jpeg(&clamped, quality)
}

/// Real-ESRGAN's `random.choice(['area', 'bilinear', 'bicubic'])`.
fn draw_mode(rng: &mut SplitMix64) -> ResizeMode {
    *rng.choose(&ResizeMode::ALL)
}

/// A float quality, as Real-ESRGAN's `uniform_` on a float32 tensor.
fn draw_quality((lo, hi): (f64, f64), rng: &mut SplitMix64) -> f32 {
    rng.uniform(lo, hi) as f32
}

/// `clamp(round(x * 255), 0, 255) / 255`, round half to even.
fn round_to_8_bits(mut img: FloatImage) -> FloatImage {
    for v in img.pixels.iter_mut() {
        *v = (*v * 255.0).round_ties_even().clamp(0.0, 255.0) / 255.0;
    }
    img
}
