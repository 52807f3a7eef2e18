//! Paired bootstrap of an FID difference.
//!
//! Two cells of a sweep sample row `i` from the same prompt and the same initial noise, and
//! both are scored against the same reference. Resampling rows independently for each cell
//! counts that shared noise twice, and two overlapping marginal intervals cannot say which
//! cell is better. Here every replicate draws one set of generated row indices, used on both
//! sides, and one set of reference rows: the interval is that of the difference itself.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::{FidResampler, percentile};

/// `FID(other) - FID(favoured)` (positive favours `favoured`) with its paired 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairedDifference {
    /// The full-sample difference (averaged over seeds).
    pub value: f64,
    /// Lower end of the re-centred percentile interval.
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Replicates drawn.
    pub replicates: u32,
}

/// The paired difference over seeds: `pairs[s]` is seed `s`'s `(favoured, other)`, all of the
/// same generated and reference row counts and the same reference rows (the caller's promise).
/// Each replicate resamples prompt indices and reference indices once, shared by every
/// resampler, and averages the per-seed differences.
pub fn paired_difference(
    pairs: &[(&FidResampler, &FidResampler)],
    replicates: usize,
    seed: u64,
) -> Result<PairedDifference, String> {
    let Some((first, _)) = pairs.first() else {
        return Err("paired bootstrap: no pairs".into());
    };
    let (n, m) = (first.generated_rows(), first.reference_rows());
    let same_shape = |r: &FidResampler| r.generated_rows() == n && r.reference_rows() == m;
    if !pairs.iter().all(|(a, b)| same_shape(a) && same_shape(b)) {
        return Err("paired bootstrap: the cells differ in generated or reference rows".into());
    }
    if replicates < 2 {
        return Err(format!(
            "paired bootstrap: {replicates} replicates; need at least 2"
        ));
    }
    let all_rows = |k: usize| (0..k).collect::<Vec<usize>>();
    let value = mean_difference(pairs, &all_rows(n), &all_rows(m))?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x09A1_BEDD_1FF0);
    let mut draws = Vec::with_capacity(replicates);
    for _ in 0..replicates {
        let a: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        let b: Vec<usize> = (0..m).map(|_| rng.random_range(0..m)).collect();
        let d = mean_difference(pairs, &a, &b)?;
        if !d.is_finite() {
            return Err("paired bootstrap: a replicate is not finite (eigensolver)".into());
        }
        draws.push(d);
    }
    let (lo, med, hi) = (
        percentile(&draws, 2.5),
        percentile(&draws, 50.0),
        percentile(&draws, 97.5),
    );
    // Re-centred like the marginal interval: the replicates' spread around the full-sample
    // difference, without the resampling bias of FID.
    Ok(PairedDifference {
        value,
        low: value - (med - lo),
        high: value + (hi - med),
        replicates: replicates as u32,
    })
}

/// Mean over pairs of `FID(other) - FID(favoured)` on the given rows.
fn mean_difference(
    pairs: &[(&FidResampler, &FidResampler)],
    generated: &[usize],
    reference: &[usize],
) -> Result<f64, String> {
    let mut sum = 0.0;
    for (favoured, other) in pairs {
        sum += other.fid(generated, reference)? - favoured.fid(generated, reference)?;
    }
    Ok(sum / pairs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::{fid_interval, tests::gaussian};

    const D: usize = 6;
    const SHIFT: f32 = 0.4;

    /// Generated rows that share "prompt and noise" `base` across two cells: each cell is
    /// `base + shift + own` with a small cell-specific part, like two models sampling the same
    /// initial noise.
    fn correlated_pair(n: usize, shift_b: f32, own: f32, rng: &mut StdRng) -> (Vec<f32>, Vec<f32>) {
        let base = gaussian(n, D, 0.0, 7, rng);
        let jitter_a = gaussian(n, D, 0.0, 8, rng);
        let jitter_b = gaussian(n, D, 0.0, 8, rng);
        let a = base
            .iter()
            .zip(&jitter_a)
            .map(|(x, j)| x + own * j)
            .collect();
        let b = base
            .iter()
            .zip(&jitter_b)
            .map(|(x, j)| x + own * j + shift_b)
            .collect();
        (a, b)
    }

    fn paired(a: &[f32], b: &[f32], reference: &[f32], seed: u64) -> PairedDifference {
        let ra = FidResampler::new(a, reference, D).unwrap();
        let rb = FidResampler::new(b, reference, D).unwrap();
        paired_difference(&[(&ra, &rb)], 200, seed).unwrap()
    }

    /// A true difference is found, and pairing finds it where the two marginal intervals
    /// overlap: the reason this module exists.
    #[test]
    fn a_true_difference_is_found_where_marginal_intervals_overlap() {
        let mut rng = StdRng::seed_from_u64(21);
        let (n, m) = (48, 96);
        let (mut found, mut marginal_found, trials) = (0, 0, 20);
        for t in 0..trials {
            let reference = gaussian(m, D, 0.0, 7, &mut rng);
            let (a, b) = correlated_pair(n, SHIFT, 0.15, &mut rng);
            let p = paired(&a, &b, &reference, t);
            assert!(p.low <= p.value && p.value <= p.high);
            found += (p.low > 0.0) as usize;
            let ci = |x: &[f32]| {
                let fid = FidResampler::new(x, &reference, D)
                    .unwrap()
                    .full_fid()
                    .unwrap();
                fid_interval(x, &reference, D, fid, 200, t).unwrap()
            };
            marginal_found += (ci(&b).low > ci(&a).high) as usize;
        }
        eprintln!("paired found {found}/{trials}, marginal intervals {marginal_found}");
        assert!(found >= 12, "paired found the shift in {found}/{trials}");
        assert!(
            marginal_found + 8 <= found,
            "marginal intervals separated in {marginal_found}/{trials}, paired in {found}"
        );
    }

    /// Under the null (two cells of equal quality) the paired interval excludes 0 at about
    /// the stated 5% rate, not more.
    #[test]
    fn a_null_difference_is_not_found_beyond_the_stated_rate() {
        let mut rng = StdRng::seed_from_u64(5);
        let (n, m, trials) = (32, 64, 120);
        let mut false_positives = 0;
        for t in 0..trials {
            let reference = gaussian(m, D, 0.0, 7, &mut rng);
            let (a, b) = correlated_pair(n, 0.0, 0.3, &mut rng);
            let p = paired(&a, &b, &reference, 1000 + t);
            false_positives += (p.low > 0.0 || p.high < 0.0) as usize;
        }
        eprintln!("{false_positives}/{trials} null differences called");
        // Binomial(120, 0.05): mean 6, P(X > 14) < 0.3%.
        assert!(
            false_positives <= 14,
            "{false_positives}/{trials} null differences were called"
        );
    }

    #[test]
    fn orientation_seeds_and_bad_input() {
        let mut rng = StdRng::seed_from_u64(2);
        let reference = gaussian(40, D, 0.0, 7, &mut rng);
        let (a, b) = correlated_pair(20, 0.5, 0.1, &mut rng);
        let ab = paired(&a, &b, &reference, 3);
        let ba = paired(&b, &a, &reference, 3);
        assert!(ab.value > 0.0);
        assert!((ab.value + ba.value).abs() < 1e-9);
        assert_eq!(ab, paired(&a, &b, &reference, 3));
        assert_ne!(ab, paired(&a, &b, &reference, 4));
        let ra = FidResampler::new(&a, &reference, D).unwrap();
        let short = FidResampler::new(&b[..D * 10], &reference, D).unwrap();
        assert!(paired_difference(&[(&ra, &short)], 50, 0).is_err());
        assert!(paired_difference(&[], 50, 0).is_err());
        assert!(paired_difference(&[(&ra, &ra)], 1, 0).is_err());
    }
}
