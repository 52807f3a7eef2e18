//! Bootstrap confidence intervals of FID: resample the generated and the reference features
//! with replacement, recompute FID per replicate, take percentiles.
//!
//! A replicate's FID is computed from Gram matrices of the features, so it costs
//! O(min(n, m)^2 max(n, m)) instead of a d x d matrix square root: with `X` (n x d) and `Y`
//! (m x d) the centred resampled features, the non-zero eigenvalues of `S1 S2` are those of
//! `C C^T / ((n-1)(m-1))` with `C = X Y^T`, and every entry of `C`, `|mu1 - mu2|^2`, `tr S1` and
//! `tr S2` follows from the Gram matrices of the full sets by index selection. When the sets
//! are larger than the feature width the d x d form is cheaper, and is used instead.
//!
//! The interval is the percentile interval of the replicates *re-centred on the full-sample
//! FID*: `[fid - (q50 - q2.5), fid + (q97.5 - q50)]`. FID is biased upward at finite sample
//! sizes, and a resample with replacement holds only ~63% distinct rows, so the replicates sit
//! well above the full-sample FID (their plain 2.5..97.5 percentiles usually do not contain it;
//! see the tests). Re-centring keeps the bootstrap's spread and drops that extra bias; the
//! spread itself is conservative (wider than the true sampling spread of FID at n, for the same
//! reason).

mod kid;
mod paired;
mod rows;

pub use kid::{KidResampler, MAX_KID_ROWS};
pub use paired::{PairedDifference, paired_difference};
pub use rows::{FeatureFile, FeatureFileWriter, Rows};

use std::sync::Arc;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, Side};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// How an FID interval was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CiMethod {
    /// Bootstrap over generated and reference features, re-centred percentile interval.
    Bootstrap,
    /// Mean +- 1.96 standard errors over the seeds of the initial noise.
    SeedSpread,
    /// Read from a store written before the method was recorded.
    Unknown,
}

impl CiMethod {
    /// The name stored in the results store.
    pub fn name(self) -> &'static str {
        match self {
            CiMethod::Bootstrap => "bootstrap",
            CiMethod::SeedSpread => "seed-spread",
            CiMethod::Unknown => "unknown",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "bootstrap" => CiMethod::Bootstrap,
            "seed-spread" => CiMethod::SeedSpread,
            "unknown" => CiMethod::Unknown,
            _ => return None,
        })
    }
}

/// A 95% interval of an FID and how it was made.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidCi {
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Method.
    pub method: CiMethod,
    /// Bootstrap replicates (seeds for the seed spread).
    pub replicates: u32,
}

impl FidCi {
    /// Whether two intervals overlap.
    pub fn overlaps(&self, other: &FidCi) -> bool {
        self.low <= other.high && other.low <= self.high
    }

    /// `[low, high]` with two decimals.
    pub fn text(&self) -> String {
        format!("[{:.2}, {:.2}]", self.low, self.high)
    }
}

/// Percentile `q` in [0, 100] of `values`, linear interpolation between order statistics
/// (numpy's default `np.percentile`).
pub fn percentile(values: &[f64], q: f64) -> f64 {
    assert!(!values.is_empty(), "percentile of nothing");
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The 95% percentile interval of `statistic` over `replicates` draws of `n` generated and `m`
/// reference row indices with replacement (generated first, then reference, per draw), from
/// `seed`. Estimators without FID's resampling bias (KID and its differences) need no
/// re-centring.
pub fn two_sample_interval(
    n: usize,
    m: usize,
    replicates: usize,
    seed: u64,
    statistic: impl Fn(&[usize], &[usize]) -> f64,
) -> FidCi {
    let mut rng = StdRng::seed_from_u64(seed);
    let draws: Vec<f64> = (0..replicates)
        .map(|_| {
            let a: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            let b: Vec<usize> = (0..m).map(|_| rng.random_range(0..m)).collect();
            statistic(&a, &b)
        })
        .collect();
    FidCi {
        low: percentile(&draws, 2.5),
        high: percentile(&draws, 97.5),
        method: CiMethod::Bootstrap,
        replicates: replicates as u32,
    }
}

/// Rows a covariance-route replicate gathers and accumulates at a time: its memory stays
/// `COV_CHUNK x d` however many rows a side has (a side of at most this many is one batch, as
/// it was when every row was gathered at once).
const COV_CHUNK: usize = 1024;

/// Generated and reference features prepared for many resampled FIDs.
pub struct FidResampler {
    n: usize,
    m: usize,
    d: usize,
    /// The features as given (in memory or a mapped file), not copied per replicate.
    generated: Rows,
    reference: Rows,
    /// The reference mean, subtracted from both sides (less cancellation in the Gram forms).
    shift: Vec<f64>,
    /// Gram matrices, for the low-rank route.
    grams: Option<(Mat<f64>, Mat<f64>, Mat<f64>)>,
}

impl FidResampler {
    /// `generated` is `n x d` and `reference` `m x d`, row-major; both need at least 2 rows.
    pub fn new(generated: &[f32], reference: &[f32], d: usize) -> Result<Self, String> {
        Self::from_rows(
            Arc::new(generated.to_vec()),
            Arc::new(reference.to_vec()),
            d,
        )
    }

    /// [`FidResampler::new`] over shared rows: a [`FeatureFile`] stays on disk, mapped.
    pub fn from_rows(generated_rows: Rows, reference_rows: Rows, d: usize) -> Result<Self, String> {
        let (generated, reference) = ((*generated_rows).as_ref(), (*reference_rows).as_ref());
        if d == 0 || !generated.len().is_multiple_of(d) || !reference.len().is_multiple_of(d) {
            return Err(format!(
                "bootstrap: {} generated and {} reference values are not whole rows of {d}",
                generated.len(),
                reference.len()
            ));
        }
        let (n, m) = (generated.len() / d, reference.len() / d);
        if n < 2 || m < 2 {
            return Err(format!(
                "bootstrap: needs at least 2 generated and 2 reference rows, got {n} and {m}"
            ));
        }
        if !generated.iter().chain(reference).all(|v| v.is_finite()) {
            return Err("bootstrap: a feature is NaN or infinite".into());
        }
        let mut shift = vec![0.0; d];
        for row in reference.chunks_exact(d) {
            for (s, &v) in shift.iter_mut().zip(row) {
                *s += v as f64 / m as f64;
            }
        }
        let (small, large) = (n.min(m) as f64, n.max(m) as f64);
        // Per replicate: Gram route ~ small^2 large + 10 small^3; covariance route ~
        // (n + m) d^2 + 20 d^3 (two eigensolves and products of d x d matrices).
        let gram_cost = small * small * large + 10.0 * small.powi(3);
        let cov_cost = (n + m) as f64 * (d * d) as f64 + 20.0 * (d as f64).powi(3);
        let grams = (gram_cost <= cov_cost).then(|| {
            let x = Mat::from_fn(n, d, |i, j| generated[i * d + j] as f64 - shift[j]);
            let y = Mat::from_fn(m, d, |i, j| reference[i * d + j] as f64 - shift[j]);
            (gram(&x, &x), gram(&y, &y), gram(&x, &y))
        });
        Ok(Self {
            n,
            m,
            d,
            generated: generated_rows,
            reference: reference_rows,
            shift,
            grams,
        })
    }

    /// Generated rows.
    pub fn generated_rows(&self) -> usize {
        self.n
    }

    /// Reference rows.
    pub fn reference_rows(&self) -> usize {
        self.m
    }

    /// FID of the generated rows `gen` against the reference rows `reference` (indices may
    /// repeat).
    pub fn fid(&self, generated: &[usize], reference: &[usize]) -> Result<f64, String> {
        if generated.len() < 2 || reference.len() < 2 {
            return Err("bootstrap: a resample needs at least 2 rows".into());
        }
        if generated.iter().any(|&i| i >= self.n) || reference.iter().any(|&i| i >= self.m) {
            return Err("bootstrap: resample index out of range".into());
        }
        match &self.grams {
            Some((gxx, gyy, gxy)) => Ok(self.fid_gram(gxx, gyy, gxy, generated, reference)),
            None => self.fid_cov(generated, reference),
        }
    }

    fn fid_gram(
        &self,
        gxx: &Mat<f64>,
        gyy: &Mat<f64>,
        gxy: &Mat<f64>,
        a: &[usize],
        b: &[usize],
    ) -> f64 {
        let (n, m) = (a.len(), b.len());
        let (nf, mf) = (n as f64, m as f64);
        // |mean|^2 and the trace of the covariance from a Gram matrix.
        let moments = |g: &Mat<f64>, idx: &[usize]| {
            let k = idx.len() as f64;
            let mut total = 0.0;
            let mut diag = 0.0;
            for &i in idx {
                diag += g[(i, i)];
                for &j in idx {
                    total += g[(i, j)];
                }
            }
            let mean_sq = total / (k * k);
            (mean_sq, (diag - k * mean_sq) / (k - 1.0))
        };
        let (xx, trace_x) = moments(gxx, a);
        let (yy, trace_y) = moments(gyy, b);
        // Cross Gram of the selected rows, centred on both sides.
        let raw = Mat::from_fn(n, m, |k, l| gxy[(a[k], b[l])]);
        let row_means: Vec<f64> = (0..n)
            .map(|k| (0..m).map(|l| raw[(k, l)]).sum::<f64>() / mf)
            .collect();
        let col_means: Vec<f64> = (0..m)
            .map(|l| (0..n).map(|k| raw[(k, l)]).sum::<f64>() / nf)
            .collect();
        let xy = row_means.iter().sum::<f64>() / nf;
        let c = Mat::from_fn(n, m, |k, l| raw[(k, l)] - row_means[k] - col_means[l] + xy);
        let scale = 1.0 / ((nf - 1.0) * (mf - 1.0));
        let small = n.min(m);
        let mut k = Mat::zeros(small, small);
        if n <= m {
            matmul(
                k.as_mut(),
                Accum::Replace,
                c.as_ref(),
                c.transpose(),
                scale,
                Par::Seq,
            );
        } else {
            matmul(
                k.as_mut(),
                Accum::Replace,
                c.transpose(),
                c.as_ref(),
                scale,
                Par::Seq,
            );
        }
        let sym = Mat::from_fn(small, small, |i, j| 0.5 * (k[(i, j)] + k[(j, i)]));
        let covmean: f64 = match sym.self_adjoint_eigenvalues(Side::Lower) {
            Ok(ev) => ev.iter().map(|&v| v.max(0.0).sqrt()).sum(),
            Err(_) => f64::NAN,
        };
        let diff = xx + yy - 2.0 * xy;
        diff + trace_x + trace_y - 2.0 * covmean
    }

    fn fid_cov(&self, a: &[usize], b: &[usize]) -> Result<f64, String> {
        self.fid_cov_chunked(a, b, COV_CHUNK)
    }

    /// The covariance route, gathering `chunk` selected rows at a time.
    fn fid_cov_chunked(&self, a: &[usize], b: &[usize], chunk: usize) -> Result<f64, String> {
        let s1 = self.stats_of(&self.generated, a, chunk)?;
        let s2 = self.stats_of(&self.reference, b, chunk)?;
        ldmscale_eval::frechet_distance(&s1, &s2).map_err(|e| e.to_string())
    }

    /// Statistics of the shifted rows `idx` of `source` (as f32, as the route always took them).
    fn stats_of(
        &self,
        source: &Rows,
        idx: &[usize],
        chunk: usize,
    ) -> Result<ldmscale_eval::GaussianStats, String> {
        let (values, d) = ((**source).as_ref(), self.d);
        let mut acc = ldmscale_eval::StatsAccumulator::new(d);
        for part in idx.chunks(chunk) {
            let rows: Vec<f32> = part
                .iter()
                .flat_map(|&i| {
                    (0..d).map(move |j| (values[i * d + j] as f64 - self.shift[j]) as f32)
                })
                .collect();
            acc.add(&rows).map_err(|e| e.to_string())?;
        }
        acc.finish().map_err(|e| e.to_string())
    }

    /// FID of the full sets.
    pub fn full_fid(&self) -> Result<f64, String> {
        let a: Vec<usize> = (0..self.n).collect();
        let b: Vec<usize> = (0..self.m).collect();
        self.fid(&a, &b)
    }

    /// `replicates` resampled FIDs, drawn deterministically from `seed`.
    pub fn replicates(&self, replicates: usize, seed: u64) -> Result<Vec<f64>, String> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xB007_5742_u64);
        let mut out = Vec::with_capacity(replicates);
        for _ in 0..replicates {
            let a: Vec<usize> = (0..self.n).map(|_| rng.random_range(0..self.n)).collect();
            let b: Vec<usize> = (0..self.m).map(|_| rng.random_range(0..self.m)).collect();
            let f = self.fid(&a, &b)?;
            if !f.is_finite() {
                return Err("bootstrap: a replicate's FID is not finite (eigensolver)".into());
            }
            out.push(f);
        }
        Ok(out)
    }
}

/// `a b^T`: the inner products of every row of `a` with every row of `b`.
fn gram(a: &Mat<f64>, b: &Mat<f64>) -> Mat<f64> {
    let mut g = Mat::zeros(a.nrows(), b.nrows());
    matmul(
        g.as_mut(),
        Accum::Replace,
        a.as_ref(),
        b.transpose(),
        1.0,
        Par::rayon(0),
    );
    g
}

/// The re-centred 95% percentile interval around `fid` from bootstrap `replicates`.
pub fn recentred_interval(fid: f64, replicates: &[f64]) -> FidCi {
    let (lo, med, hi) = (
        percentile(replicates, 2.5),
        percentile(replicates, 50.0),
        percentile(replicates, 97.5),
    );
    FidCi {
        low: (fid - (med - lo)).max(0.0),
        high: fid + (hi - med),
        method: CiMethod::Bootstrap,
        replicates: replicates.len() as u32,
    }
}

/// The bootstrap 95% interval of the FID between `generated` and `reference` features
/// (`rows x d`), with `replicates` replicates seeded by `seed`; `fid` is the full-sample FID
/// it is centred on.
pub fn fid_interval(
    generated: &[f32],
    reference: &[f32],
    d: usize,
    fid: f64,
    replicates: usize,
    seed: u64,
) -> Result<FidCi, String> {
    if replicates < 2 {
        return Err(format!(
            "bootstrap: {replicates} replicates; need at least 2"
        ));
    }
    fid_interval_of(
        Arc::new(generated.to_vec()),
        Arc::new(reference.to_vec()),
        d,
        fid,
        replicates,
        seed,
    )
}

/// [`fid_interval`] over shared rows (a mapped [`FeatureFile`] is read in place).
pub fn fid_interval_of(
    generated: Rows,
    reference: Rows,
    d: usize,
    fid: f64,
    replicates: usize,
    seed: u64,
) -> Result<FidCi, String> {
    if replicates < 2 {
        return Err(format!(
            "bootstrap: {replicates} replicates; need at least 2"
        ));
    }
    let r = FidResampler::from_rows(generated, reference, d)?;
    Ok(recentred_interval(fid, &r.replicates(replicates, seed)?))
}

/// The 95% percentile-bootstrap interval of the mean of per-image `values` (a PSNR, an SSIM,
/// a perceptual distance), resampling images with replacement; `None` below two replicates or
/// two values.
pub fn mean_interval(values: &[f64], replicates: usize, seed: u64) -> Option<FidCi> {
    let n = values.len();
    if replicates < 2 || n < 2 {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let means: Vec<f64> = (0..replicates)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    Some(FidCi {
        low: percentile(&means, 2.5),
        high: percentile(&means, 97.5),
        method: CiMethod::Bootstrap,
        replicates: replicates as u32,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    /// `rows x d` Gaussian features `z A + shift` (A fixed by `mix_seed`).
    pub(crate) fn gaussian(
        rows: usize,
        d: usize,
        shift: f32,
        mix_seed: u64,
        rng: &mut StdRng,
    ) -> Vec<f32> {
        let mut mix_rng = StdRng::seed_from_u64(mix_seed);
        let a: Vec<f32> = (0..d * d)
            .map(|_| StandardNormal.sample(&mut mix_rng))
            .map(|v: f32| v / (d as f32).sqrt())
            .collect();
        let mut out = vec![0f32; rows * d];
        for r in 0..rows {
            let z: Vec<f32> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
            for j in 0..d {
                out[r * d + j] = shift + (0..d).map(|k| z[k] * a[k * d + j]).sum::<f32>();
            }
        }
        out
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&v, 50.0), 2.5);
        // np.percentile([1,2,3,4], 2.5) = 1.075
        assert!((percentile(&v, 2.5) - 1.075).abs() < 1e-12);
    }

    #[test]
    fn both_routes_equal_the_full_frechet_distance() {
        let mut rng = StdRng::seed_from_u64(3);
        let (d, n, m) = (12, 20, 30);
        let x = gaussian(n, d, 0.5, 1, &mut rng);
        let y = gaussian(m, d, 0.0, 2, &mut rng);
        let exact = ldmscale_eval::frechet_distance(
            &ldmscale_eval::GaussianStats::from_features(&x, d).unwrap(),
            &ldmscale_eval::GaussianStats::from_features(&y, d).unwrap(),
        )
        .unwrap();
        let r = FidResampler::new(&x, &y, d).unwrap();
        assert!(r.grams.is_none(), "d < n, m: the covariance route");
        assert!((r.full_fid().unwrap() - exact).abs() < 1e-6 * exact.max(1.0));
        // Wide features: the Gram route, same value, with repeated indices too.
        let d = 64;
        let x = gaussian(n, d, 0.5, 1, &mut rng);
        let y = gaussian(m, d, 0.0, 2, &mut rng);
        let g = FidResampler::new(&x, &y, d).unwrap();
        assert!(g.grams.is_some());
        let a = [0usize, 0, 3, 5, 5, 5, 7, 19];
        let b = [1usize, 2, 2, 9, 29, 29];
        let via_gram = g.fid(&a, &b).unwrap();
        let via_cov = g.fid_cov(&a, &b).unwrap();
        assert!(
            (via_gram - via_cov).abs() < 1e-6 * via_cov.max(1.0),
            "{via_gram} vs {via_cov}"
        );
    }

    /// The interval's property that can fail: over repeated draws from known Gaussians it
    /// covers the expected FID at this sample size, and it narrows as the sample grows. The
    /// plain percentile interval mostly does not even contain the full-sample FID (it sits
    /// above it), which is why the interval is re-centred.
    #[test]
    fn intervals_cover_the_expected_fid_and_narrow_with_n() {
        let d = 24;
        let m = 96;
        let mut rng = StdRng::seed_from_u64(11);
        let mut widths = Vec::new();
        for n in [16usize, 96] {
            let draw = |rng: &mut StdRng| {
                let x = gaussian(n, d, 0.3, 5, rng);
                let y = gaussian(m, d, 0.0, 6, rng);
                (x, y)
            };
            let fid_of =
                |x: &[f32], y: &[f32]| FidResampler::new(x, y, d).unwrap().full_fid().unwrap();
            let expected: f64 = (0..150)
                .map(|_| {
                    let (x, y) = draw(&mut rng);
                    fid_of(&x, &y)
                })
                .sum::<f64>()
                / 150.0;
            let trials = 20;
            let (mut covered, mut plain_covered, mut width) = (0, 0, 0.0);
            for t in 0..trials {
                let (x, y) = draw(&mut rng);
                let fid = fid_of(&x, &y);
                let reps = FidResampler::new(&x, &y, d)
                    .unwrap()
                    .replicates(60, t)
                    .unwrap();
                let ci = recentred_interval(fid, &reps);
                assert!(ci.low <= fid && fid <= ci.high);
                covered += (ci.low <= expected && expected <= ci.high) as usize;
                // The plain percentile interval, against the full-sample FID it should contain.
                let (lo, hi) = (percentile(&reps, 2.5), percentile(&reps, 97.5));
                plain_covered += (lo <= fid && fid <= hi) as usize;
                width += (ci.high - ci.low) / trials as f64;
            }
            assert!(
                covered >= 17,
                "n={n}: re-centred interval covered E[FID] {expected:.2} in {covered}/{trials}"
            );
            eprintln!("n={n}: covered {covered}, plain covered the sample FID {plain_covered}");
            if n == 16 {
                assert!(
                    plain_covered <= 5,
                    "n={n}: the plain percentile interval held the full-sample FID in {plain_covered}/{trials}; \
                     re-centring would not be needed"
                );
            }
            widths.push(width);
        }
        assert!(widths[1] < 0.7 * widths[0], "widths {widths:?}");
    }

    /// The covariance route as it was before rows were streamed: every selected row gathered
    /// at once from f64 copies of both sides shifted by the reference mean.
    fn gathered_cov_replicates(
        x: &[f32],
        y: &[f32],
        d: usize,
        count: usize,
        seed: u64,
    ) -> Vec<f64> {
        let (n, m) = (x.len() / d, y.len() / d);
        let mut shift = vec![0.0; d];
        for row in y.chunks_exact(d) {
            for (s, &v) in shift.iter_mut().zip(row) {
                *s += v as f64 / m as f64;
            }
        }
        let xm = Mat::from_fn(n, d, |i, j| x[i * d + j] as f64 - shift[j]);
        let ym = Mat::from_fn(m, d, |i, j| y[i * d + j] as f64 - shift[j]);
        let gather = |mat: &Mat<f64>, idx: &[usize]| -> Vec<f32> {
            idx.iter()
                .flat_map(|&i| (0..d).map(move |j| mat[(i, j)] as f32))
                .collect()
        };
        let stats = |v: &[f32]| ldmscale_eval::GaussianStats::from_features(v, d).unwrap();
        let mut rng = StdRng::seed_from_u64(seed ^ 0xB007_5742_u64);
        (0..count)
            .map(|_| {
                let a: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
                let b: Vec<usize> = (0..m).map(|_| rng.random_range(0..m)).collect();
                let (s1, s2) = (stats(&gather(&xm, &a)), stats(&gather(&ym, &b)));
                ldmscale_eval::frechet_distance(&s1, &s2).unwrap()
            })
            .collect()
    }

    /// Replicates read from mapped feature files equal those from memory bit for bit, and
    /// equal the covariance route as it was (gathered whole) bit for bit up to `COV_CHUNK`
    /// rows a side; past it, the streamed accumulation agrees to rounding.
    #[test]
    fn replicates_from_files_and_in_chunks_equal_the_gathered_route() {
        let mut rng = StdRng::seed_from_u64(21);
        let d = 6;
        let x = gaussian(50, d, 0.4, 1, &mut rng);
        let y = gaussian(70, d, 0.0, 2, &mut rng);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: &[f32]| -> Rows {
            let mut w = FeatureFileWriter::create(&dir.path().join(name), v.len() / d, d).unwrap();
            for part in v.chunks(7 * d) {
                w.append(part).unwrap();
            }
            Arc::new(w.finish().unwrap())
        };
        let mapped = FidResampler::from_rows(write("x.npy", &x), write("y.npy", &y), d).unwrap();
        let memory = FidResampler::new(&x, &y, d).unwrap();
        assert!(memory.grams.is_none(), "n, m > d: the covariance route");
        let before = gathered_cov_replicates(&x, &y, d, 25, 9);
        assert_eq!(memory.replicates(25, 9).unwrap(), before);
        assert_eq!(mapped.replicates(25, 9).unwrap(), before);
        let (a, b): (Vec<usize>, Vec<usize>) = ((0..50).rev().collect(), (0..70).collect());
        let whole = memory.fid_cov_chunked(&a, &b, usize::MAX).unwrap();
        let streamed = memory.fid_cov_chunked(&a, &b, 7).unwrap();
        assert!(
            (whole - streamed).abs() <= 1e-9 * whole,
            "{whole} vs {streamed}"
        );
        let ci = fid_interval(&x, &y, d, 1.0, 25, 9).unwrap();
        assert_eq!(recentred_interval(1.0, &before), ci);
    }

    #[test]
    fn feature_files_are_whole_or_absent_and_checked_on_opening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.npy");
        let mut w = FeatureFileWriter::create(&path, 3, 2).unwrap();
        w.append(&[1.0, 2.0]).unwrap();
        assert!(w.append(&[1.0]).unwrap_err().contains("whole rows of 2"));
        let err = w.finish().err().expect("1 of 3 rows");
        assert!(err.contains("1 of 3 rows written"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file left"
        );
        let mut w = FeatureFileWriter::create(&path, 2, 2).unwrap();
        w.append(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        let f = w.finish().unwrap();
        assert_eq!(
            (f.rows(), f.dim(), f.as_ref()),
            (2, 2, &[1.0f32, 2.0, 3.0, 4.0][..])
        );
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = FeatureFile::open(&path).err().expect("cut short");
        assert!(
            err.contains("f.npy") && err.contains("the file has 12"),
            "{err}"
        );
        std::fs::write(&path, ldmscale_eval::npz::encode_npy(&[2], &[1.0, 2.0])).unwrap();
        let err = FeatureFile::open(&path).err().expect("f64, one axis");
        assert!(err.contains("'<f4'"), "{err}");
    }

    #[test]
    fn replicates_are_seeded() {
        let mut rng = StdRng::seed_from_u64(1);
        let x = gaussian(10, 8, 0.2, 1, &mut rng);
        let y = gaussian(12, 8, 0.0, 2, &mut rng);
        let a = fid_interval(&x, &y, 8, 1.0, 30, 4).unwrap();
        let b = fid_interval(&x, &y, 8, 1.0, 30, 4).unwrap();
        let c = fid_interval(&x, &y, 8, 1.0, 30, 5).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(fid_interval(&x, &y, 8, 1.0, 1, 4).is_err());
        assert!(FidResampler::new(&x[..8], &y, 8).is_err());
    }
}
