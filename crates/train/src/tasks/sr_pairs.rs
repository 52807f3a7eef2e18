//! Super-resolution training pairs: HR images, their RealESRGAN x4 degradation upsampled back
//! to the HR size (bicubic, `F.interpolate` semantics) and both encoded by the first stage with
//! the targets' scaling factor, held in memory.

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_data::degrade::{
    FloatImage, RealEsrganParams, ResizeMode, ResizeTo, realesrgan, resize,
};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig};
use ldmscale_pipeline::encode_images;

use crate::error::TrainError;
use crate::tasks::super_res::SrData;

/// The LR image of `hr` (RealESRGAN with `params` and `seed`) upsampled x4 back to the HR size
/// and clamped to [0, 1]: what the first stage encodes into the LR latent.
pub fn upsampled_lr(
    hr: &FloatImage,
    params: &RealEsrganParams,
    seed: u64,
) -> Result<FloatImage, TrainError> {
    let lr = realesrgan(hr, params, seed).map_err(data_error)?;
    upsample_to(&lr, hr.width, hr.height)
}

/// `lr` upsampled bicubically to `width x height` and clamped to [0, 1].
pub fn upsample_to(lr: &FloatImage, width: usize, height: usize) -> Result<FloatImage, TrainError> {
    let mut up =
        resize(lr, ResizeTo::Size { width, height }, ResizeMode::Bicubic).map_err(data_error)?;
    // Bicubic overshoots; the first stage was trained on images in range.
    up.pixels.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    Ok(up)
}

fn data_error(e: impl std::fmt::Display) -> TrainError {
    TrainError::Data {
        message: e.to_string(),
    }
}

/// `N x 3 x H x W` values in [-1, 1] of equally sized images.
pub fn image_values(images: &[FloatImage]) -> Vec<f32> {
    let mut out = Vec::with_capacity(images.iter().map(|i| i.pixels.len()).sum());
    for image in images {
        for c in 0..3 {
            out.extend(
                image
                    .pixels
                    .iter()
                    .skip(c)
                    .step_by(3)
                    .map(|v| v * 2.0 - 1.0),
            );
        }
    }
    out
}

/// Scaled latents `[N, C, h, w]` of square `res x res` images (`N x 3 x res x res` in [-1, 1]).
pub fn latents_of(
    vae: &AutoencoderKL,
    vae_config: &AutoencoderKLConfig,
    images: &[FloatImage],
    device: &Device,
) -> Result<Tensor<4>, TrainError> {
    let res = square_side(images)?;
    let f = vae.downsampling_factor();
    let values = encode_images(vae, vae_config, &image_values(images), res, device);
    let shape = [images.len(), vae_config.latent_channels, res / f, res / f];
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// The side of equally sized square images.
fn square_side(images: &[FloatImage]) -> Result<usize, TrainError> {
    let first = images.first().ok_or(TrainError::NoData)?;
    for (i, image) in images.iter().enumerate() {
        if image.width != first.width || image.height != first.width {
            return Err(data_error(format!(
                "image {i} is {}x{}; every crop must be {}x{}",
                image.width, image.height, first.width, first.width
            )));
        }
    }
    Ok(first.width)
}

/// (HR latent, LR latent) pairs in memory.
pub struct SrPairs {
    hr: Vec<f32>,
    lr: Vec<f32>,
    shape: [usize; 3],
    key: String,
}

impl SrPairs {
    /// Encodes HR crops `hr` and their upsampled LR images `lr` (see [`upsampled_lr`]); `key`
    /// names where they came from (a digest of the latents is added).
    pub fn encode(
        vae: &AutoencoderKL,
        vae_config: &AutoencoderKLConfig,
        (hr, lr): (&[FloatImage], &[FloatImage]),
        key: &str,
        device: &Device,
    ) -> Result<Self, TrainError> {
        if hr.len() != lr.len() {
            return Err(data_error(format!(
                "{} HR images but {} LR images",
                hr.len(),
                lr.len()
            )));
        }
        let hr = latents_of(vae, vae_config, hr, device)?;
        let lr = latents_of(vae, vae_config, lr, device)?;
        let [_, c, h, w] = hr.dims();
        Self::new(values(hr), values(lr), [c, h, w], key)
    }

    /// Pairs from latents held as `N x C x h x w` values each.
    pub fn new(
        hr: Vec<f32>,
        lr: Vec<f32>,
        shape: [usize; 3],
        key: &str,
    ) -> Result<Self, TrainError> {
        let size: usize = shape.iter().product();
        if size == 0 || hr.len() != lr.len() || !hr.len().is_multiple_of(size) {
            return Err(data_error(format!(
                "{} HR and {} LR latent values do not hold whole {shape:?} latents",
                hr.len(),
                lr.len()
            )));
        }
        let digest = hr.iter().chain(&lr).fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
            (h ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let key = format!(
            "{key}, {} pairs of {shape:?}, latents {digest:016x}",
            hr.len() / size
        );
        Ok(Self { hr, lr, shape, key })
    }
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32")
}

impl SrData for SrPairs {
    fn len(&self) -> usize {
        self.hr.len() / self.shape.iter().product::<usize>()
    }

    fn latent_shape(&self) -> [usize; 3] {
        self.shape
    }

    fn pairs(&self, indices: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<4>), String> {
        let size: usize = self.shape.iter().product();
        let (mut hr, mut lr) = (Vec::new(), Vec::new());
        for &i in indices {
            if i >= self.len() {
                return Err(format!("example {i} out of range (len {})", self.len()));
            }
            hr.extend_from_slice(&self.hr[i * size..(i + 1) * size]);
            lr.extend_from_slice(&self.lr[i * size..(i + 1) * size]);
        }
        let [c, h, w] = self.shape;
        let shape = [indices.len(), c, h, w];
        Ok((
            Tensor::from_data(TensorData::new(hr, shape), device),
            Tensor::from_data(TensorData::new(lr, shape), device),
        ))
    }

    fn key(&self) -> String {
        self.key.clone()
    }
}
