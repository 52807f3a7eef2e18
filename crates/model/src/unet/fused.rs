//! The UNet's attention on the flex (CPU) backend as one fused operation, forward and backward,
//! by the kernels of `ldmscale-kernels`: burn's flex attention computes every `exp` with scalar
//! libm, and under autodiff it materialises (and keeps for the backward) several
//! `[batch, heads, tokens, tokens]` tensors per call. The fused op keeps only its inputs, output
//! and one log-sum-exp per query row, and recomputes probabilities in the backward.
//!
//! Other backends, dtypes and checkpointing strategies keep burn's attention; the model code
//! calls [`attention`] whatever the device.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, Tensor};
use ldmscale_kernels::{AttentionShape, attention_backward, attention_forward, zeroed};

use super::flex_buffers::{contiguous, flex, values};

/// `softmax(q k^T / sqrt(head_dim)) v` per head, on `[batch, tokens, heads * head_dim]` tensors
/// (queries) and `[batch, keys, heads * head_dim]` (keys, values).
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let device = q.device();
    if q.dtype() == DType::F32 && device == Device::flex() {
        if !device.is_autodiff() {
            if let (Ok(qp), Ok(kp), Ok(vp)) = (
                q.clone().try_into_primitive::<Flex>(),
                k.clone().try_into_primitive::<Flex>(),
                v.clone().try_into_primitive::<Flex>(),
            ) {
                let (out, _) = fused_forward(&qp, &kp, &vp, heads, false);
                return Tensor::from_primitive::<Flex>(out);
            }
        } else if let (Ok(qp), Ok(kp), Ok(vp)) = (
            q.clone().try_into_primitive::<Autodiff<Flex>>(),
            k.clone().try_into_primitive::<Autodiff<Flex>>(),
            v.clone().try_into_primitive::<Autodiff<Flex>>(),
        ) {
            let out = FusedAttention
                .prepare::<NoCheckpointing>([qp.node(), kp.node(), vp.node()])
                .compute_bound()
                .stateful();
            let (q, k, v) = (
                qp.into_primitive(),
                kp.into_primitive(),
                vp.into_primitive(),
            );
            let out = match out {
                OpsKind::Tracked(prep) => {
                    let (out, lse) = fused_forward(&q, &k, &v, heads, true);
                    let saved = Saved {
                        q,
                        k,
                        v,
                        out: out.clone(),
                        lse: Arc::new(lse),
                        heads,
                    };
                    prep.finish(saved, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(fused_forward(&q, &k, &v, heads, false).0),
            };
            return Tensor::from_primitive::<Autodiff<Flex>>(out);
        }
    }
    burn_path(q, k, v, heads)
}

/// burn's attention, for every case the fused kernels do not cover (and the reference the
/// fused op is tested against).
pub fn burn_path(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let split = |x: Tensor<3>| {
        let [batch, tokens, width] = x.dims();
        x.reshape([batch, tokens, heads, width / heads])
            .swap_dims(1, 2)
    };
    let out = burn_attention(
        split(q),
        split(k),
        split(v),
        None,
        None,
        AttentionModuleOptions::default(),
    );
    let [batch, heads, tokens, head_dim] = out.dims();
    out.swap_dims(1, 2)
        .reshape([batch, tokens, heads * head_dim])
}

fn shape_of(q: &FlexTensor, k: &FlexTensor, heads: usize) -> AttentionShape {
    let (qs, ks) = (q.layout().shape(), k.layout().shape());
    AttentionShape {
        batch: qs[0],
        heads,
        queries: qs[1],
        keys: ks[1],
        head_dim: qs[2] / heads,
    }
}

fn scale_of(shape: &AttentionShape) -> f32 {
    1.0 / (shape.head_dim as f32).sqrt()
}

/// Output, and the per-row log-sum-exps when `keep_lse`.
fn fused_forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    heads: usize,
    keep_lse: bool,
) -> (FlexTensor, Vec<f32>) {
    let shape = shape_of(q, k, heads);
    let (q, k, v) = (contiguous(q), contiguous(k), contiguous(v));
    let mut out = zeroed(values(&q).len());
    let mut lse = vec![
        0f32;
        if keep_lse {
            shape.batch * heads * shape.queries
        } else {
            0
        }
    ];
    attention_forward(
        values(&q),
        values(&k),
        values(&v),
        shape,
        scale_of(&shape),
        &mut out,
        keep_lse.then_some(lse.as_mut_slice()),
    );
    (flex(out, [shape.batch, shape.queries, shape.width()]), lse)
}

/// The autodiff node of the fused attention.
#[derive(Debug)]
struct FusedAttention;

/// What the backward needs: inputs, output and log-sum-exps (no probabilities).
#[derive(Clone, Debug)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Arc<Vec<f32>>,
    heads: usize,
}

impl Backward<Flex, 3> for FusedAttention {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_out = contiguous(&grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let shape = shape_of(&s.q, &s.k, s.heads);
        let (q, k, v, out) = (
            contiguous(&s.q),
            contiguous(&s.k),
            contiguous(&s.v),
            contiguous(&s.out),
        );
        let (mut dq, mut dk, mut dv) = (
            zeroed(values(&q).len()),
            zeroed(values(&k).len()),
            zeroed(values(&v).len()),
        );
        attention_backward(
            values(&q),
            values(&k),
            values(&v),
            values(&out),
            &s.lse,
            values(&d_out),
            shape,
            scale_of(&shape),
            &mut dq,
            &mut dk,
            &mut dv,
        );
        let (qdims, kdims) = (
            [shape.batch, shape.queries, shape.width()],
            [shape.batch, shape.keys, shape.width()],
        );
        if let Some(node) = node_q {
            grads.register::<Flex>(node.id, flex(dq, qdims));
        }
        if let Some(node) = node_k {
            grads.register::<Flex>(node.id, flex(dk, kdims));
        }
        if let Some(node) = node_v {
            grads.register::<Flex>(node.id, flex(dv, kdims));
        }
    }
}
