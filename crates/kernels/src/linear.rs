//! A dense layer over rows, `y = x W + b`, as one matrix product over all rows.
//!
//! burn's `Linear` multiplies a `[batch, tokens, d_in]` input as `batch` separate products
//! against a broadcast weight, adds the bias in a second pass, and in the backward sums `batch`
//! weight-gradient products of its own. Here the rows of every sample form one product
//! (`[rows, d_in] x [d_in, d_out]`, the bias written first and accumulated onto), and the
//! backward is two products (`dx = dy Wᵀ`, `dW = xᵀ dy` summing over all rows in one go) and a
//! column sum for the bias. Products are split between threads by their output (or, for the
//! weight gradient, by fixed blocks of rows added in order), never by a thread-dependent sum, so
//! the result does not depend on the thread count.

use rayon::prelude::*;

use crate::bf16::products_in_bf16;
use crate::buffer::{filled_in_blocks, zeroed};
use crate::product::{inner_parallelism, product, product_into_new, sum_partials, transpose};

/// Sizes of one dense layer application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows multiplied (every leading dimension of the input, flattened).
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
}

impl LinearShape {
    pub fn input_len(&self) -> usize {
        self.rows * self.d_in
    }

    pub fn output_len(&self) -> usize {
        self.rows * self.d_out
    }

    pub fn weight_len(&self) -> usize {
        self.d_in * self.d_out
    }
}

/// Rows per partial product in [`weight_gradient_by_row_blocks`].
const REDUCTION_ROWS: usize = 1024;

/// `dW = xᵀ dy` (f32) as one product per fixed block of [`REDUCTION_ROWS`] rows, each on one
/// thread, added up in block order: the same sums whatever the thread count. gemm's own split
/// of so flat a product (`d_in x d_out`, summed over thousands of rows) ran at 77-96 GFLOP/s on
/// a 2-core Zen 3 for 128 inputs, where whole products of this size run at 140-170.
fn weight_gradient_by_row_blocks(x: &[f32], d_out: &[f32], shape: LinearShape, dw: &mut [f32]) {
    let LinearShape {
        rows,
        d_in,
        d_out: n_out,
    } = shape;
    // Each block's partial is zeroed in cache just before its product overwrites it.
    let block_len = d_in * n_out;
    let (mut partials, _) = filled_in_blocks(
        rows.div_ceil(REDUCTION_ROWS) * block_len,
        block_len,
        &[0.0],
        |block, partial| {
            let (first, count) = (
                block * REDUCTION_ROWS,
                REDUCTION_ROWS.min(rows - block * REDUCTION_ROWS),
            );
            product(
                (d_in, n_out, count),
                partial,
                false,
                (&x[first * d_in..], 1, d_in),
                (&d_out[first * n_out..], n_out, 1),
                gemm::Parallelism::None,
                false,
            );
        },
    );
    dw.copy_from_slice(sum_partials(&mut partials, block_len));
}

/// Columns summed per task in the bias gradient.
const COLUMN_BLOCK: usize = 64;

/// `x weight + bias` into a new buffer. `x`: `[rows, d_in]`, `weight`: `[d_in, d_out]` (burn's
/// `Linear` layout), `bias`: `[d_out]`, the output `[rows, d_out]`, all row-major. Each block of
/// rows starts from the bias in cache just before its product, with no pass over the whole
/// output beforehand.
pub fn linear_output(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: LinearShape,
) -> Vec<f32> {
    output(x, weight, bias, shape, products_in_bf16())
}

fn output(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: LinearShape,
    bf16: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), shape.input_len(), "linear input size");
    assert_eq!(weight.len(), shape.weight_len(), "linear weight size");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), shape.d_out, "linear bias size");
    }
    let LinearShape { rows, d_in, d_out } = shape;
    product_into_new(
        (rows, d_out, d_in),
        bias,
        (x, d_in, 1),
        (weight, d_out, 1),
        bf16,
    )
}

/// The input gradient of [`linear_output`] from the output's gradient `d_out`
/// (`[rows, d_out]`), `dx = dy Wᵀ`, into a new buffer, each block of rows zeroed in cache just
/// before its product.
pub fn linear_input_gradient(weight: &[f32], d_out: &[f32], shape: LinearShape) -> Vec<f32> {
    input_gradient(weight, d_out, shape, products_in_bf16())
}

fn input_gradient(weight: &[f32], d_out: &[f32], shape: LinearShape, bf16: bool) -> Vec<f32> {
    assert_eq!(weight.len(), shape.weight_len(), "linear weight size");
    assert_eq!(
        d_out.len(),
        shape.output_len(),
        "linear output gradient size"
    );
    let LinearShape {
        rows,
        d_in,
        d_out: n_out,
    } = shape;
    // Wᵀ is W read column by column.
    product_into_new(
        (rows, d_in, n_out),
        None,
        (d_out, n_out, 1),
        (weight, 1, n_out),
        bf16,
    )
}

/// The weight and bias gradients of [`linear_output`] from its input and the output's gradient
/// `d_out` (`[rows, d_out]`); each of `dweight` and `dbias` that is given is overwritten.
pub fn linear_parameter_gradients(
    x: &[f32],
    d_out: &[f32],
    shape: LinearShape,
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
) {
    parameter_gradients(x, d_out, shape, dweight, dbias, products_in_bf16());
}

fn parameter_gradients(
    x: &[f32],
    d_out: &[f32],
    shape: LinearShape,
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    bf16: bool,
) {
    let LinearShape {
        rows,
        d_in,
        d_out: n_out,
    } = shape;
    assert_eq!(x.len(), shape.input_len(), "linear input size");
    assert_eq!(
        d_out.len(),
        shape.output_len(),
        "linear output gradient size"
    );
    let parallel = inner_parallelism(1);
    if let Some(dw) = dweight {
        assert_eq!(dw.len(), shape.weight_len(), "linear weight gradient size");
        // dW = xᵀ dy, the sum running over every row. The bf16 product copies its transposed
        // operand to row-major first: where dy is the narrower, dWᵀ = dyᵀ x copies less.
        if bf16 && d_in > n_out {
            let mut dw_t = zeroed(dw.len());
            product(
                (n_out, d_in, rows),
                &mut dw_t,
                false,
                (d_out, 1, n_out),
                (x, d_in, 1),
                parallel,
                bf16,
            );
            dw.copy_from_slice(&transpose(&dw_t, n_out, d_in, d_in));
        } else if !bf16 && rows >= 2 * REDUCTION_ROWS {
            weight_gradient_by_row_blocks(x, d_out, shape, dw);
        } else {
            product(
                (d_in, n_out, rows),
                dw,
                false,
                (x, 1, d_in),
                (d_out, n_out, 1),
                parallel,
                bf16,
            );
        }
    }
    if let Some(db) = dbias {
        assert_eq!(db.len(), n_out, "linear bias gradient size");
        // Each task sums a block of columns over all rows, in row order.
        db.par_chunks_mut(COLUMN_BLOCK)
            .enumerate()
            .for_each(|(block, sums)| {
                let start = block * COLUMN_BLOCK;
                sums.fill(0.0);
                for row in d_out.chunks_exact(n_out) {
                    for (s, &g) in sums.iter_mut().zip(&row[start..]) {
                        *s += g;
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::{max_rel, on_threads, pseudo_random};

    /// Direct f64 layer and its gradients against `d_out`.
    #[allow(clippy::type_complexity)]
    fn reference(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        d_out: &[f32],
        s: LinearShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; s.output_len()];
        let mut dx = vec![0f64; s.input_len()];
        let mut dw = vec![0f64; s.weight_len()];
        let mut db = vec![0f64; s.d_out];
        for r in 0..s.rows {
            for o in 0..s.d_out {
                let g = d_out[r * s.d_out + o] as f64;
                let mut acc = bias[o] as f64;
                db[o] += g;
                for i in 0..s.d_in {
                    let (xv, wv) = (x[r * s.d_in + i] as f64, w[i * s.d_out + o] as f64);
                    acc += xv * wv;
                    dx[r * s.d_in + i] += g * wv;
                    dw[i * s.d_out + o] += g * xv;
                }
                out[r * s.d_out + o] = acc;
            }
        }
        (out, dx, dw, db)
    }

    #[test]
    fn forward_and_backward_match_the_reference() {
        // One row; odd sizes; more columns than a bias block; big enough for gemm's threads;
        // products in blocks of rows, the last one short (a single column too); a weight
        // gradient summed in blocks of rows, the last one short.
        let shapes = [
            (1, 5, 3),
            (7, 9, 13),
            (70, 33, 130),
            (300, 96, 80),
            (600, 40, 24),
            (1030, 7, 1),
            (2100, 9, 13),
        ];
        for (rows, d_in, d_out) in shapes {
            let s = LinearShape { rows, d_in, d_out };
            let x = pseudo_random(s.input_len(), 1, 1.0, 0.0);
            let w = pseudo_random(s.weight_len(), 2, 1.0, 0.0);
            let bias = pseudo_random(d_out, 3, 1.0, 0.0);
            let d_y = pseudo_random(s.output_len(), 4, 1.0, 0.0);
            let (want, want_dx, want_dw, want_db) = reference(&x, &w, &bias, &d_y, s);
            let out = linear_output(&x, &w, Some(&bias), s);
            assert!(max_rel(&out, &want) < 1e-5, "{s:?} forward");
            let dx = linear_input_gradient(&w, &d_y, s);
            let mut dw = vec![f32::NAN; s.weight_len()];
            let mut db = vec![f32::NAN; d_out];
            linear_parameter_gradients(&x, &d_y, s, Some(&mut dw), Some(&mut db));
            assert!(max_rel(&dx, &want_dx) < 1e-5, "{s:?} dx");
            assert!(max_rel(&dw, &want_dw) < 1e-5, "{s:?} dweight");
            assert!(max_rel(&db, &want_db) < 1e-5, "{s:?} dbias");
            // Without bias the output is the bare product.
            let bare = linear_output(&x, &w, None, s);
            for (i, (&o, &b)) in out.iter().zip(&bare).enumerate() {
                assert!((o - b - bias[i % d_out]).abs() < 1e-5, "{s:?} bias at {i}");
            }
        }
    }

    #[test]
    fn bf16_products_match_the_reference_on_rounded_operands() {
        use crate::bf16::{bf16_to_f32, round_to_bf16};
        let round =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| bf16_to_f32(round_to_bf16(x))).collect() };
        // Wider input than output and the reverse (the weight gradient is formed either way).
        for (rows, d_in, d_out) in [(37, 24, 19), (29, 11, 23)] {
            let s = LinearShape { rows, d_in, d_out };
            let x = pseudo_random(s.input_len(), 11, 1.0, 0.0);
            let w = pseudo_random(s.weight_len(), 12, 1.0, 0.0);
            let bias = pseudo_random(s.d_out, 13, 1.0, 0.0);
            let d_y = pseudo_random(s.output_len(), 14, 1.0, 0.0);
            // Each product rounds both of its operands; the reference rounds them alike.
            let (want, _, _, _) = reference(&round(&x), &round(&w), &bias, &d_y, s);
            let (_, want_dx, _, _) = reference(&x, &round(&w), &bias, &round(&d_y), s);
            let (_, _, want_dw, _) = reference(&round(&x), &w, &bias, &round(&d_y), s);
            let out = output(&x, &w, Some(&bias), s, true);
            assert!(max_rel(&out, &want) < 1e-5, "{s:?} forward");
            let dx = input_gradient(&w, &d_y, s, true);
            let mut dw = vec![f32::NAN; s.weight_len()];
            parameter_gradients(&x, &d_y, s, Some(&mut dw), None, true);
            assert!(max_rel(&dx, &want_dx) < 1e-5, "{s:?} dx");
            assert!(max_rel(&dw, &want_dw) < 1e-5, "{s:?} dweight");
            // And it is bf16: the f32 result differs.
            let exact = output(&x, &w, Some(&bias), s, false);
            assert!(max_rel(&exact, &want) > 1e-5, "{s:?} bf16 rounding visible");
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Large enough that every product is split between threads; the second in blocks of
        // rows, the last one row; the third's weight gradient summed over blocks of rows.
        for (rows, d_in, d_out) in [(600, 128, 96), (513, 40, 24), (3100, 24, 40)] {
            results_on_threads_agree(LinearShape { rows, d_in, d_out });
        }
    }

    fn results_on_threads_agree(s: LinearShape) {
        let x = pseudo_random(s.input_len(), 5, 1.0, 0.0);
        let w = pseudo_random(s.weight_len(), 6, 1.0, 0.0);
        let bias = pseudo_random(s.d_out, 7, 1.0, 0.0);
        let d_y = pseudo_random(s.output_len(), 8, 1.0, 0.0);
        let run = |threads: usize| {
            on_threads(threads, || {
                let out = linear_output(&x, &w, Some(&bias), s);
                let mut dw = vec![0f32; s.weight_len()];
                let mut db = vec![0f32; s.d_out];
                linear_parameter_gradients(&x, &d_y, s, Some(&mut dw), Some(&mut db));
                (out, linear_input_gradient(&w, &d_y, s), dw, db)
            })
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            assert!(run(threads) == one, "{threads} threads");
        }
    }
}
