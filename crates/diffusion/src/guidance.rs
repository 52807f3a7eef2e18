//! Classifier-free guidance (Ho & Salimans 2022) as a [`Denoiser`] wrapper.
//!
//! As in diffusers' Stable Diffusion pipeline, guidance is applied only when the scale w > 1,
//! and then the unconditional and conditional halves run in ONE batched model call
//! (`[uncond; cond]` along the batch), so every step costs two network evaluations per sample.

use burn::tensor::{Tensor, TensorData};

use crate::denoiser::Denoiser;
use crate::error::{DiffusionError, Result};

/// A conditional network such as a text-conditioned UNet. The conditioning is opaque here:
/// whatever per-sample context tensor the caller prepared (e.g. text encoder states).
pub trait ConditionalModel {
    /// Raw model output for `x` (`[N, C, H, W]`) at per-sample `timesteps` (`[N]`) with
    /// per-sample `context` (`[N, L, D]`).
    fn forward(&mut self, x: Tensor<4>, timesteps: Tensor<1>, context: &Tensor<3>) -> Tensor<4>;
}

impl<M: ConditionalModel + ?Sized> ConditionalModel for &mut M {
    fn forward(&mut self, x: Tensor<4>, timesteps: Tensor<1>, context: &Tensor<3>) -> Tensor<4> {
        (**self).forward(x, timesteps, context)
    }
}

/// Classifier-free guidance around a [`ConditionalModel`]:
/// `out = u + w (c - u)`, optionally rescaled (diffusers `rescale_noise_cfg`).
pub struct Cfg<M> {
    model: M,
    /// Conditional contexts, `[B, L, D]`.
    cond: Tensor<3>,
    /// `[uncond; cond]`, `[2B, L, D]`, built once.
    both: Tensor<3>,
    scale: f32,
    rescale: f32,
}

impl<M> std::fmt::Debug for Cfg<M> {
    // Models need not be Debug; show the guidance settings instead.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cfg")
            .field("scale", &self.scale)
            .field("rescale", &self.rescale)
            .field("cond", &self.cond.dims())
            .finish_non_exhaustive()
    }
}

impl<M: ConditionalModel> Cfg<M> {
    /// Wraps `model` with conditional contexts `cond` (`[B, L, D]`) and unconditional (null
    /// prompt) contexts `uncond` (`[B, L, D]`, or `[1, L, D]` shared by the batch), at guidance
    /// scale `scale` (w; <= 1 means no guidance and a single conditional evaluation).
    pub fn new(model: M, cond: Tensor<3>, uncond: Tensor<3>, scale: f32) -> Result<Self> {
        if !scale.is_finite() {
            return Err(DiffusionError::config(
                "guidance_scale",
                format!("{scale} is not finite"),
            ));
        }
        let [b, l, d] = cond.dims();
        let [ub, ul, ud] = uncond.dims();
        if (ul, ud) != (l, d) || (ub != b && ub != 1) {
            return Err(DiffusionError::Shape(format!(
                "unconditional context {:?} does not match conditional context {:?}",
                uncond.dims(),
                cond.dims()
            )));
        }
        let uncond = if ub == b {
            uncond
        } else {
            uncond.expand([b, l, d])
        };
        let both = Tensor::cat(vec![uncond, cond.clone()], 0);
        Ok(Self {
            model,
            cond,
            both,
            scale,
            rescale: 0.0,
        })
    }

    /// Sets the guidance rescale factor phi in [0, 1] (Lin et al. 2023; 0 disables it).
    pub fn with_rescale(mut self, rescale: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&rescale) {
            return Err(DiffusionError::config(
                "guidance_rescale",
                format!("{rescale} is outside [0, 1]"),
            ));
        }
        self.rescale = rescale;
        Ok(self)
    }

    /// Whether guidance is active (w > 1), i.e. whether each call evaluates the model twice.
    pub fn is_guided(&self) -> bool {
        self.scale > 1.0
    }

    /// The guidance scale w.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Gives the wrapped model back.
    pub fn into_inner(self) -> M {
        self.model
    }
}

impl<M: ConditionalModel> Denoiser for Cfg<M> {
    /// # Panics
    /// If `x`'s batch differs from the batch of the contexts given to [`Cfg::new`].
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        let batch = x.dims()[0];
        assert_eq!(
            batch,
            self.cond.dims()[0],
            "Cfg was built for a batch of {} contexts but got {batch} samples",
            self.cond.dims()[0]
        );
        let device = x.device();
        if !self.is_guided() {
            let t = Tensor::from_data(TensorData::new(timesteps.to_vec(), [batch]), &device);
            return self.model.forward(x, t, &self.cond);
        }
        let x2 = Tensor::cat(vec![x.clone(), x], 0);
        let t2: Vec<f32> = timesteps.iter().chain(timesteps).copied().collect();
        let t2 = Tensor::from_data(TensorData::new(t2, [2 * batch]), &device);
        let out = self.model.forward(x2, t2, &self.both);
        let uncond = out.clone().narrow(0, 0, batch);
        let cond = out.narrow(0, batch, batch);
        let guided = apply_guidance(uncond, cond.clone(), self.scale);
        if self.rescale > 0.0 {
            rescale_noise_cfg(guided, cond, self.rescale)
        } else {
            guided
        }
    }

    fn evaluations_per_call(&self) -> usize {
        if self.is_guided() { 2 } else { 1 }
    }
}

/// `u + w (c - u)`, in diffusers' operation order.
pub fn apply_guidance(uncond: Tensor<4>, cond: Tensor<4>, scale: f32) -> Tensor<4> {
    let delta = cond.sub(uncond.clone());
    uncond.add(delta.mul_scalar(scale))
}

/// diffusers `rescale_noise_cfg`: rescale the guided output to the per-sample standard
/// deviation of the conditional one, then mix `phi * rescaled + (1 - phi) * guided`.
pub fn rescale_noise_cfg(guided: Tensor<4>, cond: Tensor<4>, phi: f32) -> Tensor<4> {
    let std_cond = per_sample_std(cond);
    let std_guided = per_sample_std(guided.clone());
    let rescaled = guided.clone().mul(std_cond.div(std_guided));
    rescaled.mul_scalar(phi).add(guided.mul_scalar(1.0 - phi))
}

/// Unbiased standard deviation over all but the batch dimension, as `[B, 1, 1, 1]`.
fn per_sample_std(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c * h * w])
        .var(1)
        .sqrt()
        .reshape([b, 1, 1, 1])
}
