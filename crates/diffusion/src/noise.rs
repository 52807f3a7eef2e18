//! Where stochastic samplers get their Gaussian noise from.
//!
//! Noise is an explicit input so that runs are reproducible and parity tests can replay the
//! exact noise diffusers drew.

use std::collections::VecDeque;

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{DiffusionError, Result};

/// A supply of standard-normal tensors.
pub trait NoiseSource {
    /// The next `N(0, 1)` tensor of `shape` on `device`.
    fn noise(&mut self, shape: [usize; 4], device: &Device) -> Result<Tensor<4>>;
}

/// Standard-normal noise from a seeded generator (reproducible for a given seed, not
/// torch's stream).
#[derive(Debug)]
pub struct SeededNoise {
    rng: StdRng,
}

impl SeededNoise {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `n` standard-normal values.
    pub fn sample_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect()
    }
}

impl NoiseSource for SeededNoise {
    fn noise(&mut self, shape: [usize; 4], device: &Device) -> Result<Tensor<4>> {
        let values = self.sample_vec(shape.iter().product());
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// Replays given noise tensors in order (e.g. the noise a reference implementation drew).
#[derive(Debug, Clone, Default)]
pub struct NoiseQueue {
    queue: VecDeque<Tensor<4>>,
}

impl NoiseQueue {
    /// A queue that hands out `noises` front to back.
    pub fn new(noises: impl IntoIterator<Item = Tensor<4>>) -> Self {
        Self {
            queue: noises.into_iter().collect(),
        }
    }

    /// Noise tensors not yet handed out.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl NoiseSource for NoiseQueue {
    fn noise(&mut self, shape: [usize; 4], _device: &Device) -> Result<Tensor<4>> {
        let next = self.queue.pop_front().ok_or_else(|| {
            DiffusionError::NoiseExhausted("the noise queue is empty".to_string())
        })?;
        if next.dims() != shape {
            return Err(DiffusionError::Shape(format!(
                "queued noise has shape {:?}, the sampler needs {shape:?}",
                next.dims()
            )));
        }
        Ok(next)
    }
}

/// For deterministic samplers: asking it for noise is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn noise(&mut self, _shape: [usize; 4], _device: &Device) -> Result<Tensor<4>> {
        Err(DiffusionError::NoiseExhausted(
            "this sampler is stochastic; pass a SeededNoise or NoiseQueue".to_string(),
        ))
    }
}
