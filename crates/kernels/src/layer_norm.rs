//! LayerNorm over the last dimension of a row-major `[rows, features]` input, with per-feature
//! affine, forward and backward in one pass per row each. Statistics are burn's: mean, then the
//! biased variance of the centred row, `1/sqrt(var + eps)`, in f32 as burn's flex kernel; each
//! row sum in f32 lanes, then the lanes as a fixed tree.
//!
//! Work is split into fixed blocks of [`ROWS_PER_TASK`] rows. The only cross-row sums (gamma and
//! beta gradients) are kept per block and added in block order afterwards, so results do not
//! depend on the thread count.

use rayon::prelude::*;

use crate::buffer::filled_in_blocks;
use crate::simd::{LANES, Simd, multiversion};

/// Rows per parallel task; fixed so that the gradient partial sums do not depend on threads.
const ROWS_PER_TASK: usize = 64;

/// Sizes of a LayerNorm input `[rows, features]`, normalised over `features`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNormShape {
    pub rows: usize,
    pub features: usize,
}

impl LayerNormShape {
    /// Elements of the input.
    pub fn len(&self) -> usize {
        self.rows * self.features
    }

    /// Whether the input has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Floats of the statistics the backward needs: mean and 1/std per row.
    pub fn stats_len(&self) -> usize {
        2 * self.rows
    }

    fn blocks(&self) -> usize {
        self.rows.div_ceil(ROWS_PER_TASK)
    }

    fn check(&self, x: &[f32], gamma: &[f32]) {
        assert_eq!(x.len(), self.len(), "input size");
        assert_eq!(gamma.len(), self.features, "gamma size");
    }
}

/// `gamma * (x - mean) / sqrt(var + eps) + beta` with mean and (biased) variance per row, into
/// a new buffer, each block of rows initialised in cache just before it is written; with the
/// statistics the backward needs, `[mean, 1/sqrt(var + eps)]` per row.
pub fn layer_norm_output(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shape: LayerNormShape,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    shape.check(x, gamma);
    assert_eq!(beta.len(), shape.features, "beta size");
    if shape.is_empty() {
        return (vec![0.0; x.len()], vec![0.0; shape.stats_len()]);
    }
    let block = ROWS_PER_TASK * shape.features;
    let (out, stats) = filled_in_blocks(x.len(), block, &[0.0], |b, out| {
        let x = &x[b * block..][..out.len()];
        let mut stats = [0.0; 2 * ROWS_PER_TASK];
        let rows = out.len() / shape.features;
        forward_rows_mv(x, gamma, beta, eps, out, &mut stats[..2 * rows]);
        stats
    });
    // Only the last block can be short: its unused statistics are the tail.
    let mut stats = stats.into_flattened();
    stats.truncate(shape.stats_len());
    (out, stats)
}

multiversion!(fn forward_rows_mv(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
    stats: &mut [f32],
) => forward_rows);

// No closures below: a closure that is not inlined loses the caller's target features, and its
// `mul_add` becomes a libm call.

/// Sum of the lanes as a fixed pairwise tree (vectorises; a serial f64 sum of the lanes would
/// cost more than the rest of a 128-wide row).
#[inline(always)]
fn lane_sum(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0]
}

/// Mean of a row: f32 lanes (the tail added into the first lanes), then [`lane_sum`].
#[inline(always)]
fn row_mean(row: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            acc[l] += chunk[l];
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    lane_sum(acc) / row.len() as f32
}

/// Biased variance of a row about `mean`, summed as [`row_mean`].
#[inline(always)]
fn row_variance<S: Simd>(row: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            let d = chunk[l] - mean;
            acc[l] = S::fma(d, d, acc[l]);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        let d = v - mean;
        *a = S::fma(d, d, *a);
    }
    lane_sum(acc) / row.len() as f32
}

/// The `LANES` values from `i` (bounds checked once, so the lane loop vectorises).
#[inline(always)]
fn lanes(v: &[f32], i: usize) -> &[f32; LANES] {
    v[i..i + LANES].try_into().expect("lanes")
}

/// [`lanes`], writable.
#[inline(always)]
fn lanes_mut(v: &mut [f32], i: usize) -> &mut [f32; LANES] {
    (&mut v[i..i + LANES]).try_into().expect("lanes")
}

#[inline(always)]
fn forward_rows<S: Simd>(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
    stats: &mut [f32],
) {
    let features = gamma.len();
    let full = features / LANES * LANES;
    for ((row, dst), stats) in x
        .chunks_exact(features)
        .zip(out.chunks_exact_mut(features))
        .zip(stats.chunks_exact_mut(2))
    {
        let mean = row_mean(row);
        let rstd = 1.0 / (row_variance::<S>(row, mean) + eps).sqrt();
        stats[0] = mean;
        stats[1] = rstd;
        for i in (0..full).step_by(LANES) {
            let v = lanes(row, i);
            let (g, b) = (lanes(gamma, i), lanes(beta, i));
            let y = lanes_mut(dst, i);
            for l in 0..LANES {
                y[l] = S::fma(v[l] - mean, rstd * g[l], b[l]);
            }
        }
        for f in full..features {
            dst[f] = S::fma(row[f] - mean, rstd * gamma[f], beta[f]);
        }
    }
}

/// Gradients of [`layer_norm_output`] from the input, gamma, the `stats` the forward wrote and
/// the output gradient `d_out`: `dx` (overwritten; skipped when `None`), `dgamma` and `dbeta`
/// (overwritten with the sums over rows).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    d_out: &[f32],
    shape: LayerNormShape,
    dx: Option<&mut [f32]>,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    shape.check(x, gamma);
    assert_eq!(stats.len(), shape.stats_len(), "stats size");
    assert_eq!(d_out.len(), x.len(), "output gradient size");
    assert_eq!(dgamma.len(), shape.features, "gamma gradient size");
    assert_eq!(dbeta.len(), shape.features, "beta gradient size");
    dgamma.fill(0.0);
    dbeta.fill(0.0);
    if shape.is_empty() {
        return;
    }
    let features = shape.features;
    let block = ROWS_PER_TASK * features;
    // Per block: `[sum dy * xhat, sum dy]` per feature, combined in block order below.
    let mut partial = vec![0f32; shape.blocks() * 2 * features];
    let rows_of = |b: usize| b * block..((b + 1) * block).min(x.len());
    let stats_of = |b: usize| 2 * b * ROWS_PER_TASK..(2 * (b + 1) * ROWS_PER_TASK).min(stats.len());
    match dx {
        Some(dx) => {
            assert_eq!(dx.len(), x.len(), "input gradient size");
            dx.par_chunks_mut(block)
                .zip(partial.par_chunks_mut(2 * features))
                .enumerate()
                .for_each(|(b, (dx, partial))| {
                    let rows = rows_of(b);
                    backward_rows_mv(
                        &x[rows.clone()],
                        gamma,
                        &stats[stats_of(b)],
                        &d_out[rows],
                        Some(dx),
                        partial,
                    );
                });
        }
        None => partial
            .par_chunks_mut(2 * features)
            .enumerate()
            .for_each(|(b, partial)| {
                let rows = rows_of(b);
                backward_rows_mv(
                    &x[rows.clone()],
                    gamma,
                    &stats[stats_of(b)],
                    &d_out[rows],
                    None,
                    partial,
                );
            }),
    }
    // Accumulated in f64 over blocks in order, rounded once at the end.
    let mut sums = vec![0f64; 2 * features];
    for block in partial.chunks_exact(2 * features) {
        for (s, &p) in sums.iter_mut().zip(block) {
            *s += p as f64;
        }
    }
    for f in 0..features {
        dgamma[f] = sums[f] as f32;
        dbeta[f] = sums[features + f] as f32;
    }
}

multiversion!(fn backward_rows_mv(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    d_out: &[f32],
    dx: Option<&mut [f32]>,
    partial: &mut [f32],
) => backward_rows);

/// One block of rows: `dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))` with
/// `dxhat = gamma * dy`, and `partial = [sum dy * xhat, sum dy]` per feature over the block.
#[inline(always)]
fn backward_rows<S: Simd>(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    d_out: &[f32],
    mut dx: Option<&mut [f32]>,
    partial: &mut [f32],
) {
    let features = gamma.len();
    let full = features / LANES * LANES;
    let (dgamma, dbeta) = partial.split_at_mut(features);
    for (r, ((row, dy), stats)) in x
        .chunks_exact(features)
        .zip(d_out.chunks_exact(features))
        .zip(stats.chunks_exact(2))
        .enumerate()
    {
        let (mean, rstd) = (stats[0], stats[1]);
        // Pass 1: the parameter gradients and the two row sums of the input gradient.
        let mut acc_dxhat = [0f32; LANES];
        let mut acc_dxhat_xhat = [0f32; LANES];
        for i in (0..full).step_by(LANES) {
            let (v, g, d) = (lanes(row, i), lanes(gamma, i), lanes(dy, i));
            let dg = lanes_mut(dgamma, i);
            for l in 0..LANES {
                let xhat = (v[l] - mean) * rstd;
                let dxhat = g[l] * d[l];
                acc_dxhat[l] += dxhat;
                acc_dxhat_xhat[l] = S::fma(dxhat, xhat, acc_dxhat_xhat[l]);
                dg[l] = S::fma(d[l], xhat, dg[l]);
            }
            let db = lanes_mut(dbeta, i);
            for l in 0..LANES {
                db[l] += d[l];
            }
        }
        for (l, f) in (full..features).enumerate() {
            let xhat = (row[f] - mean) * rstd;
            let dxhat = gamma[f] * dy[f];
            acc_dxhat[l] += dxhat;
            acc_dxhat_xhat[l] = S::fma(dxhat, xhat, acc_dxhat_xhat[l]);
            dgamma[f] = S::fma(dy[f], xhat, dgamma[f]);
            dbeta[f] += dy[f];
        }
        let Some(dx) = dx.as_deref_mut() else {
            continue;
        };
        // Pass 2: the input gradient, recomputing xhat and dxhat (cheaper than storing them).
        let n = features as f32;
        let mean_dxhat = lane_sum(acc_dxhat) / n;
        let mean_dxhat_xhat = lane_sum(acc_dxhat_xhat) / n;
        let dx = &mut dx[r * features..][..features];
        for f in 0..features {
            let xhat = (row[f] - mean) * rstd;
            dx[f] = rstd * (S::fma(gamma[f], dy[f], -mean_dxhat) - xhat * mean_dxhat_xhat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::{max_rel, on_threads, pseudo_random as values};

    use crate::norm::GroupNormShape;
    use crate::norm::tests::{Reference, reference as group_norm_reference};

    /// The f64 reference: GroupNorm's, with one group over all features of a row.
    fn reference(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        d_out: &[f32],
        shape: LayerNormShape,
        eps: f64,
    ) -> Reference {
        let as_group_norm = GroupNormShape {
            batch: shape.rows,
            channels: shape.features,
            groups: 1,
            spatial: 1,
        };
        group_norm_reference(x, gamma, beta, d_out, as_group_norm, eps, false)
    }

    /// Output, stats, dx, dgamma, dbeta.
    type Results = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

    fn run(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        d_out: &[f32],
        shape: LayerNormShape,
        eps: f32,
    ) -> Results {
        let (out, stats) = layer_norm_output(x, gamma, beta, shape, eps);
        let mut dx = vec![0f32; shape.len()];
        let (mut dgamma, mut dbeta) = (vec![0f32; shape.features], vec![0f32; shape.features]);
        layer_norm_backward(
            x,
            gamma,
            &stats,
            d_out,
            shape,
            Some(&mut dx),
            &mut dgamma,
            &mut dbeta,
        );
        (out, stats, dx, dgamma, dbeta)
    }

    #[test]
    fn matches_f64_reference() {
        // Features below, at and off the lane width; a single row; rows across block boundaries.
        // (One or two features are degenerate: xhat is 0 or ±1 whatever x, dx is ~0, and only
        // rounding noise is left.)
        let cases = [
            (3, 17),
            (1, 5),
            (5, 16),
            (2, 7),
            (130, 33),
            (64, 128),
            (70, 48),
        ];
        for (rows, features) in cases {
            let shape = LayerNormShape { rows, features };
            // An offset larger than the spread checks the two-pass variance.
            let x = values(shape.len(), 1, 2.0, 3.0);
            let gamma = values(features, 2, 1.0, 0.5);
            let beta = values(features, 3, 1.0, 0.0);
            let d_out = values(shape.len(), 4, 1.0, 0.0);
            let eps = 1e-5;
            let (out, _, dx, dgamma, dbeta) = run(&x, &gamma, &beta, &d_out, shape, eps);
            let r = reference(&x, &gamma, &beta, &d_out, shape, eps as f64);
            for (name, got, want) in [
                ("out", &out, &r.out),
                ("dx", &dx, &r.dx),
                ("dgamma", &dgamma, &r.dgamma),
                ("dbeta", &dbeta, &r.dbeta),
            ] {
                let err = max_rel(got, want);
                assert!(err < 2e-6, "{shape:?}: {name} relative error {err}");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Several blocks, the last one partial.
        let shape = LayerNormShape {
            rows: 3 * ROWS_PER_TASK + 5,
            features: 37,
        };
        let x = values(shape.len(), 8, 1.0, 0.5);
        let gamma = values(37, 9, 1.0, 1.0);
        let beta = values(37, 10, 1.0, 0.0);
        let d_out = values(shape.len(), 11, 1.0, 0.0);
        let one = on_threads(1, || run(&x, &gamma, &beta, &d_out, shape, 1e-5));
        for threads in [2, 3] {
            let many = on_threads(threads, || run(&x, &gamma, &beta, &d_out, shape, 1e-5));
            assert!(
                one == many,
                "results differ between 1 and {threads} threads"
            );
        }
    }

    #[test]
    fn leaving_out_the_input_gradient_keeps_the_others() {
        let shape = LayerNormShape {
            rows: 70,
            features: 20,
        };
        let x = values(shape.len(), 5, 1.0, 0.0);
        let gamma = values(20, 6, 1.0, 1.0);
        let beta = values(20, 7, 1.0, 0.0);
        let d_out = values(shape.len(), 12, 1.0, 0.0);
        let (_, stats, _, dgamma, dbeta) = run(&x, &gamma, &beta, &d_out, shape, 1e-6);
        let (mut dgamma_without_dx, mut dbeta_without_dx) = (vec![0f32; 20], vec![0f32; 20]);
        layer_norm_backward(
            &x,
            &gamma,
            &stats,
            &d_out,
            shape,
            None,
            &mut dgamma_without_dx,
            &mut dbeta_without_dx,
        );
        assert_eq!(dgamma, dgamma_without_dx);
        assert_eq!(dbeta, dbeta_without_dx);
    }
}
