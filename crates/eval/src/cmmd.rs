//! CMMD (Jayasumana et al. 2024, "Rethinking FID"): the maximum mean discrepancy between two
//! sets of CLIP image embeddings under a Gaussian RBF kernel, as the reference implementation
//! (google-research `cmmd/distance.py`) computes it: the biased estimator (diagonal terms
//! included), `sigma = 10`, scaled by 1000. The embeddings are expected L2-normalised, as the
//! reference's embedding step leaves them.

use faer::Mat;

use crate::error::EvalError;

/// Kernel bandwidth of the reference implementation.
pub const CMMD_SIGMA: f64 = 10.0;
/// Output scale of the reference implementation.
pub const CMMD_SCALE: f64 = 1000.0;

/// Rows per block when summing a kernel matrix, so memory stays `block x n`.
const BLOCK: usize = 1024;

/// Mean of `exp(-gamma |x_i - y_j|^2)` over all pairs, with `|x - y|^2` expanded as
/// `|x|^2 + |y|^2 - 2 x.y` like the reference.
fn mean_rbf(x: &Mat<f64>, y: &Mat<f64>, gamma: f64) -> f64 {
    let sq = |m: &Mat<f64>| -> Vec<f64> {
        (0..m.nrows())
            .map(|i| m.row(i).iter().map(|v| v * v).sum())
            .collect()
    };
    let (xs, ys) = (sq(x), sq(y));
    let mut total = 0.0;
    for start in (0..x.nrows()).step_by(BLOCK) {
        let end = (start + BLOCK).min(x.nrows());
        let block = x.subrows(start, end - start);
        let gram = block * y.transpose();
        for i in 0..gram.nrows() {
            for j in 0..gram.ncols() {
                let d2 = -2.0 * gram[(i, j)] + xs[start + i] + ys[j];
                total += (-gamma * d2).exp();
            }
        }
    }
    total / (x.nrows() * y.nrows()) as f64
}

fn rows(values: &[f32], dim: usize, what: &str) -> Result<Mat<f64>, EvalError> {
    if dim == 0 || values.is_empty() || !values.len().is_multiple_of(dim) {
        return Err(EvalError::Input(format!(
            "{what}: {} values are not one or more rows of {dim}",
            values.len()
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::Input(format!("{what}: holds NaN or infinity")));
    }
    let n = values.len() / dim;
    Ok(Mat::from_fn(n, dim, |i, j| values[i * dim + j] as f64))
}

/// MMD^2 between embedding sets `x` (`n x dim`) and `y` (`m x dim`) with the Gaussian RBF kernel
/// of bandwidth `sigma`, times `scale`.
pub fn mmd_rbf(x: &[f32], y: &[f32], dim: usize, sigma: f64, scale: f64) -> Result<f64, EvalError> {
    let x = rows(x, dim, "first embedding set")?;
    let y = rows(y, dim, "second embedding set")?;
    let gamma = 1.0 / (2.0 * sigma * sigma);
    Ok(scale * (mean_rbf(&x, &x, gamma) + mean_rbf(&y, &y, gamma) - 2.0 * mean_rbf(&x, &y, gamma)))
}

/// CMMD between two sets of (L2-normalised) CLIP image embeddings.
pub fn cmmd(x: &[f32], y: &[f32], dim: usize) -> Result<f64, EvalError> {
    mmd_rbf(x, y, dim, CMMD_SIGMA, CMMD_SCALE)
}

/// Each `dim`-wide row divided by its L2 norm (the reference's embedding normalisation).
pub fn l2_normalize_rows(values: &mut [f32], dim: usize) {
    for row in values.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            for v in row {
                *v = (*v as f64 / norm) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_sets_are_at_distance_zero_and_order_does_not_matter() {
        let x: Vec<f32> = (0..40).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        assert!(cmmd(&x, &x, 4).unwrap().abs() < 1e-12);
        let mut y = x.clone();
        y.rotate_left(8); // the same rows, reordered
        assert!(cmmd(&x, &y, 4).unwrap().abs() < 1e-12);
        let shifted: Vec<f32> = x.iter().map(|v| v + 0.5).collect();
        assert!(cmmd(&x, &shifted, 4).unwrap() > 0.0);
        assert!(cmmd(&x, &[1.0, 2.0, 3.0], 4).is_err());
    }
}
