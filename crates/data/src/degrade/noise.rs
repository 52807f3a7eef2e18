//! Gaussian and Poisson noise, colour or grey, as BasicSR's `random_add_gaussian_noise_pt` and
//! `random_add_poisson_noise_pt` add them (with `clip=True, rounds=False`). The arithmetic is
//! single precision like the torch code; the random draws come from our own generator, or from
//! the caller (the parity tests replay torch's draws).

use super::float_image::FloatImage;
use crate::rng::SplitMix64;

/// One noise stage's settings (Real-ESRGAN's `gaussian_noise_prob`, `noise_range`,
/// `poisson_scale_range`, `gray_noise_prob`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseParams {
    /// Probability of Gaussian noise; Poisson noise otherwise.
    pub gaussian_prob: f64,
    /// Range of the Gaussian standard deviation, in 8-bit units (divided by 255).
    pub sigma: (f64, f64),
    /// Range of the factor on the Poisson noise.
    pub poisson_scale: (f64, f64),
    /// Probability that one noise field is shared by the three channels.
    pub gray_prob: f64,
}

impl NoiseParams {
    /// `train_realesrgan_x4plus.yml`, first degradation.
    pub fn x4plus_first() -> Self {
        NoiseParams {
            gaussian_prob: 0.5,
            sigma: (1.0, 30.0),
            poisson_scale: (0.05, 3.0),
            gray_prob: 0.4,
        }
    }

    /// `train_realesrgan_x4plus.yml`, second degradation.
    pub fn x4plus_second() -> Self {
        NoiseParams {
            sigma: (1.0, 25.0),
            poisson_scale: (0.05, 2.5),
            ..Self::x4plus_first()
        }
    }

    /// Draws the kind of noise and its strength (Real-ESRGAN's order: kind, strength, grey).
    pub fn draw(&self, rng: &mut SplitMix64) -> Noise {
        if rng.chance(self.gaussian_prob) {
            let sigma = rng.uniform(self.sigma.0, self.sigma.1) as f32;
            Noise::Gaussian {
                sigma,
                gray: rng.chance(self.gray_prob),
            }
        } else {
            let scale = rng.uniform(self.poisson_scale.0, self.poisson_scale.1) as f32;
            Noise::Poisson {
                scale,
                gray: rng.chance(self.gray_prob),
            }
        }
    }
}

/// A drawn noise: its kind, strength, and whether it is grey (one field for all channels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Noise {
    /// Standard deviation `sigma / 255`.
    Gaussian { sigma: f32, gray: bool },
    /// Shot noise at 2^ceil(log2(distinct 8-bit levels)) photons per unit, times `scale`.
    Poisson { scale: f32, gray: bool },
}

impl Noise {
    /// Adds the noise with draws from `rng`, then clips to [0, 1].
    pub fn apply(&self, img: &FloatImage, rng: &mut SplitMix64) -> FloatImage {
        match *self {
            Noise::Gaussian { sigma, gray } => {
                let count = if gray {
                    img.width * img.height
                } else {
                    img.pixels.len()
                };
                let normals: Vec<f32> = (0..count).map(|_| standard_normal(rng) as f32).collect();
                add_gaussian_noise(img, sigma, gray, &normals)
            }
            Noise::Poisson { scale, gray } => {
                add_poisson_noise(img, scale, gray, |rate| poisson(rate, rng))
            }
        }
    }
}

/// BasicSR `add_gaussian_noise_pt`: `clip(img + normal * sigma / 255, 0, 1)`. `normals` holds
/// one standard normal per value (`height x width x 3`), or per pixel when `gray`.
pub fn add_gaussian_noise(img: &FloatImage, sigma: f32, gray: bool, normals: &[f32]) -> FloatImage {
    let per_pixel = if gray { 3 } else { 1 };
    assert_eq!(
        normals.len() * per_pixel,
        img.pixels.len(),
        "one normal per value (per pixel if gray)"
    );
    let pixels = img
        .pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| (v + normals[i / per_pixel] * sigma / 255.0).clamp(0.0, 1.0))
        .collect();
    FloatImage::from_pixels(img.width, img.height, pixels).expect("same size")
}

/// BasicSR `add_poisson_noise_pt`: the image rounded to 8 bits (`q`), `vals` = 2^ceil(log2(number
/// of distinct levels in q)), noise = `(Poisson(q vals) / vals - q) * scale`, added to the unrounded
/// image and clipped. Grey noise does this on the luma (torchvision's weights) and adds it to every
/// channel. `sample(rate)` draws one Poisson count; it is called in `height x width (x 3)` order.
pub fn add_poisson_noise(
    img: &FloatImage,
    scale: f32,
    gray: bool,
    mut sample: impl FnMut(f64) -> f64,
) -> FloatImage {
    let source: Vec<f32> = if gray {
        img.pixels
            .chunks(3)
            .map(|p| 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2])
            .collect()
    } else {
        img.pixels.clone()
    };
    let levels: Vec<f32> = source
        .iter()
        .map(|&v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) / 255.0)
        .collect();
    let vals = photon_levels(&levels);
    let noise: Vec<f32> = levels
        .iter()
        .map(|&q| (sample((q * vals) as f64) as f32 / vals - q) * scale)
        .collect();
    let per_pixel = if gray { 3 } else { 1 };
    let pixels = img
        .pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| (v + noise[i / per_pixel]).clamp(0.0, 1.0))
        .collect();
    FloatImage::from_pixels(img.width, img.height, pixels).expect("same size")
}

/// 2^ceil(log2(number of distinct values)) of an image already rounded to 8-bit levels.
fn photon_levels(levels: &[f32]) -> f32 {
    let mut seen = [false; 256];
    for &q in levels {
        seen[(q * 255.0).round() as usize] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count().max(1);
    distinct.next_power_of_two() as f32
}

/// A standard normal draw (Box-Muller; one of the pair is discarded to keep the state simple).
pub fn standard_normal(rng: &mut SplitMix64) -> f64 {
    let u = 1.0 - rng.next_f64(); // in (0, 1]: ln stays finite
    let v = rng.next_f64();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// A Poisson draw: multiplication (Knuth) for small rates, Hormann's PTRS rejection above.
pub fn poisson(rate: f64, rng: &mut SplitMix64) -> f64 {
    if rate <= 0.0 {
        return 0.0;
    }
    if rate < 10.0 {
        let limit = (-rate).exp();
        let (mut k, mut product) = (0.0, rng.next_f64());
        while product > limit {
            k += 1.0;
            product *= rng.next_f64();
        }
        return k;
    }
    poisson_ptrs(rate, rng)
}

/// W. Hormann, "The transformed rejection method for generating Poisson random variables" (1993).
fn poisson_ptrs(rate: f64, rng: &mut SplitMix64) -> f64 {
    let slam = rate.sqrt();
    let loglam = rate.ln();
    let b = 0.931 + 2.53 * slam;
    let a = -0.059 + 0.02483 * b;
    let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    loop {
        let u = rng.next_f64() - 0.5;
        let v = rng.next_f64();
        let us = 0.5 - u.abs();
        let k = ((2.0 * a / us + b) * u + rate + 0.43).floor();
        if us >= 0.07 && v <= vr {
            return k;
        }
        if k < 0.0 || (us < 0.013 && v > us) {
            continue;
        }
        let log_accept = (v * inv_alpha / (a / (us * us) + b)).ln();
        if log_accept <= -rate + k * loglam - libm::lgamma(k + 1.0) {
            return k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_and_variance(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        (mean, xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n)
    }

    #[test]
    fn poisson_draws_have_mean_and_variance_rate() {
        let mut rng = SplitMix64::new(5);
        for rate in [0.5, 3.0, 9.9, 10.0, 37.5, 256.0] {
            let draws: Vec<f64> = (0..40_000).map(|_| poisson(rate, &mut rng)).collect();
            let (mean, var) = mean_and_variance(&draws);
            assert!(
                (mean - rate).abs() < 0.03 * rate.max(1.0),
                "rate {rate}: mean {mean}"
            );
            assert!(
                (var - rate).abs() < 0.06 * rate.max(1.0),
                "rate {rate}: variance {var}"
            );
            assert!(draws.iter().all(|&k| k >= 0.0 && k.fract() == 0.0));
        }
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut rng = SplitMix64::new(6);
        let draws: Vec<f64> = (0..40_000).map(|_| standard_normal(&mut rng)).collect();
        let (mean, var) = mean_and_variance(&draws);
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
    }

    #[test]
    fn photon_levels_round_up_to_a_power_of_two() {
        let levels: Vec<f32> = (0..5).map(|i| i as f32 / 255.0).collect();
        assert_eq!(photon_levels(&levels), 8.0);
        assert_eq!(photon_levels(&[0.0; 3]), 1.0);
    }

    #[test]
    fn x4plus_draws_follow_their_probabilities() {
        let (params, mut rng, n) = (NoiseParams::x4plus_first(), SplitMix64::new(8), 20_000);
        let draws: Vec<Noise> = (0..n).map(|_| params.draw(&mut rng)).collect();
        let share =
            |f: &dyn Fn(&Noise) -> bool| draws.iter().filter(|d| f(d)).count() as f64 / n as f64;
        assert!((share(&|d| matches!(d, Noise::Gaussian { .. })) - 0.5).abs() < 0.015);
        let gray = share(&|d| {
            matches!(
                d,
                Noise::Gaussian { gray: true, .. } | Noise::Poisson { gray: true, .. }
            )
        });
        assert!((gray - 0.4).abs() < 0.015, "{gray}");
        assert!(draws.iter().all(|d| match *d {
            Noise::Gaussian { sigma, .. } => (1.0..30.0).contains(&sigma),
            Noise::Poisson { scale, .. } => (0.05..3.0).contains(&scale),
        }));
    }

    #[test]
    fn applied_noise_has_the_drawn_strength() {
        let mut rng = SplitMix64::new(9);
        let img = FloatImage::from_pixels(64, 64, vec![0.5; 64 * 64 * 3]).unwrap();
        let spread = |out: &FloatImage| {
            let diffs: Vec<f64> = out.pixels.iter().map(|&v| v as f64 - 0.5).collect();
            mean_and_variance(&diffs).1.sqrt()
        };
        let gaussian = Noise::Gaussian {
            sigma: 20.0,
            gray: false,
        }
        .apply(&img, &mut rng);
        assert!((spread(&gaussian) - 20.0 / 255.0).abs() < 0.003);
        // One level (0.5 -> 128/255): vals 1, so noise = (Poisson(q) - q) * scale, std sqrt(q) scale.
        let poisson = Noise::Poisson {
            scale: 0.1,
            gray: true,
        }
        .apply(&img, &mut rng);
        let q = 128.0f64 / 255.0;
        assert!(
            (spread(&poisson) - q.sqrt() * 0.1).abs() < 0.004,
            "{}",
            spread(&poisson)
        );
        assert!(
            poisson
                .pixels
                .chunks(3)
                .all(|p| p[0] == p[1] && p[1] == p[2]),
            "grey noise is shared"
        );
    }
}
