//! Images to scaled latents and captions to text states.

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_model::text::{TextConditioner, TextEncoder, TextStates, TextTokenizer};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig};

use crate::{PipelineError, values};

/// Images encoded at once (bounds memory on large sets).
const IMAGE_CHUNK: usize = 64;

/// Scaled latents (the posterior mode times the scaling factor) of images in [-1, 1], given
/// as `N x 3 x res x res` row-major values; returns the latents row-major.
pub fn encode_images(
    vae: &AutoencoderKL,
    config: &AutoencoderKLConfig,
    images: &[f32],
    res: usize,
    device: &Device,
) -> Vec<f32> {
    let mut latents = Vec::new();
    for chunk in images.chunks(IMAGE_CHUNK * 3 * res * res) {
        let n = chunk.len() / (3 * res * res);
        let x = Tensor::from_data(TensorData::new(chunk.to_vec(), [n, 3, res, res]), device);
        latents.extend(values(config.vae_to_latents(vae.encode(x).mode())));
    }
    latents
}

/// Text states of a batch of captions, padded or cut to `length` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TextBatch {
    /// `N x length x width` states, zero at padding positions.
    pub states: Vec<f32>,
    /// `N x length` attention mask (1 = token).
    pub mask: Vec<f32>,
    /// Tokens per caption.
    pub length: usize,
    /// State width.
    pub width: usize,
}

impl TextBatch {
    /// Captions in the batch.
    pub fn len(&self) -> usize {
        self.mask.len() / self.length.max(1)
    }

    /// Whether the batch holds no caption.
    pub fn is_empty(&self) -> bool {
        self.mask.is_empty()
    }

    /// The states as a `[N, length, width]` tensor.
    pub fn states_tensor(&self, device: &Device) -> Tensor<3> {
        let shape = [self.len(), self.length, self.width];
        Tensor::from_data(TensorData::new(self.states.clone(), shape), device)
    }

    /// The mask as a `[N, length]` tensor.
    pub fn mask_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.mask.clone(), [self.len(), self.length]),
            device,
        )
    }
}

/// Captions encoded at once.
const TEXT_CHUNK: usize = 64;

/// Encodes `captions` to `length` tokens each (longer ones cut, shorter ones zero-padded).
pub fn encode_text(
    text: &TextConditioner,
    captions: &[String],
    length: usize,
    device: &Device,
) -> Result<TextBatch, PipelineError> {
    let width = text.encoder.hidden_size();
    let mut batch = TextBatch {
        states: Vec::with_capacity(captions.len() * length * width),
        mask: Vec::with_capacity(captions.len() * length),
        length,
        width,
    };
    for chunk in captions.chunks(TEXT_CHUNK) {
        let refs: Vec<&str> = chunk.iter().map(|c| c.as_str()).collect();
        let (states, mask) = states_at_length(text.encode(&refs, device)?, length, device);
        batch.states.extend(values(states));
        batch.mask.extend(values(mask));
    }
    Ok(batch)
}

/// [`encode_text`]'s states `[B, length, D]` and mask `[B, length]`, as tensors on `device`,
/// of captions already tokenized: each row a caption's token ids (special tokens included,
/// unpadded), padded as `tokenizer` pads and encoded by `encoder` (the latent cache's token-id
/// mode runs this on each training batch).
pub fn encode_tokens(
    tokenizer: &TextTokenizer,
    encoder: &impl TextEncoder,
    rows: &[Vec<u32>],
    length: usize,
    device: &Device,
) -> (Tensor<3>, Tensor<2>) {
    let tokens = tokenizer.pad(rows);
    states_at_length(encoder.encode(&tokens, device), length, device)
}

/// An encoder's output as the UNet reads it: states zero at padding, cut or zero-padded to
/// `length` tokens, beside the mask likewise.
fn states_at_length(out: TextStates, length: usize, device: &Device) -> (Tensor<3>, Tensor<2>) {
    let [b, l, d] = out.hidden.dims();
    let masked = out.hidden * out.mask.clone().reshape([b, l, 1]);
    if l >= length {
        return (masked.narrow(1, 0, length), out.mask.narrow(1, 0, length));
    }
    (
        Tensor::cat(vec![masked, Tensor::zeros([b, length - l, d], device)], 1),
        Tensor::cat(vec![out.mask, Tensor::zeros([b, length - l], device)], 1),
    )
}
