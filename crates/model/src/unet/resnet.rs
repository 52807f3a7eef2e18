//! The residual block of the UNet (diffusers `ResnetBlock2D`, "default" time conditioning).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::layers::{conv, conv_cost, group_norm, norm_cost};
use crate::cost::Cost;
use crate::ops::{self, conv2d};

/// GroupNorm, SiLU, 3x3 conv, add the projected time embedding, GroupNorm, SiLU, 3x3 conv, plus
/// a (1x1-projected where the width changes) skip connection.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub(crate) norm1: GroupNorm,
    pub(crate) conv1: Conv2d,
    pub(crate) time_emb_proj: Linear,
    pub(crate) norm2: GroupNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) conv_shortcut: Option<Conv2d>,
    output_scale: f64,
}

impl ResnetBlock {
    /// A block from `c_in` to `c_out` channels reading a `time_dim`-wide embedding.
    pub fn new(
        c_in: usize,
        c_out: usize,
        time_dim: usize,
        groups: usize,
        eps: f64,
        output_scale: f64,
        device: &Device,
    ) -> Self {
        Self {
            norm1: group_norm(groups, c_in, eps, device),
            conv1: conv(c_in, c_out, 3, 1, 1, device),
            time_emb_proj: LinearConfig::new(time_dim, c_out).init(device),
            norm2: group_norm(groups, c_out, eps, device),
            conv2: conv(c_out, c_out, 3, 1, 1, device),
            conv_shortcut: (c_in != c_out).then(|| conv(c_in, c_out, 1, 1, 0, device)),
            output_scale,
        }
    }

    /// `x`: `[batch, c_in, h, w]`; `time`: `[batch, time_dim]`, already through SiLU (the UNet
    /// applies that once for all blocks, as diffusers' per-block SiLU gives the same values).
    pub fn forward(&self, x: Tensor<4>, time: &Tensor<2>) -> Tensor<4> {
        let h = conv2d(&self.conv1, ops::group_norm(&self.norm1, x.clone(), true));
        let t = ops::linear(&self.time_emb_proj, time.clone()).unsqueeze_dims::<4>(&[2, 3]);
        let h = h + t;
        let h = conv2d(&self.conv2, ops::group_norm(&self.norm2, h, true));
        let skip = match &self.conv_shortcut {
            Some(shortcut) => conv2d(shortcut, x),
            None => x,
        };
        let out = skip + h;
        if self.output_scale == 1.0 {
            out
        } else {
            out / self.output_scale
        }
    }

    /// Cost for one `[c_in, h, w]` sample.
    pub fn cost(&self, h: usize, w: usize, cost: &mut Cost) {
        let [c_out, c_in, _, _] = self.conv1.weight.lazy_shape().dims();
        let [time_dim, _] = self.time_emb_proj.weight.lazy_shape().dims();
        norm_cost(c_in * h * w, cost);
        cost.activation(c_in * h * w); // SiLU
        conv_cost(&self.conv1, h, w, cost);
        cost.activation(time_dim); // SiLU on the embedding
        cost.linear(1, time_dim, c_out);
        cost.elementwise(c_out * h * w); // add time
        norm_cost(c_out * h * w, cost);
        cost.activation(c_out * h * w); // SiLU
        conv_cost(&self.conv2, h, w, cost);
        if let Some(shortcut) = &self.conv_shortcut {
            conv_cost(shortcut, h, w, cost);
        }
        cost.elementwise(c_out * h * w); // residual add
    }
}
