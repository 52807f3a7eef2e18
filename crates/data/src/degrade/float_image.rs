//! A float RGB image: what every degradation operation reads and writes.

use crate::image::Image;

/// An RGB image of `f32` values, row-major `height x width x 3`, nominally in [0, 1] (operations
/// in the middle of the degradation may leave the range; [`FloatImage::to_image`] clamps).
#[derive(Clone, Debug, PartialEq)]
pub struct FloatImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

impl FloatImage {
    /// A black image.
    pub fn zeros(width: usize, height: usize) -> Self {
        FloatImage {
            width,
            height,
            pixels: vec![0.0; width * height * 3],
        }
    }

    /// Wraps `height x width x 3` values; `None` when the length does not match.
    pub fn from_pixels(width: usize, height: usize, pixels: Vec<f32>) -> Option<Self> {
        (pixels.len() == width * height * 3).then_some(FloatImage {
            width,
            height,
            pixels,
        })
    }

    /// An 8-bit image scaled to [0, 1].
    pub fn from_image(image: &Image) -> Self {
        let pixels = image.as_bytes().iter().map(|&v| v as f32 / 255.0).collect();
        FloatImage {
            width: image.width() as usize,
            height: image.height() as usize,
            pixels,
        }
    }

    /// Back to 8 bits as BasicSR does at the end of the degradation: clamp to [0, 1], then
    /// `round(x * 255) / 255` (round half to even, as `torch.round`).
    pub fn to_image(&self) -> Image {
        let bytes = self
            .pixels
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
            .collect();
        Image::from_rgb(self.width as u32, self.height as u32, bytes)
            .expect("a FloatImage holds width x height x 3 values")
    }

    /// Value of channel `c` at (`x`, `y`).
    pub fn get(&self, x: usize, y: usize, c: usize) -> f32 {
        self.pixels[(y * self.width + x) * 3 + c]
    }

    /// Sets channel `c` at (`x`, `y`).
    pub fn set(&mut self, x: usize, y: usize, c: usize, value: f32) {
        self.pixels[(y * self.width + x) * 3 + c] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_round_trip_is_exact() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(5 * 4 * 3).collect();
        let image = Image::from_rgb(5, 4, bytes).unwrap();
        assert_eq!(FloatImage::from_image(&image).to_image(), image);
    }

    #[test]
    fn to_image_clamps_out_of_range_values() {
        let img = FloatImage::from_pixels(1, 1, vec![-0.5, 0.5, 1.5]).unwrap();
        assert_eq!(img.to_image().pixel(0, 0), [0, 128, 255]);
    }
}
