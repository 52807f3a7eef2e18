//! Helpers shared by the fused-op tests.

use burn::tensor::Tensor;

/// `|a - b| / |b|` in the L2 norm.
pub fn rel_l2<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let diff = (a - b.clone())
        .powi_scalar(2)
        .sum()
        .into_scalar::<f32>()
        .sqrt();
    diff / b.powi_scalar(2).sum().into_scalar::<f32>().sqrt()
}
