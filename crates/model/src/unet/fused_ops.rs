//! GroupNorm (optionally followed by SiLU), LayerNorm and GEGLU on the flex (CPU) backend as
//! fused operations, forward and backward, by the kernels of `ldmscale-kernels`: burn composes
//! them (and every backward) from several single-threaded elementwise passes (scalar libm `exp`
//! and `erf`), and under autodiff keeps each intermediate for the backward. The fused ops keep
//! only their inputs (and two statistics per group or row) and run on all cores.
//!
//! Other backends and dtypes keep burn's ops; the model code calls these whatever the device.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::{GroupNorm, LayerNorm};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::{DType, Device, Tensor};
use ldmscale_kernels::{
    GroupNormShape, LayerNormShape, geglu_backward, geglu_forward, group_norm_backward,
    group_norm_forward, layer_norm_backward, layer_norm_forward, zeroed,
};

use super::flex_buffers::{contiguous, flex, values};

/// `norm(x)`, then SiLU when `with_silu`; `x` is `[batch, channels, h, w]`.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    let device = x.device();
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return burn_group_norm(norm, x, with_silu);
    };
    let (gamma, beta) = (gamma.val(), beta.val());
    let eps = norm.epsilon as f32;
    if x.dtype() == DType::F32
        && gamma.dtype() == DType::F32
        && beta.dtype() == DType::F32
        && device == Device::flex()
    {
        let groups = norm.num_groups;
        if !device.is_autodiff() {
            if let (Ok(xp), Ok(gp), Ok(bp)) = (
                x.clone().try_into_primitive::<Flex>(),
                gamma.clone().try_into_primitive::<Flex>(),
                beta.clone().try_into_primitive::<Flex>(),
            ) {
                let (out, _) = norm_forward(&xp, &gp, &bp, groups, eps, with_silu, false);
                return Tensor::from_primitive::<Flex>(out);
            }
        } else if let (Ok(xp), Ok(gp), Ok(bp)) = (
            x.clone().try_into_primitive::<Autodiff<Flex>>(),
            gamma.clone().try_into_primitive::<Autodiff<Flex>>(),
            beta.clone().try_into_primitive::<Autodiff<Flex>>(),
        ) {
            let out = FusedGroupNorm
                .prepare::<NoCheckpointing>([xp.node(), gp.node(), bp.node()])
                .compute_bound()
                .stateful();
            let (x, gamma, beta) = (
                xp.into_primitive(),
                gp.into_primitive(),
                bp.into_primitive(),
            );
            let out = match out {
                OpsKind::Tracked(prep) => {
                    let (out, stats) =
                        norm_forward(&x, &gamma, &beta, groups, eps, with_silu, true);
                    let saved = NormSaved {
                        x,
                        gamma,
                        beta,
                        stats: Arc::new(stats),
                        groups,
                        with_silu,
                    };
                    prep.finish(saved, out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(norm_forward(&x, &gamma, &beta, groups, eps, with_silu, false).0)
                }
            };
            return Tensor::from_primitive::<Autodiff<Flex>>(out);
        }
    }
    burn_group_norm(norm, x, with_silu)
}

/// burn's GroupNorm (and SiLU), for every case the fused kernels do not cover (and the
/// reference the fused op is tested against).
pub fn burn_group_norm(norm: &GroupNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    let out = norm.forward(x);
    if with_silu { silu(out) } else { out }
}

/// `norm(x)`, normalised over the last dimension. `epsilon` is the one `norm` was configured
/// with (burn keeps it private); burn's LayerNorm runs where beta is absent.
pub fn layer_norm<const D: usize>(norm: &LayerNorm, epsilon: f64, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    let Some(beta) = &norm.beta else {
        return norm.forward(x);
    };
    let (gamma, beta) = (norm.gamma.val(), beta.val());
    let eps = epsilon as f32;
    if x.dtype() == DType::F32
        && gamma.dtype() == DType::F32
        && beta.dtype() == DType::F32
        && device == Device::flex()
        && gamma.dims() == [x.dims()[D - 1]]
    {
        if !device.is_autodiff() {
            if let (Ok(xp), Ok(gp), Ok(bp)) = (
                x.clone().try_into_primitive::<Flex>(),
                gamma.clone().try_into_primitive::<Flex>(),
                beta.clone().try_into_primitive::<Flex>(),
            ) {
                let (out, _) = layer_norm_fused_forward(&xp, &gp, &bp, eps, false);
                return Tensor::from_primitive::<Flex>(out);
            }
        } else if let (Ok(xp), Ok(gp), Ok(bp)) = (
            x.clone().try_into_primitive::<Autodiff<Flex>>(),
            gamma.clone().try_into_primitive::<Autodiff<Flex>>(),
            beta.clone().try_into_primitive::<Autodiff<Flex>>(),
        ) {
            let out = FusedLayerNorm
                .prepare::<NoCheckpointing>([xp.node(), gp.node(), bp.node()])
                .compute_bound()
                .stateful();
            let (x, gamma, beta) = (
                xp.into_primitive(),
                gp.into_primitive(),
                bp.into_primitive(),
            );
            let out = match out {
                OpsKind::Tracked(prep) => {
                    let (out, stats) = layer_norm_fused_forward(&x, &gamma, &beta, eps, true);
                    let saved = LayerNormSaved {
                        x,
                        gamma,
                        stats: Arc::new(stats),
                    };
                    prep.finish(saved, out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(layer_norm_fused_forward(&x, &gamma, &beta, eps, false).0)
                }
            };
            return Tensor::from_primitive::<Autodiff<Flex>>(out);
        }
    }
    norm.forward(x)
}

fn layer_norm_shape(x: &FlexTensor) -> LayerNormShape {
    let dims = x.layout().shape();
    let features = dims[dims.len() - 1];
    LayerNormShape {
        rows: dims.iter().product::<usize>() / features.max(1),
        features,
    }
}

/// Output, and the per-row statistics when `keep_stats`.
fn layer_norm_fused_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f32,
    keep_stats: bool,
) -> (FlexTensor, Vec<f32>) {
    let shape = layer_norm_shape(x);
    let (x_c, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let mut out = zeroed(shape.len());
    let mut stats = vec![0f32; if keep_stats { shape.stats_len() } else { 0 }];
    layer_norm_forward(
        values(&x_c),
        values(&gamma),
        values(&beta),
        shape,
        eps,
        &mut out,
        keep_stats.then_some(stats.as_mut_slice()),
    );
    (flex(out, x.layout().shape().clone()), stats)
}

/// The autodiff node of the fused LayerNorm.
#[derive(Debug)]
struct FusedLayerNorm;

/// What the backward needs: the input, gamma and the per-row mean and 1/std.
#[derive(Clone, Debug)]
struct LayerNormSaved {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: Arc<Vec<f32>>,
}

impl Backward<Flex, 3> for FusedLayerNorm {
    type State = LayerNormSaved;

    fn backward(self, ops: Ops<LayerNormSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let d_out = contiguous(&grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let shape = layer_norm_shape(&s.x);
        let (x, gamma) = (contiguous(&s.x), contiguous(&s.gamma));
        // dx is the costly part; skipped when x does not need it.
        let mut dx = zeroed(if node_x.is_some() { shape.len() } else { 0 });
        let (mut dgamma, mut dbeta) = (vec![0f32; shape.features], vec![0f32; shape.features]);
        layer_norm_backward(
            values(&x),
            values(&gamma),
            &s.stats,
            values(&d_out),
            shape,
            node_x.is_some().then_some(dx.as_mut_slice()),
            &mut dgamma,
            &mut dbeta,
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, s.x.layout().shape().clone()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(dgamma, [shape.features]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(dbeta, [shape.features]));
        }
    }
}

/// `value * gelu(gate)` where `[value, gate]` are the two halves of `projected`'s last
/// dimension (`[batch, tokens, 2 * hidden]` in, `[batch, tokens, hidden]` out).
pub fn geglu(projected: Tensor<3>) -> Tensor<3> {
    let device = projected.device();
    if projected.dtype() == DType::F32 && device == Device::flex() {
        if !device.is_autodiff() {
            if let Ok(p) = projected.clone().try_into_primitive::<Flex>() {
                return Tensor::from_primitive::<Flex>(geglu_fused_forward(&p));
            }
        } else if let Ok(p) = projected.clone().try_into_primitive::<Autodiff<Flex>>() {
            let out = FusedGeglu
                .prepare::<NoCheckpointing>([p.node()])
                .compute_bound()
                .stateful();
            let p = p.into_primitive();
            let out = match out {
                OpsKind::Tracked(prep) => {
                    let out = geglu_fused_forward(&p);
                    prep.finish(p, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(geglu_fused_forward(&p)),
            };
            return Tensor::from_primitive::<Autodiff<Flex>>(out);
        }
    }
    burn_geglu(projected)
}

/// burn's split and GELU, for every case the fused kernels do not cover (and the reference the
/// fused op is tested against).
pub fn burn_geglu(projected: Tensor<3>) -> Tensor<3> {
    let [value, gate] = projected.chunk(2, 2).try_into().expect("two halves");
    value * gelu(gate)
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

fn norm_shape(x: &FlexTensor, groups: usize) -> GroupNormShape {
    let [batch, channels, h, w] = dims4(x);
    GroupNormShape {
        batch,
        channels,
        groups,
        spatial: h * w,
    }
}

/// Output, and the per-group statistics when `keep_stats`.
fn norm_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    groups: usize,
    eps: f32,
    with_silu: bool,
    keep_stats: bool,
) -> (FlexTensor, Vec<f32>) {
    let shape = norm_shape(x, groups);
    let (x_c, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let mut out = zeroed(shape.len());
    let mut stats = vec![0f32; if keep_stats { shape.stats_len() } else { 0 }];
    group_norm_forward(
        values(&x_c),
        values(&gamma),
        values(&beta),
        shape,
        eps,
        with_silu,
        &mut out,
        keep_stats.then_some(stats.as_mut_slice()),
    );
    (flex(out, dims4(x)), stats)
}

/// The autodiff node of the fused GroupNorm.
#[derive(Debug)]
struct FusedGroupNorm;

/// What the backward needs: inputs and the per-group mean and 1/std.
#[derive(Clone, Debug)]
struct NormSaved {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    stats: Arc<Vec<f32>>,
    groups: usize,
    with_silu: bool,
}

impl Backward<Flex, 3> for FusedGroupNorm {
    type State = NormSaved;

    fn backward(self, ops: Ops<NormSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let d_out = contiguous(&grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let shape = norm_shape(&s.x, s.groups);
        let (x, gamma, beta) = (contiguous(&s.x), contiguous(&s.gamma), contiguous(&s.beta));
        let mut dx = zeroed(shape.len());
        let (mut dgamma, mut dbeta) = (vec![0f32; shape.channels], vec![0f32; shape.channels]);
        group_norm_backward(
            values(&x),
            values(&gamma),
            values(&beta),
            &s.stats,
            values(&d_out),
            shape,
            s.with_silu,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, dims4(&s.x)));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(dgamma, [shape.channels]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(dbeta, [shape.channels]));
        }
    }
}

/// `[batch, tokens, 2 * hidden]` as (rows, hidden).
fn geglu_sizes(projected: &FlexTensor) -> ([usize; 3], usize, usize) {
    let s = projected.layout().shape();
    let dims = [s[0], s[1], s[2]];
    assert!(
        dims[2].is_multiple_of(2),
        "GEGLU projection width {} is odd",
        dims[2]
    );
    (dims, dims[0] * dims[1], dims[2] / 2)
}

fn geglu_fused_forward(projected: &FlexTensor) -> FlexTensor {
    let (dims, rows, hidden) = geglu_sizes(projected);
    let p = contiguous(projected);
    let mut out = zeroed(rows * hidden);
    geglu_forward(values(&p), rows, hidden, &mut out);
    flex(out, [dims[0], dims[1], hidden])
}

/// The autodiff node of the fused GEGLU; it keeps its input only.
#[derive(Debug)]
struct FusedGeglu;

impl Backward<Flex, 1> for FusedGeglu {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let d_out = contiguous(&grads.consume::<Flex>(&ops.node));
        let Some(node) = node else {
            return;
        };
        let (dims, rows, hidden) = geglu_sizes(&ops.state);
        let p = contiguous(&ops.state);
        let mut d_projected = zeroed(rows * 2 * hidden);
        geglu_backward(values(&p), values(&d_out), rows, hidden, &mut d_projected);
        grads.register::<Flex>(node.id, flex(d_projected, dims));
    }
}
