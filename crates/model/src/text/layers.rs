//! Pieces the text transformers share: activations named as transformers names them, and
//! multi-head attention over token sequences.

use burn::tensor::activation::{gelu, gelu_approximate, relu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use crate::cost::Cost;

/// A feed-forward activation (transformers' `hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x * Phi(x)` ("gelu").
    Gelu,
    /// tanh-approximated GELU ("gelu_new", "gelu_pytorch_tanh").
    GeluTanh,
    /// `x * sigmoid(1.702 x)` ("quick_gelu", OpenAI CLIP).
    QuickGelu,
    /// `max(x, 0)` ("relu").
    Relu,
}

impl Activation {
    /// Parses transformers' name; the error lists the supported ones.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "quick_gelu" => Ok(Activation::QuickGelu),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "hidden_act: unsupported {other:?}; expected gelu, gelu_new, gelu_pytorch_tanh, quick_gelu or relu"
            )),
        }
    }

    /// Applies the activation.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => gelu_approximate(x),
            Activation::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Activation::Relu => relu(x),
        }
    }
}

/// Scaled dot-product attention of `[batch, tokens, width]` queries, keys and values split into
/// `heads` heads; `mask` flags `[batch, heads, tokens, tokens]` positions to leave out.
pub(crate) fn multi_head_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    mask: Option<Tensor<4, Bool>>,
) -> Tensor<3> {
    let split = |x: Tensor<3>| {
        let [batch, tokens, width] = x.dims();
        x.reshape([batch, tokens, heads, width / heads])
            .swap_dims(1, 2)
    };
    let out = attention(
        split(q),
        split(k),
        split(v),
        mask,
        None,
        AttentionModuleOptions::default(),
    );
    let [batch, _, tokens, head_dim] = out.dims();
    out.swap_dims(1, 2)
        .reshape([batch, tokens, heads * head_dim])
}

/// Cost of one transformer layer on `tokens` tokens: q/k/v/out projections with bias, the
/// attention products, two residual adds, two LayerNorms and a `width -> hidden -> width` MLP.
pub(crate) fn layer_cost(tokens: usize, width: usize, hidden: usize, heads: usize) -> Cost {
    let mut cost = Cost::default();
    for _ in 0..4 {
        cost.linear(tokens, width, width);
    }
    cost.attention(heads, tokens, tokens, width / heads);
    cost.linear(tokens, width, hidden);
    cost.activation(tokens * hidden);
    cost.linear(tokens, hidden, width);
    cost.norm(2 * tokens * width);
    cost.elementwise(2 * tokens * width);
    cost
}
