//! Attention as one fused op: burn's flex attention computes every `exp` with scalar libm, and
//! under autodiff keeps several `[batch, heads, tokens, tokens]` tensors per call. This keeps
//! only inputs, output and one log-sum-exp per query row, and recomputes probabilities in the
//! backward.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use burn::tensor::module::attention as burn_attention_module;
use burn::tensor::ops::AttentionModuleOptions;
use ldmscale_kernels::{AttentionShape, attention_backward, attention_forward, zeroed};

use super::buffers::{flex, shaped_like, values};
use super::{FlexOp, OpKind, try_fused};

/// `softmax(q k^T / sqrt(head_dim)) v` per head, on `[batch, tokens, heads * head_dim]` tensors
/// (queries) and `[batch, keys, heads * head_dim]` (keys, values).
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    try_fused(Attention { heads }, [&q, &k, &v]).unwrap_or_else(|| burn_attention(q, k, v, heads))
}

/// burn's attention, where the kernels do not apply (and the reference they are tested against).
pub fn burn_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let split = |x: Tensor<3>| {
        let [batch, tokens, width] = x.dims();
        x.reshape([batch, tokens, heads, width / heads])
            .swap_dims(1, 2)
    };
    let out = burn_attention_module(
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

#[derive(Clone, Debug)]
struct Attention {
    heads: usize,
}

/// Inputs, output and log-sum-exps (no probabilities).
#[derive(Clone, Debug)]
struct Saved {
    qkv: [FlexTensor; 3],
    out: FlexTensor,
    lse: Arc<Vec<f32>>,
}

impl Attention {
    fn shape(&self, q: &FlexTensor, k: &FlexTensor) -> AttentionShape {
        let (qs, ks) = (q.layout().shape(), k.layout().shape());
        AttentionShape {
            batch: qs[0],
            heads: self.heads,
            queries: qs[1],
            keys: ks[1],
            head_dim: qs[2] / self.heads,
        }
    }

    /// Output, and the per-row log-sum-exps when `keep_lse`.
    fn run(&self, [q, k, v]: &[FlexTensor; 3], keep_lse: bool) -> (FlexTensor, Vec<f32>) {
        let shape = self.shape(q, k);
        let mut out = zeroed(values(q).len());
        let lse_len = shape.batch * shape.heads * shape.queries;
        let mut lse = vec![0f32; if keep_lse { lse_len } else { 0 }];
        attention_forward(
            values(q),
            values(k),
            values(v),
            shape,
            scale_of(&shape),
            &mut out,
            keep_lse.then_some(lse.as_mut_slice()),
        );
        (flex(out, [shape.batch, shape.queries, shape.width()]), lse)
    }
}

fn scale_of(shape: &AttentionShape) -> f32 {
    1.0 / (shape.head_dim as f32).sqrt()
}

impl FlexOp<3> for Attention {
    type Saved = Saved;
    const KIND: OpKind = OpKind::Attention;

    fn forward(&self, inputs: [FlexTensor; 3]) -> FlexTensor {
        self.run(&inputs, false).0
    }

    fn forward_saving(&self, qkv: [FlexTensor; 3]) -> (FlexTensor, Saved) {
        let (out, lse) = self.run(&qkv, true);
        let saved = Saved {
            qkv,
            out: out.clone(),
            lse: Arc::new(lse),
        };
        (out, saved)
    }

    fn backward(&self, s: Saved, d_out: FlexTensor, _: [bool; 3]) -> [Option<FlexTensor>; 3] {
        let [q, k, v] = &s.qkv;
        let shape = self.shape(q, k);
        let (mut dq, mut dk, mut dv) = (
            zeroed(values(q).len()),
            zeroed(values(k).len()),
            zeroed(values(v).len()),
        );
        attention_backward(
            values(q),
            values(k),
            values(v),
            values(&s.out),
            &s.lse,
            values(&d_out),
            shape,
            scale_of(&shape),
            &mut dq,
            &mut dk,
            &mut dv,
        );
        [(dq, q), (dk, k), (dv, v)].map(|(grad, input)| Some(shaped_like(grad, input)))
    }
}
