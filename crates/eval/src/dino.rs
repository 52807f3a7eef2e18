//! DINO image embeddings, DreamBooth's subject-fidelity metric (Ruiz et al.: the mean pairwise
//! cosine of generated and real subject images' embeddings), from a transformers `ViTModel`
//! directory the user supplies (`config.json`, `model.safetensors`, `preprocessor_config.json`),
//! e.g. facebook/dino-vits16. The embedding is the class token after the final LayerNorm
//! (`last_hidden_state[:, 0]`). Images go through the directory's image processor (transformers'
//! ViT defaults where it is silent: bilinear resize to the square input, no crop).

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use crate::clip::ClipImageProcessor;
use crate::error::EvalError;
use crate::preprocess::RgbImage;
use crate::vit::{
    Activation, EncoderLayer, Loader, Norm, encode, of_side, patch_tokens, pixel_batch,
    shape_problem,
};
use crate::weights::WeightMap;

/// Weights file inside a transformers model directory.
pub const DINO_WEIGHTS_FILE: &str = "model.safetensors";

fn channels_default() -> usize {
    3
}
fn gelu_default() -> String {
    "gelu".into()
}
fn eps_default() -> f64 {
    1e-12
}
fn yes() -> bool {
    true
}

/// A transformers `ViTConfig`, the fields the encoder reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DinoConfig {
    /// Token width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "channels_default")]
    pub num_channels: usize,
    /// MLP activation.
    #[serde(default = "gelu_default")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "eps_default")]
    pub layer_norm_eps: f64,
    /// Whether query, key and value have biases.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
}

impl DinoConfig {
    /// Reads and checks a config.json; errors name the file and field.
    pub fn from_json_file(path: &Path) -> Result<Self, EvalError> {
        let bad = |message: String| EvalError::stats(path.display(), message);
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        let config: DinoConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        Activation::parse(&config.hidden_act).map_err(bad)?;
        let c = &config;
        if let Some(problem) = shape_problem(
            c.image_size,
            c.patch_size,
            c.hidden_size,
            c.num_attention_heads,
        ) {
            return Err(bad(problem));
        }
        Ok(config)
    }

    fn tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// ViT: patches with bias, class token, positions, pre-LN layers, final LayerNorm.
#[derive(Module, Debug)]
struct DinoVit {
    patch_weight: Param<Tensor<4>>,
    patch_bias: Param<Tensor<1>>,
    cls_token: Param<Tensor<1>>,
    position: Param<Tensor<2>>,
    layers: Vec<EncoderLayer>,
    layernorm: Norm,
    patch_size: usize,
    heads: usize,
    #[module(skip)]
    activation: Activation,
}

impl DinoVit {
    fn load(c: &DinoConfig, map: &mut WeightMap, device: &Device) -> Result<Self, EvalError> {
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        let mut l = Loader {
            map,
            device: device.clone(),
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let k = format!("encoder.layer.{i}");
                let a = format!("{k}.attention");
                Ok(EncoderLayer {
                    layer_norm1: l.norm(&format!("{k}.layernorm_before"), d, eps)?,
                    q_proj: l.dense(&format!("{a}.attention.query"), d, d, c.qkv_bias)?,
                    k_proj: l.dense(&format!("{a}.attention.key"), d, d, c.qkv_bias)?,
                    v_proj: l.dense(&format!("{a}.attention.value"), d, d, c.qkv_bias)?,
                    out_proj: l.dense(&format!("{a}.output.dense"), d, d, true)?,
                    layer_norm2: l.norm(&format!("{k}.layernorm_after"), d, eps)?,
                    fc1: l.dense(
                        &format!("{k}.intermediate.dense"),
                        d,
                        c.intermediate_size,
                        true,
                    )?,
                    fc2: l.dense(&format!("{k}.output.dense"), c.intermediate_size, d, true)?,
                })
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        let (p, tokens) = (c.patch_size, c.tokens());
        let e = "embeddings";
        Ok(DinoVit {
            patch_weight: l.param(
                &format!("{e}.patch_embeddings.projection.weight"),
                [d, c.num_channels, p, p],
            )?,
            patch_bias: l.param(&format!("{e}.patch_embeddings.projection.bias"), [d])?,
            cls_token: Param::from_tensor(
                l.map
                    .take(&format!("{e}.cls_token"), [1, 1, d], device)?
                    .reshape([d]),
            ),
            position: Param::from_tensor(
                l.map
                    .take(&format!("{e}.position_embeddings"), [1, tokens, d], device)?
                    .reshape([tokens, d]),
            ),
            layers,
            layernorm: l.norm("layernorm", d, eps)?,
            patch_size: p,
            heads: c.num_attention_heads,
            activation: Activation::parse(&c.hidden_act).expect("validated"),
        })
    }

    fn forward(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        let x = patch_tokens(
            pixel_values,
            (self.patch_weight.val(), Some(self.patch_bias.val())),
            self.cls_token.val(),
            self.position.val(),
            self.patch_size,
        );
        let x = encode(&self.layers, x, self.heads, self.activation);
        let [batch, _, d] = x.dims();
        let cls = x.slice([0..batch, 0..1, 0..d]).reshape([batch, d]);
        // LayerNorm is per token, so normalising the class token alone is the same.
        self.layernorm.forward(cls)
    }
}

/// A loaded DINO ViT with its image processor.
#[derive(Debug)]
pub struct DinoModel {
    /// The config.
    pub config: DinoConfig,
    /// How images are prepared.
    pub processor: ClipImageProcessor,
    vit: DinoVit,
    device: Device,
}

impl DinoModel {
    /// Loads a transformers `ViTModel` directory (a `ViTFor...` checkpoint's `vit.` prefix is
    /// taken off; pooler and classifier weights are not used).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EvalError> {
        let config = DinoConfig::from_json_file(&dir.join("config.json"))?;
        let file = dir.join(DINO_WEIGHTS_FILE);
        let unused = |k: &str| {
            let k = k.strip_prefix("vit.").unwrap_or(k);
            k.starts_with("pooler.") || k.starts_with("classifier.")
        };
        let map = WeightMap::from_safetensors_where(&file, |k| !unused(k))?;
        let mut map = match map.tensors.contains_key("vit.embeddings.cls_token") {
            true => map.strip_prefix("vit."),
            false => map,
        };
        let vit = DinoVit::load(&config, &mut map, device)?;
        map.finish()?;
        // transformers' ViTImageProcessor defaults: a bilinear resize to the square input,
        // no crop, mean and std 0.5.
        let s = config.image_size;
        let defaults = serde_json::json!({
            "size": {"height": s, "width": s},
            "resample": 2,
            "do_center_crop": false,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        });
        let processor = ClipImageProcessor::from_dir_with_defaults(dir, &defaults)?;
        Ok(DinoModel {
            config,
            processor,
            vit,
            device: device.clone(),
        })
    }

    /// `[n, 3, h, w]` pixel values of `images`.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Tensor<4> {
        pixel_batch(&self.processor, images, &self.device)
    }

    /// Embeddings `[n, hidden_size]` of preprocessed `pixel_values`.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        self.vit.forward(pixel_values)
    }

    /// Embeddings `[n, hidden_size]` of `images` (not normalised).
    pub fn image_embeddings(&self, images: &[RgbImage]) -> Result<Tensor<2>, EvalError> {
        let x = of_side(self.pixel_values(images), self.config.image_size, "ViT")?;
        Ok(self.forward(x))
    }
}
