//! Scaled dot-product attention over token-major buffers, without materialising the score
//! matrix beyond a few rows at a time.
//!
//! Queries are `[batch, queries, heads * head_dim]` and keys and values
//! `[batch, keys, heads * head_dim]`, row-major: the layout the projections produce, so heads are
//! read in place instead of being transposed out first. The UNet's heads are narrow (8 to 40
//! channels), which makes the exponentials as costly as the products: both run on whole vector
//! registers here, with [`crate::exp`] instead of libm's scalar `expf`.

use rayon::prelude::*;

use crate::exp::exp_lanes;
use crate::simd::{LANES, Simd, multiversion};

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Independent sequences.
    pub batch: usize,
    /// Heads per sequence.
    pub heads: usize,
    /// Query tokens per sequence.
    pub queries: usize,
    /// Key (and value) tokens per sequence.
    pub keys: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Channels of a token row: `heads * head_dim`.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn check(&self, q: &[f32], k: &[f32], v: &[f32], out: &[f32]) {
        let w = self.width();
        assert_eq!(q.len(), self.batch * self.queries * w, "query buffer size");
        assert_eq!(k.len(), self.batch * self.keys * w, "key buffer size");
        assert_eq!(v.len(), self.batch * self.keys * w, "value buffer size");
        assert_eq!(out.len(), q.len(), "output buffer size");
        assert!(self.keys > 0, "attention over zero keys");
        assert!(
            self.head_dim <= MAX_HEAD_DIM,
            "head width {} above {MAX_HEAD_DIM}",
            self.head_dim
        );
    }
}

/// Query rows per parallel task: enough work to amortise the per-task transpose of the head's
/// keys and values.
const QUERY_TILE: usize = 256;
/// Query rows sharing each load of a key or value vector.
const ROWS: usize = 4;

/// A buffer that parallel tasks write at disjoint positions.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own rows of its own head).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `out = softmax(scale * q k^T) v` per batch and head. Writes the log-sum-exp of each row's
/// scaled scores to `lse` (`[batch, heads, queries]`) when given: the backward pass needs it.
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    shape.check(q, k, v, out);
    let lse_ptr = lse.map(|l| {
        assert_eq!(
            l.len(),
            shape.batch * shape.heads * shape.queries,
            "lse size"
        );
        SharedMut(l.as_mut_ptr())
    });
    let out_ptr = SharedMut(out.as_mut_ptr());
    let tiles = shape.queries.div_ceil(QUERY_TILE);
    (0..shape.batch * shape.heads * tiles)
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, task| {
            let tile = task % tiles;
            let head = (task / tiles) % shape.heads;
            let b = task / (tiles * shape.heads);
            forward_tile_mv(
                q, k, v, shape, scale, b, head, tile, out_ptr, lse_ptr, scratch,
            );
        });
}

multiversion!(fn forward_tile_mv(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    b: usize,
    head: usize,
    tile: usize,
    out: SharedMut,
    lse: Option<SharedMut>,
    scratch: &mut Scratch,
) => forward_tile);

#[derive(Default)]
struct Scratch {
    kt: Vec<f32>,
    vt: Vec<f32>,
    scores: Vec<f32>,
}

/// Copies head `head` of `[keys, width]` rows into `[head_dim, keys]`.
#[inline(always)]
fn transpose_head(
    src: &[f32],
    keys: usize,
    width: usize,
    head: usize,
    d: usize,
    dst: &mut Vec<f32>,
) {
    dst.clear();
    dst.resize(d * keys, 0.0);
    for j in 0..keys {
        let row = &src[j * width + head * d..][..d];
        for (c, &x) in row.iter().enumerate() {
            dst[c * keys + j] = x;
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_tile<S: Simd>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    b: usize,
    head: usize,
    tile: usize,
    out: SharedMut,
    lse: Option<SharedMut>,
    scratch: &mut Scratch,
) {
    let (keys, d, w) = (shape.keys, shape.head_dim, shape.width());
    transpose_head(
        &k[b * keys * w..][..keys * w],
        keys,
        w,
        head,
        d,
        &mut scratch.kt,
    );
    transpose_head(
        &v[b * keys * w..][..keys * w],
        keys,
        w,
        head,
        d,
        &mut scratch.vt,
    );
    scratch.scores.resize(ROWS * keys, 0.0);
    let start = tile * QUERY_TILE;
    let end = (start + QUERY_TILE).min(shape.queries);
    let mut i = start;
    while i < end {
        let rows = if end - i >= ROWS { ROWS } else { 1 };
        let mut qs = [[0f32; MAX_HEAD_DIM]; ROWS];
        for (r, qr) in qs.iter_mut().enumerate().take(rows) {
            let src = &q[(b * shape.queries + i + r) * w + head * d..][..d];
            for c in 0..d {
                qr[c] = src[c] * scale;
            }
        }
        let mut outs = [[0f32; MAX_HEAD_DIM]; ROWS];
        let mut row_lse = [0f32; ROWS];
        if rows == ROWS {
            rows_forward::<S, ROWS>(&qs, scratch, keys, d, &mut outs, &mut row_lse);
        } else {
            let (qs1, mut outs1, mut lse1) = ([qs[0]], [[0f32; MAX_HEAD_DIM]], [0f32]);
            rows_forward::<S, 1>(&qs1, scratch, keys, d, &mut outs1, &mut lse1);
            (outs[0], row_lse[0]) = (outs1[0], lse1[0]);
        }
        for r in 0..rows {
            let row = b * shape.queries + i + r;
            // SAFETY: row `row`, channels of `head`, belong to this task alone.
            unsafe {
                std::ptr::copy_nonoverlapping(outs[r].as_ptr(), out.0.add(row * w + head * d), d);
                if let Some(l) = lse {
                    *l.0.add((b * shape.heads + head) * shape.queries + i + r) = row_lse[r];
                }
            }
        }
        i += rows;
    }
}

/// Widest head the kernels take (SD's widest is 160 channels at 8 heads and width 1280).
pub const MAX_HEAD_DIM: usize = 256;

/// Softmax attention of `R` pre-scaled query rows against the head's transposed keys and
/// values in `scratch`; writes the outputs and each row's log-sum-exp.
#[inline(always)]
fn rows_forward<S: Simd, const R: usize>(
    qs: &[[f32; MAX_HEAD_DIM]; R],
    scratch: &mut Scratch,
    keys: usize,
    d: usize,
    outs: &mut [[f32; MAX_HEAD_DIM]; R],
    lse: &mut [f32; R],
) {
    let scores = &mut scratch.scores[..R * keys];
    row_products::<S, R>(qs, &scratch.kt, keys, d, scores);
    let full = keys - keys % LANES;
    let mut inv = [0f32; R];
    for r in 0..R {
        let row = &mut scores[r * keys..][..keys];
        let m = max(row);
        let mut sum_lanes = [0f32; LANES];
        let (body, tail) = row.split_at_mut(full);
        for chunk in body.chunks_exact_mut(LANES) {
            let mut x: [f32; LANES] = chunk.try_into().unwrap();
            for xl in &mut x {
                *xl -= m;
            }
            let p = exp_lanes::<S>(x);
            chunk.copy_from_slice(&p);
            for l in 0..LANES {
                sum_lanes[l] += p[l];
            }
        }
        let mut sum = sum_lanes.iter().sum::<f32>();
        for x in tail {
            *x = (*x - m).exp();
            sum += *x;
        }
        lse[r] = m + sum.ln();
        inv[r] = 1.0 / sum;
    }
    weighted_sums::<S, R>(scores, &scratch.vt, keys, d, outs);
    for r in 0..R {
        for o in &mut outs[r][..d] {
            *o *= inv[r];
        }
    }
}

/// `out[r][j] = sum_c a[r][c] * bt[c][j]` for `R` rows `a` and `bt` `[d, keys]`: each vector of
/// `bt` is loaded once for all rows and the accumulators stay in registers.
#[inline(always)]
fn row_products<S: Simd, const R: usize>(
    a: &[[f32; MAX_HEAD_DIM]; R],
    bt: &[f32],
    keys: usize,
    d: usize,
    out: &mut [f32],
) {
    let full = keys - keys % LANES;
    let mut j = 0;
    while j < full {
        let mut acc = [[0f32; LANES]; R];
        for c in 0..d {
            let bc: &[f32; LANES] = bt[c * keys + j..][..LANES].try_into().unwrap();
            for r in 0..R {
                let x = a[r][c];
                for l in 0..LANES {
                    acc[r][l] = S::fma(x, bc[l], acc[r][l]);
                }
            }
        }
        for r in 0..R {
            out[r * keys + j..][..LANES].copy_from_slice(&acc[r]);
        }
        j += LANES;
    }
    for j in full..keys {
        for r in 0..R {
            let mut s = 0.0;
            for c in 0..d {
                s = S::fma(a[r][c], bt[c * keys + j], s);
            }
            out[r * keys + j] = s;
        }
    }
}

/// `out[r][c] = sum_j w[r][j] * bt[c][j]` for `R` rows of weights `w` (`[R, keys]`) and `bt`
/// `[d, keys]`, four channels at a time sharing each load of the weights.
#[inline(always)]
fn weighted_sums<S: Simd, const R: usize>(
    w: &[f32],
    bt: &[f32],
    keys: usize,
    d: usize,
    out: &mut [[f32; MAX_HEAD_DIM]; R],
) {
    let full = keys - keys % LANES;
    for r in 0..R {
        let p = &w[r * keys..][..keys];
        let mut c = 0;
        while c < d {
            let n = (d - c).min(4);
            let v: [&[f32]; 4] = std::array::from_fn(|i| &bt[(c + i.min(n - 1)) * keys..][..keys]);
            // Four named accumulators so that they stay in registers.
            let (mut a0, mut a1, mut a2, mut a3) =
                ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
            let chunks = p[..full]
                .chunks_exact(LANES)
                .zip(v[0][..full].chunks_exact(LANES))
                .zip(v[1][..full].chunks_exact(LANES))
                .zip(v[2][..full].chunks_exact(LANES))
                .zip(v[3][..full].chunks_exact(LANES));
            for ((((pc, v0), v1), v2), v3) in chunks {
                for l in 0..LANES {
                    a0[l] = S::fma(pc[l], v0[l], a0[l]);
                    a1[l] = S::fma(pc[l], v1[l], a1[l]);
                    a2[l] = S::fma(pc[l], v2[l], a2[l]);
                    a3[l] = S::fma(pc[l], v3[l], a3[l]);
                }
            }
            let acc = [a0, a1, a2, a3];
            for i in 0..n {
                let mut o = acc[i].iter().sum::<f32>();
                for j in full..keys {
                    o += p[j] * v[i][j];
                }
                out[r][c + i] = o;
            }
            c += n;
        }
    }
}

/// `acc_t[c][j] += sum_r a[r][c] * w[r][j]` for `R` rows `a`, weights `w` (`[R, keys]`) and the
/// transposed accumulator `acc_t` (`[d, keys]`).
#[inline(always)]
fn accumulate_outer<S: Simd, const R: usize>(
    a: &[[f32; MAX_HEAD_DIM]; R],
    w: &[f32],
    keys: usize,
    d: usize,
    acc_t: &mut [f32],
) {
    // Plain streaming loops over a row of keys: with fixed-size lane chunks here the compiler
    // vectorised across channels instead, with scatters.
    for c in 0..d {
        let dst = &mut acc_t[c * keys..][..keys];
        for r in 0..R {
            let x = a[r][c];
            for (o, &wv) in dst.iter_mut().zip(&w[r * keys..][..keys]) {
                *o = S::fma(x, wv, *o);
            }
        }
    }
}

#[inline(always)]
fn max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            lanes[l] = if chunk[l] > lanes[l] {
                chunk[l]
            } else {
                lanes[l]
            };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(chunks.remainder()) {
        m = if x > m { x } else { m };
    }
    m
}

/// Gradients of [`attention_forward`]: from the inputs, the output `out`, its log-sum-exps `lse`
/// and the output gradient `d_out`, writes `d_q`, `d_k` and `d_v` (same layouts as the inputs).
/// Probabilities are recomputed a few rows at a time, never stored whole.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    shape: AttentionShape,
    scale: f32,
    d_q: &mut [f32],
    d_k: &mut [f32],
    d_v: &mut [f32],
) {
    shape.check(q, k, v, out);
    assert_eq!(d_out.len(), out.len(), "output gradient size");
    assert_eq!(
        lse.len(),
        shape.batch * shape.heads * shape.queries,
        "lse size"
    );
    assert_eq!(d_q.len(), q.len(), "query gradient size");
    assert_eq!(d_k.len(), k.len(), "key gradient size");
    assert_eq!(d_v.len(), v.len(), "value gradient size");
    let (dq, dk, dv) = (
        SharedMut(d_q.as_mut_ptr()),
        SharedMut(d_k.as_mut_ptr()),
        SharedMut(d_v.as_mut_ptr()),
    );
    let inputs = BackwardInputs {
        q,
        k,
        v,
        out,
        lse,
        d_out,
    };
    (0..shape.batch * shape.heads)
        .into_par_iter()
        .for_each_init(BackwardScratch::default, |scratch, task| {
            backward_head_mv(&inputs, shape, scale, task, dq, dk, dv, scratch);
        });
}

struct BackwardInputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    d_out: &'a [f32],
}

#[derive(Default)]
struct BackwardScratch {
    kt: Vec<f32>,
    vt: Vec<f32>,
    dkt: Vec<f32>,
    dvt: Vec<f32>,
    p: Vec<f32>,
    ds: Vec<f32>,
}

multiversion!(fn backward_head_mv(
    inputs: &BackwardInputs,
    shape: AttentionShape,
    scale: f32,
    task: usize,
    dq: SharedMut,
    dk: SharedMut,
    dv: SharedMut,
    scratch: &mut BackwardScratch,
) => backward_head);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_head<S: Simd>(
    x: &BackwardInputs,
    shape: AttentionShape,
    scale: f32,
    task: usize,
    dq: SharedMut,
    dk: SharedMut,
    dv: SharedMut,
    s: &mut BackwardScratch,
) {
    let (keys, d, w) = (shape.keys, shape.head_dim, shape.width());
    let (b, head) = (task / shape.heads, task % shape.heads);
    transpose_head(
        &x.k[b * keys * w..][..keys * w],
        keys,
        w,
        head,
        d,
        &mut s.kt,
    );
    transpose_head(
        &x.v[b * keys * w..][..keys * w],
        keys,
        w,
        head,
        d,
        &mut s.vt,
    );
    for t in [&mut s.dkt, &mut s.dvt] {
        t.clear();
        t.resize(d * keys, 0.0);
    }
    s.p.resize(ROWS * keys, 0.0);
    s.ds.resize(ROWS * keys, 0.0);
    let mut i = 0;
    while i < shape.queries {
        if shape.queries - i >= ROWS {
            backward_rows::<S, ROWS>(x, shape, scale, b, head, i, dq, s);
            i += ROWS;
        } else {
            backward_rows::<S, 1>(x, shape, scale, b, head, i, dq, s);
            i += 1;
        }
    }
    for j in 0..keys {
        let row = (b * keys + j) * w + head * d;
        for c in 0..d {
            // SAFETY: rows of this batch entry, channels of this head: this task's alone.
            unsafe {
                *dk.0.add(row + c) = s.dkt[c * keys + j];
                *dv.0.add(row + c) = s.dvt[c * keys + j];
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_rows<S: Simd, const R: usize>(
    x: &BackwardInputs,
    shape: AttentionShape,
    scale: f32,
    b: usize,
    head: usize,
    i: usize,
    dq: SharedMut,
    s: &mut BackwardScratch,
) {
    let (keys, d, w) = (shape.keys, shape.head_dim, shape.width());
    let full = keys - keys % LANES;
    let mut qs = [[0f32; MAX_HEAD_DIM]; R];
    let mut dos = [[0f32; MAX_HEAD_DIM]; R];
    let mut lse = [0f32; R];
    let mut delta = [0f32; R];
    for r in 0..R {
        let row = (b * shape.queries + i + r) * w + head * d;
        let (qr, o, dor) = (&x.q[row..][..d], &x.out[row..][..d], &x.d_out[row..][..d]);
        let mut dot = 0.0;
        for c in 0..d {
            qs[r][c] = qr[c] * scale;
            dos[r][c] = dor[c];
            dot += dor[c] * o[c];
        }
        delta[r] = dot;
        lse[r] = x.lse[(b * shape.heads + head) * shape.queries + i + r];
    }
    let p = &mut s.p[..R * keys];
    let ds = &mut s.ds[..R * keys];
    // Probabilities, recomputed from the saved log-sum-exps.
    row_products::<S, R>(&qs, &s.kt, keys, d, p);
    for r in 0..R {
        let row = &mut p[r * keys..][..keys];
        let (body, tail) = row.split_at_mut(full);
        for chunk in body.chunks_exact_mut(LANES) {
            let mut z: [f32; LANES] = (&*chunk).try_into().unwrap();
            for zl in &mut z {
                *zl -= lse[r];
            }
            chunk.copy_from_slice(&exp_lanes::<S>(z));
        }
        for z in tail {
            *z = (*z - lse[r]).exp();
        }
    }
    // dP = dO V^T, then dS = P (dP - delta).
    row_products::<S, R>(&dos, &s.vt, keys, d, ds);
    for r in 0..R {
        for (dsj, pj) in ds[r * keys..][..keys]
            .iter_mut()
            .zip(&p[r * keys..][..keys])
        {
            *dsj = pj * (*dsj - delta[r]);
        }
    }
    // dV += P^T dO; dK += dS^T (scale q); dQ = scale dS K.
    accumulate_outer::<S, R>(&dos, p, keys, d, &mut s.dvt);
    accumulate_outer::<S, R>(&qs, ds, keys, d, &mut s.dkt);
    let mut dqs = [[0f32; MAX_HEAD_DIM]; R];
    weighted_sums::<S, R>(ds, &s.kt, keys, d, &mut dqs);
    for r in 0..R {
        let row = (b * shape.queries + i + r) * w + head * d;
        for c in 0..d {
            // SAFETY: row `i + r`, channels of this head: this task's alone.
            unsafe { *dq.0.add(row + c) = dqs[r][c] * scale };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 attention and its gradients by the textbook formulas, materialising everything.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d_out: &[f32],
        s: AttentionShape,
    ) -> [Vec<f64>; 4] {
        let (w, d) = (s.width(), s.head_dim);
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0f64; q.len()];
        let (mut dq, mut dk, mut dv) = (
            vec![0f64; q.len()],
            vec![0f64; k.len()],
            vec![0f64; v.len()],
        );
        for b in 0..s.batch {
            for h in 0..s.heads {
                let qi = |i: usize, c: usize| q[(b * s.queries + i) * w + h * d + c] as f64;
                let kj = |j: usize, c: usize| k[(b * s.keys + j) * w + h * d + c] as f64;
                let vj = |j: usize, c: usize| v[(b * s.keys + j) * w + h * d + c] as f64;
                for i in 0..s.queries {
                    let sc: Vec<f64> = (0..s.keys)
                        .map(|j| (0..d).map(|c| qi(i, c) * kj(j, c)).sum::<f64>() * scale)
                        .collect();
                    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                    let row = (b * s.queries + i) * w + h * d;
                    let go: Vec<f64> = (0..d).map(|c| d_out[row + c] as f64).collect();
                    let dp: Vec<f64> = (0..s.keys)
                        .map(|j| (0..d).map(|c| go[c] * vj(j, c)).sum())
                        .collect();
                    let delta: f64 = (0..s.keys).map(|j| p[j] * dp[j]).sum();
                    for j in 0..s.keys {
                        let dsj = p[j] * (dp[j] - delta);
                        for c in 0..d {
                            out[row + c] += p[j] * vj(j, c);
                            dv[(b * s.keys + j) * w + h * d + c] += p[j] * go[c];
                            dq[row + c] += dsj * kj(j, c) * scale;
                            dk[(b * s.keys + j) * w + h * d + c] += dsj * qi(i, c) * scale;
                        }
                    }
                }
            }
        }
        [out, dq, dk, dv]
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn max_rel(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().map(|x| x.abs()).fold(0.0, f64::max).max(1e-12);
        got.iter()
            .zip(want)
            .map(|(g, w)| (*g as f64 - w).abs() / scale)
            .fold(0.0, f64::max)
    }

    #[test]
    fn forward_and_backward_match_the_reference() {
        // Key counts with and without a lane remainder, query counts with a row remainder,
        // head widths from the UNet's narrowest up to one not divisible by four.
        for (queries, keys, heads, head_dim) in [
            (37, 53, 2, 8),
            (64, 16, 4, 16),
            (9, 77, 1, 40),
            (5, 3, 3, 6),
        ] {
            let s = AttentionShape {
                batch: 2,
                heads,
                queries,
                keys,
                head_dim,
            };
            let w = s.width();
            let q = pseudo_random(2 * queries * w, 1);
            let k = pseudo_random(2 * keys * w, 2);
            let v = pseudo_random(2 * keys * w, 3);
            let d_out = pseudo_random(2 * queries * w, 4);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let mut out = vec![0f32; q.len()];
            let mut lse = vec![0f32; 2 * heads * queries];
            attention_forward(&q, &k, &v, s, scale, &mut out, Some(&mut lse));
            let (mut dq, mut dk, mut dv) = (
                vec![0f32; q.len()],
                vec![0f32; k.len()],
                vec![0f32; v.len()],
            );
            attention_backward(
                &q, &k, &v, &out, &lse, &d_out, s, scale, &mut dq, &mut dk, &mut dv,
            );
            let [r_out, r_dq, r_dk, r_dv] = reference(&q, &k, &v, &d_out, s);
            for (name, got, want) in [
                ("out", &out, &r_out),
                ("dq", &dq, &r_dq),
                ("dk", &dk, &r_dk),
                ("dv", &dv, &r_dv),
            ] {
                let err = max_rel(got, want);
                assert!(
                    err < 2e-6,
                    "{name} {s:?}: max error {err} of the largest value"
                );
            }
        }
    }
}
