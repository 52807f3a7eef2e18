//! KID beside FID: the unbiased MMD^2 between generated and reference features with the cubic
//! polynomial kernel `k(x, y) = (x.y / d + 1)^3` (Binkowski et al.), over all rows, with a
//! bootstrap percentile interval. Unlike FID it has no bias at small n; its replicates skip
//! pairs of a resampled row with itself, so they need no re-centring.

use faer::Mat;

use super::{FidCi, gram, two_sample_interval};

/// Above this many rows on a side the kernel matrices (rows^2 x 8 bytes) are not built; the
/// caller uses clean-fid's subset estimator instead.
pub const MAX_KID_ROWS: usize = 4096;

/// Kernel matrices of generated (`x`, n rows) and reference (`y`, m rows) features.
pub struct KidResampler {
    kxx: Mat<f64>,
    kyy: Mat<f64>,
    kxy: Mat<f64>,
}

impl KidResampler {
    /// `generated` is `n x d` and `reference` `m x d`, row-major, 2 to [`MAX_KID_ROWS`] rows.
    pub fn new(generated: &[f32], reference: &[f32], d: usize) -> Result<Self, String> {
        let rows = |v: &[f32]| (d > 0 && v.len().is_multiple_of(d)).then(|| v.len() / d);
        let (Some(n), Some(m)) = (rows(generated), rows(reference)) else {
            return Err(format!("KID: features are not whole rows of {d}"));
        };
        if !(2..=MAX_KID_ROWS).contains(&n) || !(2..=MAX_KID_ROWS).contains(&m) {
            return Err(format!(
                "KID: {n} generated and {m} reference rows; the kernel form takes 2 to {MAX_KID_ROWS}"
            ));
        }
        let x = Mat::from_fn(n, d, |i, j| generated[i * d + j] as f64);
        let y = Mat::from_fn(m, d, |i, j| reference[i * d + j] as f64);
        let kernel = |a: &Mat<f64>, b: &Mat<f64>| {
            let g = gram(a, b);
            Mat::from_fn(g.nrows(), g.ncols(), |i, j| {
                (g[(i, j)] / d as f64 + 1.0).powi(3)
            })
        };
        Ok(Self {
            kxx: kernel(&x, &x),
            kyy: kernel(&y, &y),
            kxy: kernel(&x, &y),
        })
    }

    /// The unbiased MMD^2 of the generated rows `a` against the reference rows `b`. Indices
    /// may repeat (bootstrap draws): the within-set means then skip every pair of one row with
    /// itself, since a row's self-kernel would bias each replicate upward.
    pub fn kid(&self, a: &[usize], b: &[usize]) -> f64 {
        let within = |k: &Mat<f64>, idx: &[usize]| {
            let (mut total, mut pairs) = (0.0, 0usize);
            for &i in idx {
                for &j in idx {
                    if i != j {
                        total += k[(i, j)];
                        pairs += 1;
                    }
                }
            }
            total / pairs.max(1) as f64
        };
        let across: f64 = a
            .iter()
            .map(|&i| b.iter().map(|&j| self.kxy[(i, j)]).sum::<f64>())
            .sum();
        within(&self.kxx, a) + within(&self.kyy, b)
            - 2.0 * across / (a.len() as f64 * b.len() as f64)
    }

    /// KID of the full sets and its 95% percentile interval from `replicates` resamples.
    pub fn with_interval(&self, replicates: usize, seed: u64) -> (f64, Option<FidCi>) {
        let (n, m) = (self.kxx.nrows(), self.kyy.nrows());
        let all = |k: usize| (0..k).collect::<Vec<_>>();
        let value = self.kid(&all(n), &all(m));
        if replicates < 2 {
            return (value, None);
        }
        let ci = two_sample_interval(n, m, replicates, seed ^ 0x041D_B007, |a, b| self.kid(a, b));
        (value, Some(ci))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::tests::gaussian;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The kernel form equals the eval crate's clean-fid estimator where they coincide (equal
    /// set sizes: one subset is the whole of both sets).
    #[test]
    fn equals_clean_fid_kid_on_equal_sets() {
        let mut rng = StdRng::seed_from_u64(4);
        let (n, d) = (40, 16);
        let x = gaussian(n, d, 0.3, 1, &mut rng);
        let y = gaussian(n, d, 0.0, 2, &mut rng);
        let ours = KidResampler::new(&x, &y, d).unwrap().with_interval(0, 0).0;
        let options = ldmscale_eval::KidOptions {
            subsets: 1,
            ..Default::default()
        };
        let theirs = ldmscale_eval::stats::kernel_inception_distance(&x, &y, d, options).unwrap();
        assert!((ours - theirs.mean).abs() < 1e-9 * theirs.mean.abs().max(1e-6));
    }

    /// Unbiased: over many draws from one distribution the mean KID is near 0 (FID's is not),
    /// and a shifted distribution's interval excludes 0.
    #[test]
    fn unbiased_under_the_null_and_separating_a_shift() {
        let mut rng = StdRng::seed_from_u64(9);
        let d = 8;
        let null: Vec<f64> = (0..200)
            .map(|_| {
                let x = gaussian(24, d, 0.0, 1, &mut rng);
                let y = gaussian(48, d, 0.0, 1, &mut rng);
                KidResampler::new(&x, &y, d).unwrap().with_interval(0, 0).0
            })
            .collect();
        let mean = null.iter().sum::<f64>() / null.len() as f64;
        let sd = (null.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 199.0).sqrt();
        assert!(
            mean.abs() < 3.0 * sd / (200f64).sqrt(),
            "mean {mean}, sd {sd}"
        );

        let x = gaussian(24, d, 0.8, 1, &mut rng);
        let y = gaussian(48, d, 0.0, 1, &mut rng);
        let (kid, ci) = KidResampler::new(&x, &y, d).unwrap().with_interval(200, 3);
        let ci = ci.unwrap();
        assert!(
            ci.low > 0.0 && ci.low <= kid && kid <= ci.high,
            "{kid} {ci:?}"
        );
        assert!(KidResampler::new(&x[..d], &y, d).is_err());
    }

    /// A resample repeats rows; counting a row's kernel with itself shifted every replicate
    /// upward, so the interval missed the full-sample KID. Few rows, many dimensions: the
    /// self-kernel dominates, as in the tiny preset.
    #[test]
    fn replicates_are_centred_on_the_full_sample_kid() {
        let mut rng = StdRng::seed_from_u64(12);
        let d = 32;
        for seed in 0..5 {
            let x = gaussian(16, d, 0.1, 1, &mut rng);
            let y = gaussian(64, d, 0.0, 1, &mut rng);
            let (kid, ci) = KidResampler::new(&x, &y, d)
                .unwrap()
                .with_interval(200, seed);
            let ci = ci.unwrap();
            assert!(ci.low <= kid && kid <= ci.high, "seed {seed}: {kid} {ci:?}");
        }
    }
}
