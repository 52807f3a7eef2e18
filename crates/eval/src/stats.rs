//! Feature statistics and the distances built on them, in f64: mean and covariance as
//! `np.mean(x, 0)` / `np.cov(x, rowvar=False)`, the Fréchet distance of pytorch-fid and
//! clean-fid, and the kernel inception distance (KID) of clean-fid / torch-fidelity.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, Side};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::EvalError;

/// A Gaussian fitted to features: mean and (unbiased) covariance.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    /// Mean, length `dim`.
    pub mu: Vec<f64>,
    /// Covariance, `dim x dim`, row-major.
    pub sigma: Vec<f64>,
}

impl GaussianStats {
    /// Feature width.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Checks that `sigma` is `dim x dim` and every value finite; `what` names the source.
    pub fn validate(&self, what: &str) -> Result<(), EvalError> {
        let d = self.dim();
        if d == 0 {
            return Err(EvalError::stats(what, "mu is empty"));
        }
        if self.sigma.len() != d * d {
            return Err(EvalError::stats(
                what,
                format!(
                    "sigma has {} values; a {d}-long mu needs a {d}x{d} sigma",
                    self.sigma.len()
                ),
            ));
        }
        if !self.mu.iter().chain(&self.sigma).all(|v| v.is_finite()) {
            return Err(EvalError::stats(what, "mu or sigma holds NaN or infinity"));
        }
        Ok(())
    }

    /// Statistics of `features`, `rows x dim` row-major.
    pub fn from_features(features: &[f32], dim: usize) -> Result<Self, EvalError> {
        let mut acc = StatsAccumulator::new(dim);
        acc.add(features)?;
        acc.finish()
    }
}

/// Running mean and co-moment (sum of outer products of deviations from the mean) over
/// batches of feature rows, in f64, so a large image set never has to be held in memory. Each
/// batch is centred on its own mean and merged by Chan et al.'s pairwise update, so the result
/// matches a two-pass computation however unrepresentative the first batch is.
#[derive(Debug, Clone)]
pub struct StatsAccumulator {
    dim: usize,
    count: usize,
    mean: Vec<f64>,
    comoment: Mat<f64>,
}

impl StatsAccumulator {
    /// An empty accumulator for `dim`-wide features.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            count: 0,
            mean: vec![0.0; dim],
            comoment: Mat::zeros(dim, dim),
        }
    }

    /// Rows seen so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds `rows x dim` features (row-major).
    pub fn add(&mut self, features: &[f32]) -> Result<(), EvalError> {
        let d = self.dim;
        if d == 0 || !features.len().is_multiple_of(d) {
            return Err(EvalError::Input(format!(
                "{} feature values are not whole rows of {d}",
                features.len()
            )));
        }
        let rows = features.len() / d;
        if rows == 0 {
            return Ok(());
        }
        if let Some(bad) = features.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::Input(format!(
                "feature row {} holds a non-finite value",
                self.count + bad / d
            )));
        }
        let batch_mean = column_means(features, d);
        let centred = Mat::from_fn(rows, d, |i, j| features[i * d + j] as f64 - batch_mean[j]);
        self.merge_means(&batch_mean, rows);
        matmul(
            self.comoment.as_mut(),
            Accum::Add,
            centred.transpose(),
            centred.as_ref(),
            1.0,
            Par::rayon(0),
        );
        Ok(())
    }

    /// Chan's update for a batch of `rows` with mean `batch_mean`: the between-means term of
    /// the co-moment, then the merged mean and count.
    fn merge_means(&mut self, batch_mean: &[f64], rows: usize) {
        let (na, nb) = (self.count as f64, rows as f64);
        let n = na + nb;
        let delta: Vec<f64> = batch_mean
            .iter()
            .zip(&self.mean)
            .map(|(b, a)| b - a)
            .collect();
        if self.count > 0 {
            let weight = na * nb / n;
            for i in 0..self.dim {
                for j in 0..self.dim {
                    self.comoment[(i, j)] += weight * delta[i] * delta[j];
                }
            }
        }
        for (m, dm) in self.mean.iter_mut().zip(&delta) {
            *m += dm * nb / n;
        }
        self.count += rows;
    }

    /// Mean and `np.cov`-style covariance (divisor n - 1); needs at least two rows.
    pub fn finish(self) -> Result<GaussianStats, EvalError> {
        let n = self.count;
        if n < 2 {
            return Err(EvalError::Input(format!(
                "a covariance needs at least 2 feature rows, got {n}"
            )));
        }
        let d = self.dim;
        let sigma = (0..d * d)
            .map(|k| self.comoment[(k / d, k % d)] / (n - 1) as f64)
            .collect();
        Ok(GaussianStats {
            mu: self.mean,
            sigma,
        })
    }
}

/// The mean of each column of `rows x d` values, in f64.
fn column_means(features: &[f32], d: usize) -> Vec<f64> {
    let mut mean = vec![0.0; d];
    for row in features.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    let rows = (features.len() / d) as f64;
    mean.iter_mut().for_each(|m| *m /= rows);
    mean
}

fn to_mat(values: &[f64], d: usize) -> Mat<f64> {
    Mat::from_fn(d, d, |i, j| values[i * d + j])
}

fn eigen_failed(e: impl std::fmt::Debug) -> EvalError {
    EvalError::Input(format!(
        "the covariance eigensolver did not converge: {e:?}"
    ))
}

/// tr(sqrt(s1 s2)) for symmetric positive semi-definite s1, s2: with s1 = U L U^T, s1 s2 is
/// similar to L^1/2 (U^T s2 U) L^1/2, a symmetric matrix whose eigenvalues are real and
/// non-negative, so the trace is the sum of their square roots. Eigenvalues that rounding
/// pushes below zero contribute nothing: their square roots are imaginary, and FID keeps the
/// real part.
fn trace_sqrt_product(s1: &Mat<f64>, s2: &Mat<f64>) -> Result<f64, EvalError> {
    let d = s1.nrows();
    let eig = s1.self_adjoint_eigen(Side::Lower).map_err(eigen_failed)?;
    let u = eig.U();
    let root: Vec<f64> = eig
        .S()
        .column_vector()
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    let rotated = u.transpose() * s2 * u;
    let sym = Mat::from_fn(d, d, |i, j| {
        0.5 * (rotated[(i, j)] + rotated[(j, i)]) * root[i] * root[j]
    });
    let mu = sym
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(eigen_failed)?;
    Ok(mu.iter().map(|&v| v.max(0.0).sqrt()).sum())
}

/// The Fréchet distance between two Gaussians, FID when they come from pool3 features:
/// `|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrt(s1 s2))`.
///
/// pytorch-fid and clean-fid take the trace of scipy's `sqrtm(s1 @ s2)` (real part); for the
/// symmetric positive semi-definite covariances of real features that equals the eigenvalue
/// form used here, which is also finite for singular covariances (fewer samples than
/// dimensions), where scipy may fail and those libraries retry with `1e-6` added to both
/// diagonals. [`frechet_distance_with_offset`] gives that variant.
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64, EvalError> {
    frechet_distance_with_offset(a, b, 0.0)
}

/// [`frechet_distance`] with `eps` added to the diagonal of both covariances, as pytorch-fid's
/// fallback for a singular product does (`eps = 1e-6` there).
pub fn frechet_distance_with_offset(
    a: &GaussianStats,
    b: &GaussianStats,
    eps: f64,
) -> Result<f64, EvalError> {
    a.validate("first statistics")?;
    b.validate("second statistics")?;
    let d = a.dim();
    if b.dim() != d {
        return Err(EvalError::Input(format!(
            "the statistics have different widths: {d} and {}",
            b.dim()
        )));
    }
    let mut s1 = to_mat(&a.sigma, d);
    let mut s2 = to_mat(&b.sigma, d);
    for i in 0..d {
        s1[(i, i)] += eps;
        s2[(i, i)] += eps;
    }
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |m: &Mat<f64>| (0..d).map(|i| m[(i, i)]).sum::<f64>();
    let covmean = trace_sqrt_product(&s1, &s2)?;
    Ok(diff + trace(&s1) + trace(&s2) - 2.0 * covmean)
}

/// How KID draws its subsets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KidOptions {
    /// Number of random subset pairs averaged (clean-fid: 100).
    pub subsets: usize,
    /// Largest subset size (clean-fid: 1000); the smaller set's size when that is less.
    pub max_subset_size: usize,
    /// Seed of the subset draws.
    pub seed: u64,
}

impl Default for KidOptions {
    fn default() -> Self {
        Self {
            subsets: 100,
            max_subset_size: 1000,
            seed: 0,
        }
    }
}

/// KID estimate: mean over subsets, and the spread of the per-subset values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    /// Mean of the subset estimates (what clean-fid reports).
    pub mean: f64,
    /// Standard deviation of the subset estimates (what torch-fidelity reports beside it).
    pub std: f64,
}

/// `k(x, y) = (x.y / d + 1)^3` between all rows of `x` and `y` (each `m x d`), summed; the
/// diagonal is skipped when `x` and `y` are the same set.
fn poly_kernel_sum(x: &Mat<f64>, y: &Mat<f64>, same: bool) -> f64 {
    let d = x.ncols() as f64;
    let gram = x * y.transpose();
    let mut total = 0.0;
    for i in 0..gram.nrows() {
        for j in 0..gram.ncols() {
            if same && i == j {
                continue;
            }
            total += (gram[(i, j)] / d + 1.0).powi(3);
        }
    }
    total
}

/// Kernel inception distance between feature sets `a` (`n1 x dim`) and `b` (`n2 x dim`): the
/// unbiased MMD^2 with the cubic polynomial kernel, averaged over random subset pairs of size
/// `min(n1, n2, max_subset_size)` drawn without replacement (clean-fid's `kernel_distance`).
/// With equal sizes up to `max_subset_size` every subset is the whole set, so the value does
/// not depend on the draws.
pub fn kernel_inception_distance(
    a: &[f32],
    b: &[f32],
    dim: usize,
    options: KidOptions,
) -> Result<Kid, EvalError> {
    if dim == 0 || !a.len().is_multiple_of(dim) || !b.len().is_multiple_of(dim) {
        return Err(EvalError::Input(format!(
            "feature sets of {} and {} values are not whole rows of {dim}",
            a.len(),
            b.len()
        )));
    }
    let (n1, n2) = (a.len() / dim, b.len() / dim);
    let m = n1.min(n2).min(options.max_subset_size);
    if m < 2 || options.subsets == 0 {
        return Err(EvalError::Input(format!(
            "KID needs at least 2 rows per set and one subset; got {n1} and {n2} rows, {} subsets",
            options.subsets
        )));
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut draw = |n: usize, rows: &[f32]| -> Mat<f64> {
        // Partial Fisher-Yates: the first m entries are a uniform draw without replacement.
        let mut index: Vec<usize> = (0..n).collect();
        for i in 0..m {
            let j = rng.random_range(i..n);
            index.swap(i, j);
        }
        Mat::from_fn(m, dim, |i, j| rows[index[i] * dim + j] as f64)
    };
    let mut values = Vec::with_capacity(options.subsets);
    for _ in 0..options.subsets {
        let x = draw(n2, b);
        let y = draw(n1, a);
        let within = poly_kernel_sum(&x, &x, true) + poly_kernel_sum(&y, &y, true);
        let across = poly_kernel_sum(&x, &y, false);
        let mf = m as f64;
        values.push((within / (mf - 1.0) - 2.0 * across / mf) / mf);
    }
    let k = values.len() as f64;
    let mean = values.iter().sum::<f64>() / k;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k).sqrt();
    Ok(Kid { mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(rows: &[[f32; 2]]) -> GaussianStats {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        GaussianStats::from_features(&flat, 2).unwrap()
    }

    #[test]
    fn covariance_is_numpy_cov() {
        let s = stats_of(&[[1.0, 2.0], [3.0, 1.0], [5.0, 7.0]]);
        assert_eq!(s.mu, vec![3.0, 10.0 / 3.0]);
        // np.cov([[1,3,5],[2,1,7]]) = [[4, 5], [5, 10.333..]]
        let expected = [4.0, 5.0, 5.0, 31.0 / 3.0];
        for (a, b) in s.sigma.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn batches_accumulate_like_one_pass() {
        let rows: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 11) as f32) * 0.7 + 100.0)
            .collect();
        let whole = GaussianStats::from_features(&rows, 3).unwrap();
        let mut acc = StatsAccumulator::new(3);
        for chunk in rows.chunks(9) {
            acc.add(chunk).unwrap();
        }
        let parts = acc.finish().unwrap();
        for (a, b) in whole.sigma.iter().zip(&parts.sigma) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    /// The bar for streaming statistics: within 1e-9 relative of a two-pass
    /// computation, on features far from zero with a small spread and a first batch of one
    /// outlying row (where sums around the first batch's mean would cancel badly).
    #[test]
    fn streaming_matches_two_pass_within_1e9_relative() {
        let d = 5;
        let mut rng = StdRng::seed_from_u64(7);
        let mut rows: Vec<f32> = (0..d).map(|j| 1.0e4 + 40.0 * j as f32).collect();
        rows.extend((d..997 * d).map(|k| 1.0e4 + (k % d) as f32 + rng.random::<f32>() * 0.1));
        let n = rows.len() / d;
        let x = |i: usize, j: usize| rows[i * d + j] as f64;
        let mu: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x(i, j)).sum::<f64>() / n as f64)
            .collect();
        let cov = |a: usize, b: usize| {
            (0..n)
                .map(|i| (x(i, a) - mu[a]) * (x(i, b) - mu[b]))
                .sum::<f64>()
                / (n - 1) as f64
        };
        let mut acc = StatsAccumulator::new(d);
        let mut start = 0;
        for size in [1, 7, 64, 13].into_iter().cycle() {
            let end = (start + size).min(n);
            acc.add(&rows[start * d..end * d]).unwrap();
            start = end;
            if start == n {
                break;
            }
        }
        assert_eq!(acc.count(), n);
        let s = acc.finish().unwrap();
        let scale = (0..d).map(|j| cov(j, j)).fold(0.0, f64::max);
        for (a, want) in mu.iter().enumerate() {
            assert!((s.mu[a] - want).abs() <= 1e-9 * want.abs(), "mu[{a}]");
            for b in 0..d {
                let (got, want) = (s.sigma[a * d + b], cov(a, b));
                assert!(
                    (got - want).abs() <= 1e-9 * scale,
                    "sigma[{a},{b}]: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn distance_of_a_gaussian_to_itself_is_zero_and_shifts_add_squared() {
        let s = stats_of(&[[1.0, 2.0], [3.0, 1.0], [5.0, 7.0], [0.0, 1.0]]);
        assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-9);
        let mut t = s.clone();
        t.mu[0] += 3.0;
        assert!((frechet_distance(&s, &t).unwrap() - 9.0).abs() < 1e-9);
    }

    #[test]
    fn mismatched_or_broken_stats_are_errors() {
        let s = stats_of(&[[1.0, 2.0], [3.0, 1.0], [5.0, 7.0]]);
        let t = GaussianStats {
            mu: vec![0.0; 3],
            sigma: vec![0.0; 9],
        };
        assert!(
            frechet_distance(&s, &t)
                .unwrap_err()
                .to_string()
                .contains("widths")
        );
        let mut u = s.clone();
        u.sigma.pop();
        assert!(
            frechet_distance(&s, &u)
                .unwrap_err()
                .to_string()
                .contains("sigma")
        );
        assert!(GaussianStats::from_features(&[1.0, 2.0], 2).is_err());
    }
}
