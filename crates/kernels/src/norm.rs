//! GroupNorm over `[batch, channels, spatial]` (NCHW with `h * w` flattened), with per-channel
//! affine and an optional SiLU after it, forward and backward in one pass each per group.
//! Statistics use two passes (mean, then centred squares) summed in f32 lanes per channel row
//! and f64 across rows, as burn's `group_norm` (mean, subtract, mean of squares) does in f32.
//!
//! Work is split into one task per (sample, group): each writes its own contiguous block, and
//! the only cross-task sums (gamma and beta gradients over the batch) are added in batch order
//! afterwards, so results do not depend on thread scheduling.

use rayon::prelude::*;

use crate::buffer::filled_in_blocks;
use crate::exp::exp_lanes;
use crate::simd::{LANES, Simd, multiversion};

/// Sizes of a GroupNorm input `[batch, channels, spatial]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNormShape {
    pub batch: usize,
    pub channels: usize,
    pub groups: usize,
    /// Elements per channel (`h * w`).
    pub spatial: usize,
}

impl GroupNormShape {
    /// Elements of the input.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// Whether the input has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels per group.
    pub fn group_channels(&self) -> usize {
        self.channels / self.groups
    }

    /// Floats of the statistics the backward needs: mean and 1/std per (sample, group).
    pub fn stats_len(&self) -> usize {
        2 * self.batch * self.groups
    }

    fn check(&self, x: &[f32], gamma: &[f32], beta: &[f32]) {
        assert!(
            self.groups > 0 && self.channels.is_multiple_of(self.groups),
            "{} channels in {} groups",
            self.channels,
            self.groups
        );
        assert_eq!(x.len(), self.len(), "input size");
        assert_eq!(gamma.len(), self.channels, "gamma size");
        assert_eq!(beta.len(), self.channels, "beta size");
    }
}

/// `silu?(gamma * (x - mean) / sqrt(var + eps) + beta)` with mean and (biased) variance per
/// (sample, group), into a new buffer, each (sample, group) initialised in cache just before it
/// is written; with the statistics the backward needs, `[mean, 1/sqrt(var + eps)]` per
/// (sample, group).
pub fn group_norm_output(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shape: GroupNormShape,
    eps: f32,
    silu: bool,
) -> (Vec<f32>, Vec<f32>) {
    shape.check(x, gamma, beta);
    if shape.is_empty() {
        return (vec![0.0; x.len()], vec![0.0; shape.stats_len()]);
    }
    let forward = forward_unit(x, (gamma, beta), shape, eps, silu);
    let block = shape.group_channels() * shape.spatial;
    let (out, stats) = filled_in_blocks(x.len(), block, &[0.0], |unit, out| {
        let mut stats = [0.0; 2];
        forward(unit, out, &mut stats);
        stats
    });
    (out, stats.into_flattened())
}

/// The forward of one (sample, group), `unit`, into its output and statistics.
fn forward_unit<'a>(
    x: &'a [f32],
    (gamma, beta): (&'a [f32], &'a [f32]),
    shape: GroupNormShape,
    eps: f32,
    silu: bool,
) -> impl Fn(usize, &mut [f32], &mut [f32]) + Sync + 'a {
    let (channels, block) = (
        shape.group_channels(),
        shape.group_channels() * shape.spatial,
    );
    move |unit, out, stats| {
        let c0 = (unit % shape.groups) * channels;
        let (gamma, beta) = (&gamma[c0..][..channels], &beta[c0..][..channels]);
        let x = &x[unit * block..][..block];
        forward_group_mv(x, gamma, beta, shape.spatial, eps, silu, out, stats);
    }
}

multiversion!(fn forward_group_mv(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    spatial: usize,
    eps: f32,
    silu: bool,
    out: &mut [f32],
    stats: &mut [f32],
) => forward_group);

// No closures below: a closure that is not inlined loses the caller's target features, and its
// `mul_add` becomes a libm call.

/// Sum of a row: f32 lanes, then the lanes and the tail in a fixed order.
#[inline(always)]
fn row_sum(row: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            acc[l] += chunk[l];
        }
    }
    let mut total = 0f64;
    for &a in &acc {
        total += a as f64;
    }
    for &v in chunks.remainder() {
        total += v as f64;
    }
    total
}

/// Sum of `(v - mean)^2` over a row, summed as [`row_sum`].
#[inline(always)]
fn row_centred_squares<S: Simd>(row: &[f32], mean: f32) -> f64 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            let d = chunk[l] - mean;
            acc[l] = S::fma(d, d, acc[l]);
        }
    }
    let mut total = 0f64;
    for &a in &acc {
        total += a as f64;
    }
    for &v in chunks.remainder() {
        let d = v - mean;
        total += (d * d) as f64;
    }
    total
}

/// `silu?((v - mean) * scale + shift)` per lane.
#[inline(always)]
fn affine_silu_lanes<S: Simd>(
    v: [f32; LANES],
    mean: f32,
    scale: f32,
    shift: f32,
    silu: bool,
) -> [f32; LANES] {
    let mut y = [0f32; LANES];
    for l in 0..LANES {
        y[l] = S::fma(v[l] - mean, scale, shift);
    }
    if !silu {
        return y;
    }
    let mut neg = [0f32; LANES];
    for l in 0..LANES {
        neg[l] = -y[l];
    }
    let e = exp_lanes::<S>(neg);
    for l in 0..LANES {
        y[l] /= 1.0 + e[l];
    }
    y
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_group<S: Simd>(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    spatial: usize,
    eps: f32,
    silu: bool,
    out: &mut [f32],
    stats: &mut [f32],
) {
    let n = x.len() as f64;
    let mut sum = 0f64;
    for row in x.chunks_exact(spatial) {
        sum += row_sum(row);
    }
    let mean = (sum / n) as f32;
    let mut sq = 0f64;
    for row in x.chunks_exact(spatial) {
        sq += row_centred_squares::<S>(row, mean);
    }
    let var = (sq / n) as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    stats[0] = mean;
    stats[1] = rstd;
    let full = spatial / LANES * LANES;
    for c in 0..gamma.len() {
        let src = &x[c * spatial..][..spatial];
        let dst = &mut out[c * spatial..][..spatial];
        let (scale, shift) = (rstd * gamma[c], beta[c]);
        for i in (0..full).step_by(LANES) {
            let v: [f32; LANES] = src[i..i + LANES].try_into().expect("lanes");
            let y = affine_silu_lanes::<S>(v, mean, scale, shift, silu);
            dst[i..i + LANES].copy_from_slice(&y);
        }
        if full < spatial {
            let rest = spatial - full;
            let mut v = [0f32; LANES];
            v[..rest].copy_from_slice(&src[full..]);
            let y = affine_silu_lanes::<S>(v, mean, scale, shift, silu);
            dst[full..].copy_from_slice(&y[..rest]);
        }
    }
}

/// Gradients of [`group_norm_output`]: `dx` (overwritten), `dgamma` and `dbeta` (overwritten
/// with the sums over batch and space), from the input, the affine parameters, the `stats` the
/// forward wrote and the output gradient `d_out`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[f32],
    d_out: &[f32],
    shape: GroupNormShape,
    silu: bool,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    shape.check(x, gamma, beta);
    assert_eq!(stats.len(), shape.stats_len(), "stats size");
    assert_eq!(d_out.len(), x.len(), "output gradient size");
    assert_eq!(dx.len(), x.len(), "input gradient size");
    assert_eq!(dgamma.len(), shape.channels, "gamma gradient size");
    assert_eq!(dbeta.len(), shape.channels, "beta gradient size");
    dgamma.fill(0.0);
    dbeta.fill(0.0);
    if shape.is_empty() {
        return;
    }
    let cg = shape.group_channels();
    let block = cg * shape.spatial;
    // Per (sample, channel) sums of dz * xhat and dz, combined over samples in order below.
    let mut partial = vec![0f64; 2 * shape.batch * shape.channels];
    dx.par_chunks_mut(block)
        .zip(partial.par_chunks_mut(2 * cg))
        .enumerate()
        .for_each(|(unit, (dx, partial))| {
            let g = unit % shape.groups;
            let c0 = g * cg;
            backward_group_mv(
                &x[unit * block..][..block],
                &gamma[c0..][..cg],
                &beta[c0..][..cg],
                &stats[2 * unit..][..2],
                &d_out[unit * block..][..block],
                shape.spatial,
                silu,
                dx,
                partial,
            );
        });
    // Accumulated in f64 across samples in batch order, rounded once at the end.
    let mut sums = vec![0f64; 2 * shape.channels];
    for sample in partial.chunks_exact(2 * shape.channels) {
        for (s, p) in sums.iter_mut().zip(sample) {
            *s += p;
        }
    }
    for c in 0..shape.channels {
        dgamma[c] = sums[2 * c] as f32;
        dbeta[c] = sums[2 * c + 1] as f32;
    }
}

multiversion!(fn backward_group_mv(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[f32],
    d_out: &[f32],
    spatial: usize,
    silu: bool,
    dx: &mut [f32],
    partial: &mut [f64],
) => backward_group);

/// `(xhat, dz)` per lane: the normalised input and the gradient at the affine output (through
/// SiLU when `silu`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn xhat_dz_lanes<S: Simd>(
    xv: [f32; LANES],
    dy: [f32; LANES],
    mean: f32,
    rstd: f32,
    g: f32,
    b: f32,
    silu: bool,
) -> ([f32; LANES], [f32; LANES]) {
    let mut xhat = [0f32; LANES];
    for l in 0..LANES {
        xhat[l] = (xv[l] - mean) * rstd;
    }
    if !silu {
        return (xhat, dy);
    }
    let mut y = [0f32; LANES];
    let mut neg = [0f32; LANES];
    for l in 0..LANES {
        y[l] = S::fma(xhat[l], g, b);
        neg[l] = -y[l];
    }
    let e = exp_lanes::<S>(neg);
    let mut dz = [0f32; LANES];
    for l in 0..LANES {
        let s = 1.0 / (1.0 + e[l]);
        dz[l] = dy[l] * s * S::fma(y[l], 1.0 - s, 1.0);
    }
    (xhat, dz)
}

/// One (sample, group): `partial` gets `[sum dz * xhat, sum dz]` per channel, where `dz` is the
/// gradient at the affine output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_group<S: Simd>(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[f32],
    d_out: &[f32],
    spatial: usize,
    silu: bool,
    dx: &mut [f32],
    partial: &mut [f64],
) {
    let (mean, rstd) = (stats[0], stats[1]);
    let full = spatial / LANES * LANES;
    let rest = spatial - full;
    // Pass 1: dz into dx, per-channel sums.
    let (mut sum_dxhat, mut sum_dxhat_xhat) = (0f64, 0f64);
    for c in 0..gamma.len() {
        let xs = &x[c * spatial..][..spatial];
        let dys = &d_out[c * spatial..][..spatial];
        let dzs = &mut dx[c * spatial..][..spatial];
        let (g, b) = (gamma[c], beta[c]);
        let mut acc_dz = [0f32; LANES];
        let mut acc_dz_xhat = [0f32; LANES];
        for i in (0..full).step_by(LANES) {
            let (xhat, dz) = xhat_dz_lanes::<S>(
                xs[i..i + LANES].try_into().expect("lanes"),
                dys[i..i + LANES].try_into().expect("lanes"),
                mean,
                rstd,
                g,
                b,
                silu,
            );
            for l in 0..LANES {
                acc_dz[l] += dz[l];
                acc_dz_xhat[l] = S::fma(dz[l], xhat[l], acc_dz_xhat[l]);
            }
            dzs[i..i + LANES].copy_from_slice(&dz);
        }
        if rest > 0 {
            let (mut xv, mut dy) = ([0f32; LANES], [0f32; LANES]);
            xv[..rest].copy_from_slice(&xs[full..]);
            dy[..rest].copy_from_slice(&dys[full..]);
            let (xhat, dz) = xhat_dz_lanes::<S>(xv, dy, mean, rstd, g, b, silu);
            for l in 0..rest {
                acc_dz[l] += dz[l];
                acc_dz_xhat[l] = S::fma(dz[l], xhat[l], acc_dz_xhat[l]);
            }
            dzs[full..].copy_from_slice(&dz[..rest]);
        }
        let (mut dz_sum, mut dz_xhat_sum) = (0f64, 0f64);
        for l in 0..LANES {
            dz_sum += acc_dz[l] as f64;
            dz_xhat_sum += acc_dz_xhat[l] as f64;
        }
        partial[2 * c] = dz_xhat_sum;
        partial[2 * c + 1] = dz_sum;
        sum_dxhat += g as f64 * dz_sum;
        sum_dxhat_xhat += g as f64 * dz_xhat_sum;
    }
    // Pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    let n = x.len() as f64;
    let mean_dxhat = (sum_dxhat / n) as f32;
    let mean_dxhat_xhat = (sum_dxhat_xhat / n) as f32;
    for c in 0..gamma.len() {
        let xs = &x[c * spatial..][..spatial];
        let dzs = &mut dx[c * spatial..][..spatial];
        let g = gamma[c];
        for i in 0..spatial {
            let xhat = (xs[i] - mean) * rstd;
            dzs[i] = rstd * (S::fma(g, dzs[i], -mean_dxhat) - xhat * mean_dxhat_xhat);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_values::{max_rel, on_threads, pseudo_random as values};

    pub(crate) struct Reference {
        pub(crate) out: Vec<f64>,
        pub(crate) dx: Vec<f64>,
        pub(crate) dgamma: Vec<f64>,
        pub(crate) dbeta: Vec<f64>,
    }

    /// The f64 forward and backward, written the direct way (also LayerNorm's: one group, one
    /// spatial element per channel).
    pub(crate) fn reference(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        d_out: &[f32],
        shape: GroupNormShape,
        eps: f64,
        silu: bool,
    ) -> Reference {
        let cg = shape.group_channels();
        let block = cg * shape.spatial;
        let n = block as f64;
        let mut r = Reference {
            out: vec![0.0; x.len()],
            dx: vec![0.0; x.len()],
            dgamma: vec![0.0; shape.channels],
            dbeta: vec![0.0; shape.channels],
        };
        for unit in 0..shape.batch * shape.groups {
            let range = unit * block..(unit + 1) * block;
            let c0 = (unit % shape.groups) * cg;
            let xs: Vec<f64> = x[range.clone()].iter().map(|&v| v as f64).collect();
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let rstd = 1.0 / (var + eps).sqrt();
            let mut dxhat = vec![0.0; block];
            let mut xhat = vec![0.0; block];
            for i in 0..block {
                let c = c0 + i / shape.spatial;
                xhat[i] = (xs[i] - mean) * rstd;
                let y = xhat[i] * gamma[c] as f64 + beta[c] as f64;
                let dy = d_out[range.start + i] as f64;
                let (out, dz) = if silu {
                    let s = 1.0 / (1.0 + (-y).exp());
                    (y * s, dy * (s + y * s * (1.0 - s)))
                } else {
                    (y, dy)
                };
                r.out[range.start + i] = out;
                r.dgamma[c] += dz * xhat[i];
                r.dbeta[c] += dz;
                dxhat[i] = dz * gamma[c] as f64;
            }
            let m1 = dxhat.iter().sum::<f64>() / n;
            let m2 = dxhat.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
            for i in 0..block {
                r.dx[range.start + i] = rstd * (dxhat[i] - m1 - xhat[i] * m2);
            }
        }
        r
    }

    #[test]
    fn matches_f64_reference() {
        // Channels not a multiple of 16, one group, a single spatial element, lane tails.
        let cases = [
            (2, 6, 3, 17, false),
            (2, 6, 3, 17, true),
            (3, 5, 1, 1, true),
            (1, 6, 2, 1, false),
            (2, 32, 8, 64, true),
            (1, 12, 1, 33, false),
        ];
        for (batch, channels, groups, spatial, silu) in cases {
            let shape = GroupNormShape {
                batch,
                channels,
                groups,
                spatial,
            };
            // An offset larger than the spread checks the two-pass variance.
            let x = values(shape.len(), 1, 2.0, 3.0);
            let gamma = values(channels, 2, 1.0, 0.5);
            let beta = values(channels, 3, 1.0, 0.0);
            let d_out = values(shape.len(), 4, 1.0, 0.0);
            let eps = 1e-5;
            let (out, stats) = group_norm_output(&x, &gamma, &beta, shape, eps, silu);
            let (mut dx, mut dgamma, mut dbeta) = (
                vec![0f32; shape.len()],
                vec![0f32; channels],
                vec![0f32; channels],
            );
            group_norm_backward(
                &x,
                &gamma,
                &beta,
                &stats,
                &d_out,
                shape,
                silu,
                &mut dx,
                &mut dgamma,
                &mut dbeta,
            );
            let r = reference(&x, &gamma, &beta, &d_out, shape, eps as f64, silu);
            let case = format!("{shape:?} silu {silu}");
            for (name, got, want) in [
                ("out", &out, &r.out),
                ("dx", &dx, &r.dx),
                ("dgamma", &dgamma, &r.dgamma),
                ("dbeta", &dbeta, &r.dbeta),
            ] {
                let err = max_rel(got, want);
                assert!(err < 2e-6, "{case}: {name} relative error {err}");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let shape = GroupNormShape {
            batch: 3,
            channels: 12,
            groups: 3,
            spatial: 37,
        };
        let x = values(shape.len(), 8, 1.0, 0.5);
        let gamma = values(12, 9, 1.0, 1.0);
        let beta = values(12, 10, 1.0, 0.0);
        let d_out = values(shape.len(), 11, 1.0, 0.0);
        let run = || {
            let (out, stats) = group_norm_output(&x, &gamma, &beta, shape, 1e-5, true);
            let (mut dx, mut dgamma, mut dbeta) =
                (vec![0f32; shape.len()], vec![0f32; 12], vec![0f32; 12]);
            group_norm_backward(
                &x,
                &gamma,
                &beta,
                &stats,
                &d_out,
                shape,
                true,
                &mut dx,
                &mut dgamma,
                &mut dbeta,
            );
            (out, dx, dgamma, dbeta)
        };
        let one = on_threads(1, run);
        let three = on_threads(3, run);
        assert!(one == three, "results differ between 1 and 3 threads");
    }
}
