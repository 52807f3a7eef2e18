//! The RealESRGAN blur kernels (BasicSR `degradations.py`) and BasicSR's reflect-padded `filter2D`.

use std::f64::consts::PI;

use super::float_image::FloatImage;
use super::rows::{Tap, padded_row, store_row, weighted_sum};

/// A square, odd-sized filter kernel, row-major `size x size`.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub size: usize,
    pub weights: Vec<f64>,
}

/// The shape of an anisotropic kernel's covariance: standard deviations along the two axes before
/// rotating by `theta` radians. `isotropic` uses `sigma_x` for both and ignores the rest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelShape {
    pub sigma_x: f64,
    pub sigma_y: f64,
    pub theta: f64,
    pub isotropic: bool,
}

impl KernelShape {
    /// The inverse of the rotated covariance `U diag(sx^2, sy^2) U^T`, as (a, b, c) of [[a, b], [b, c]].
    fn inverse_covariance(&self) -> (f64, f64, f64) {
        let (sx, sy, theta) = if self.isotropic {
            (self.sigma_x, self.sigma_x, 0.0)
        } else {
            (self.sigma_x, self.sigma_y, self.theta)
        };
        let (s, c) = theta.sin_cos();
        let (vx, vy) = (sx * sx, sy * sy);
        let (a, b, d) = (
            c * c * vx + s * s * vy,
            c * s * (vx - vy),
            s * s * vx + c * c * vy,
        );
        let det = a * d - b * b;
        (d / det, -b / det, a / det)
    }

    /// The Mahalanobis quadratic form `g^T Sigma^-1 g` at every grid point, x along columns.
    fn quadratic_form(&self, size: usize) -> Vec<f64> {
        let (a, b, c) = self.inverse_covariance();
        let half = (size / 2) as f64;
        grid(size)
            .map(|(row, col)| {
                let (x, y) = (col as f64 - half, row as f64 - half);
                a * x * x + 2.0 * b * x * y + c * y * y
            })
            .collect()
    }
}

fn grid(size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..size).flat_map(move |row| (0..size).map(move |col| (row, col)))
}

impl Kernel {
    fn normalised(size: usize, mut weights: Vec<f64>) -> Self {
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
        Kernel { size, weights }
    }

    /// BasicSR `bivariate_Gaussian`.
    pub fn gaussian(size: usize, shape: KernelShape) -> Self {
        let q = shape.quadratic_form(size);
        Self::normalised(size, q.into_iter().map(|q| (-0.5 * q).exp()).collect())
    }

    /// BasicSR `bivariate_generalized_Gaussian`: `exp(-0.5 q^beta)`.
    pub fn generalized_gaussian(size: usize, shape: KernelShape, beta: f64) -> Self {
        let q = shape.quadratic_form(size);
        Self::normalised(
            size,
            q.into_iter().map(|q| (-0.5 * q.powf(beta)).exp()).collect(),
        )
    }

    /// BasicSR `bivariate_plateau`: `1 / (1 + q^beta)`.
    pub fn plateau(size: usize, shape: KernelShape, beta: f64) -> Self {
        let q = shape.quadratic_form(size);
        Self::normalised(
            size,
            q.into_iter().map(|q| 1.0 / (q.powf(beta) + 1.0)).collect(),
        )
    }

    /// BasicSR `circular_lowpass_kernel` (2-D sinc) with cutoff `omega` radians; `size` odd.
    pub fn circular_lowpass(size: usize, omega: f64) -> Self {
        let centre = (size as f64 - 1.0) / 2.0;
        let weights = grid(size)
            .map(|(row, col)| {
                let r = (row as f64 - centre).hypot(col as f64 - centre);
                if r == 0.0 {
                    omega * omega / (4.0 * PI)
                } else {
                    omega * libm::j1(omega * r) / (2.0 * PI * r)
                }
            })
            .collect();
        Self::normalised(size, weights)
    }

    /// Zero-pads symmetrically to `target` (odd); a kernel already that large is returned as is.
    pub fn pad_to(&self, target: usize) -> Self {
        if target <= self.size {
            return self.clone();
        }
        let pad = (target - self.size) / 2;
        let mut weights = vec![0.0; target * target];
        for (row, col) in grid(self.size) {
            weights[(row + pad) * target + col + pad] = self.weights[row * self.size + col];
        }
        Kernel {
            size: target,
            weights,
        }
    }
}

/// Reflect-101 index (edge not repeated), as torch `F.pad(mode="reflect")`.
pub(super) fn reflect(index: isize, len: usize) -> usize {
    if len == 1 {
        return 0; // no other pixel to reflect to (torch refuses; the loop would not end)
    }
    let last = len as isize - 1;
    let mut i = index;
    while i < 0 || i > last {
        i = if i < 0 { -i } else { 2 * last - i };
    }
    i as usize
}

/// Source index of every (output position, kernel tap) along an axis of `len`, reflect-101.
pub(super) fn reflected_taps(len: usize, size: usize) -> Vec<usize> {
    let half = (size / 2) as isize;
    (0..len)
        .flat_map(|i| (0..size).map(move |k| reflect(i as isize + k as isize - half, len)))
        .collect()
}

/// BasicSR `filter2D`: each channel padded by `size / 2` with reflect-101, then correlated
/// (torch `conv2d`, no flip) with the kernel; output has the input's size. Rotated kernels are
/// not separable: each output row sums `size^2` shifted input rows (see [`super::rows`]).
pub fn filter2d(img: &FloatImage, kernel: &Kernel) -> FloatImage {
    let (size, w, h) = (kernel.size, img.width, img.height);
    let half = size / 2;
    let stride = (w + 2 * half) * 3;
    let mut padded = Vec::with_capacity(h * stride);
    let mut row = Vec::new();
    for y in 0..h {
        padded_row(&img.pixels, w, y, half, &mut row);
        padded.extend_from_slice(&row);
    }
    let rows = reflected_taps(h, size);
    let mut out = FloatImage::zeros(w, h);
    let mut acc = vec![0.0f64; w * 3];
    let mut taps: Vec<Tap> = Vec::with_capacity(size * size);
    for y in 0..h {
        taps.clear();
        for (r, &src_y) in rows[y * size..(y + 1) * size].iter().enumerate() {
            let src = &padded[src_y * stride..(src_y + 1) * stride];
            let weights = &kernel.weights[r * size..(r + 1) * size];
            taps.extend(weights.iter().enumerate().map(|(c, &w)| (w, &src[c * 3..])));
        }
        weighted_sum(&mut acc, &taps);
        store_row(&mut out.pixels[y * w * 3..(y + 1) * w * 3], &acc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bessel_j1_matches_known_values() {
        // The sinc kernel's accuracy rests on libm's J1.
        // J1(1), J1(10), first zero of J1 (3.8317059702075125).
        let bessel_j1 = libm::j1;
        assert!((bessel_j1(1.0) - 0.440_050_585_744_933_5).abs() < 1e-13);
        assert!((bessel_j1(10.0) - 0.043_472_746_168_861_44).abs() < 1e-13);
        assert!(bessel_j1(3.831_705_970_207_512_5).abs() < 1e-13);
    }

    /// The per-pixel form `filter2d` replaced: same tap order, so the same bits.
    fn filter2d_direct(img: &FloatImage, kernel: &Kernel) -> FloatImage {
        let size = kernel.size;
        let rows = reflected_taps(img.height, size);
        let cols = reflected_taps(img.width, size);
        let mut out = FloatImage::zeros(img.width, img.height);
        for y in 0..img.height {
            for x in 0..img.width {
                let mut acc = [0.0f64; 3];
                for (row, col) in grid(size) {
                    let w = kernel.weights[row * size + col];
                    let (sy, sx) = (rows[y * size + row], cols[x * size + col]);
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += w * img.get(sx, sy, c) as f64;
                    }
                }
                for (c, a) in acc.into_iter().enumerate() {
                    out.set(x, y, c, a as f32);
                }
            }
        }
        out
    }

    fn noise_image(width: usize, height: usize, seed: u64) -> FloatImage {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let pixels = (0..width * height * 3)
            .map(|_| rng.next_f64() as f32)
            .collect();
        FloatImage::from_pixels(width, height, pixels).unwrap()
    }

    #[test]
    fn filter2d_gives_the_bits_of_the_direct_form() {
        let shape = KernelShape {
            sigma_x: 2.5,
            sigma_y: 0.7,
            theta: 0.6,
            isotropic: false,
        };
        // Images smaller than the kernel reflect more than once.
        for (w, h, size) in [(37, 23, 21), (5, 9, 21), (16, 16, 7), (1, 3, 3)] {
            let img = noise_image(w, h, size as u64);
            for kernel in [
                Kernel::gaussian(size, shape),
                Kernel::circular_lowpass(size, 1.3),
            ] {
                assert_eq!(filter2d(&img, &kernel), filter2d_direct(&img, &kernel));
            }
        }
    }

    #[test]
    fn reflect_skips_the_edge() {
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }
}
