//! What a training run reads: encoded latents and text states by example index, and the order
//! in which it reads them (a pure function of seed and position, so a resumed run continues
//! exactly where it stopped without saving any generator state).

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_model::text::{TextConditioner, TextEncoder};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig};
use ldmscale_pipeline::{PipelineError, encode_images, encode_text};
use ldmscale_util::permutation::{Permutation, SHUFFLED_IN_MEMORY_MAX};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Encoded training examples (e.g. the latent cache of a dataset).
pub trait TrainingData {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Latent shape `[channels, h, w]` (already multiplied by the VAE scaling factor).
    fn latent_shape(&self) -> [usize; 3];
    /// Text-state shape `[tokens, width]`.
    fn context_shape(&self) -> [usize; 2];
    /// `[h, w, tokens]` one example's UNet forward sees (a task's compute accounting).
    fn forward_size(&self) -> [usize; 3] {
        let [_, h, w] = self.latent_shape();
        let [l, _] = self.context_shape();
        [h, w, l]
    }
    /// Latents `[B, C, h, w]` and text states `[B, L, D]` of examples `indices`.
    fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>), String>;
    /// The null caption's text states `[1, L, D]` (what CFG's unconditional half reads).
    fn null_context(&self, device: &Device) -> Tensor<3>;
    /// Identifies the data (dataset, encoders, resolution) so a run refuses to resume on other
    /// data.
    fn key(&self) -> String;
}

/// Encoded examples held in memory (a dataset small enough to encode up front).
pub struct InMemory {
    latents: Vec<f32>,
    latent_shape: [usize; 3],
    states: Vec<f32>,
    context_shape: [usize; 2],
    null: Vec<f32>,
    key: String,
}

/// Tokens per caption at most.
pub(crate) const MAX_TOKENS: usize = 32;

impl InMemory {
    /// Encodes `images` (`N x 3 x res x res` in [-1, 1]) to scaled latents and `captions` to
    /// text states of at most 32 tokens; `key` identifies the data in checkpoints.
    pub fn encode(
        vae: &AutoencoderKL,
        vae_config: &AutoencoderKLConfig,
        text: &TextConditioner,
        (images, captions): (&[f32], &[String]),
        res: usize,
        key: String,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        let length = text.encoder.max_positions().min(MAX_TOKENS);
        let states = encode_text(text, captions, length, device)?;
        let null = encode_text(text, &[String::new()], length, device)?;
        let f = vae.downsampling_factor();
        Ok(Self {
            latents: encode_images(vae, vae_config, images, res, device),
            latent_shape: [vae_config.latent_channels, res / f, res / f],
            states: states.states,
            context_shape: [length, states.width],
            null: null.states,
            key,
        })
    }
}

impl TrainingData for InMemory {
    fn len(&self) -> usize {
        self.latents.len() / self.latent_shape.iter().product::<usize>()
    }
    fn latent_shape(&self) -> [usize; 3] {
        self.latent_shape
    }
    fn context_shape(&self) -> [usize; 2] {
        self.context_shape
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>), String> {
        let ls: usize = self.latent_shape.iter().product();
        let cs: usize = self.context_shape.iter().product();
        let mut l = Vec::with_capacity(indices.len() * ls);
        let mut c = Vec::with_capacity(indices.len() * cs);
        for &i in indices {
            l.extend_from_slice(&self.latents[i * ls..(i + 1) * ls]);
            c.extend_from_slice(&self.states[i * cs..(i + 1) * cs]);
        }
        let [ch, h, w] = self.latent_shape;
        let [tl, td] = self.context_shape;
        let b = indices.len();
        Ok((
            Tensor::from_data(TensorData::new(l, [b, ch, h, w]), device),
            Tensor::from_data(TensorData::new(c, [b, tl, td]), device),
        ))
    }
    fn null_context(&self, device: &Device) -> Tensor<3> {
        let [tl, td] = self.context_shape;
        Tensor::from_data(TensorData::new(self.null.clone(), [1, tl, td]), device)
    }
    fn key(&self) -> String {
        self.key.clone()
    }
}

/// A deterministic per-purpose generator for `(seed, step, stream)`.
pub fn rng_for(seed: u64, step: u64, stream: u64) -> StdRng {
    // SplitMix64 finaliser over the three words: distinct inputs give unrelated seeds.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(stream.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// The example indices for samples `start .. start + count` of the run: epochs of a seeded
/// permutation of `0..len`, shuffled in memory up to [`SHUFFLED_IN_MEMORY_MAX`] examples (the
/// order every run has had), else drawn position by position from a [`Permutation`] instead of
/// rebuilding gigabytes of indices for every micro-batch.
pub fn order(seed: u64, len: usize, start: u64, count: usize) -> Vec<usize> {
    if len > SHUFFLED_IN_MEMORY_MAX {
        return order_without_memory(seed, len, start, count);
    }
    let mut out = Vec::with_capacity(count);
    let mut epoch = u64::MAX;
    let mut perm: Vec<usize> = Vec::new();
    for sample in start..start + count as u64 {
        let e = sample / len as u64;
        if e != epoch {
            epoch = e;
            perm = (0..len).collect();
            let mut rng = rng_for(seed, e, 0x0DA7A);
            for i in (1..len).rev() {
                let j = rng.random_range(0..=i);
                perm.swap(i, j);
            }
        }
        out.push(perm[(sample % len as u64) as usize]);
    }
    out
}

/// [`order`] for sets past [`SHUFFLED_IN_MEMORY_MAX`]: each epoch's permutation keyed by
/// (seed, epoch), evaluated at the positions asked for.
fn order_without_memory(seed: u64, len: usize, start: u64, count: usize) -> Vec<usize> {
    let len = len as u64;
    (start..start + count as u64)
        .map(|sample| {
            let key = ldmscale_util::hash::stable_seed(&[
                "data-order",
                &seed.to_string(),
                &(sample / len).to_string(),
            ]);
            Permutation::new(len, key).at(sample % len) as usize
        })
        .collect()
}

/// A synthetic conditional data set for tests and smoke runs: example `i` belongs to class
/// `i % classes`; its latent is a class-specific smooth pattern plus a little example noise and
/// its text state a class-specific code, so a model can learn the conditional structure.
#[derive(Clone, Debug)]
pub struct SyntheticData {
    /// Examples.
    pub len: usize,
    /// Classes.
    pub classes: usize,
    /// `[C, h, w]`.
    pub latent_shape: [usize; 3],
    /// `[L, D]`.
    pub context_shape: [usize; 2],
}

impl SyntheticData {
    fn latent(&self, i: usize) -> Vec<f32> {
        let [c, h, w] = self.latent_shape;
        let class = (i % self.classes) as f32;
        let mut rng = rng_for(i as u64, 0, 0x5EED);
        (0..c * h * w)
            .map(|k| {
                let (ch, y, x) = (k / (h * w), (k / w) % h, k % w);
                let phase = class * 0.9 + ch as f32 * 0.5;
                (x as f32 * 0.7 + phase).sin() * (y as f32 * 0.5 - phase).cos()
                    + 0.05 * (rng.random::<f32>() - 0.5)
            })
            .collect()
    }

    fn context(&self, class: Option<usize>) -> Vec<f32> {
        let [l, d] = self.context_shape;
        (0..l * d)
            .map(|k| match class {
                Some(c) => (((k * 7 + c * 13) % 11) as f32 / 5.0 - 1.0) * ((c + 1) as f32).sqrt(),
                None => 0.0,
            })
            .collect()
    }
}

impl TrainingData for SyntheticData {
    fn len(&self) -> usize {
        self.len
    }
    fn latent_shape(&self) -> [usize; 3] {
        self.latent_shape
    }
    fn context_shape(&self) -> [usize; 2] {
        self.context_shape
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>), String> {
        let [c, h, w] = self.latent_shape;
        let [l, d] = self.context_shape;
        let mut lat = Vec::with_capacity(indices.len() * c * h * w);
        let mut ctx = Vec::with_capacity(indices.len() * l * d);
        for &i in indices {
            if i >= self.len {
                return Err(format!("example {i} out of range (len {})", self.len));
            }
            lat.extend(self.latent(i));
            ctx.extend(self.context(Some(i % self.classes)));
        }
        let b = indices.len();
        Ok((
            Tensor::from_data(TensorData::new(lat, [b, c, h, w]), device),
            Tensor::from_data(TensorData::new(ctx, [b, l, d]), device),
        ))
    }
    fn null_context(&self, device: &Device) -> Tensor<3> {
        let [l, d] = self.context_shape;
        Tensor::from_data(TensorData::new(self.context(None), [1, l, d]), device)
    }
    fn key(&self) -> String {
        format!(
            "synthetic(len={}, classes={}, latent={:?}, context={:?})",
            self.len, self.classes, self.latent_shape, self.context_shape
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_permutation_per_epoch_and_resumable() {
        let all = order(7, 10, 0, 30);
        for epoch in all.chunks(10) {
            let mut e = epoch.to_vec();
            e.sort();
            assert_eq!(e, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(all[..10], all[10..20]);
        assert_eq!(order(7, 10, 13, 9), all[13..22].to_vec());
    }

    #[test]
    fn large_sets_are_ordered_without_holding_an_epoch() {
        let len = SHUFFLED_IN_MEMORY_MAX + 3;
        let first = order(7, len, 0, 64);
        assert_eq!(order(7, len, 10, 20), first[10..30].to_vec());
        assert!(first.iter().all(|&i| i < len));
        let mut distinct = first.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 64);
        // The epoch after re-draws; positions across the epoch boundary stay in range.
        let next = order(7, len, len as u64, 64);
        assert_ne!(first, next);
        let across = order(7, len, len as u64 - 2, 4);
        assert_eq!(across[2..], next[..2]);
    }
}
