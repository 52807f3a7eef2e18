//! GEGLU (`value * gelu(gate)` of the two halves of a projection) as one fused op: burn splits,
//! runs GELU with scalar libm `erf` and keeps the intermediates for the backward; this keeps its
//! input only.

use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use ldmscale_kernels::{geglu_backward, geglu_output, zeroed};

use super::buffers::{flex, shaped_like, values};
use super::{FlexOp, OpKind, try_fused};

/// `value * gelu(gate)` of `[batch, tokens, 2 * hidden]` split in halves on the last dimension.
pub fn geglu(projected: Tensor<3>) -> Tensor<3> {
    try_fused(Geglu, [&projected]).unwrap_or_else(|| burn_geglu(projected))
}

/// burn's split and GELU, where the kernels do not apply (and the reference they are tested
/// against).
pub fn burn_geglu(projected: Tensor<3>) -> Tensor<3> {
    let [value, gate] = projected.chunk(2, 2).try_into().expect("two halves");
    value * gelu(gate)
}

#[derive(Clone, Debug)]
struct Geglu;

/// `[batch, tokens, 2 * hidden]` as (rows, hidden).
fn sizes(projected: &FlexTensor) -> (usize, usize) {
    let dims = projected.layout().shape();
    assert!(
        dims[2].is_multiple_of(2),
        "GEGLU projection width {} is odd",
        dims[2]
    );
    (dims[0] * dims[1], dims[2] / 2)
}

impl FlexOp<1> for Geglu {
    /// The projection.
    type Saved = FlexTensor;
    const KIND: OpKind = OpKind::Geglu;

    fn forward(&self, [projected]: [FlexTensor; 1]) -> FlexTensor {
        let (rows, hidden) = sizes(&projected);
        let out = geglu_output(values(&projected), rows, hidden);
        let dims = projected.layout().shape();
        flex(out, [dims[0], dims[1], hidden])
    }

    fn forward_saving(&self, [projected]: [FlexTensor; 1]) -> (FlexTensor, FlexTensor) {
        (self.forward([projected.clone()]), projected)
    }

    fn backward(
        &self,
        projected: FlexTensor,
        d_out: FlexTensor,
        needed: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        if !needed[0] {
            return [None];
        }
        let (rows, hidden) = sizes(&projected);
        let mut d_projected = zeroed(rows * 2 * hidden);
        geglu_backward(
            values(&projected),
            values(&d_out),
            rows,
            hidden,
            &mut d_projected,
        );
        [Some(shaped_like(d_projected, &projected))]
    }
}
