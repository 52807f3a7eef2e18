//! Scaling laws of the sampling frontier: how a width's best FID falls with sampling compute,
//! how that curve moves with model size, and how well the fit predicts a width it never saw.
//!
//! With `n` the parameters in millions and `e` the denoiser evaluations per image:
//!
//! ```text
//! FID(n, e) = E + A n^-alpha + B n^-gamma e^-beta
//! ```
//!
//! `E + A n^-alpha` is what a width reaches with unlimited sampling; `B n^-gamma e^-beta` what
//! sampling with few evaluations costs it, a power of `e` whose size may shrink or grow with
//! the width (the paper's Sec. 3.3 says small models lose less at low budgets: `gamma < 0`).
//!
//! The fit minimises relative squared errors, so the one-step points, whose FIDs are many times
//! the rest, do not decide it alone. For fixed exponents the rest is linear (weighted least
//! squares by faer's pivoted QR); the exponents are searched by Nelder-Mead (argmin) from the
//! best point of a coarse grid.

mod analysis;
mod points;
mod validate;

pub use analysis::{ScalingAnalysis, WidthPrediction, html, markdown};
pub use points::{WidthCosts, frontier};
pub use validate::{HeldOutWidth, leave_one_width_out};

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::neldermead::NelderMead;
use faer::Mat;
use faer::linalg::solvers::SolveLstsq;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::bootstrap::percentile;

/// One point of a width's sampling frontier: its best FID at `evaluations` per image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrontierPoint {
    /// Base width.
    pub width: u32,
    /// Parameters.
    pub params: u64,
    /// Denoiser evaluations per image (steps, doubled by guidance).
    pub evaluations: f64,
    /// GFLOPs of one evaluation.
    pub gflops_per_eval: f64,
    /// Best FID (over samplers, steps and guidance) at this many evaluations.
    pub fid: f64,
}

impl FrontierPoint {
    /// Sampling GFLOPs per image.
    pub fn cost_gflops(&self) -> f64 {
        self.evaluations * self.gflops_per_eval
    }
}

/// The fitted law's constants (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Law {
    /// `E`: the FID no width or budget goes below.
    pub floor: f64,
    /// `A`.
    pub size_coef: f64,
    /// `alpha`.
    pub size_exp: f64,
    /// `B`.
    pub sampling_coef: f64,
    /// `gamma`.
    pub sampling_size_exp: f64,
    /// `beta`.
    pub sampling_exp: f64,
}

/// Parameters in millions, the law's `n`.
fn millions(params: u64) -> f64 {
    params as f64 / 1e6
}

impl Law {
    /// Predicted FID of a model with `params` parameters at `evaluations` per image.
    pub fn fid(&self, params: u64, evaluations: f64) -> f64 {
        let n = millions(params);
        self.floor
            + self.size_coef * n.powf(-self.size_exp)
            + self.sampling_coef
                * n.powf(-self.sampling_size_exp)
                * evaluations.powf(-self.sampling_exp)
    }

    /// The law as a formula with its constants, naming the exponents the fit left at a bound.
    pub fn formula(&self) -> String {
        let mut text = format!(
            "FID = {:.3} + {:.3} n^-{:.3} + {:.3} n^{:+.3} e^-{:.3}  (n: parameters in millions, e: denoiser evaluations per image)",
            self.floor,
            self.size_coef,
            self.size_exp,
            self.sampling_coef,
            -self.sampling_size_exp,
            self.sampling_exp
        );
        let exponents = [self.size_exp, self.sampling_size_exp, self.sampling_exp];
        let at_bound: Vec<&str> = ["alpha", "gamma", "beta"]
            .into_iter()
            .zip(exponents.iter().zip(BOUNDS))
            .filter(|(_, (x, (lo, hi)))| (**x - lo).abs() < 1e-9 || (**x - hi).abs() < 1e-9)
            .map(|(name, _)| name)
            .collect();
        if !at_bound.is_empty() {
            text.push_str(&format!(
                "; {} at the bound of its range: the measured widths do not pin it down",
                at_bound.join(", ")
            ));
        }
        text
    }
}

/// A law fitted to frontier points.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fit {
    /// The constants.
    pub law: Law,
    /// Root mean square of the relative errors `(fitted - measured) / measured`.
    pub rms_relative_error: f64,
    /// The relative errors, by point.
    #[serde(skip)]
    pub relative_errors: Vec<f64>,
    /// Points fitted.
    pub points: usize,
    /// Widths fitted.
    pub widths: Vec<u32>,
}

/// Where the exponents may go: alpha, gamma, beta (an exponent past these says the data cannot
/// pin it down, not that the law is steeper).
const BOUNDS: [(f64, f64); 3] = [(0.1, 4.0), (-3.0, 3.0), (0.05, 4.0)];

/// Fewest widths a fit accepts: two widths cannot separate `E`, `A` and `alpha`.
pub const MIN_WIDTHS: usize = 3;

/// Fits the law to `points` (at least [`MIN_WIDTHS`] widths and 7 points, FIDs positive).
pub fn fit(points: &[FrontierPoint]) -> Result<Fit, String> {
    let mut widths: Vec<u32> = points.iter().map(|p| p.width).collect();
    widths.sort();
    widths.dedup();
    if widths.len() < MIN_WIDTHS || points.len() < 7 {
        return Err(format!(
            "a scaling-law fit needs at least {MIN_WIDTHS} widths and 7 frontier points; got {} widths and {} points",
            widths.len(),
            points.len()
        ));
    }
    if let Some(p) = points.iter().find(|p| !(p.fid > 0.0 && p.fid.is_finite())) {
        return Err(format!(
            "width {} at {} evaluations: FID {} is not a positive number",
            p.width, p.evaluations, p.fid
        ));
    }
    let start = grid_start(points);
    let exponents = refine(points, start).unwrap_or(start);
    let (law, relative_errors) = linear_part(points, exponents)
        .ok_or("the scaling-law fit is singular at every exponent")?;
    let rms = (relative_errors.iter().map(|r| r * r).sum::<f64>() / points.len() as f64).sqrt();
    Ok(Fit {
        law,
        rms_relative_error: rms,
        relative_errors,
        points: points.len(),
        widths,
    })
}

/// The exponents clamped into [`BOUNDS`].
fn clamped(x: &[f64]) -> [f64; 3] {
    std::array::from_fn(|i| x[i].clamp(BOUNDS[i].0, BOUNDS[i].1))
}

/// `E, A, B` by weighted least squares for fixed exponents, with the relative errors.
fn linear_part(
    points: &[FrontierPoint],
    [alpha, gamma, beta]: [f64; 3],
) -> Option<(Law, Vec<f64>)> {
    let basis = |p: &FrontierPoint| {
        let n = millions(p.params);
        [
            1.0,
            n.powf(-alpha),
            n.powf(-gamma) * p.evaluations.powf(-beta),
        ]
    };
    let design = Mat::from_fn(points.len(), 3, |i, j| basis(&points[i])[j] / points[i].fid);
    let ones = Mat::from_fn(points.len(), 1, |_, _| 1.0);
    let x = design.col_piv_qr().solve_lstsq(&ones);
    let law = Law {
        floor: x[(0, 0)],
        size_coef: x[(1, 0)],
        size_exp: alpha,
        sampling_coef: x[(2, 0)],
        sampling_size_exp: gamma,
        sampling_exp: beta,
    };
    let errors: Vec<f64> = points
        .iter()
        .map(|p| (law.fid(p.params, p.evaluations) - p.fid) / p.fid)
        .collect();
    errors
        .iter()
        .all(|e| e.is_finite())
        .then_some((law, errors))
}

/// Sum of squared relative errors at `exponents` (infinite where the fit is singular).
fn loss(points: &[FrontierPoint], exponents: [f64; 3]) -> f64 {
    linear_part(points, exponents).map_or(f64::INFINITY, |(_, e)| e.iter().map(|r| r * r).sum())
}

/// The best exponents of a coarse grid: Nelder-Mead's start, away from poor local minima.
fn grid_start(points: &[FrontierPoint]) -> [f64; 3] {
    let mut best = ([0.5, 0.0, 1.0], f64::INFINITY);
    for alpha in [0.25, 0.5, 1.0, 2.0] {
        for gamma in [-1.0, -0.5, 0.0, 0.5, 1.0] {
            for beta in [0.25, 0.5, 1.0, 2.0] {
                let l = loss(points, [alpha, gamma, beta]);
                if l < best.1 {
                    best = ([alpha, gamma, beta], l);
                }
            }
        }
    }
    best.0
}

/// The loss as argmin sees it: exponents clamped into their bounds.
struct ExponentLoss<'a>(&'a [FrontierPoint]);

impl CostFunction for ExponentLoss<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, x: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(loss(self.0, clamped(x)))
    }
}

/// Nelder-Mead from `start`; `None` when the solver fails.
fn refine(points: &[FrontierPoint], start: [f64; 3]) -> Option<[f64; 3]> {
    let mut simplex = vec![start.to_vec()];
    for i in 0..3 {
        let mut vertex = start.to_vec();
        vertex[i] += 0.2;
        simplex.push(vertex);
    }
    let solver = NelderMead::new(simplex).with_sd_tolerance(1e-12).ok()?;
    let result = Executor::new(ExponentLoss(points), solver)
        .configure(|s| s.max_iters(400))
        .run()
        .ok()?;
    let best = result.state().get_best_param()?;
    Some(clamped(best))
}

/// A predicted FID with its 95% prediction interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// The fitted law's value.
    pub fid: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

/// A fit with bootstrap refits, for prediction intervals.
#[derive(Clone, Debug)]
pub struct ScalingLaw {
    /// The fit to the measured points.
    pub fit: Fit,
    refits: Vec<Law>,
    seed: u64,
}

impl ScalingLaw {
    /// Fits `points` and `replicates` residual-bootstrap refits (each point's FID redrawn as its
    /// fitted value times one plus a resampled relative error).
    pub fn new(points: &[FrontierPoint], replicates: usize, seed: u64) -> Result<Self, String> {
        let fit = fit(points)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut refits = Vec::with_capacity(replicates);
        for _ in 0..replicates {
            let redrawn: Vec<FrontierPoint> = points
                .iter()
                .map(|p| FrontierPoint {
                    fid: fit.law.fid(p.params, p.evaluations)
                        * (1.0 + draw(&fit.relative_errors, &mut rng)),
                    ..p.clone()
                })
                .collect();
            if let Ok(f) = self::fit(&redrawn) {
                refits.push(f.law);
            }
        }
        if refits.len() * 2 < replicates {
            return Err(format!(
                "only {} of {replicates} bootstrap refits of the scaling law succeeded",
                refits.len()
            ));
        }
        Ok(Self { fit, refits, seed })
    }

    /// The FID of a model with `params` parameters at `evaluations` per image, with a 95%
    /// prediction interval (the refits' spread and the points' own scatter about the law).
    pub fn predict(&self, params: u64, evaluations: f64) -> Prediction {
        let fid = self.fit.law.fid(params, evaluations);
        let mut rng = StdRng::seed_from_u64(self.seed ^ evaluations.to_bits() ^ params);
        let draws: Vec<f64> = self
            .refits
            .iter()
            .map(|law| {
                law.fid(params, evaluations) * (1.0 + draw(&self.fit.relative_errors, &mut rng))
            })
            .collect();
        if draws.is_empty() {
            return Prediction {
                fid,
                low: fid,
                high: fid,
            };
        }
        // An FID is never negative, whatever an extrapolated refit says.
        Prediction {
            fid,
            low: percentile(&draws, 2.5).max(0.0),
            high: percentile(&draws, 97.5).max(0.0),
        }
    }
}

/// One of `values`, uniformly.
fn draw(values: &[f64], rng: &mut StdRng) -> f64 {
    values[rng.random_range(0..values.len())]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A known law, sampled at four widths and five evaluation counts, with a relative scatter
    /// of `noise` (seeded).
    pub(crate) fn synthetic(law: &Law, noise: f64, seed: u64) -> Vec<FrontierPoint> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut points = Vec::new();
        for (width, params) in [
            (8u32, 150_000u64),
            (16, 560_000),
            (24, 1_240_000),
            (32, 2_190_000),
        ] {
            for evaluations in [2.0, 4.0, 8.0, 16.0, 32.0] {
                let e: f64 = rng.random_range(-1.0..1.0);
                points.push(FrontierPoint {
                    width,
                    params,
                    evaluations,
                    gflops_per_eval: params as f64 / 1e5,
                    fid: law.fid(params, evaluations) * (1.0 + noise * e),
                });
            }
        }
        points
    }

    pub(crate) const TRUE_LAW: Law = Law {
        floor: 2.0,
        size_coef: 3.0,
        size_exp: 0.7,
        sampling_coef: 40.0,
        sampling_size_exp: -0.3,
        sampling_exp: 1.2,
    };

    #[test]
    fn recovers_a_known_law_from_exact_points() {
        let points = synthetic(&TRUE_LAW, 0.0, 1);
        let f = fit(&points).unwrap();
        assert!(f.rms_relative_error < 1e-6, "{f:?}");
        for p in &points {
            let rel = (f.law.fid(p.params, p.evaluations) - p.fid).abs() / p.fid;
            assert!(rel < 1e-5, "{p:?}: {rel}");
        }
        assert!((f.law.sampling_exp - 1.2).abs() < 1e-3, "{:?}", f.law);
        assert!((f.law.sampling_size_exp + 0.3).abs() < 1e-3, "{:?}", f.law);
        assert!(f.law.formula().contains("n^+0.300"), "{}", f.law.formula());
    }

    #[test]
    fn prediction_intervals_cover_a_new_width_at_about_their_rate() {
        // A width between the fitted ones, drawn with the same scatter as the fitted points.
        let (params, evaluations) = (900_000u64, 6.0);
        let truth = TRUE_LAW.fid(params, evaluations);
        let (trials, mut covered) = (40, 0);
        for t in 0..trials {
            let law = ScalingLaw::new(&synthetic(&TRUE_LAW, 0.05, 100 + t), 100, t).unwrap();
            let mut rng = StdRng::seed_from_u64(7_000 + t);
            let observed = truth * (1.0 + 0.05 * rng.random_range(-1.0..1.0));
            let p = law.predict(params, evaluations);
            assert!(p.low <= p.fid && p.fid <= p.high, "{p:?}");
            covered += (p.low <= observed && observed <= p.high) as usize;
        }
        // Nominal 95%: Binomial(40, 0.95) falls below 33 with probability < 0.1%.
        assert!(covered >= 33, "covered {covered}/{trials}");
    }

    #[test]
    fn too_few_widths_or_bad_fids_are_refused() {
        let points = synthetic(&TRUE_LAW, 0.0, 1);
        let two: Vec<FrontierPoint> = points.iter().filter(|p| p.width <= 16).cloned().collect();
        assert!(fit(&two).unwrap_err().contains("at least 3 widths"));
        let mut bad = points.clone();
        bad[3].fid = f64::NAN;
        assert!(fit(&bad).unwrap_err().contains("not a positive number"));
    }
}
