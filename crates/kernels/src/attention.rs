//! Scaled dot-product attention over token-major buffers, a block of query rows at a time:
//! the score block and the products with the values are matrix products, the softmax between
//! them a vector pass with a vectorised `exp` instead of libm's scalar `expf` (an `exp2` on
//! scores in base-2 units outside AVX-512: see [`ScoreUnits`]). On AVX-512 the
//! products are register-tile kernels (module `avx512`): score blocks from the head's keys packed
//! once per task, with row maxima, exponentials or score gradients applied before the store;
//! products with a head-wide result read the narrow operand in place. Elsewhere (and for the
//! backward score blocks of long key rows, where it measured faster) `gemm` computes them,
//! reading heads in place through strides.
//!
//! Queries are `[batch, queries, heads * head_dim]` and keys and values
//! `[batch, keys, heads * head_dim]`, row-major: the layout the projections produce. Score
//! blocks are bounded in size, never the whole `[queries, keys]` matrix of a long sequence.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::exp::exp2_lanes;
use crate::simd::{LANES, Simd, multiversion};

#[cfg(target_arch = "x86_64")]
mod bf16;

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
    }

    /// Query rows per score block: the block (`rows * keys` floats) stays within L2.
    fn block_rows(&self, block_floats: usize) -> usize {
        (block_floats / self.keys).clamp(MIN_BLOCK_ROWS, MAX_BLOCK_ROWS)
    }
}

/// Query rows per forward task (rounded up to whole blocks).
const FORWARD_TASK_ROWS: usize = 1024;
/// Score floats per forward block (256 KiB).
const FORWARD_BLOCK_FLOATS: usize = 64 * 1024;
/// Score floats per backward block, which holds two such blocks (probabilities and their
/// gradients).
const BACKWARD_BLOCK_FLOATS: usize = 64 * 1024;
/// Longest rows of keys for which the backward pass uses the register-tile score kernels.
const PACKED_BACKWARD_MAX_KEYS: usize = 128;
/// Fewest query rows per block, however many keys: below this the products are too thin.
const MIN_BLOCK_ROWS: usize = 16;
/// Most query rows per block, however few keys.
const MAX_BLOCK_ROWS: usize = 256;

/// Floats between rows of a score block: whole vectors, and an odd number of cache lines so
/// that the rows a register tile reads together do not fall into the same cache sets (a
/// power-of-two stride, 1024 keys say, would).
fn score_stride(keys: usize) -> usize {
    let lines = keys.div_ceil(16);
    (lines | 1) * 16
}

/// A buffer that parallel tasks write at disjoint positions.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own rows of its own head).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// A strided matrix operand: element `(i, j)` at `ptr + i * rows + j * cols`.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    rows: isize,
    cols: isize,
}

impl Operand {
    /// Row-major with `stride` floats between rows.
    fn rows(ptr: *const f32, stride: usize) -> Self {
        Self {
            ptr,
            rows: stride as isize,
            cols: 1,
        }
    }

    /// The transpose of row-major rows with `stride` floats between them.
    fn transposed(ptr: *const f32, stride: usize) -> Self {
        Self {
            ptr,
            rows: 1,
            cols: stride as isize,
        }
    }
}

/// `dst = beta * lhs rhs`, or `dst += beta * lhs rhs` when `accumulate`, with `lhs` `[m, k]`,
/// `rhs` `[k, n]` and `dst` row-major `[m, n]` with `dst_stride` floats between rows;
/// single-threaded (callers parallelise over fixed blocks, so results do not depend on
/// scheduling).
///
/// # Safety
/// The operands must be valid for the extents given, and `dst` not aliased by them.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_stride: usize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    beta: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            accumulate,
            lhs.ptr,
            lhs.cols,
            lhs.rows,
            rhs.ptr,
            rhs.cols,
            rhs.rows,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// [`product`] for a result of a head's width (`n` columns): the AVX-512 register tiles of
/// [`avx512`] where the CPU has them and `rhs` rows are contiguous, else `gemm`.
///
/// # Safety
/// As for [`product`].
#[allow(clippy::too_many_arguments)]
unsafe fn narrow_product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_stride: usize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    beta: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if n <= avx512::MAX_COLUMNS && rhs.cols == 1 && crate::simd::isa() == crate::simd::Isa::Avx512 {
        // SAFETY: AVX-512F detected; extents forwarded from the caller.
        unsafe {
            avx512::product(
                m,
                n,
                k,
                dst,
                dst_stride,
                accumulate,
                lhs.ptr,
                lhs.rows as usize,
                lhs.cols as usize,
                rhs.ptr,
                rhs.rows as usize,
                beta,
            )
        };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { product(m, n, k, dst, dst_stride, accumulate, lhs, rhs, beta) };
}

/// `out = softmax(scale * q k^T) v` per batch and head. Writes the log-sum-exp of each row's
/// scaled scores to `lse` (`[batch, heads, queries]`) when given: the backward pass needs it.
/// Without `lse` (sampling), with bf16 products on AMX and enough keys, the products run in
/// bf16 (module `bf16`).
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
    #[cfg(target_arch = "x86_64")]
    if lse.is_none() && shape.keys >= BF16_MIN_KEYS && bf16_on_tiles() {
        // SAFETY: AMX (and AVX512-BF16) run here; sizes checked above.
        unsafe { bf16::forward::<crate::bf16::amx::Amx>(q, k, v, shape, scale, out) };
        return;
    }
    let lse_ptr = lse.map(|l| {
        assert_eq!(
            l.len(),
            shape.batch * shape.heads * shape.queries,
            "lse size"
        );
        SharedMut(l.as_mut_ptr())
    });
    let out_ptr = SharedMut(out.as_mut_ptr());
    let block_rows = shape.block_rows(FORWARD_BLOCK_FLOATS);
    // Tasks of whole blocks, enough rows to amortise copying the head's keys transposed.
    let task_rows = block_rows * FORWARD_TASK_ROWS.div_ceil(block_rows);
    let chunks = shape.queries.div_ceil(task_rows);
    let packed = packed_kernels();
    (0..shape.batch * shape.heads * chunks)
        .into_par_iter()
        .for_each_init(ForwardScratch::default, |scratch, task| {
            let chunk = task % chunks;
            let head = (task / chunks) % shape.heads;
            let b = task / (chunks * shape.heads);
            let (keys, d, w) = (shape.keys, shape.head_dim, shape.width());
            #[cfg(target_arch = "x86_64")]
            if packed {
                avx512::pack_transposed(
                    &k[b * keys * w + head * d..],
                    keys,
                    w,
                    d,
                    scale,
                    &mut scratch.kt,
                );
            }
            let end = ((chunk + 1) * task_rows).min(shape.queries);
            let mut start = chunk * task_rows;
            while start < end {
                let rows = block_rows.min(end - start);
                forward_block(
                    q, k, v, shape, scale, b, head, start, rows, out_ptr, lse_ptr, packed, scratch,
                );
                start += rows;
            }
        });
}

/// Fewest keys for which sampling's attention takes the bf16 tiles: below, packing each head's
/// keys and values and padding the keys to 64 cost more than the products save (measured on a
/// 2-core Intel Xeon with AMX: 1.6-2.7x slower than f32 at 16 and 64 keys, even at 128 to 192,
/// 1.05-1.1x faster at 256, 1.27x at 1024).
const BF16_MIN_KEYS: usize = 256;

/// Whether a forward pass without log-sum-exps (sampling) runs its products in bf16 on AMX
/// tiles ([`bf16`]): bf16 products are on and AMX is their engine.
#[cfg(target_arch = "x86_64")]
fn bf16_on_tiles() -> bool {
    crate::bf16::products_in_bf16() && crate::bf16::engine() == crate::bf16::Engine::Amx
}

/// Whether this CPU runs the AVX-512 register-tile kernels (on packed transposed keys and
/// values) rather than `gemm` everywhere.
fn packed_kernels() -> bool {
    cfg!(target_arch = "x86_64") && crate::simd::isa() == crate::simd::Isa::Avx512
}

#[derive(Default)]
struct ForwardScratch {
    kt: Vec<f32>,
    scores: Vec<f32>,
    max_lanes: Vec<f32>,
    row_max: Vec<f32>,
    lse: Vec<f32>,
    inv_sum: Vec<f32>,
}

/// Rows `start..start + rows` of head `head` of batch entry `b`; `s.kt` holds the head's keys
/// from [`avx512::pack_transposed`] when `packed`.
#[allow(clippy::too_many_arguments)]
fn forward_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    b: usize,
    head: usize,
    start: usize,
    rows: usize,
    out: SharedMut,
    lse: Option<SharedMut>,
    packed: bool,
    s: &mut ForwardScratch,
) {
    let (keys, d, w) = (shape.keys, shape.head_dim, shape.width());
    let units = ScoreUnits::of(packed);
    let ld = score_stride(keys);
    s.scores.resize(rows * ld, 0.0);
    s.row_max.resize(rows, 0.0);
    s.lse.resize(rows, 0.0);
    s.inv_sum.resize(rows, 0.0);
    let q_offset = (b * shape.queries + start) * w + head * d;
    let kv_offset = b * keys * w + head * d;
    // SAFETY: the operands lie inside `q`, `k`, `v` (checked sizes) and the scratch blocks;
    // the output rows of this block and head belong to this task alone.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if packed {
            s.max_lanes.resize(rows * 16, 0.0);
            avx512::wide_product::<{ avx512::epilogue::SCORES }>(
                rows,
                keys,
                d,
                q.as_ptr().add(q_offset),
                w,
                s.kt.as_ptr(),
                s.scores.as_mut_ptr(),
                ld,
                &avx512::Extra {
                    max_lanes: s.max_lanes.as_mut_ptr(),
                    row_values: std::ptr::null(),
                    p: std::ptr::null(),
                },
            );
            for (m, lanes) in s.row_max.iter_mut().zip(s.max_lanes.chunks_exact(16)) {
                *m = reduce_lanes(lanes.try_into().unwrap(), f32::max);
            }
        }
        if !packed {
            product(
                rows,
                keys,
                d,
                s.scores.as_mut_ptr(),
                ld,
                false,
                Operand::rows(q.as_ptr().add(q_offset), w),
                Operand::transposed(k.as_ptr().add(kv_offset), w),
                scale * units.per_natural(),
            );
            row_maxima_mv(&s.scores, ld, keys, &mut s.row_max);
        }
        softmax_rows_mv(
            &mut s.scores,
            ld,
            keys,
            &s.row_max,
            &mut s.lse,
            &mut s.inv_sum,
            units,
        );
        let out_block = out.0.add(q_offset);
        narrow_product(
            rows,
            d,
            keys,
            out_block,
            w,
            false,
            Operand::rows(s.scores.as_ptr(), ld),
            Operand::rows(v.as_ptr().add(kv_offset), w),
            1.0,
        );
        for (r, &inv) in s.inv_sum.iter().enumerate() {
            let row = std::slice::from_raw_parts_mut(out_block.add(r * w), d);
            for o in row {
                *o *= inv;
            }
        }
        if let Some(l) = lse {
            let dst = l.0.add((b * shape.heads + head) * shape.queries + start);
            std::ptr::copy_nonoverlapping(s.lse.as_ptr(), dst, rows);
        }
    }
}

/// Units of the score blocks: natural in the AVX-512 kernels, which take `exp` on the registers
/// the products leave; base 2 elsewhere, with `log2 e` folded into the products' scale, so that
/// each probability is one `exp2` (a third fewer instructions than `exp`; at head widths of 16
/// to 32 the softmax costs more than the two products around it). The log-sum-exps kept for the
/// backward pass are natural either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScoreUnits {
    Natural,
    Base2,
}

impl ScoreUnits {
    fn of(packed: bool) -> Self {
        if packed { Self::Natural } else { Self::Base2 }
    }

    /// Score units per natural unit.
    fn per_natural(self) -> f32 {
        match self {
            Self::Natural => 1.0,
            Self::Base2 => std::f32::consts::LOG2_E,
        }
    }

    /// The natural log-sum-exp of a row from its maximum and its sum of `exp(s - max)`, both in
    /// these units.
    fn log_sum_exp(self, max: f32, sum: f32) -> f32 {
        match self {
            Self::Natural => max + sum.ln(),
            Self::Base2 => (max + sum.log2()) * std::f32::consts::LN_2,
        }
    }

    /// `x = e^(x - shift)` in these units (`2^(x - shift)` in base 2) over a row; returns the
    /// sum of the results.
    #[inline(always)]
    fn exp_shifted_sum<S: Simd>(self, row: &mut [f32], shift: f32) -> f32 {
        match self {
            // SAFETY: natural units are the AVX-512 kernels' (AVX-512F detected).
            #[cfg(target_arch = "x86_64")]
            Self::Natural => unsafe { avx512::exp_shifted_sum(row, shift) },
            #[cfg(not(target_arch = "x86_64"))]
            Self::Natural => unreachable!("natural score units are the AVX-512 kernels'"),
            Self::Base2 => exp2_shifted_sum::<S>(row, shift),
        }
    }
}

multiversion!(fn softmax_rows_mv(
    scores: &mut [f32],
    stride: usize,
    keys: usize,
    row_max: &[f32],
    lse: &mut [f32],
    inv_sum: &mut [f32],
    units: ScoreUnits,
) => softmax_rows);

/// Replaces each row of scores by its unnormalised probabilities `exp(s - max)`; writes the
/// row's log-sum-exp and the reciprocal of the sum of its probabilities.
#[inline(always)]
fn softmax_rows<S: Simd>(
    scores: &mut [f32],
    stride: usize,
    keys: usize,
    row_max: &[f32],
    lse: &mut [f32],
    inv_sum: &mut [f32],
    units: ScoreUnits,
) {
    for (r, row) in scores.chunks_exact_mut(stride).enumerate() {
        let m = row_max[r];
        let sum = units.exp_shifted_sum::<S>(&mut row[..keys], m);
        lse[r] = units.log_sum_exp(m, sum);
        inv_sum[r] = 1.0 / sum;
    }
}

/// `x = 2^(x - shift)` over a row; returns the sum of the results.
#[inline(always)]
fn exp2_shifted_sum<S: Simd>(row: &mut [f32], shift: f32) -> f32 {
    let mut sum_lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let mut x: [f32; LANES] = (&*chunk).try_into().unwrap();
        for xl in &mut x {
            *xl -= shift;
        }
        let p = exp2_lanes::<S>(x);
        chunk.copy_from_slice(&p);
        for l in 0..LANES {
            sum_lanes[l] += p[l];
        }
    }
    // The remainder on one vector too: padding lanes are computed and dropped.
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut x = [0f32; LANES];
        for (xl, &t) in x.iter_mut().zip(&*tail) {
            *xl = t - shift;
        }
        let p = exp2_lanes::<S>(x);
        for (l, t) in tail.iter_mut().enumerate() {
            *t = p[l];
            sum_lanes[l] += p[l];
        }
    }
    reduce_lanes(sum_lanes, |a, b| a + b)
}

multiversion!(fn row_maxima_mv(scores: &[f32], stride: usize, keys: usize, row_max: &mut [f32])
    => row_maxima);

/// The largest of the first `keys` scores of each row.
#[inline(always)]
fn row_maxima<S: Simd>(scores: &[f32], stride: usize, keys: usize, row_max: &mut [f32]) {
    for (m, row) in row_max.iter_mut().zip(scores.chunks_exact(stride)) {
        *m = max(&row[..keys]);
    }
}

/// Largest element of a row (the remainder on one padded vector too). A comparison rather than
/// `f32::max`, whose NaN rule costs two more instructions a vector: scores are finite.
#[inline(always)]
fn max(row: &[f32]) -> f32 {
    let larger = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            lanes[l] = larger(lanes[l], chunk[l]);
        }
    }
    for (l, &x) in chunks.remainder().iter().enumerate() {
        lanes[l] = larger(lanes[l], x);
    }
    reduce_lanes(lanes, larger)
}

/// Combines the lanes pairwise in halves: shuffles, not a 16-step chain.
#[inline(always)]
fn reduce_lanes(mut lanes: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            lanes[l] = op(lanes[l], lanes[l + half]);
        }
        half /= 2;
    }
    lanes[0]
}

/// Gradients of [`attention_forward`]: from the inputs, the output `out`, its log-sum-exps `lse`
/// and the output gradient `d_out`, writes `d_q`, `d_k` and `d_v` (same layouts as the inputs).
/// Probabilities are recomputed a block of query rows at a time, never stored whole.
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
    if shape.queries == 0 {
        d_k.fill(0.0);
        d_v.fill(0.0);
        return;
    }
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
    // One task per batch entry and head: it owns that head's key and value gradients, summed
    // over its query blocks in order.
    (0..shape.batch * shape.heads)
        .into_par_iter()
        .for_each_init(BackwardScratch::default, |scratch, task| {
            backward_head(&inputs, shape, scale, task, dq, dk, dv, scratch);
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
    p: Vec<f32>,
    ds: Vec<f32>,
    delta: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn backward_head(
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
    let block_rows = shape.block_rows(BACKWARD_BLOCK_FLOATS);
    let ld = score_stride(keys);
    let kv_offset = b * keys * w + head * d;
    let (k_head, v_head) = (
        // SAFETY: inside `k` and `v` (checked sizes).
        unsafe { x.k.as_ptr().add(kv_offset) },
        unsafe { x.v.as_ptr().add(kv_offset) },
    );
    let (dk_head, dv_head) = (
        // SAFETY: inside `d_k` and `d_v`; these columns of these rows are this task's alone.
        unsafe { dk.0.add(kv_offset) },
        unsafe { dv.0.add(kv_offset) },
    );
    // Measured: `gemm` recomputes probabilities and their gradients faster over long rows of
    // keys, the register tiles (no remainder tiles) over short ones such as 77 text tokens.
    let packed = packed_kernels() && keys <= PACKED_BACKWARD_MAX_KEYS;
    #[cfg(target_arch = "x86_64")]
    if packed {
        avx512::pack_transposed(&x.k[kv_offset..], keys, w, d, scale, &mut s.kt);
        avx512::pack_transposed(&x.v[kv_offset..], keys, w, d, 1.0, &mut s.vt);
    }
    let mut start = 0;
    while start < shape.queries {
        let rows = block_rows.min(shape.queries - start);
        s.p.resize(rows * ld, 0.0);
        s.ds.resize(rows * ld, 0.0);
        s.delta.resize(rows, 0.0);
        let q_offset = (b * shape.queries + start) * w + head * d;
        let lse = &x.lse[(b * shape.heads + head) * shape.queries + start..][..rows];
        // delta_i = sum_c dO_ic O_ic = sum_j P_ij dP_ij.
        for (r, delta) in s.delta.iter_mut().enumerate() {
            let row = q_offset + r * w;
            *delta = x.d_out[row..][..d]
                .iter()
                .zip(&x.out[row..][..d])
                .map(|(g, o)| g * o)
                .sum();
        }
        let accumulate = start > 0;
        // SAFETY: operands inside the checked input buffers and the scratch blocks; `dq` rows
        // of this block and head, and `dk`, `dv` of this head, are written by this task alone.
        unsafe {
            let (q_blk, do_blk) = (
                Operand::rows(x.q.as_ptr().add(q_offset), w),
                Operand::rows(x.d_out.as_ptr().add(q_offset), w),
            );
            // Probabilities, recomputed from the saved log-sum-exps.
            #[cfg(target_arch = "x86_64")]
            if packed {
                avx512::wide_product::<{ avx512::epilogue::PROBABILITIES }>(
                    rows,
                    keys,
                    d,
                    q_blk.ptr,
                    w,
                    s.kt.as_ptr(),
                    s.p.as_mut_ptr(),
                    ld,
                    &avx512::Extra {
                        max_lanes: std::ptr::null_mut(),
                        row_values: lse.as_ptr(),
                        p: std::ptr::null(),
                    },
                );
            }
            if !packed {
                product(
                    rows,
                    keys,
                    d,
                    s.p.as_mut_ptr(),
                    ld,
                    false,
                    q_blk,
                    Operand::transposed(k_head, w),
                    scale * ScoreUnits::Base2.per_natural(),
                );
                exp_minus_rows_mv(&mut s.p, ld, keys, lse, ScoreUnits::Base2);
            }
            // dV += P^T dO.
            narrow_product(
                keys,
                d,
                rows,
                dv_head,
                w,
                accumulate,
                Operand::transposed(s.p.as_ptr(), ld),
                do_blk,
                1.0,
            );
            // dP = dO V^T, then dS = P (dP - delta).
            #[cfg(target_arch = "x86_64")]
            if packed {
                avx512::wide_product::<{ avx512::epilogue::SCORE_GRADIENTS }>(
                    rows,
                    keys,
                    d,
                    do_blk.ptr,
                    w,
                    s.vt.as_ptr(),
                    s.ds.as_mut_ptr(),
                    ld,
                    &avx512::Extra {
                        max_lanes: std::ptr::null_mut(),
                        row_values: s.delta.as_ptr(),
                        p: s.p.as_ptr(),
                    },
                );
            }
            if !packed {
                product(
                    rows,
                    keys,
                    d,
                    s.ds.as_mut_ptr(),
                    ld,
                    false,
                    do_blk,
                    Operand::transposed(v_head, w),
                    1.0,
                );
                score_gradients_mv(&mut s.ds, &s.p, ld, keys, &s.delta);
            }
            // dQ = scale dS K; dK += scale dS^T Q.
            narrow_product(
                rows,
                d,
                keys,
                dq.0.add(q_offset),
                w,
                false,
                Operand::rows(s.ds.as_ptr(), ld),
                Operand::rows(k_head, w),
                scale,
            );
            narrow_product(
                keys,
                d,
                rows,
                dk_head,
                w,
                accumulate,
                Operand::transposed(s.ds.as_ptr(), ld),
                q_blk,
                scale,
            );
        }
        start += rows;
    }
}

multiversion!(fn exp_minus_rows_mv(
    p: &mut [f32],
    stride: usize,
    keys: usize,
    lse: &[f32],
    units: ScoreUnits,
) => exp_minus_rows);

/// `p = exp(s - lse)` for each row of scores `s` (in `units`) and its natural log-sum-exp.
#[inline(always)]
fn exp_minus_rows<S: Simd>(
    p: &mut [f32],
    stride: usize,
    keys: usize,
    lse: &[f32],
    units: ScoreUnits,
) {
    for (row, &l) in p.chunks_exact_mut(stride).zip(lse) {
        units.exp_shifted_sum::<S>(&mut row[..keys], l * units.per_natural());
    }
}

multiversion!(fn score_gradients_mv(
    dp: &mut [f32],
    p: &[f32],
    stride: usize,
    keys: usize,
    delta: &[f32],
) => score_gradients);

/// `ds = p (dp - delta)` row by row, in place of `dp`.
#[inline(always)]
fn score_gradients<S: Simd>(dp: &mut [f32], p: &[f32], stride: usize, keys: usize, delta: &[f32]) {
    for ((dp_row, p_row), &dl) in dp
        .chunks_exact_mut(stride)
        .zip(p.chunks_exact(stride))
        .zip(delta)
    {
        for (g, &pj) in dp_row[..keys].iter_mut().zip(&p_row[..keys]) {
            *g = pj * (*g - dl);
        }
    }
}

/// AVX-512 register-tile kernels. Narrow results (`n` up to 64 columns: one head's channels):
/// `gemm` packs the whole wide operand (a score block) before each such product and its 16 x 6
/// tile keeps few accumulators; here the narrow operand's rows are loaded in place and the wide
/// one's elements broadcast straight from memory. Score blocks: from keys or values packed once
/// per task, with the row maxima, the exponentials or the score gradients done on the registers
/// before they are stored (no separate pass over the block).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Widest result these kernels take.
    pub const MAX_COLUMNS: usize = 64;

    /// `dst[i][c] = alpha * sum_t a(i, t) b[t][c]` (added to `dst` when `accumulate`) for
    /// `i < m`, `c < n`, `t < k`, where `a(i, t)` is at `a + i * a_rs + t * a_cs`, row `t` of
    /// `b` at `b + t * b_rs` and row `i` of `dst` at `dst + i * dst_rs`.
    ///
    /// # Safety
    /// AVX-512F must be available; the operands valid for these extents and `dst` not aliased.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn product(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
        alpha: f32,
    ) {
        let p = Product {
            k,
            n,
            dst,
            dst_rs,
            accumulate,
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            alpha,
        };
        // SAFETY: forwarded from the caller.
        unsafe {
            // The two layouts of `a` the attention products use, each with its own addressing:
            // rows contiguous (a score block) or columns contiguous (its transpose).
            match (n.div_ceil(16), a_cs == 1) {
                (1, true) => rows::<1, 8, true>(&p, m),
                (2, true) => rows::<2, 8, true>(&p, m),
                (3, true) => rows::<3, 6, true>(&p, m),
                (4, true) => rows::<4, 6, true>(&p, m),
                (1, false) => rows::<1, 8, false>(&p, m),
                (2, false) => rows::<2, 8, false>(&p, m),
                (3, false) => rows::<3, 6, false>(&p, m),
                (4, false) => rows::<4, 6, false>(&p, m),
                _ => panic!("narrow product of {n} columns"),
            }
        }
    }

    struct Product {
        k: usize,
        n: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
        alpha: f32,
    }

    /// All `m` rows in tiles of `R`, then of 4, then single rows.
    #[inline(always)]
    unsafe fn rows<const NV: usize, const R: usize, const A_ROWS: bool>(p: &Product, m: usize) {
        let mut i = 0;
        // SAFETY: tiles of rows below `m`.
        unsafe {
            while m - i >= R {
                tile::<NV, R, A_ROWS>(p, i);
                i += R;
            }
            while m - i >= 4 {
                tile::<NV, 4, A_ROWS>(p, i);
                i += 4;
            }
            while i < m {
                tile::<NV, 1, A_ROWS>(p, i);
                i += 1;
            }
        }
    }

    /// Rows `i..i + R` of the result, `NV` vectors of 16 columns each (the last one masked).
    #[inline(always)]
    /// `A_ROWS`: `a`'s rows are contiguous (`a_cs == 1`); otherwise its columns are
    /// (`a_rs == 1`).
    unsafe fn tile<const NV: usize, const R: usize, const A_ROWS: bool>(p: &Product, i: usize) {
        let tail = p.n - (NV - 1) * 16;
        let mask: __mmask16 = if tail >= 16 {
            0xffff
        } else {
            (1u16 << tail) - 1
        };
        // SAFETY: the caller's extents; masked lanes are neither read nor written.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; R];
            let a_rows: [*const f32; R] = std::array::from_fn(|r| p.a.add((i + r) * p.a_rs));
            for t in 0..p.k {
                let b_row = p.b.add(t * p.b_rs);
                let mut bv = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    bv[v] = if v == NV - 1 {
                        _mm512_maskz_loadu_ps(mask, b_row.add(16 * v))
                    } else {
                        _mm512_loadu_ps(b_row.add(16 * v))
                    };
                }
                let a_column = p.a.add(i + t * p.a_cs);
                for r in 0..R {
                    let x = _mm512_set1_ps(if A_ROWS {
                        *a_rows[r].add(t)
                    } else {
                        *a_column.add(r)
                    });
                    for v in 0..NV {
                        acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);
                    }
                }
            }
            let alpha = _mm512_set1_ps(p.alpha);
            for r in 0..R {
                let d_row = p.dst.add((i + r) * p.dst_rs);
                for v in 0..NV {
                    let m = if v == NV - 1 { mask } else { 0xffff };
                    let at = d_row.add(16 * v);
                    let mut x = _mm512_mul_ps(acc[r][v], alpha);
                    if p.accumulate {
                        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, at));
                    }
                    _mm512_mask_storeu_ps(at, m, x);
                }
            }
        }
    }

    /// `e^x` per lane: [`crate::exp`]'s reduction and polynomial, with the power of two
    /// applied by `vscalefps` (no integer bit tricks, and no clamping beyond the range where
    /// the reduction stays exact); about 2 ulp, zero below -100.
    #[inline(always)]
    pub unsafe fn exp_ps(x: __m512) -> __m512 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // SAFETY: callers run with AVX-512F.
        unsafe {
            let x = _mm512_min_ps(
                _mm512_max_ps(x, _mm512_set1_ps(-100.0)),
                _mm512_set1_ps(88.5),
            );
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
            let mut p = _mm512_set1_ps(1.987_569_1e-4);
            for c in [
                1.398_199_9e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                1.666_666_5e-1,
                0.5,
            ] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
            }
            let y = _mm512_add_ps(
                _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
                _mm512_set1_ps(1.0),
            );
            _mm512_scalef_ps(y, n)
        }
    }

    /// `x = exp(x - shift)` over a row; returns the sum of the results (lanes summed in a
    /// fixed order).
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        let n = row.len();
        let full = n - n % 16;
        let ptr = row.as_mut_ptr();
        // SAFETY: whole vectors below `full`, the rest masked.
        unsafe {
            let shift = _mm512_set1_ps(shift);
            let mut sum = _mm512_setzero_ps();
            let mut j = 0;
            while j < full {
                let p = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(ptr.add(j)), shift));
                _mm512_storeu_ps(ptr.add(j), p);
                sum = _mm512_add_ps(sum, p);
                j += 16;
            }
            if full < n {
                let mask: __mmask16 = (1u16 << (n - full)) - 1;
                let x = _mm512_maskz_loadu_ps(mask, ptr.add(full));
                let p = exp_ps(_mm512_sub_ps(x, shift));
                _mm512_mask_storeu_ps(ptr.add(full), mask, p);
                sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, p));
            }
            let lanes = std::mem::transmute::<__m512, [f32; 16]>(sum);
            super::reduce_lanes(lanes, |a, b| a + b)
        }
    }

    /// What [`wide_product`] does with each score before storing it.
    pub mod epilogue {
        /// `s`, and each row's lane maxima into `Extra::max_lanes` (`[rows, 16]`,
        /// written whole).
        pub const SCORES: u8 = 0;
        /// `exp(s - Extra::row_values[r])`: probabilities from saved log-sum-exps.
        pub const PROBABILITIES: u8 = 1;
        /// `Extra::p (s - Extra::row_values[r])`: score gradients from `dP` and `P`.
        pub const SCORE_GRADIENTS: u8 = 2;
    }

    /// Per-row inputs and outputs of a [`wide_product`]'s epilogue.
    pub struct Extra {
        pub max_lanes: *mut f32,
        pub row_values: *const f32,
        /// Probabilities with the destination's layout.
        pub p: *const f32,
    }

    /// Copies `keys` rows of `d` floats (`stride` apart) times `scale` into `dst` as
    /// `[d, ldk]`, zero-padded to `ldk = keys` rounded up to whole vectors: the operand layout
    /// of [`wide_product`] (scaled here once rather than every score).
    pub fn pack_transposed(
        src: &[f32],
        keys: usize,
        stride: usize,
        d: usize,
        scale: f32,
        dst: &mut Vec<f32>,
    ) {
        let ldk = keys.next_multiple_of(16);
        assert!(
            keys == 0 || src.len() >= (keys - 1) * stride + d,
            "packed operand extent"
        );
        dst.clear();
        dst.resize(d * ldk, 0.0);
        // Sixteen keys at a time: their rows stay in L1 while each channel's vector is
        // gathered and stored whole.
        for j0 in (0..keys).step_by(16) {
            let n = (keys - j0).min(16);
            for c in 0..d {
                let mut lanes = [0f32; 16];
                for (l, x) in lanes.iter_mut().enumerate().take(n) {
                    // SAFETY: `(j0 + l) < keys` and `c < d`: inside the extent asserted above.
                    *x = scale * unsafe { *src.get_unchecked((j0 + l) * stride + c) };
                }
                dst[c * ldk + j0..][..16].copy_from_slice(&lanes);
            }
        }
    }

    /// `s[i][j] = sum_c a[i][c] bt[c][j]` for `i < m`, `j < keys` (computed up to whole
    /// vectors), `c < d`, `a`'s rows `a_rs` apart, `bt` from [`pack_transposed`]; each `s`
    /// goes through the `EPILOGUE` into row `i` of `dst` (`ld` apart, `ld >= ldk`).
    ///
    /// # Safety
    /// AVX-512F must be available; the operands valid for these extents (`m` rows of
    /// `Extra`'s arrays) and `dst` not aliased.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn wide_product<const EPILOGUE: u8>(
        m: usize,
        keys: usize,
        d: usize,
        a: *const f32,
        a_rs: usize,
        bt: *const f32,
        dst: *mut f32,
        ld: usize,
        extra: &Extra,
    ) {
        let w = Wide {
            keys,
            d,
            a,
            a_rs,
            bt,
            ldk: keys.next_multiple_of(16),
            dst,
            ld,
            extra,
        };
        let vectors = w.ldk / 16;
        // SAFETY: tiles inside the extents.
        unsafe {
            let mut i = 0;
            while m - i >= 6 {
                wide_rows::<EPILOGUE, 6>(&w, i, vectors);
                i += 6;
            }
            while i < m {
                wide_rows::<EPILOGUE, 1>(&w, i, vectors);
                i += 1;
            }
        }
    }

    struct Wide<'a> {
        keys: usize,
        d: usize,
        a: *const f32,
        a_rs: usize,
        bt: *const f32,
        ldk: usize,
        dst: *mut f32,
        ld: usize,
        extra: &'a Extra,
    }

    /// Rows `i..i + R` of a [`wide_product`], all key vectors; the rows' running maxima
    /// stay in registers.
    #[inline(always)]
    unsafe fn wide_rows<const EPILOGUE: u8, const R: usize>(w: &Wide, i: usize, vectors: usize) {
        // SAFETY: forwarded from the caller.
        unsafe {
            let mut maxima = [_mm512_set1_ps(f32::NEG_INFINITY); R];
            let mut v = 0;
            while vectors - v >= 4 {
                wide_tile::<EPILOGUE, R, 4>(w, i, v, &mut maxima);
                v += 4;
            }
            while v < vectors {
                wide_tile::<EPILOGUE, R, 1>(w, i, v, &mut maxima);
                v += 1;
            }
            if EPILOGUE == epilogue::SCORES {
                for r in 0..R {
                    _mm512_storeu_ps(w.extra.max_lanes.add((i + r) * 16), maxima[r]);
                }
            }
        }
    }

    /// Rows `i..i + R`, key vectors `v0..v0 + NV` of a [`wide_product`].
    #[inline(always)]
    unsafe fn wide_tile<const EPILOGUE: u8, const R: usize, const NV: usize>(
        w: &Wide,
        i: usize,
        v0: usize,
        maxima: &mut [__m512; R],
    ) {
        // SAFETY: the caller's extents; `bt` rows and `dst` rows hold whole vectors.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; R];
            let a_rows: [*const f32; R] = std::array::from_fn(|r| w.a.add((i + r) * w.a_rs));
            let b_col = w.bt.add(v0 * 16);
            for c in 0..w.d {
                let b_row = b_col.add(c * w.ldk);
                let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(b_row.add(16 * v)));
                for r in 0..R {
                    let x = _mm512_set1_ps(*a_rows[r].add(c));
                    for v in 0..NV {
                        acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);
                    }
                }
            }
            for r in 0..R {
                let row = i + r;
                let d_row = w.dst.add(row * w.ld + v0 * 16);
                for v in 0..NV {
                    let s = acc[r][v];
                    let out = match EPILOGUE {
                        epilogue::SCORES => {
                            let first = (v0 + v) * 16;
                            let valid = w.keys - first;
                            let mask: __mmask16 = if valid >= 16 {
                                0xffff
                            } else {
                                (1u16 << valid) - 1
                            };
                            maxima[r] = _mm512_mask_max_ps(maxima[r], mask, maxima[r], s);
                            s
                        }
                        epilogue::PROBABILITIES => {
                            let z = _mm512_sub_ps(s, _mm512_set1_ps(*w.extra.row_values.add(row)));
                            exp_ps(z)
                        }
                        _ => {
                            let p = _mm512_loadu_ps(w.extra.p.add(row * w.ld + (v0 + v) * 16));
                            let g = _mm512_sub_ps(s, _mm512_set1_ps(*w.extra.row_values.add(row)));
                            _mm512_mul_ps(p, g)
                        }
                    };
                    _mm512_storeu_ps(d_row.add(16 * v), out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::{max_rel_floor, on_threads, pseudo_random};

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

    /// Runs forward and backward on `shape` and checks them against [`reference`].
    fn check_against_reference(s: AttentionShape) {
        let (w, n) = (s.width(), s.batch);
        let q = pseudo_random(n * s.queries * w, 1, 2.0, 0.0);
        let k = pseudo_random(n * s.keys * w, 2, 2.0, 0.0);
        let v = pseudo_random(n * s.keys * w, 3, 2.0, 0.0);
        let d_out = pseudo_random(n * s.queries * w, 4, 2.0, 0.0);
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; n * s.heads * s.queries];
        attention_forward(&q, &k, &v, s, scale, &mut out, Some(&mut lse));
        // Gradient buffers start dirty: the kernels must overwrite, not add.
        let (mut dq, mut dk, mut dv) = (
            vec![f32::NAN; q.len()],
            vec![f32::NAN; k.len()],
            vec![f32::NAN; v.len()],
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
            // With a single key the score gradients are zero, up to the rounding of
            // `dP - delta` (terms of size one).
            let floor = if s.keys == 1 { 1.0 } else { 1e-12 };
            let err = max_rel_floor(got, want, floor);
            assert!(
                err < 2e-6,
                "{name} {s:?}: max error {err} of the largest value"
            );
        }
    }

    fn shape(
        batch: usize,
        heads: usize,
        queries: usize,
        keys: usize,
        head_dim: usize,
    ) -> AttentionShape {
        AttentionShape {
            batch,
            heads,
            queries,
            keys,
            head_dim,
        }
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
            check_against_reference(shape(2, heads, queries, keys, head_dim));
        }
    }

    #[test]
    fn odd_sizes_match_the_reference() {
        for s in [
            // A single key: every probability is one.
            shape(2, 2, 13, 1, 16),
            // Keys not a multiple of 16 above and below the backward's switch to `gemm`;
            // queries not a multiple of the block (256 rows for 20 keys, 327 for 200).
            shape(1, 2, 300, 20, 8),
            shape(1, 2, 400, 200, 16),
            shape(1, 1, 70, 129, 16),
            // Each width of the register tiles (16, 32, 48, 64 channels), and past them.
            shape(2, 2, 33, 45, 40),
            shape(1, 2, 29, 31, 64),
            shape(1, 1, 17, 250, 64),
            shape(1, 2, 11, 21, 80),
            shape(1, 1, 7, 5, 200),
            // Forward tasks of more than one block and a partial last task (1024 rows each).
            shape(1, 1, 1500, 300, 8),
        ] {
            check_against_reference(s);
        }
    }

    #[test]
    fn results_do_not_depend_on_scheduling() {
        let s = shape(3, 4, 300, 77, 16);
        let w = s.width();
        let q = pseudo_random(3 * 300 * w, 5, 2.0, 0.0);
        let k = pseudo_random(3 * 77 * w, 6, 2.0, 0.0);
        let v = pseudo_random(3 * 77 * w, 7, 2.0, 0.0);
        let d_out = pseudo_random(3 * 300 * w, 8, 2.0, 0.0);
        let run = |threads: usize| {
            on_threads(threads, || {
                let mut out = vec![0f32; q.len()];
                let mut lse = vec![0f32; 3 * 4 * 300];
                attention_forward(&q, &k, &v, s, 0.25, &mut out, Some(&mut lse));
                let (mut dq, mut dk, mut dv) = (
                    vec![0f32; q.len()],
                    vec![0f32; k.len()],
                    vec![0f32; v.len()],
                );
                attention_backward(
                    &q, &k, &v, &out, &lse, &d_out, s, 0.25, &mut dq, &mut dk, &mut dv,
                );
                [out, lse, dq, dk, dv].map(|x| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
            })
        };
        assert!(run(1) == run(3));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_matches_libm_within_a_few_ulp() {
        if !packed_kernels() {
            return;
        }
        let mut worst = (0f64, 0f32);
        // Up to where a row's sum still fits in f32.
        let mut x = -87.0f32;
        while x < 85.0 {
            let mut row: Vec<f32> = (0..19).map(|l| x + l as f32 * 0.0037).collect();
            let inputs = row.clone();
            // SAFETY: AVX-512F detected.
            let sum = unsafe { avx512::exp_shifted_sum(&mut row, 0.0) };
            let mut want_sum = 0f64;
            for (&xi, &got) in inputs.iter().zip(&row) {
                let want = (xi as f64).exp();
                want_sum += want;
                let err = ((got as f64 - want) / want).abs();
                if err > worst.0 {
                    worst = (err, xi);
                }
            }
            assert!(((sum as f64 - want_sum) / want_sum).abs() < 1e-5);
            x += 0.0613;
        }
        assert!(worst.0 < 5e-7, "worst relative error {worst:?}");
        // Far below the range: zero, not garbage.
        let mut low = [-1e30f32, -200.0, -103.0];
        // SAFETY: AVX-512F detected.
        unsafe { avx512::exp_shifted_sum(&mut low, 0.0) };
        assert!(low.iter().all(|&e| (0.0..1e-38).contains(&e)), "{low:?}");
    }

    /// The AVX-512 narrow products against `gemm`, in both layouts of the wide operand and
    /// accumulating, so that the `gemm` fallback computes the same products.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn narrow_products_match_gemm() {
        if !packed_kernels() {
            return;
        }
        for (m, n, k) in [
            (19, 16, 37),
            (8, 8, 5),
            (13, 40, 64),
            (4, 64, 3),
            (1, 33, 100),
        ] {
            let a = pseudo_random(m * k, 9, 2.0, 0.0);
            let b = pseudo_random(k * (n + 3), 10, 2.0, 0.0);
            for a_is_rows in [true, false] {
                let lhs = if a_is_rows {
                    Operand::rows(a.as_ptr(), k)
                } else {
                    Operand::transposed(a.as_ptr(), m)
                };
                let rhs = Operand::rows(b.as_ptr(), n + 3);
                let start = pseudo_random(m * (n + 1), 11, 2.0, 0.0);
                let (mut want, mut got) = (start.clone(), start.clone());
                for accumulate in [false, true] {
                    // SAFETY: the extents match the buffers above.
                    unsafe {
                        product(m, n, k, want.as_mut_ptr(), n + 1, accumulate, lhs, rhs, 0.5);
                        avx512::product(
                            m,
                            n,
                            k,
                            got.as_mut_ptr(),
                            n + 1,
                            accumulate,
                            lhs.ptr,
                            lhs.rows as usize,
                            lhs.cols as usize,
                            rhs.ptr,
                            n + 3,
                            0.5,
                        );
                    }
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{g} vs {w}");
                    }
                }
            }
        }
    }
}
