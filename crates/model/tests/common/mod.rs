//! Helpers shared by the fused-op tests.

use burn::tensor::Tensor;

/// `|a - b| / |b|` in the L2 norm.
pub fn rel_l2<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    l2(a - b.clone()) / l2(b)
}

/// The L2 norm of `t`.
pub fn l2<const D: usize>(t: Tensor<D>) -> f32 {
    t.powi_scalar(2).sum().into_scalar::<f32>().sqrt()
}

/// `|a - b| / (|b| + scale)` in the L2 norm: relative where `b` is large, and in units of
/// `scale` (an input's norm) where `b` is near zero, as a lone GELU output of a negative gate is.
#[allow(dead_code)]
pub fn rel_l2_with_floor<const D: usize>(a: Tensor<D>, b: Tensor<D>, scale: f32) -> f32 {
    l2(a - b.clone()) / (l2(b) + scale)
}
