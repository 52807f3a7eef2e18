//! An 8-bit RGB image in row-major HxWx3 layout, decoding (alpha composited over white) and the
//! conversions a model needs.

use std::path::Path;

use image::{DynamicImage, RgbImage, imageops::FilterType};

use crate::error::DataError;

/// The largest image side decoded (a header may declare up to 2^32 - 1).
pub const MAX_IMAGE_SIDE: u32 = 1 << 14;

/// Decoder limits: a header's size is checked against these before any pixel is allocated.
fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(1 << 30);
    limits
}

/// An 8-bit RGB image, row-major, `height x width x 3` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({}x{} RGB)", self.width, self.height)
    }
}

impl Image {
    /// An image of one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut pixels = Vec::with_capacity(n * 3);
        for _ in 0..n {
            pixels.extend_from_slice(&rgb);
        }
        Image {
            width,
            height,
            pixels,
        }
    }

    /// Wraps `height x width x 3` bytes; `None` when the length does not match.
    pub fn from_rgb(width: u32, height: u32, pixels: Vec<u8>) -> Option<Self> {
        (pixels.len() == width as usize * height as usize * 3).then_some(Image {
            width,
            height,
            pixels,
        })
    }

    /// A grey image from `height x width` bytes (each copied to R, G and B); `None` when the
    /// length does not match.
    pub fn from_gray(width: u32, height: u32, gray: &[u8]) -> Option<Self> {
        if gray.len() != width as usize * height as usize {
            return None;
        }
        let pixels = gray.iter().flat_map(|&v| [v, v, v]).collect();
        Some(Image {
            width,
            height,
            pixels,
        })
    }

    /// Decodes an encoded image (PNG, JPEG, WebP, BMP; format sniffed from the bytes). Images
    /// with transparency are composited over white, so RGBA icons keep their look. `name` is
    /// used in the error.
    pub fn decode(bytes: &[u8], name: &str) -> Result<Self, DataError> {
        let image_error = |e: image::ImageError| DataError::Image {
            file: name.to_string(),
            message: e.to_string(),
        };
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| image_error(e.into()))?;
        reader.limits(decode_limits());
        Ok(Self::from_dynamic(reader.decode().map_err(image_error)?))
    }

    /// Decodes to 8-bit RGB as OpenCV's `imread(IMREAD_COLOR)` does (grey replicated, 16 bits
    /// reduced, an opaque alpha dropped), with a note of the conversion made. Transparency is an
    /// error rather than composited: a transparent pixel has no defined colour for an HR target.
    pub fn decode_opaque(
        bytes: &[u8],
        name: &str,
    ) -> Result<(Self, Option<&'static str>), DataError> {
        let image_error = |e: image::ImageError| DataError::Image {
            file: name.to_string(),
            message: e.to_string(),
        };
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| image_error(e.into()))?;
        reader.limits(decode_limits());
        let img = reader.decode().map_err(image_error)?;
        let color = img.color();
        if color.has_alpha() && img.to_rgba16().pixels().any(|p| p[3] != u16::MAX) {
            return Err(DataError::format(
                name,
                "has transparent pixels; expected opaque RGB or grey (flatten it onto a background first)",
            ));
        }
        let grey = color.channel_count() <= 2;
        let wide = color.bytes_per_pixel() / color.channel_count() > 1;
        let note = match (grey, wide, color.has_alpha()) {
            (false, false, false) => None,
            (true, false, _) => Some("grey replicated to RGB"),
            (true, true, _) => Some("16-bit grey reduced to 8-bit and replicated to RGB"),
            (false, true, _) => Some("reduced to 8 bits per channel"),
            (false, false, true) => Some("opaque alpha channel dropped"),
        };
        let rgb = img.into_rgb8();
        let (width, height) = rgb.dimensions();
        let pixels = rgb.into_raw();
        Ok((
            Image {
                width,
                height,
                pixels,
            },
            note,
        ))
    }

    /// Reads and decodes an image file.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::decode(&bytes, &path.display().to_string())
    }

    /// Converts any decoded image to RGB, compositing alpha over white.
    pub fn from_dynamic(img: DynamicImage) -> Self {
        if !img.color().has_alpha() {
            let rgb = img.into_rgb8();
            let (width, height) = rgb.dimensions();
            return Image {
                width,
                height,
                pixels: rgb.into_raw(),
            };
        }
        let rgba = img.into_rgba8();
        let (width, height) = rgba.dimensions();
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for px in rgba.pixels() {
            let a = px[3] as u32;
            for c in 0..3 {
                // out = c*a + 255*(1-a), rounded, in integer arithmetic
                let v = (px[c] as u32 * a + 255 * (255 - a) + 127) / 255;
                pixels.push(v as u8);
            }
        }
        Image {
            width,
            height,
            pixels,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The `height x width x 3` bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.pixels
    }

    /// Consumes the image, giving its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.pixels
    }

    /// The colour at column `x`, row `y`.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside {self:?}"
        );
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Sets the colour at column `x`, row `y`.
    pub fn set_pixel(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside {self:?}"
        );
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.pixels[i..i + 3].copy_from_slice(&rgb);
    }

    /// Mirrors the image left to right.
    pub fn flip_horizontal(&self) -> Image {
        let w = self.width as usize;
        if w == 0 {
            return self.clone();
        }
        let mut pixels = Vec::with_capacity(self.pixels.len());
        for row in self.pixels.chunks_exact(w * 3) {
            for px in row.chunks_exact(3).rev() {
                pixels.extend_from_slice(px);
            }
        }
        Image {
            width: self.width,
            height: self.height,
            pixels,
        }
    }

    /// The `width x height` window whose top-left corner is (`left`, `top`).
    pub fn crop(&self, left: u32, top: u32, width: u32, height: u32) -> Image {
        assert!(
            left + width <= self.width && top + height <= self.height,
            "crop {width}x{height}+{left}+{top} outside {self:?}"
        );
        let stride = self.width as usize * 3;
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for y in top..top + height {
            let start = y as usize * stride + left as usize * 3;
            pixels.extend_from_slice(&self.pixels[start..start + width as usize * 3]);
        }
        Image {
            width,
            height,
            pixels,
        }
    }

    /// Resamples to `width x height` with a Catmull-Rom filter (widened when shrinking, so
    /// downscaling averages instead of aliasing). Same size returns a copy.
    pub fn resize(&self, width: u32, height: u32) -> Image {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let src = RgbImage::from_raw(self.width, self.height, self.pixels.clone())
            .expect("Image keeps width*height*3 bytes");
        let out = image::imageops::resize(&src, width, height, FilterType::CatmullRom);
        Image {
            width,
            height,
            pixels: out.into_raw(),
        }
    }

    /// Channel-first `3 x height x width` floats scaled to [-1, 1] (the range of the
    /// Stable-Diffusion autoencoder's input), ready for a `[3, H, W]` tensor.
    pub fn to_chw_f32(&self) -> Vec<f32> {
        let n = self.width as usize * self.height as usize;
        let mut out = vec![0.0f32; 3 * n];
        for (i, px) in self.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
        out
    }

    /// Inverse of [`Image::to_chw_f32`]: `3 x height x width` floats in [-1, 1] (clamped)
    /// to an image, e.g. to save decoded samples.
    pub fn from_chw_f32(width: u32, height: u32, chw: &[f32]) -> Option<Image> {
        let n = width as usize * height as usize;
        if chw.len() != 3 * n {
            return None;
        }
        let mut pixels = Vec::with_capacity(3 * n);
        for i in 0..n {
            for c in 0..3 {
                let v = ((chw[c * n + i] + 1.0) * 127.5).round().clamp(0.0, 255.0);
                pixels.push(v as u8);
            }
        }
        Some(Image {
            width,
            height,
            pixels,
        })
    }

    /// Tiles `count` images given as `count x 3 x size x size` floats in [-1, 1] into a grid
    /// of `columns` columns, row by row, each scaled up `scale` times (nearest neighbour), with
    /// `gap` white pixels between tiles; a short last row is padded white.
    pub fn grid_from_nchw(
        values: &[f32],
        count: usize,
        size: usize,
        columns: usize,
        scale: usize,
        gap: usize,
    ) -> Option<Image> {
        if count == 0 || columns == 0 || scale == 0 || values.len() != count * 3 * size * size {
            return None;
        }
        let columns = columns.min(count);
        let rows = count.div_ceil(columns);
        let tile = size * scale;
        let (gw, gh) = (
            columns * tile + (columns - 1) * gap,
            rows * tile + (rows - 1) * gap,
        );
        let mut chw = vec![1f32; 3 * gw * gh];
        for i in 0..count {
            let (x0, y0) = ((i % columns) * (tile + gap), (i / columns) * (tile + gap));
            for ch in 0..3 {
                for y in 0..tile {
                    let src = ((i * 3 + ch) * size + y / scale) * size;
                    let dst = ch * gw * gh + (y0 + y) * gw + x0;
                    for x in 0..tile {
                        chw[dst + x] = values[src + x / scale];
                    }
                }
            }
        }
        Image::from_chw_f32(gw as u32, gh as u32, &chw)
    }

    /// Encodes as PNG.
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        image::write_buffer_with_format(
            &mut std::io::Cursor::new(&mut out),
            &self.pixels,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .expect("PNG encoding into memory cannot fail for a valid RGB buffer");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_images_row_by_row_and_pads_white() {
        // Three 1x1 images (red, green, blue) in two columns: [red green; blue white].
        let values = [1.0, -1.0, -1.0, -1.0, 1.0, -1.0, -1.0, -1.0, 1.0];
        let grid = Image::grid_from_nchw(&values, 3, 1, 2, 1, 0).unwrap();
        assert_eq!((grid.width, grid.height), (2, 2));
        assert_eq!(
            grid.pixels,
            vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]
        );
        assert!(Image::grid_from_nchw(&values, 2, 1, 2, 1, 0).is_none());
    }
}
