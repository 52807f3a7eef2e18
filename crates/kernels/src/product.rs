//! The matrix product every kernel here builds on: gemm's f32 product, or the bf16 one when
//! bf16 compute is on.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::bf16::{PackedLhs, matmul_bf16, matmul_bf16_packed};
use crate::buffer::zeroed;

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
    assert!(
        m == 0 || n == 0 || k == 0 || {
            lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs
                && rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs
        },
        "product operands too short"
    );
    if m >= 2 * TASK_ROWS {
        // gemm's own split scaled poorly (a 4096 x 1024 x 256 product took as long on 2
        // threads as on 1): blocks of rows of a fixed height, each a product of its own, on
        // one thread too, so that every block is summed alike (gemm takes other routes for
        // thin products) whatever the thread count.
        let dst_ptr = SharedRows(dst.as_mut_ptr());
        let run_block = |block: usize| {
            let (row0, rows) = (block * TASK_ROWS, TASK_ROWS.min(m - block * TASK_ROWS));
            let dst = dst_ptr;
            // SAFETY: blocks write disjoint rows of `dst`; the operands were checked above.
            unsafe {
                gemm_f32(
                    (rows, n, k),
                    dst.0.add(row0 * n),
                    accumulate,
                    (lhs.as_ptr().add(row0 * lhs_rs), lhs_rs, lhs_cs),
                    (rhs.as_ptr(), rhs_rs, rhs_cs),
                    Parallelism::None,
                )
            }
        };
        let blocks = 0..m.div_ceil(TASK_ROWS);
        match parallelism {
            Parallelism::None => blocks.for_each(run_block),
            _ => blocks.into_par_iter().for_each(run_block),
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

/// Rows of the product per task where [`product`] splits its output itself: a fixed height,
/// so that the blocks (and the sums) do not depend on the thread count.
const TASK_ROWS: usize = 256;

/// A `dst` that tasks write at disjoint rows.
#[derive(Clone, Copy)]
struct SharedRows(*mut f32);
// SAFETY: tasks write disjoint rows only.
unsafe impl Send for SharedRows {}
unsafe impl Sync for SharedRows {}

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
    // Parallel over blocks of output rows; each reads a column strip of `m` in 32x32 tiles.
    t.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * BLOCK;
            let width = out.len() / rows;
            for r0 in (0..rows).step_by(BLOCK) {
                for r in r0..(r0 + BLOCK).min(rows) {
                    for c in 0..width {
                        out[c * rows + r] = m[r * row_stride + c0 + c];
                    }
                }
            }
        });
    t
}
