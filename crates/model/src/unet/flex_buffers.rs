//! Moving f32 values between flex tensors and the slices `ldmscale-kernels` reads and writes,
//! for the fused operations (`fused`, `fused_conv`, `fused_linear`, `fused_ops`).

use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorData};

/// The tensor's elements in row-major order, copied only when it is a strided view.
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The values of a contiguous f32 tensor (see [`contiguous`]).
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// A tensor of `shape` owning `values`.
pub(crate) fn flex(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
