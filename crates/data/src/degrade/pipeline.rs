//! The whole two-stage degradation, in the order of Real-ESRGAN's `RealESRGANModel.feed_data`
//! (kernels drawn first, as its dataset does), with one generator seeded per image.

use super::float_image::FloatImage;
use super::jpeg::{JpegPadding, jpeg_padded};
use super::kernels::filter2d;
use super::noise::NoiseParams;
use super::random_kernels::{BlurParams, FinalSincParams, weighted_index};
use super::resize::{ResizeMode, ResizeTo, resize};
use super::usm::{UsmParams, usm_sharp};
use crate::DataError;
use crate::rng::{SplitMix64, hash_str, hash_u64s};
use serde::{Deserialize, Serialize};

/// One random resize (Real-ESRGAN's `resize_prob` for up / down / keep and `resize_range`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// How the JPEG simulation pads to whole 16 px blocks: zeros as BasicSR (the paper's), or
    /// the edge pixels repeated (the small-image variant: on a 4 px LR, zeros fill three
    /// quarters of the block and darken and desaturate the whole image).
    #[serde(default)]
    pub jpeg_padding: JpegPadding,
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
            jpeg_padding: JpegPadding::Zero,
        }
    }
}

/// Sides from which [`RealEsrganParams::scaled_for`] changes nothing.
const SMALL_SIDE: usize = 140;

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
    /// the LR), sizes drawn from `min(lo, cap)..=cap`, and JPEG padding by edge pixels. Unchanged
    /// for sides of 140 px and up (the paper's 512 px crops included). An error below 16 px, where
    /// the second resize would reach zero pixels.
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
        if side < SMALL_SIDE {
            scaled.jpeg_padding = JpegPadding::Edge;
        }
        Ok(scaled)
    }
}

/// The seed of image `index` of `split`, so that every image's degradation is reproducible alone.
pub fn seed_for(split: &str, index: u64) -> u64 {
    hash_u64s(&[hash_str(split), index])
}

/// The seed of image `index` of `split` in a set made with the user's `seed` (`ldmscale degrade
/// --seed`): [`seed_for`] mixed with it, so each seed gives an independent set.
pub fn set_seed(seed: u64, split: &str, index: u64) -> u64 {
    hash_u64s(&[seed_for(split, index), seed])
}

/// The largest kernel side accepted (Real-ESRGAN's is 21); larger ones would only slow runs down.
const MAX_KERNEL_SIZE: usize = 99;

fn field_error(field: &str, message: String) -> DataError {
    DataError::Format {
        file: field.to_string(),
        message,
    }
}

/// `value` is a probability.
fn check_prob(field: &str, value: f64) -> Result<(), DataError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(field_error(
            field,
            format!("{value} is not a probability in [0, 1]"),
        ))
    }
}

/// `lo <= hi`, both finite and within `[min, max]`.
fn check_range(field: &str, (lo, hi): (f64, f64), min: f64, max: f64) -> Result<(), DataError> {
    if lo.is_finite() && hi.is_finite() && min <= lo && lo <= hi && hi <= max {
        Ok(())
    } else {
        Err(field_error(
            field,
            format!("[{lo}, {hi}]: need {min} <= lo <= hi <= {max}"),
        ))
    }
}

fn check_sizes(field: &str, (lo, hi): (usize, usize)) -> Result<(), DataError> {
    if lo % 2 == 1 && hi % 2 == 1 && lo <= hi && hi <= MAX_KERNEL_SIZE {
        Ok(())
    } else {
        Err(field_error(
            field,
            format!("[{lo}, {hi}]: need odd lo <= odd hi <= {MAX_KERNEL_SIZE}"),
        ))
    }
}

fn check_resize(field: &str, resize: &ResizeParams) -> Result<(), DataError> {
    let prob = &resize.prob;
    if prob.iter().any(|p| !(0.0..=1.0).contains(p)) || prob.iter().sum::<f64>() <= 0.0 {
        return Err(field_error(
            &format!("{field}.prob"),
            format!("{prob:?}: need probabilities in [0, 1], not all zero"),
        ));
    }
    let (lo, hi) = resize.range;
    if !(lo > 0.0 && lo <= 1.0 && (1.0..=4.0).contains(&hi)) {
        return Err(field_error(
            &format!("{field}.range"),
            format!("[{lo}, {hi}]: need 0 < lo <= 1 <= hi <= 4"),
        ));
    }
    Ok(())
}

fn check_noise(field: &str, noise: &NoiseParams) -> Result<(), DataError> {
    check_prob(&format!("{field}.gaussian_prob"), noise.gaussian_prob)?;
    check_prob(&format!("{field}.gray_prob"), noise.gray_prob)?;
    check_range(&format!("{field}.sigma"), noise.sigma, 0.0, 255.0)?;
    check_range(
        &format!("{field}.poisson_scale"),
        noise.poisson_scale,
        0.0,
        100.0,
    )
}

fn check_blur(field: &str, blur: &BlurParams) -> Result<(), DataError> {
    check_prob(&format!("{field}.sinc_prob"), blur.sinc_prob)?;
    check_sizes(&format!("{field}.sizes"), blur.sizes)?;
    check_range(&format!("{field}.sigma"), blur.sigma, 1e-3, 100.0)?;
    blur.validate().map_err(|e| match e {
        DataError::Spec { message, .. } => field_error(field, message),
        other => other,
    })
}

impl RealEsrganParams {
    /// Checks every field, naming the first one out of range (`blur2.sizes: ...`).
    pub fn validate(&self) -> Result<(), DataError> {
        if !(1..=16).contains(&self.scale) {
            return Err(field_error(
                "scale",
                format!("{} is not in 1..=16", self.scale),
            ));
        }
        let usm = &self.usm;
        if usm.radius > 2 * MAX_KERNEL_SIZE
            || !usm.weight.is_finite()
            || !(usm.threshold.is_finite() && usm.threshold >= 0.0)
        {
            return Err(field_error(
                "usm",
                format!(
                    "{usm:?}: need radius <= {}, finite weight, threshold >= 0",
                    2 * MAX_KERNEL_SIZE
                ),
            ));
        }
        check_blur("blur1", &self.blur1)?;
        check_resize("resize1", &self.resize1)?;
        check_noise("noise1", &self.noise1)?;
        check_range("jpeg1", self.jpeg1, 1.0, 100.0)?;
        check_prob("blur2_prob", self.blur2_prob)?;
        check_blur("blur2", &self.blur2)?;
        check_resize("resize2", &self.resize2)?;
        check_noise("noise2", &self.noise2)?;
        check_range("jpeg2", self.jpeg2, 1.0, 100.0)?;
        let sinc = &self.final_sinc;
        check_prob("final_sinc.prob", sinc.prob)?;
        check_range("final_sinc.omega", sinc.omega, 1e-3, std::f64::consts::PI)?;
        check_sizes("final_sinc.sizes", sinc.sizes)
    }
}

/// Degrades `hr` to a low-resolution image of `hr / scale` (floored), rounded to 8-bit levels.
pub fn realesrgan(
    hr: &FloatImage,
    params: &RealEsrganParams,
    seed: u64,
) -> Result<FloatImage, DataError> {
    params.validate()?;
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
    let padding = params.jpeg_padding;
    out = clamped_jpeg(&out, draw_quality(params.jpeg1, &mut rng), padding);

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
        clamped_jpeg(&resized, draw_quality(params.jpeg2, &mut rng), padding)
    } else {
        let compressed = clamped_jpeg(&out, draw_quality(params.jpeg2, &mut rng), padding);
        resize_and_sinc(&compressed, &mut rng)?
    };
    Ok(round_to_8_bits(out))
}

/// Real-ESRGAN clamps to [0, 1] before every JPEG ("otherwise JPEGer will result in unpleasant
/// artifacts"): the sinc's negative lobes overshoot.
fn clamped_jpeg(img: &FloatImage, quality: f32, padding: JpegPadding) -> FloatImage {
    let mut clamped = img.clone();
    clamped
        .pixels
        .iter_mut()
        .for_each(|v| *v = v.clamp(0.0, 1.0));
    jpeg_padded(&clamped, quality, padding)
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
