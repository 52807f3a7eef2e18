//! Can the FID features tell images apart? A verdict resting on FID differences is only as good
//! as the features' power to separate what differs. Two measurements from the features a sweep
//! kept:
//!
//! - the **real-vs-real floor**: the FID of `n` real rows against the other real rows, over
//!   random splits, at the cells' own sample size `n` — what FID reads when nothing differs but
//!   the sample. A width whose best FID sits near the floor is indistinguishable from real
//!   images to these features, whatever its FID says.
//! - a **two-sample test** per width: the unbiased KID (cubic kernel) of the width's best
//!   setting's generated rows against `n` held-out real rows, with its permutation p-value.

use std::fmt::Write;

use faer::Mat;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::analysis::Setting;
use crate::bootstrap::{FidResampler, percentile};
use crate::pairing::Pairing;

/// Random splits behind the floor.
const SPLITS: usize = 40;
/// Label permutations behind each p-value.
const PERMUTATIONS: usize = 400;
/// Fixed, so a report of one store always reads the same.
const SEED: u64 = 0x5E9A_2A7E;

/// The FID of `n` real rows against the rest, over random splits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Floor {
    /// Mean over splits.
    pub mean: f64,
    /// 2.5th percentile over splits.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
    /// Rows on the "generated" side (the cells' sample size).
    pub n: usize,
    /// Rows on the reference side.
    pub m: usize,
}

/// The floor of `reference` (`rows x d`, row-major) at sample size `n`; needs `n < rows - 1`.
pub fn real_floor(reference: &[f32], d: usize, n: usize, seed: u64) -> Result<Floor, String> {
    let rows = reference.len() / d.max(1);
    if n < 2 || n + 2 > rows {
        return Err(format!(
            "a real-vs-real floor at {n} samples needs more than {} reference rows; the store kept {rows}",
            n + 1
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fids = Vec::with_capacity(SPLITS);
    for _ in 0..SPLITS {
        let (sample, rest) = split(reference, d, n, &mut rng);
        fids.push(FidResampler::new(&sample, &rest, d)?.full_fid()?);
    }
    Ok(Floor {
        mean: fids.iter().sum::<f64>() / SPLITS as f64,
        low: percentile(&fids, 2.5),
        high: percentile(&fids, 97.5),
        n,
        m: rows - n,
    })
}

/// `n` random rows of `rows` and the others.
fn split(rows: &[f32], d: usize, n: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<f32>) {
    let mut order: Vec<usize> = (0..rows.len() / d).collect();
    order.shuffle(rng);
    let gather = |idx: &[usize]| {
        idx.iter()
            .flat_map(|&i| rows[i * d..(i + 1) * d].iter().copied())
            .collect()
    };
    (gather(&order[..n]), gather(&order[n..]))
}

/// The unbiased KID of `x` against `y` (both `d` wide) and the share of label permutations
/// reaching it (with the observed one counted, so never 0).
pub fn kid_permutation_test(
    x: &[f32],
    y: &[f32],
    d: usize,
    permutations: usize,
    seed: u64,
) -> (f64, f64) {
    let pooled: Vec<f32> = x.iter().chain(y).copied().collect();
    let total = pooled.len() / d;
    let (n, m) = (x.len() / d, y.len() / d);
    let kernel = cubic_kernel(&pooled, d);
    let observed = mmd2(
        &kernel,
        &(0..n).collect::<Vec<_>>(),
        &(n..total).collect::<Vec<_>>(),
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..total).collect();
    let mut reached = 1;
    for _ in 0..permutations {
        order.shuffle(&mut rng);
        reached += (mmd2(&kernel, &order[..n], &order[n..n + m]) >= observed) as usize;
    }
    (observed, reached as f64 / (permutations + 1) as f64)
}

/// `(x.y / d + 1)^3` over every pair of rows.
fn cubic_kernel(rows: &[f32], d: usize) -> Mat<f64> {
    let r = rows.len() / d;
    let x = Mat::from_fn(r, d, |i, j| rows[i * d + j] as f64);
    let g = &x * x.transpose();
    Mat::from_fn(r, r, |i, j| (g[(i, j)] / d as f64 + 1.0).powi(3))
}

/// Unbiased MMD² of rows `a` against rows `b` of the pooled kernel.
fn mmd2(k: &Mat<f64>, a: &[usize], b: &[usize]) -> f64 {
    let within = |idx: &[usize]| {
        let mut sum = 0.0;
        for (p, &i) in idx.iter().enumerate() {
            for &j in &idx[p + 1..] {
                sum += k[(i, j)];
            }
        }
        2.0 * sum / (idx.len() * (idx.len() - 1)) as f64
    };
    let cross: f64 = a
        .iter()
        .map(|&i| b.iter().map(|&j| k[(i, j)]).sum::<f64>())
        .sum();
    within(a) + within(b) - 2.0 * cross / (a.len() * b.len()) as f64
}

/// One width's best setting against the floor and the test.
#[derive(Clone, Debug, Serialize)]
pub struct WidthSeparation {
    /// The setting (its first seed's rows were tested).
    pub setting: Setting,
    /// Its FID over the floor's mean.
    pub fid_over_floor: f64,
    /// KID of its rows against held-out real rows.
    pub kid: f64,
    /// Permutation p-value of that KID.
    pub p_value: f64,
}

/// The floor and each width's test.
#[derive(Clone, Debug, Serialize)]
pub struct Separation {
    /// The real-vs-real floor.
    pub floor: Floor,
    /// One row per width, at its lowest-FID setting.
    pub widths: Vec<WidthSeparation>,
}

/// Measures the separation of each width's best setting among `optimal`, from the rows
/// `pairing` kept.
pub fn analyse(pairing: &Pairing, optimal: &[Setting]) -> Result<Separation, String> {
    let reference = pairing.reference();
    let d = reference.dim;
    let mut widths = Vec::new();
    let mut floor: Option<Floor> = None;
    for best in best_per_width(optimal) {
        let Some(rows) = best.keys.first().and_then(|k| pairing.cell_rows(k)) else {
            continue;
        };
        let n = rows.rows;
        let floor = match floor {
            Some(f) if f.n == n => f,
            _ => *floor.insert(real_floor(&reference.data, d, n, SEED)?),
        };
        let mut rng = StdRng::seed_from_u64(SEED ^ best.width as u64);
        let (real, _) = split(&reference.data, d, n, &mut rng);
        let (kid, p_value) = kid_permutation_test(&rows.data, &real, d, PERMUTATIONS, SEED);
        widths.push(WidthSeparation {
            fid_over_floor: best.fid / floor.mean,
            setting: best.clone(),
            kid,
            p_value,
        });
    }
    let floor = floor.ok_or("no width kept the features of its best setting")?;
    Ok(Separation { floor, widths })
}

/// The lowest-FID setting of each width.
fn best_per_width(optimal: &[Setting]) -> Vec<&Setting> {
    let mut best: std::collections::BTreeMap<u32, &Setting> = Default::default();
    for s in optimal {
        let slot = best.entry(s.width).or_insert(s);
        if s.fid < slot.fid {
            *slot = s;
        }
    }
    best.into_values().collect()
}

/// The report's section.
pub fn html(s: &Separation) -> String {
    let f = &s.floor;
    let mut html = format!(
        "<h2>Can the FID features tell images apart?</h2><p>Real-vs-real floor: the FID of {} real images against {} others reads {:.2} (95% of {SPLITS} random splits within {:.2}..{:.2}) although nothing differs but the sample. Each width's best setting against it, and a two-sample test of its images against {} held-out real ones (KID, {PERMUTATIONS} label permutations):</p><table><tr><th>width</th><th>best setting</th><th>FID</th><th>FID / floor</th><th>KID x10&sup3;</th><th>p-value</th><th>told apart from real at 5%</th></tr>",
        f.n, f.m, f.mean, f.low, f.high, f.n
    );
    for w in &s.widths {
        let b = &w.setting;
        let _ = write!(
            html,
            "<tr><td>{} filters</td><td>{} x{}, CFG {:.1}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.3}</td><td>{}</td></tr>",
            b.width,
            b.sampler,
            b.steps,
            b.cfg,
            b.fid,
            w.fid_over_floor,
            1e3 * w.kid,
            w.p_value,
            if w.p_value < 0.05 { "yes" } else { "no" }
        );
    }
    html.push_str("</table><p><small>A width the test cannot tell from real images, or whose FID lies within the floor's range, is as good as these features can see at this sample size: differences between such widths are noise to them, and a stronger feature network or more samples per cell is what would decide them.</small></p>");
    html
}

/// The Markdown summary's lines.
pub fn markdown(s: &Separation) -> String {
    let f = &s.floor;
    let mut md = format!(
        "\n## Can the FID features tell images apart?\n\nReal-vs-real floor at {} samples: FID {:.2} ({:.2}..{:.2}).\n\n| width | FID | FID / floor | KID x10^3 | p-value |\n|---:|---:|---:|---:|---:|\n",
        f.n, f.mean, f.low, f.high
    );
    for w in &s.widths {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.2} | {:.3} |",
            w.setting.width,
            w.setting.fid,
            w.fid_over_floor,
            1e3 * w.kid,
            w.p_value
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::tests::gaussian;

    const D: usize = 8;

    #[test]
    fn the_floor_is_what_a_real_sample_reads() {
        let mut rng = StdRng::seed_from_u64(1);
        let reference = gaussian(200, D, 0.0, 3, &mut rng);
        let f = real_floor(&reference, D, 32, 7).unwrap();
        assert!(f.low <= f.mean && f.mean <= f.high && f.low > 0.0, "{f:?}");
        assert_eq!((f.n, f.m), (32, 168));
        // A fresh sample of the same distribution lands inside the floor's range; a shifted
        // one far above it.
        let same = gaussian(32, D, 0.0, 3, &mut rng);
        let shifted = gaussian(32, D, 1.0, 3, &mut rng);
        let fid = |x: &[f32]| {
            FidResampler::new(x, &reference, D)
                .unwrap()
                .full_fid()
                .unwrap()
        };
        assert!(fid(&same) < f.high, "{} vs {f:?}", fid(&same));
        assert!(fid(&shifted) > 3.0 * f.high, "{} vs {f:?}", fid(&shifted));
        assert!(
            real_floor(&reference[..D * 20], D, 32, 7)
                .unwrap_err()
                .contains("needs more than 33")
        );
    }

    #[test]
    fn the_permutation_test_holds_its_level_and_finds_a_shift() {
        let mut rng = StdRng::seed_from_u64(2);
        let (trials, mut false_alarms, mut found) = (60, 0, 0);
        for t in 0..trials {
            let x = gaussian(24, D, 0.0, 3, &mut rng);
            let y = gaussian(24, D, 0.0, 3, &mut rng);
            let (_, p) = kid_permutation_test(&x, &y, D, 99, t);
            false_alarms += (p < 0.05) as usize;
            let z = gaussian(24, D, 0.8, 3, &mut rng);
            let (kid, p) = kid_permutation_test(&z, &y, D, 99, t);
            found += (p < 0.05 && kid > 0.0) as usize;
        }
        // Binomial(60, 0.05): mean 3, P(X > 9) < 0.2%.
        assert!(false_alarms <= 9, "{false_alarms}/{trials} false alarms");
        assert!(found >= 54, "a shift of 0.8 found in {found}/{trials}");
    }
}
