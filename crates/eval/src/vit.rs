//! The pieces of a pre-LN vision transformer that CLIP's vision tower and DINO's ViT share:
//! LayerNorm and linear parameters in burn's layouts, their loader, and the encoder layers.

use burn::module::{Module, Param};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::{attention, layer_norm, linear};
use burn::tensor::ops::AttentionModuleOptions;

use crate::error::EvalError;
use crate::weights::WeightMap;

/// The MLP activations transformers' vision configs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
}

impl Activation {
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            other => Err(format!(
                "hidden_act: unsupported {other:?}; expected quick_gelu, gelu or gelu_new"
            )),
        }
    }

    pub(crate) fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => burn::tensor::activation::gelu_approximate(x),
        }
    }
}

/// LayerNorm parameters (applied with burn's functional layer norm).
#[derive(Module, Debug)]
pub(crate) struct Norm {
    gamma: Param<Tensor<1>>,
    beta: Param<Tensor<1>>,
    eps: f64,
}

impl Norm {
    pub(crate) fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        layer_norm(x, self.gamma.val(), Some(self.beta.val()), self.eps)
    }
}

/// A linear layer stored as burn lays it out (`[d_in, d_out]`).
#[derive(Module, Debug)]
pub(crate) struct Dense {
    weight: Param<Tensor<2>>,
    bias: Option<Param<Tensor<1>>>,
}

impl Dense {
    pub(crate) fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// One pre-LN layer: attention, then the MLP, each around a residual.
#[derive(Module, Debug)]
pub(crate) struct EncoderLayer {
    pub(crate) layer_norm1: Norm,
    pub(crate) q_proj: Dense,
    pub(crate) k_proj: Dense,
    pub(crate) v_proj: Dense,
    pub(crate) out_proj: Dense,
    pub(crate) layer_norm2: Norm,
    pub(crate) fc1: Dense,
    pub(crate) fc2: Dense,
}

/// Takes tensors by name from a weights file into burn's layouts.
pub(crate) struct Loader<'a> {
    pub(crate) map: &'a mut WeightMap,
    pub(crate) device: Device,
}

impl Loader<'_> {
    pub(crate) fn param<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<D>>, EvalError> {
        Ok(Param::from_tensor(self.map.take(
            key,
            shape,
            &self.device,
        )?))
    }

    pub(crate) fn norm(&mut self, key: &str, d: usize, eps: f64) -> Result<Norm, EvalError> {
        Ok(Norm {
            gamma: self.param(&format!("{key}.weight"), [d])?,
            beta: self.param(&format!("{key}.bias"), [d])?,
            eps,
        })
    }

    /// PyTorch's `[d_out, d_in]` weight, transposed.
    pub(crate) fn dense(
        &mut self,
        key: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Dense, EvalError> {
        let weight = self
            .map
            .take(&format!("{key}.weight"), [d_out, d_in], &self.device)?
            .transpose();
        Ok(Dense {
            weight: Param::from_tensor(weight),
            bias: if bias {
                Some(self.param(&format!("{key}.bias"), [d_out])?)
            } else {
                None
            },
        })
    }
}

/// The layers over tokens `x` `[batch, tokens, width]` with `heads` attention heads.
pub(crate) fn encode(
    layers: &[EncoderLayer],
    mut x: Tensor<3>,
    heads: usize,
    activation: Activation,
) -> Tensor<3> {
    let [batch, tokens, d] = x.dims();
    let split = |t: Tensor<3>| t.reshape([batch, tokens, heads, d / heads]).swap_dims(1, 2);
    for layer in layers {
        let h = layer.layer_norm1.forward(x.clone());
        let context = attention(
            split(layer.q_proj.forward(h.clone())),
            split(layer.k_proj.forward(h.clone())),
            split(layer.v_proj.forward(h)),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .swap_dims(1, 2)
        .reshape([batch, tokens, d]);
        x = x + layer.out_proj.forward(context);
        let h = layer.layer_norm2.forward(x.clone());
        x = x + layer.fc2.forward(activation.apply(layer.fc1.forward(h)));
    }
    x
}
