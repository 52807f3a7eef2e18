//! Moving f32 values between flex tensors and the slices `ldmscale-kernels` reads and writes.

use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorData};

/// The tensor's elements in row-major order, copied only when it is a strided view.
pub(super) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The values of a contiguous f32 tensor (see [`contiguous`]).
pub(super) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// A tensor of `shape` owning `values`.
pub(super) fn flex(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A tensor of `like`'s shape owning `values` (a gradient of `like`).
pub(super) fn shaped_like(values: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    flex(values, like.layout().shape().clone())
}
