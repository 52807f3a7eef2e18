//! Random blur kernels as Real-ESRGAN's dataset draws them (`RealESRGANDataset.__getitem__` with
//! BasicSR `random_mixed_kernels`): an odd size, then a sinc with probability `sinc_prob`, else one
//! of six Gaussian-like families. Draws use our own generator; what a draw maps to is BasicSR's.

use std::f64::consts::PI;

use super::kernels::{Kernel, KernelShape};
use crate::DataError;
use crate::rng::SplitMix64;

/// BasicSR's kernel families (`kernel_list`), in the order of [`BlurParams::kernel_prob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFamily {
    Iso,
    Aniso,
    GeneralizedIso,
    GeneralizedAniso,
    PlateauIso,
    PlateauAniso,
}

impl KernelFamily {
    pub const ALL: [KernelFamily; 6] = [
        KernelFamily::Iso,
        KernelFamily::Aniso,
        KernelFamily::GeneralizedIso,
        KernelFamily::GeneralizedAniso,
        KernelFamily::PlateauIso,
        KernelFamily::PlateauAniso,
    ];

    fn isotropic(self) -> bool {
        matches!(
            self,
            KernelFamily::Iso | KernelFamily::GeneralizedIso | KernelFamily::PlateauIso
        )
    }
}

/// The settings of one blur stage (Real-ESRGAN's `kernel_list`/`kernel_prob`, `blur_sigma`,
/// `betag_range`, `betap_range`, `sinc_prob`, and the hard-coded odd sizes 7..21).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlurParams {
    /// Probability of each family, in [`KernelFamily::ALL`] order (need not sum to 1).
    pub kernel_prob: [f64; 6],
    /// Probability of a sinc (circular low-pass) kernel instead of a family kernel.
    pub sinc_prob: f64,
    /// Range of `sigma_x` and `sigma_y`.
    pub sigma: (f64, f64),
    /// Generalized Gaussian shape range; `lo < 1 < hi` (half the draws below 1, half above).
    pub beta_gaussian: (f64, f64),
    /// Plateau shape range, drawn like `beta_gaussian` (`lo == 1` makes half the draws exactly 1).
    pub beta_plateau: (f64, f64),
    /// Smallest and largest kernel size, both odd; every odd size between is equally likely.
    pub sizes: (usize, usize),
}

/// Real-ESRGAN's family probabilities (x4plus, both stages).
const X4PLUS_KERNEL_PROB: [f64; 6] = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03];

impl BlurParams {
    /// `train_realesrgan_x4plus.yml`, first degradation.
    pub fn x4plus_first() -> Self {
        BlurParams {
            kernel_prob: X4PLUS_KERNEL_PROB,
            sinc_prob: 0.1,
            sigma: (0.2, 3.0),
            beta_gaussian: (0.5, 4.0),
            beta_plateau: (1.0, 2.0),
            sizes: (7, 21),
        }
    }

    /// `train_realesrgan_x4plus.yml`, second degradation.
    pub fn x4plus_second() -> Self {
        BlurParams {
            sigma: (0.2, 1.5),
            ..Self::x4plus_first()
        }
    }

    /// Checks the ranges a draw relies on.
    pub fn validate(&self) -> Result<(), DataError> {
        let (lo, hi) = self.sizes;
        if lo % 2 == 0 || hi % 2 == 0 || lo > hi {
            return Err(invalid(format!(
                "kernel sizes {lo}..{hi}: need odd lo <= odd hi"
            )));
        }
        if self.kernel_prob.iter().any(|p| p.is_nan() || *p < 0.0)
            || self.kernel_prob.iter().sum::<f64>() <= 0.0
        {
            return Err(invalid(format!(
                "kernel_prob {:?}: need non-negative, not all zero",
                self.kernel_prob
            )));
        }
        let (s0, s1) = self.sigma;
        if !(0.0 < s0 && s0 <= s1) {
            return Err(invalid(format!(
                "sigma range ({s0}, {s1}): need 0 < lo <= hi"
            )));
        }
        for (name, (b0, b1)) in [
            ("beta_gaussian", self.beta_gaussian),
            ("beta_plateau", self.beta_plateau),
        ] {
            if !(0.0 < b0 && b0 <= 1.0 && 1.0 <= b1) {
                return Err(invalid(format!(
                    "{name} ({b0}, {b1}): need 0 < lo <= 1 <= hi"
                )));
            }
        }
        Ok(())
    }

    /// Draws one kernel description, in the order Real-ESRGAN draws: size, sinc or not, then
    /// the family's parameters.
    pub fn draw(&self, rng: &mut SplitMix64) -> KernelDraw {
        let size = draw_size(self.sizes, rng);
        if rng.chance(self.sinc_prob) {
            // Real-ESRGAN's cutoff range for kernels of 7..21: wider for the large ones.
            let lo = if size < 13 { PI / 3.0 } else { PI / 5.0 };
            return KernelDraw::Sinc {
                size,
                omega: rng.uniform(lo, PI),
            };
        }
        let family = KernelFamily::ALL[weighted_index(&self.kernel_prob, rng)];
        let sigma_x = rng.uniform(self.sigma.0, self.sigma.1);
        let (sigma_y, theta) = if family.isotropic() {
            (sigma_x, 0.0)
        } else {
            (
                rng.uniform(self.sigma.0, self.sigma.1),
                rng.uniform(-PI, PI),
            )
        };
        let beta = match family {
            KernelFamily::Iso | KernelFamily::Aniso => 1.0,
            KernelFamily::GeneralizedIso | KernelFamily::GeneralizedAniso => {
                draw_beta(self.beta_gaussian, rng)
            }
            KernelFamily::PlateauIso | KernelFamily::PlateauAniso => {
                draw_beta(self.beta_plateau, rng)
            }
        };
        let shape = KernelShape {
            sigma_x,
            sigma_y,
            theta,
            isotropic: family.isotropic(),
        };
        KernelDraw::Family {
            family,
            size,
            shape,
            beta,
        }
    }
}

/// Real-ESRGAN's final sinc filter: with probability `prob` a sinc of odd size in `sizes` and
/// cutoff in `omega`, else none (Real-ESRGAN's "pulse" kernel, an identity).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalSincParams {
    pub prob: f64,
    pub omega: (f64, f64),
    pub sizes: (usize, usize),
}

impl FinalSincParams {
    /// `train_realesrgan_x4plus.yml`: `final_sinc_prob` 0.8, cutoff in [pi/3, pi].
    pub fn x4plus() -> Self {
        FinalSincParams {
            prob: 0.8,
            omega: (PI / 3.0, PI),
            sizes: (7, 21),
        }
    }

    /// `None` stands for the identity.
    pub fn draw(&self, rng: &mut SplitMix64) -> Option<KernelDraw> {
        rng.chance(self.prob).then(|| {
            let size = draw_size(self.sizes, rng);
            KernelDraw::Sinc {
                size,
                omega: rng.uniform(self.omega.0, self.omega.1),
            }
        })
    }
}

/// A drawn kernel's parameters: what is logged, and what [`KernelDraw::kernel`] turns into weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelDraw {
    /// BasicSR `circular_lowpass_kernel(omega, size)`.
    Sinc { size: usize, omega: f64 },
    /// BasicSR `bivariate_Gaussian` / `_generalized_Gaussian` / `_plateau` (`beta` 1 for Gaussians).
    Family {
        family: KernelFamily,
        size: usize,
        shape: KernelShape,
        beta: f64,
    },
}

impl KernelDraw {
    /// The kernel at its drawn size (Real-ESRGAN zero-pads it to 21, which filters identically).
    pub fn kernel(&self) -> Kernel {
        match *self {
            KernelDraw::Sinc { size, omega } => Kernel::circular_lowpass(size, omega),
            KernelDraw::Family {
                family,
                size,
                shape,
                beta,
            } => match family {
                KernelFamily::Iso | KernelFamily::Aniso => Kernel::gaussian(size, shape),
                KernelFamily::GeneralizedIso | KernelFamily::GeneralizedAniso => {
                    Kernel::generalized_gaussian(size, shape, beta)
                }
                KernelFamily::PlateauIso | KernelFamily::PlateauAniso => {
                    Kernel::plateau(size, shape, beta)
                }
            },
        }
    }
}

fn invalid(message: String) -> DataError {
    DataError::Spec {
        spec: "realesrgan blur".into(),
        message,
    }
}

/// A uniformly chosen odd size in `lo..=hi` (Real-ESRGAN: `random.choice([7, 9, ..., 21])`).
fn draw_size((lo, hi): (usize, usize), rng: &mut SplitMix64) -> usize {
    lo + 2 * rng.below(((hi - lo) / 2 + 1) as u64) as usize
}

/// BasicSR's beta: a fair coin between U[lo, 1] and U[1, hi].
fn draw_beta((lo, hi): (f64, f64), rng: &mut SplitMix64) -> f64 {
    if rng.chance(0.5) {
        rng.uniform(lo, 1.0)
    } else {
        rng.uniform(1.0, hi)
    }
}

/// Index drawn with probability proportional to its weight (Python `random.choices`).
pub(crate) fn weighted_index(weights: &[f64], rng: &mut SplitMix64) -> usize {
    let target = rng.next_f64() * weights.iter().sum::<f64>();
    let mut cumulative = 0.0;
    for (i, w) in weights.iter().enumerate() {
        cumulative += w;
        if target < cumulative {
            return i;
        }
    }
    // Rounding can leave `target` at the total: the last non-zero weight takes it.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x4plus_params_are_valid() {
        BlurParams::x4plus_first().validate().unwrap();
        BlurParams::x4plus_second().validate().unwrap();
    }

    #[test]
    fn even_sizes_are_rejected() {
        let params = BlurParams {
            sizes: (6, 21),
            ..BlurParams::x4plus_first()
        };
        assert!(params.validate().unwrap_err().to_string().contains("odd"));
    }

    #[test]
    fn weighted_index_skips_zero_weights() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..1000 {
            assert_ne!(weighted_index(&[0.5, 0.0, 0.5], &mut rng), 1);
        }
    }
}
