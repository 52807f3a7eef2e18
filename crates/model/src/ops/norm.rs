//! GroupNorm (optionally followed by SiLU) and LayerNorm as fused ops: burn composes them (and
//! every backward) from several single-threaded elementwise passes and keeps each intermediate
//! for the backward. These keep only their inputs and two statistics per group or row. Norms
//! without affine parameters (LayerNorm: without beta) keep burn's.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::nn::{GroupNorm, LayerNorm};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use ldmscale_kernels::{
    GroupNormShape, LayerNormShape, group_norm_backward, group_norm_output, layer_norm_backward,
    layer_norm_output, zeroed,
};

use super::buffers::{flex, shaped_like, values};
use super::{FlexOp, OpKind, try_fused};

/// `norm(x)`, then SiLU when `with_silu`; `x` is `[batch, channels, h, w]`.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    fused_group_norm(norm, &x, with_silu).unwrap_or_else(|| burn_group_norm(norm, x, with_silu))
}

fn fused_group_norm(norm: &GroupNorm, x: &Tensor<4>, with_silu: bool) -> Option<Tensor<4>> {
    let (gamma, beta) = (norm.gamma.as_ref()?.val(), norm.beta.as_ref()?.val());
    let op = GroupNormOp {
        groups: norm.num_groups,
        eps: norm.epsilon as f32,
        with_silu,
    };
    try_fused(op, [x, &gamma, &beta])
}

/// burn's GroupNorm (and SiLU), where the kernels do not apply (and the reference they are
/// tested against).
pub fn burn_group_norm(norm: &GroupNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    let out = norm.forward(x);
    if with_silu { silu(out) } else { out }
}

/// `norm(x)`, normalised over the last dimension. `epsilon` is the one `norm` was configured
/// with (burn keeps it private).
pub fn layer_norm<const D: usize>(norm: &LayerNorm, epsilon: f64, x: Tensor<D>) -> Tensor<D> {
    fused_layer_norm(norm, epsilon, &x).unwrap_or_else(|| norm.forward(x))
}

fn fused_layer_norm<const D: usize>(
    norm: &LayerNorm,
    epsilon: f64,
    x: &Tensor<D>,
) -> Option<Tensor<D>> {
    let (gamma, beta) = (norm.gamma.val(), norm.beta.as_ref()?.val());
    if gamma.dims() != [x.dims()[D - 1]] {
        return None;
    }
    let op = LayerNormOp {
        eps: epsilon as f32,
    };
    try_fused(op, [x, &gamma, &beta])
}

#[derive(Clone, Debug)]
struct GroupNormOp {
    groups: usize,
    eps: f32,
    with_silu: bool,
}

/// The inputs (x, gamma, beta) and the per-group mean and 1/std.
#[derive(Clone, Debug)]
struct GroupNormSaved {
    inputs: [FlexTensor; 3],
    stats: Arc<Vec<f32>>,
}

impl GroupNormOp {
    fn shape(&self, x: &FlexTensor) -> GroupNormShape {
        let dims = x.layout().shape();
        GroupNormShape {
            batch: dims[0],
            channels: dims[1],
            groups: self.groups,
            spatial: dims[2] * dims[3],
        }
    }

    /// Output, and the per-group statistics.
    fn run(&self, [x, gamma, beta]: &[FlexTensor; 3]) -> (FlexTensor, Vec<f32>) {
        let shape = self.shape(x);
        let (out, stats) = group_norm_output(
            values(x),
            values(gamma),
            values(beta),
            shape,
            self.eps,
            self.with_silu,
        );
        (shaped_like(out, x), stats)
    }
}

impl FlexOp<3> for GroupNormOp {
    type Saved = GroupNormSaved;
    const KIND: OpKind = OpKind::GroupNorm;

    fn forward(&self, inputs: [FlexTensor; 3]) -> FlexTensor {
        self.run(&inputs).0
    }

    fn forward_saving(&self, inputs: [FlexTensor; 3]) -> (FlexTensor, GroupNormSaved) {
        let (out, stats) = self.run(&inputs);
        let stats = Arc::new(stats);
        (out, GroupNormSaved { inputs, stats })
    }

    fn backward(
        &self,
        s: GroupNormSaved,
        d_out: FlexTensor,
        _: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let [x, gamma, beta] = &s.inputs;
        let shape = self.shape(x);
        let mut dx = zeroed(shape.len());
        let (mut dgamma, mut dbeta) = (vec![0f32; shape.channels], vec![0f32; shape.channels]);
        group_norm_backward(
            values(x),
            values(gamma),
            values(beta),
            &s.stats,
            values(&d_out),
            shape,
            self.with_silu,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
        );
        [
            Some(shaped_like(dx, x)),
            Some(flex(dgamma, [shape.channels])),
            Some(flex(dbeta, [shape.channels])),
        ]
    }
}

#[derive(Clone, Debug)]
struct LayerNormOp {
    eps: f32,
}

/// The input, gamma and the per-row mean and 1/std.
#[derive(Clone, Debug)]
struct LayerNormSaved {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: Arc<Vec<f32>>,
}

fn layer_norm_shape(x: &FlexTensor) -> LayerNormShape {
    let dims = x.layout().shape();
    let features = dims[dims.len() - 1];
    LayerNormShape {
        rows: dims.iter().product::<usize>() / features.max(1),
        features,
    }
}

impl LayerNormOp {
    /// Output, and the per-row statistics.
    fn run(&self, [x, gamma, beta]: &[FlexTensor; 3]) -> (FlexTensor, Vec<f32>) {
        let shape = layer_norm_shape(x);
        let (out, stats) =
            layer_norm_output(values(x), values(gamma), values(beta), shape, self.eps);
        (shaped_like(out, x), stats)
    }
}

impl FlexOp<3> for LayerNormOp {
    type Saved = LayerNormSaved;
    const KIND: OpKind = OpKind::LayerNorm;

    fn forward(&self, inputs: [FlexTensor; 3]) -> FlexTensor {
        self.run(&inputs).0
    }

    fn forward_saving(&self, inputs: [FlexTensor; 3]) -> (FlexTensor, LayerNormSaved) {
        let (out, stats) = self.run(&inputs);
        let [x, gamma, _] = inputs;
        let stats = Arc::new(stats);
        (out, LayerNormSaved { x, gamma, stats })
    }

    fn backward(
        &self,
        s: LayerNormSaved,
        d_out: FlexTensor,
        needed: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let shape = layer_norm_shape(&s.x);
        // dx is the costly part; skipped when x does not need it.
        let mut dx = needed[0].then(|| zeroed(shape.len()));
        let (mut dgamma, mut dbeta) = (vec![0f32; shape.features], vec![0f32; shape.features]);
        layer_norm_backward(
            values(&s.x),
            values(&s.gamma),
            &s.stats,
            values(&d_out),
            shape,
            dx.as_deref_mut(),
            &mut dgamma,
            &mut dbeta,
        );
        [
            dx.map(|dx| shaped_like(dx, &s.x)),
            Some(flex(dgamma, [shape.features])),
            Some(flex(dbeta, [shape.features])),
        ]
    }
}
