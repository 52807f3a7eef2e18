//! The pieces of a pre-LN vision transformer that CLIP's vision tower and DINO's ViT share:
//! LayerNorm and linear parameters in burn's layouts, their loader, the shape check, the
//! patch tokens, the encoder layers, and images as a batch of pixel values.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::{attention, conv2d, layer_norm, linear};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn::tensor::{Device, Tensor, TensorData};

use crate::clip::ClipImageProcessor;
use crate::error::EvalError;
use crate::preprocess::RgbImage;
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

/// Why a transformer of these sizes cannot be built (`None` when it can): whole patches per
/// side and whole heads per token.
pub(crate) fn shape_problem(
    image_size: usize,
    patch_size: usize,
    hidden_size: usize,
    heads: usize,
) -> Option<String> {
    let fits = patch_size > 0
        && image_size.is_multiple_of(patch_size)
        && heads > 0
        && hidden_size.is_multiple_of(heads);
    (!fits).then(|| {
        format!(
            "image_size {image_size} / patch_size {patch_size} / hidden_size {hidden_size} / \
             heads {heads} do not fit"
        )
    })
}

/// The input tokens `[batch, patches + 1, width]`: the patches of `pixel_values` (a
/// `patch` x `patch` stride convolution), the class token first, positions added.
pub(crate) fn patch_tokens(
    pixel_values: Tensor<4>,
    (weight, bias): (Tensor<4>, Option<Tensor<1>>),
    class: Tensor<1>,
    position: Tensor<2>,
    patch: usize,
) -> Tensor<3> {
    let [batch, _, _, _] = pixel_values.dims();
    let options = ConvOptions::new([patch, patch], [0, 0], [1, 1], 1);
    let patches = conv2d(pixel_values, weight, bias, options);
    let [_, d, gh, gw] = patches.dims();
    let patches = patches.reshape([batch, d, gh * gw]).swap_dims(1, 2);
    let class = class.reshape([1, 1, d]).expand([batch, 1, d]);
    let tokens = gh * gw + 1;
    Tensor::cat(vec![class, patches], 1) + position.reshape([1, tokens, d])
}

/// `images` prepared by `processor` as one batch `[n, 3, h, w]`.
pub(crate) fn pixel_batch(
    processor: &ClipImageProcessor,
    images: &[RgbImage],
    device: &Device,
) -> Tensor<4> {
    let mut data = Vec::new();
    let (mut h, mut w) = (0, 0);
    for image in images {
        let (values, ph, pw) = processor.pixel_values(image);
        (h, w) = (ph, pw);
        data.extend(values);
    }
    Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), device)
}

/// `pixel_values`, or an error when the processor made another size than the `side` the
/// `model` takes.
pub(crate) fn of_side(
    pixel_values: Tensor<4>,
    side: usize,
    model: &str,
) -> Result<Tensor<4>, EvalError> {
    let [_, _, h, w] = pixel_values.dims();
    if (h, w) != (side, side) {
        return Err(EvalError::Input(format!(
            "the image processor makes {h}x{w} inputs but the {model} takes {side}x{side} \
             (check size / crop_size in the processor config)"
        )));
    }
    Ok(pixel_values)
}
