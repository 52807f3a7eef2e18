//! The UNet's attention: diffusers `Transformer2DModel` with `BasicTransformerBlock`s
//! (self-attention, cross-attention to the text states, GEGLU feed-forward).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::layers::{conv, conv_cost, group_norm, norm_cost};
use crate::cost::Cost;
use crate::ops::{self, linear};

/// The transformer blocks' LayerNorm epsilon (diffusers' `norm_eps` default).
const LAYER_NORM_EPSILON: f64 = 1e-5;

/// Multi-head attention without biases on q/k/v (diffusers `Attention`).
#[derive(Module, Debug)]
pub struct Attention {
    pub(crate) to_q: Linear,
    pub(crate) to_k: Linear,
    pub(crate) to_v: Linear,
    pub(crate) to_out: Linear,
    num_heads: usize,
}

impl Attention {
    /// Queries of width `dim`; keys and values from `context_dim`-wide states.
    pub fn new(dim: usize, context_dim: usize, num_heads: usize, device: &Device) -> Self {
        let proj = |d_in| LinearConfig::new(d_in, dim).with_bias(false).init(device);
        Self {
            to_q: proj(dim),
            to_k: proj(context_dim),
            to_v: proj(context_dim),
            to_out: LinearConfig::new(dim, dim).init(device),
            num_heads,
        }
    }

    /// `x`: `[batch, tokens, dim]`; `context`: `[batch, keys, context_dim]`.
    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let q = linear(&self.to_q, x);
        let k = linear(&self.to_k, context.clone());
        let v = linear(&self.to_v, context);
        linear(&self.to_out, ops::attention(q, k, v, self.num_heads))
    }

    /// Cost for `queries` tokens attending to `keys` tokens of one sample.
    pub fn cost(&self, queries: usize, keys: usize, cost: &mut Cost) {
        let [dim, _] = self.to_q.weight.lazy_shape().dims();
        let [context_dim, _] = self.to_k.weight.lazy_shape().dims();
        cost.matmul(queries, dim, dim);
        cost.matmul(keys, context_dim, dim);
        cost.matmul(keys, context_dim, dim);
        cost.attention(self.num_heads, queries, keys, dim / self.num_heads);
        cost.linear(queries, dim, dim);
    }
}

/// GEGLU feed-forward: a projection to twice the hidden width, one half gating the other
/// through exact GELU, then back (diffusers `FeedForward` with `geglu`).
#[derive(Module, Debug)]
pub struct FeedForward {
    pub(crate) proj_in: Linear,
    pub(crate) proj_out: Linear,
}

impl FeedForward {
    /// Width `dim`, hidden width `4 * dim`.
    pub fn new(dim: usize, device: &Device) -> Self {
        let hidden = 4 * dim;
        Self {
            proj_in: LinearConfig::new(dim, 2 * hidden).init(device),
            proj_out: LinearConfig::new(hidden, dim).init(device),
        }
    }

    /// `x`: `[batch, tokens, dim]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear(&self.proj_out, ops::geglu(linear(&self.proj_in, x)))
    }

    /// Cost for `tokens` tokens.
    pub fn cost(&self, tokens: usize, cost: &mut Cost) {
        let [dim, double_hidden] = self.proj_in.weight.lazy_shape().dims();
        cost.linear(tokens, dim, double_hidden);
        cost.activation(tokens * double_hidden / 2); // GELU on the gate
        cost.elementwise(tokens * double_hidden / 2); // gating product
        cost.linear(tokens, double_hidden / 2, dim);
    }
}

/// Pre-norm transformer layer: self-attention (or attention to the context when
/// `only_cross_attention`), cross-attention, feed-forward, each with a residual.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn1: Attention,
    pub(crate) norm2: LayerNorm,
    pub(crate) attn2: Attention,
    pub(crate) norm3: LayerNorm,
    pub(crate) ff: FeedForward,
    only_cross_attention: bool,
}

impl TransformerBlock {
    /// A layer of width `dim`.
    pub fn new(
        dim: usize,
        context_dim: usize,
        num_heads: usize,
        only_cross_attention: bool,
        device: &Device,
    ) -> Self {
        let norm = || {
            LayerNormConfig::new(dim)
                .with_epsilon(LAYER_NORM_EPSILON)
                .init(device)
        };
        let attn1_context = if only_cross_attention {
            context_dim
        } else {
            dim
        };
        Self {
            norm1: norm(),
            attn1: Attention::new(dim, attn1_context, num_heads, device),
            norm2: norm(),
            attn2: Attention::new(dim, context_dim, num_heads, device),
            norm3: norm(),
            ff: FeedForward::new(dim, device),
            only_cross_attention,
        }
    }

    /// `x`: `[batch, tokens, dim]`; `context`: `[batch, keys, context_dim]`.
    pub fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let h = ops::layer_norm(&self.norm1, LAYER_NORM_EPSILON, x.clone());
        let attn1_context = if self.only_cross_attention {
            context.clone()
        } else {
            h.clone()
        };
        let x = self.attn1.forward(h, attn1_context) + x;
        let x = self.attn2.forward(
            ops::layer_norm(&self.norm2, LAYER_NORM_EPSILON, x.clone()),
            context.clone(),
        ) + x;
        self.ff
            .forward(ops::layer_norm(&self.norm3, LAYER_NORM_EPSILON, x.clone()))
            + x
    }

    /// Cost for `tokens` tokens reading `keys` context tokens.
    pub fn cost(&self, tokens: usize, keys: usize, cost: &mut Cost) {
        let [dim] = self.norm1.gamma.lazy_shape().dims();
        let self_keys = if self.only_cross_attention {
            keys
        } else {
            tokens
        };
        norm_cost(tokens * dim, cost);
        self.attn1.cost(tokens, self_keys, cost);
        cost.elementwise(tokens * dim);
        norm_cost(tokens * dim, cost);
        self.attn2.cost(tokens, keys, cost);
        cost.elementwise(tokens * dim);
        norm_cost(tokens * dim, cost);
        self.ff.cost(tokens, cost);
        cost.elementwise(tokens * dim);
    }
}

/// Projection in or out of the token sequence: linear (SD 2.x) or 1x1 conv (SD 1.x).
#[derive(Module, Debug)]
pub enum Projection {
    /// A linear layer over the channel axis of the tokens.
    Linear(Linear),
    /// A 1x1 convolution over the feature map.
    Conv(Conv2d),
}

impl Projection {
    fn new(channels: usize, linear: bool, device: &Device) -> Self {
        if linear {
            Projection::Linear(LinearConfig::new(channels, channels).init(device))
        } else {
            Projection::Conv(conv(channels, channels, 1, 1, 0, device))
        }
    }

    fn cost(&self, channels: usize, h: usize, w: usize, cost: &mut Cost) {
        match self {
            Projection::Linear(_) => cost.linear(h * w, channels, channels),
            Projection::Conv(c) => {
                conv_cost(c, h, w, cost);
            }
        }
    }
}

/// GroupNorm, projection in, transformer layers, projection out, plus the input.
#[derive(Module, Debug)]
pub struct SpatialTransformer {
    pub(crate) norm: GroupNorm,
    pub(crate) proj_in: Projection,
    pub(crate) transformer_blocks: Vec<TransformerBlock>,
    pub(crate) proj_out: Projection,
}

impl SpatialTransformer {
    /// A transformer over a `channels`-wide feature map.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: usize,
        context_dim: usize,
        num_heads: usize,
        layers: usize,
        groups: usize,
        linear_projection: bool,
        only_cross_attention: bool,
        device: &Device,
    ) -> Self {
        Self {
            // diffusers fixes this norm's epsilon at 1e-6 whatever the config says.
            norm: group_norm(groups, channels, 1e-6, device),
            proj_in: Projection::new(channels, linear_projection, device),
            transformer_blocks: (0..layers)
                .map(|_| {
                    TransformerBlock::new(
                        channels,
                        context_dim,
                        num_heads,
                        only_cross_attention,
                        device,
                    )
                })
                .collect(),
            proj_out: Projection::new(channels, linear_projection, device),
        }
    }

    /// `x`: `[batch, channels, h, w]`; `context`: `[batch, keys, context_dim]`.
    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [batch, channels, h, w] = x.dims();
        let residual = x.clone();
        let x = ops::group_norm(&self.norm, x, false);
        let to_tokens = |x: Tensor<4>| x.reshape([batch, channels, h * w]).swap_dims(1, 2);
        let mut tokens = match &self.proj_in {
            Projection::Linear(l) => linear(l, to_tokens(x)),
            Projection::Conv(c) => to_tokens(c.forward(x)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context);
        }
        let to_map = |t: Tensor<3>| t.swap_dims(1, 2).reshape([batch, channels, h, w]);
        let out = match &self.proj_out {
            Projection::Linear(l) => to_map(linear(l, tokens)),
            Projection::Conv(c) => c.forward(to_map(tokens)),
        };
        out + residual
    }

    /// Cost for one `[channels, h, w]` sample reading `keys` context tokens.
    pub fn cost(&self, h: usize, w: usize, keys: usize, cost: &mut Cost) {
        let [channels] = self
            .norm
            .gamma
            .as_ref()
            .expect("affine")
            .lazy_shape()
            .dims();
        norm_cost(channels * h * w, cost);
        self.proj_in.cost(channels, h, w, cost);
        for block in &self.transformer_blocks {
            block.cost(h * w, keys, cost);
        }
        self.proj_out.cost(channels, h, w, cost);
        cost.elementwise(channels * h * w);
    }
}
