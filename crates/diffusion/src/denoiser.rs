//! The model interface every sampler drives.

use burn::tensor::Tensor;

/// Anything that maps a noisy batch and its timesteps to a raw model output: a UNet, a CFG
/// wrapper around one, a distilled student, or an analytic function in a test.
///
/// The output is interpreted by the scheduler config's `prediction_type` (eps, v or x0).
pub trait Denoiser {
    /// Predicts for `x` (`[B, C, H, W]`) at `timesteps` (one value per sample, in training
    /// timestep units `0..T`; integral for the samplers in this crate).
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4>;

    /// Network evaluations per sample that one [`Denoiser::predict`] call costs: 1 for a
    /// plain model, 2 for classifier-free guidance (conditional + unconditional half).
    /// Sampling cost is this summed over the run, times GFLOPs per evaluation.
    fn evaluations_per_call(&self) -> usize {
        1
    }
}

impl<D: Denoiser + ?Sized> Denoiser for &mut D {
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        (**self).predict(x, timesteps)
    }

    fn evaluations_per_call(&self) -> usize {
        (**self).evaluations_per_call()
    }
}

impl<D: Denoiser + ?Sized> Denoiser for Box<D> {
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        (**self).predict(x, timesteps)
    }

    fn evaluations_per_call(&self) -> usize {
        (**self).evaluations_per_call()
    }
}

/// A [`Denoiser`] made from a closure (one evaluation per call).
#[derive(Debug, Clone)]
pub struct FnDenoiser<F>(pub F);

impl<F: FnMut(Tensor<4>, &[f32]) -> Tensor<4>> Denoiser for FnDenoiser<F> {
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        (self.0)(x, timesteps)
    }
}
