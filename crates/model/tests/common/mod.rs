//! Helpers shared by the fused-op tests.

use burn::tensor::Tensor;
use ldmscale_model::ops::{OpKind, fast_path_count};

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

/// `f()`, asserting that it ran `kind`'s kernels `calls` times on this thread (no silent
/// fallback to burn).
#[allow(dead_code)]
pub fn fast<T>(kind: OpKind, calls: u64, f: impl FnOnce() -> T) -> T {
    let before = fast_path_count(kind);
    let out = f();
    let ran = fast_path_count(kind) - before;
    assert_eq!(
        ran, calls,
        "{kind:?}: fast path ran {ran} times, expected {calls}"
    );
    out
}

/// `f()`, asserting that it fell back to burn for `kind` (its kernels did not run).
#[allow(dead_code)]
pub fn fallback<T>(kind: OpKind, f: impl FnOnce() -> T) -> T {
    fast(kind, 0, f)
}
