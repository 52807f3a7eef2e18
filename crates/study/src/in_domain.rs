//! The in-domain CLIP of the embedded default: where no CLIP or Inception weights exist offline,
//! an image encoder is trained contrastively (CLIP's symmetric InfoNCE) against the frozen text
//! encoder's states on the training split. Its image features give an in-domain FID and its
//! image-text cosine an in-domain CLIP score; its held-out retrieval accuracy says whether
//! either can be trusted.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ldmscale_model::init::seeded_init;
use ldmscale_train::data::rng_for;
use ldmscale_train::optimizer::{AdamW, AdamWConfig};
use ldmscale_train::params;
use rand::RngExt;

/// Width of the image features FID is computed on.
pub const FEATURE_DIM: usize = 128;

/// The contrastive pair of encoders.
#[derive(Module, Debug)]
pub struct InDomainClip {
    convs: Vec<Conv2d>,
    norms: Vec<GroupNorm>,
    image_proj: Linear,
    text_proj: Linear,
    logit_scale: Param<Tensor<1>>,
}

impl InDomainClip {
    /// Encoders for RGB images and `text_width`-wide text states, meeting in `embed_dim`.
    pub fn new(text_width: usize, embed_dim: usize, device: &Device) -> Self {
        let widths = [3, 32, 64, FEATURE_DIM];
        let convs = widths
            .windows(2)
            .map(|w| {
                Conv2dConfig::new([w[0], w[1]], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            })
            .collect();
        let norms = widths[1..]
            .iter()
            .map(|&c| GroupNormConfig::new(8, c).init(device))
            .collect();
        Self {
            convs,
            norms,
            image_proj: LinearConfig::new(FEATURE_DIM, embed_dim).init(device),
            text_proj: LinearConfig::new(text_width, embed_dim).init(device),
            // CLIP's initial temperature 1/0.07.
            logit_scale: Param::from_data(TensorData::new(vec![(1.0f32 / 0.07).ln()], [1]), device),
        }
    }

    /// Image features `[N, FEATURE_DIM]` (globally pooled) of images in [-1, 1].
    pub fn image_features(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = images;
        for (conv, norm) in self.convs.iter().zip(&self.norms) {
            x = silu(norm.forward(conv.forward(x)));
        }
        let [n, c, h, w] = x.dims();
        x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }

    fn normalize(x: Tensor<2>) -> Tensor<2> {
        let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
        x / norm
    }

    /// Unit image embeddings.
    pub fn embed_images(&self, images: Tensor<4>) -> Tensor<2> {
        Self::normalize(self.image_proj.forward(self.image_features(images)))
    }

    /// Unit text embeddings from states `[N, L, D]` and mask `[N, L]` (1 = token).
    pub fn embed_text(&self, states: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
        let [n, l, _] = states.dims();
        let m = mask.reshape([n, l, 1]);
        let pooled = (states * m.clone()).sum_dim(1) / m.sum_dim(1).clamp_min(1.0);
        let [_, _, d] = pooled.dims();
        Self::normalize(self.text_proj.forward(pooled.reshape([n, d])))
    }

    fn loss(&self, images: Tensor<4>, states: Tensor<3>, mask: Tensor<2>) -> Tensor<1> {
        let i = self.embed_images(images);
        let t = self.embed_text(states, mask);
        let [n, _] = i.dims();
        let scale = self
            .logit_scale
            .val()
            .clamp_max(100f32.ln())
            .exp()
            .reshape([1, 1]);
        let logits = i.matmul(t.transpose()) * scale;
        let eye: Tensor<2> = Tensor::<1, Int>::arange(0..n as i64, &logits.device())
            .reshape([n, 1])
            .equal(Tensor::<1, Int>::arange(0..n as i64, &logits.device()).reshape([1, n]))
            .float();
        let rows = -(log_softmax(logits.clone(), 1) * eye.clone()).sum() / n as f32;
        let cols = -(log_softmax(logits, 0) * eye).sum() / n as f32;
        (rows + cols) / 2.0
    }
}

/// A trained in-domain CLIP with its held-out quality.
pub struct Trained {
    /// The encoders.
    pub model: InDomainClip,
    /// Top-1 image-to-caption retrieval accuracy on held-out pairs.
    pub retrieval_accuracy: f64,
    /// Chance level of that accuracy (1 / candidates).
    pub chance: f64,
}

/// Image-text pairs fetched by index: `(images [k,3,H,W], states [k,L,D], mask [k,L])`.
/// The study's come from the streamed training set and the latent cache, so the encoder never
/// holds the whole training set.
pub trait Pairs {
    /// Pairs held.
    fn len(&self) -> usize;

    /// Whether no pair is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Width `D` of the text states.
    fn text_width(&self) -> usize;

    /// The pairs at `indices`, in that order.
    fn fetch(&self, indices: &[usize], device: &Device) -> Result<Batch, String>;
}

/// Images, text states and mask of some pairs.
pub type Batch = (Tensor<4>, Tensor<3>, Tensor<2>);

/// Pairs held as tensors.
pub struct InMemory {
    /// `[N, 3, H, W]`.
    pub images: Tensor<4>,
    /// `[N, L, D]`.
    pub states: Tensor<3>,
    /// `[N, L]`.
    pub mask: Tensor<2>,
}

impl Pairs for InMemory {
    fn len(&self) -> usize {
        self.images.dims()[0]
    }

    fn text_width(&self) -> usize {
        self.states.dims()[2]
    }

    fn fetch(&self, indices: &[usize], device: &Device) -> Result<Batch, String> {
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [indices.len()]), device);
        Ok((
            self.images.clone().select(0, idx.clone()),
            self.states.clone().select(0, idx.clone()),
            self.mask.clone().select(0, idx),
        ))
    }
}

/// Trains on `pairs`, holding out the last `val`.
pub fn train(
    pairs: &dyn Pairs,
    val: usize,
    steps: u64,
    batch: usize,
    seed: u64,
    device: &Device,
) -> Result<Trained, String> {
    let n = pairs.len();
    let text_width = pairs.text_width();
    let train_n = n - val;
    let ad = device.clone().autodiff();
    let mut model = seeded_init(&ad, seed, || InDomainClip::new(text_width, 64, &ad));
    let mut adam = AdamW::new(AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    });
    for step in 1..=steps {
        let mut rng = rng_for(seed, step, 0xC11B);
        let idx: Vec<usize> = (0..batch.min(train_n))
            .map(|_| rng.random_range(0..train_n))
            .collect();
        let (x, s, m) = pairs.fetch(&idx, device)?;
        let loss = model.loss(x.autodiff(), s.autodiff(), m.autodiff());
        let grads =
            params::named_gradients(&model, GradientsParams::from_grads(loss.backward(), &model));
        let lr = 2e-3 * (step as f64 / 20.0).min(1.0);
        model = adam.step_module(model, grads, lr);
    }
    let model = model.valid();
    let (retrieval_accuracy, chance) = if val >= 2 {
        let held: Vec<usize> = (train_n..n).collect();
        let (images, states, mask) = pairs.fetch(&held, device)?;
        let vi = model.embed_images(images);
        let vt = model.embed_text(states, mask);
        let sims = vi.matmul(vt.transpose());
        let best: Vec<i64> = sims
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("ints");
        let hits = best
            .iter()
            .enumerate()
            .filter(|(i, b)| *i as i64 == **b)
            .count();
        (hits as f64 / val as f64, 1.0 / val as f64)
    } else {
        (f64::NAN, f64::NAN)
    };
    Ok(Trained {
        model,
        retrieval_accuracy,
        chance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_to_retrieve_captions_well_above_chance() {
        // 8 classes: the image is a flat colour and the text state a class code.
        let device = Device::flex();
        let n = 160;
        let mut img = Vec::new();
        let mut txt = Vec::new();
        for i in 0..n {
            let class = i % 8;
            for ch in 0..3 {
                let v = if (class >> ch) & 1 == 1 { 0.8 } else { -0.8 };
                img.extend(std::iter::repeat_n(v + 0.01 * (i % 5) as f32, 16 * 16));
            }
            for tok in 0..2 {
                for d in 0..8 {
                    txt.push(if d == class { 1.0 } else { 0.0 } + 0.1 * tok as f32);
                }
            }
        }
        let images = Tensor::<4>::from_data(TensorData::new(img, [n, 3, 16, 16]), &device);
        let states = Tensor::<3>::from_data(TensorData::new(txt, [n, 2, 8]), &device);
        let mask = Tensor::<2>::ones([n, 2], &device);
        let pairs = InMemory {
            images: images.clone(),
            states,
            mask,
        };
        let trained = train(&pairs, 8, 60, 32, 1, &device).unwrap();
        // 8 held-out pairs, one per class: chance is 1/8.
        assert!(
            trained.retrieval_accuracy >= 0.75,
            "accuracy {}",
            trained.retrieval_accuracy
        );
        assert_eq!(trained.chance, 0.125);
        let f = trained.model.image_features(images.narrow(0, 0, 4));
        assert_eq!(f.dims(), [4, FEATURE_DIM]);
    }
}
