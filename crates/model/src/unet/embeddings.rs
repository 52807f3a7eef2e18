//! Timestep embedding: the sinusoid of diffusers' `get_timestep_embedding` and the MLP after it.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::cost::Cost;
use crate::ops::linear;

/// Sinusoidal features of one timestep per sample, computed on the host in f32 with the same
/// operation order as diffusers (max period 10000, scale 1).
pub fn timestep_sinusoid(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let log_max = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_max * i as f32) / denom).exp())
        .collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|&f| t * f).collect();
        let (first, second): (Vec<f32>, Vec<f32>) = if flip_sin_to_cos {
            (
                args.iter().map(|a| a.cos()).collect(),
                args.iter().map(|a| a.sin()).collect(),
            )
        } else {
            (
                args.iter().map(|a| a.sin()).collect(),
                args.iter().map(|a| a.cos()).collect(),
            )
        };
        data.extend(first);
        data.extend(second);
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [timesteps.len(), dim]), device)
}

/// diffusers `TimestepEmbedding`: linear, SiLU, linear; an optional extra condition (LCM's
/// guidance embedding) is projected and added to the sinusoid first.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub(crate) cond_proj: Option<Linear>,
    pub(crate) linear_1: Linear,
    pub(crate) linear_2: Linear,
}

impl TimestepEmbedding {
    /// `in_dim` sinusoid features to `embed_dim`.
    pub fn new(in_dim: usize, embed_dim: usize, cond_dim: Option<usize>, device: &Device) -> Self {
        Self {
            cond_proj: cond_dim.map(|d| LinearConfig::new(d, in_dim).with_bias(false).init(device)),
            linear_1: LinearConfig::new(in_dim, embed_dim).init(device),
            linear_2: LinearConfig::new(embed_dim, embed_dim).init(device),
        }
    }

    /// Width of the extra condition it projects (LCM's `time_cond_proj_dim`), if any.
    pub fn condition_dim(&self) -> Option<usize> {
        self.cond_proj
            .as_ref()
            .map(|proj| proj.weight.lazy_shape().dims::<2>()[0])
    }

    /// Embeds `[batch, in_dim]` sinusoid features.
    pub fn forward(&self, sinusoid: Tensor<2>, condition: Option<Tensor<2>>) -> Tensor<2> {
        let mut x = sinusoid;
        if let (Some(proj), Some(cond)) = (&self.cond_proj, condition) {
            x = x + linear(proj, cond);
        }
        linear(&self.linear_2, silu(linear(&self.linear_1, x)))
    }

    /// Cost of one forward for one sample.
    pub fn cost(&self, cost: &mut Cost) {
        let [in_dim, embed_dim] = self.linear_1.weight.lazy_shape().dims();
        if let Some(proj) = &self.cond_proj {
            let [c, _] = proj.weight.lazy_shape().dims();
            cost.matmul(1, c, in_dim);
            cost.elementwise(in_dim);
        }
        cost.linear(1, in_dim, embed_dim);
        cost.activation(embed_dim);
        cost.linear(1, embed_dim, embed_dim);
    }
}
