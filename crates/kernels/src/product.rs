//! The matrix product every kernel here builds on: gemm's f32 product, or the bf16 one when
//! bf16 compute is on.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::bf16::{PackedLhs, matmul_bf16, matmul_bf16_packed};
use crate::buffer::{filled_in_blocks, zeroed};

/// `dst (+)= lhs rhs` for `(m, n, k)`, `dst` row-major `[m, n]`, operands given as (values, row
/// stride, column stride); in bf16 (f32 sums) when `bf16`, else f32 `gemm`.
pub(crate) fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    parallelism: Parallelism,
    bf16: bool,
) {
    assert!(dst.len() >= m * n, "product output too short");
    if bf16 {
        let parallel = !matches!(parallelism, Parallelism::None);
        matmul_bf16(
            m, n, k, dst, n, accumulate, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs, parallel,
        );
        return;
    }
    check_operands((m, n, k), (lhs, lhs_rs, lhs_cs), (rhs, rhs_rs, rhs_cs));
    if m >= 2 * TASK_ROWS && n > 0 {
        // gemm's own split scaled poorly (a 4096 x 1024 x 256 product took as long on 2
        // threads as on 1): blocks of rows of a fixed height, each a product of its own, on
        // one thread too, so that every block is summed alike (gemm takes other routes for
        // thin products) whatever the thread count.
        let dst = &mut dst[..m * n];
        let run_block = |(block, dst): (usize, &mut [f32])| {
            // SAFETY: the operands were checked above.
            unsafe {
                let (lhs, rhs) = ((lhs, lhs_rs, lhs_cs), (rhs, rhs_rs, rhs_cs));
                product_block(block, (n, k), dst, accumulate, lhs, rhs)
            }
        };
        match parallelism {
            Parallelism::None => dst
                .chunks_mut(TASK_ROWS * n)
                .enumerate()
                .for_each(run_block),
            _ => dst
                .par_chunks_mut(TASK_ROWS * n)
                .enumerate()
                .for_each(run_block),
        }
        return;
    }
    // SAFETY: the three matrices lie inside their slices with the strides given (checked).
    unsafe {
        gemm_f32(
            (m, n, k),
            dst.as_mut_ptr(),
            accumulate,
            (lhs.as_ptr(), lhs_rs, lhs_cs),
            (rhs.as_ptr(), rhs_rs, rhs_cs),
            parallelism,
        )
    }
}

/// `lhs rhs` for `(m, n, k)` into a new row-major `[m, n]` buffer whose rows start from `row`
/// (a bias) when given, else from zero: the values of [`product`] onto such a buffer, without
/// its pass over the whole buffer in memory before the product (each block of rows is
/// initialised just before its product, in cache).
pub(crate) fn product_into_new(
    (m, n, k): (usize, usize, usize),
    row: Option<&[f32]>,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    bf16: bool,
) -> Vec<f32> {
    if let Some(row) = row {
        assert_eq!(row.len(), n, "product row length");
    }
    if bf16 || m < 2 * TASK_ROWS || n == 0 || k == 0 {
        let mut dst = zeroed(m * n);
        if let Some(row) = row {
            dst.par_chunks_mut(n.max(1))
                .for_each(|dst| dst.copy_from_slice(row));
        }
        let parallelism = inner_parallelism(1);
        product(
            (m, n, k),
            &mut dst,
            row.is_some(),
            lhs,
            rhs,
            parallelism,
            bf16,
        );
        return dst;
    }
    check_operands((m, n, k), lhs, rhs);
    let pattern = row.unwrap_or(&[0.0]);
    filled_in_blocks(m * n, TASK_ROWS * n, pattern, |block, dst| {
        // SAFETY: the operands were checked above.
        unsafe { product_block(block, (n, k), dst, row.is_some(), lhs, rhs) }
    })
    .0
}

/// Panics unless `lhs` (`[m, k]`) and `rhs` (`[k, n]`) lie inside their slices with the strides
/// given.
fn check_operands(
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
) {
    assert!(
        m == 0 || n == 0 || k == 0 || {
            lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs
                && rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs
        },
        "product operands too short"
    );
}

/// Block `block` of [`TASK_ROWS`] rows of `lhs rhs` into `dst` (its rows, `[rows, n]`), on
/// this thread.
///
/// # Safety
/// `lhs` and `rhs` passed [`check_operands`] for a product of at least the block's last row.
unsafe fn product_block(
    block: usize,
    (n, k): (usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
) {
    let rows = dst.len() / n;
    // SAFETY: the block's rows of `lhs` lie inside it (the caller's contract).
    unsafe {
        gemm_f32(
            (rows, n, k),
            dst.as_mut_ptr(),
            accumulate,
            (lhs.as_ptr().add(block * TASK_ROWS * lhs_rs), lhs_rs, lhs_cs),
            (rhs.as_ptr(), rhs_rs, rhs_cs),
            Parallelism::None,
        )
    }
}

/// Rows of the product per task where [`product`] splits its output itself: a fixed height,
/// so that the blocks (and the sums) do not depend on the thread count.
const TASK_ROWS: usize = 256;

/// gemm's f32 `dst (+)= lhs rhs`, `dst` row-major `[m, n]`.
///
/// # Safety
/// The three matrices lie inside their allocations with the strides given.
unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    parallelism: Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// [`product`] in bf16 with its `lhs` packed once for several products (the same bits);
/// `rhs` is `[k, n]` as (values, row stride, column stride).
pub(crate) fn product_packed(
    lhs: &PackedLhs,
    n: usize,
    dst: &mut [f32],
    accumulate: bool,
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    parallelism: Parallelism,
) {
    let parallel = !matches!(parallelism, Parallelism::None);
    matmul_bf16_packed(lhs, n, dst, n, accumulate, rhs, rhs_rs, rhs_cs, parallel);
}

/// The pool runs `tasks` independent products side by side; when there are fewer tasks than
/// threads each product is split too (gemm splits its output, not its sums, so results agree).
pub(crate) fn inner_parallelism(tasks: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if tasks >= threads {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// The sum of the consecutive partial sums of `len` values in `partials`, added in their order
/// (so the result does not depend on which task finished first), into and returned as the
/// first.
pub(crate) fn sum_partials(partials: &mut [f32], len: usize) -> &[f32] {
    let (sum, rest) = partials.split_at_mut(len);
    sum.par_chunks_mut(4096)
        .enumerate()
        .for_each(|(chunk, dst)| {
            for partial in rest.chunks_exact(len) {
                for (d, &p) in dst.iter_mut().zip(&partial[chunk * 4096..]) {
                    *d += p;
                }
            }
        });
    sum
}

/// The `[cols, rows]` transpose (row-major) of the `[rows, cols]` matrix whose row `r` starts at
/// `m[r * row_stride]`.
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize, row_stride: usize) -> Vec<f32> {
    const BLOCK: usize = 32;
    let mut t = zeroed(rows * cols);
    if rows == 0 || cols == 0 {
        return t;
    }
    assert!(
        row_stride >= cols && m.len() >= (rows - 1) * row_stride + cols,
        "transpose source too short"
    );
    #[cfg(target_arch = "x86_64")]
    let vector = crate::simd::isa() == crate::simd::Isa::Avx512;
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    // Parallel over blocks of output rows; each reads a column strip of `m` in 32x32 tiles.
    t.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * BLOCK;
            let width = out.len() / rows;
            for r0 in (0..rows).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(rows);
                // Whole 16 x 16 squares in vector registers, the edges one element at a time.
                let (whole_rows, whole_cols) = match vector {
                    true => ((r1 - r0) / 16 * 16, width / 16 * 16),
                    false => (0, 0),
                };
                #[cfg(target_arch = "x86_64")]
                for r in (r0..r0 + whole_rows).step_by(16) {
                    for c in (0..whole_cols).step_by(16) {
                        let src = &m[r * row_stride + c0 + c..][..15 * row_stride + 16];
                        let dst = &mut out[c * rows + r..][..15 * rows + 16];
                        // SAFETY: AVX-512F detected; both squares lie inside their slices.
                        unsafe { transpose16(src, row_stride, dst, rows) };
                    }
                }
                for r in r0..r1 {
                    let cols = if r < r0 + whole_rows { whole_cols } else { 0 };
                    for c in cols..width {
                        out[c * rows + r] = m[r * row_stride + c0 + c];
                    }
                }
            }
        });
    t
}

/// The transpose of the 16 x 16 square at `src` (rows `src_stride` apart) into `dst` (rows
/// `dst_stride` apart): three rounds of shuffles within 128-bit lanes, then two across them.
///
/// # Safety
/// AVX-512F present; the slices hold 15 strides and 16 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
    use std::arch::x86_64::*;
    assert!(src.len() > 15 * src_stride + 15 && dst.len() > 15 * dst_stride + 15);
    // SAFETY: rows inside the slices (asserted).
    let mut r: [__m512; 16] =
        std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.as_ptr().add(i * src_stride)) });
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        for j in 0..2 {
            let (a, b) = (
                _mm512_castps_pd(t[4 * i + j]),
                _mm512_castps_pd(t[4 * i + 2 + j]),
            );
            r[4 * i + j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[4 * i + 2 + j] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    }
    for i in 0..2 {
        for j in 0..4 {
            let (a, b) = (r[8 * i + j], r[8 * i + 4 + j]);
            t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(a, b);
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xdd>(a, b);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
        r[j + 8] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[j + 8]);
    }
    // Register k now holds column k with its bits 0 and 1 swapped.
    for (k, column) in r.iter().enumerate() {
        let c = (k & !3) | (k & 1) << 1 | (k >> 1) & 1;
        // SAFETY: row `c < 16` of `dst` (asserted).
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(c * dst_stride), *column) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::pseudo_random;

    /// Every element lands where the textbook transpose puts it: whole 16 x 16 squares (the
    /// vector path on AVX-512) and the edges around them, with a row stride past the columns.
    #[test]
    fn transpose_matches_the_textbook() {
        for (rows, cols, stride) in [
            (1, 1, 1),
            (16, 16, 16),
            (17, 33, 40),
            (50, 70, 75),
            (100, 16, 20),
        ] {
            let m = pseudo_random((rows - 1) * stride + cols, 3, 1.0, 0.0);
            let t = transpose(&m, rows, cols, stride);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        m[r * stride + c],
                        "{rows}x{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}
