//! transformers' `CLIPTextModel`, the text encoder of Stable Diffusion 1.x (quick_gelu, 12 layers
//! of 768) and 2.x (gelu, 23 layers of 1024): token + position embeddings, pre-LayerNorm causal
//! transformer layers, a final LayerNorm. Weights load from a transformers directory unchanged,
//! whether its tensors sit under `text_model.` (files written before transformers 5) or not.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::bert::TRANSFORMERS_WEIGHTS_FILE;
use super::layers::{Activation, layer_cost, multi_head_attention};
use super::{TextEncoder, TextStates, TokenBatch, attention_mask};
use crate::cost::Cost;
use crate::error::ModelError;
use crate::weights::{
    CONFIG_FILE, Naming, load_safetensors_named, save_safetensors_named, tensor_names, write_atomic,
};

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}

/// Configuration of a CLIP text encoder (transformers `CLIPTextConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Token vocabulary size (49408 for OpenAI's BPE).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Length of the position table (77).
    pub max_position_embeddings: usize,
    /// Feed-forward activation: "quick_gelu" (OpenAI CLIP, SD 1.x) or "gelu" (OpenCLIP, SD 2.x).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Everything else in config.json (token ids, projection_dim, ...), kept so it round-trips.
    /// `use_attention_mask: true` makes the padding mask apply (diffusers reads the same flag);
    /// by default, as in Stable Diffusion, only the causal mask does.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl ClipTextConfig {
    /// Reads and validates a transformers `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, ModelError> {
        crate::error::read_json_config(path, Self::validate)
    }

    /// The config as transformers writes it.
    pub fn to_json(&self) -> String {
        crate::error::json_config_with(self, "model_type", "clip_text_model")
    }

    /// Whether the padding mask is applied besides the causal one.
    pub fn use_attention_mask(&self) -> bool {
        self.other
            .get("use_attention_mask")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }

    /// Checks every setting this implementation relies on; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(kind) = self.other.get("model_type")
            && kind != "clip_text_model"
        {
            return Err(format!(
                "model_type: {kind} is not \"clip_text_model\" (give the text_encoder directory)"
            ));
        }
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(format!("{field}: must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "num_attention_heads: {} heads do not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        Activation::from_name(&self.hidden_act)?;
        Ok(())
    }
}

/// Token and position embeddings.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    pub(crate) token_embedding: Embedding,
    pub(crate) position_embedding: Embedding,
}

/// Multi-head self-attention with biased projections.
#[derive(Module, Debug)]
pub struct ClipAttention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) out_proj: Linear,
}

/// The feed-forward.
#[derive(Module, Debug)]
pub struct ClipMlp {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
}

/// One pre-LN layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub(crate) self_attn: ClipAttention,
    pub(crate) layer_norm1: LayerNorm,
    pub(crate) mlp: ClipMlp,
    pub(crate) layer_norm2: LayerNorm,
}

/// The layer stack.
#[derive(Module, Debug)]
pub struct ClipEncoder {
    pub(crate) layers: Vec<ClipEncoderLayer>,
}

/// A CLIP text encoder (transformers `CLIPTextModel`; the pooled output is not computed).
#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub(crate) embeddings: ClipTextEmbeddings,
    pub(crate) encoder: ClipEncoder,
    pub(crate) final_layer_norm: LayerNorm,
    heads: usize,
    use_attention_mask: bool,
    skip_last_layers: usize,
    #[module(skip)]
    activation: Activation,
}

/// transformers 5 names (`embeddings.…`, `encoder.layers.N.…`, `final_layer_norm.…`).
pub const CLIP_NAMING: Naming = Naming {
    prefix: "",
    renames: &[],
    ignored: &["embeddings.position_ids", "text_projection."],
    legacy: &[],
};

/// Names of files written before transformers 5, Stable Diffusion's among them: the same under
/// `text_model.`.
pub const CLIP_PREFIXED_NAMING: Naming = Naming {
    prefix: "text_model.",
    renames: &[],
    ignored: &["text_model.embeddings.position_ids", "text_projection."],
    legacy: &[],
};

impl ClipTextModel {
    /// Builds the model for `config` (lazily initialised). Panics on an invalid config: call
    /// [`ClipTextConfig::validate`] first for user-supplied configs.
    pub fn new(config: &ClipTextConfig, device: &Device) -> Self {
        if let Err(message) = config.validate() {
            panic!("invalid CLIP text config: {message}");
        }
        let d = config.hidden_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: linear(d, d),
                    k_proj: linear(d, d),
                    v_proj: linear(d, d),
                    out_proj: linear(d, d),
                },
                layer_norm1: norm(),
                mlp: ClipMlp {
                    fc1: linear(d, config.intermediate_size),
                    fc2: linear(config.intermediate_size, d),
                },
                layer_norm2: norm(),
            })
            .collect();
        Self {
            embeddings: ClipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(config.vocab_size, d).init(device),
                position_embedding: EmbeddingConfig::new(config.max_position_embeddings, d)
                    .init(device),
            },
            encoder: ClipEncoder { layers },
            final_layer_norm: norm(),
            heads: config.num_attention_heads,
            use_attention_mask: config.use_attention_mask(),
            skip_last_layers: 0,
            activation: Activation::from_name(&config.hidden_act).expect("validated"),
        }
    }

    /// Stops `n` layers before the last and applies the final LayerNorm to that layer's output
    /// (diffusers' `clip_skip`; `n = 1` is the "penultimate layer" of NovelAI-style SD 1.x use).
    /// Panics if `n` leaves no layer.
    pub fn with_clip_skip(mut self, n: usize) -> Self {
        assert!(
            n < self.encoder.layers.len(),
            "clip_skip {n} leaves none of the {} layers",
            self.encoder.layers.len()
        );
        self.skip_last_layers = n;
        self
    }

    /// Whether [`TextEncoder::encode`] applies the padding mask besides the causal one.
    pub fn with_attention_mask(mut self, use_mask: bool) -> Self {
        self.use_attention_mask = use_mask;
        self
    }

    /// Hidden states `[batch, len, hidden]` for `ids` `[batch, len]` under the causal mask,
    /// also leaving out keys where `mask` `[batch, len]` is 0 when given.
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Option<Tensor<2>>) -> Tensor<3> {
        let [batch, len] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device).reshape([1, len]);
        let mut x = self.embeddings.token_embedding.forward(ids)
            + self.embeddings.position_embedding.forward(positions);
        let mask = attention_mask(mask.as_ref(), [batch, self.heads, len], true, &device);
        let used = self.encoder.layers.len() - self.skip_last_layers;
        for layer in &self.encoder.layers[..used] {
            let h = layer.layer_norm1.forward(x.clone());
            let attn = &layer.self_attn;
            let context = multi_head_attention(
                attn.q_proj.forward(h.clone()),
                attn.k_proj.forward(h.clone()),
                attn.v_proj.forward(h),
                self.heads,
                mask.clone(),
            );
            x = x + attn.out_proj.forward(context);
            let h = layer.layer_norm2.forward(x.clone());
            let h = layer
                .mlp
                .fc2
                .forward(self.activation.apply(layer.mlp.fc1.forward(h)));
            x = x + h;
        }
        self.final_layer_norm.forward(x)
    }
}

impl TextEncoder for ClipTextModel {
    fn hidden_size(&self) -> usize {
        self.embeddings
            .token_embedding
            .weight
            .lazy_shape()
            .dims::<2>()[1]
    }

    fn max_positions(&self) -> usize {
        self.embeddings
            .position_embedding
            .weight
            .lazy_shape()
            .dims::<2>()[0]
    }

    fn encode(&self, tokens: &TokenBatch, device: &Device) -> TextStates {
        let mask = tokens.mask_tensor(device);
        let key_mask = self.use_attention_mask.then(|| mask.clone());
        TextStates {
            hidden: self.forward(tokens.ids_tensor(device), key_mask),
            mask,
        }
    }

    fn cost(&self, tokens: usize) -> Cost {
        let d = self.hidden_size();
        let hidden = self
            .encoder
            .layers
            .first()
            .map(|l| l.mlp.fc1.weight.lazy_shape().dims::<2>()[1])
            .unwrap_or(0);
        let mut cost = Cost::default();
        cost.elementwise(tokens * d); // position add
        for _ in 0..self.encoder.layers.len() - self.skip_last_layers {
            cost.add(layer_cost(tokens, d, hidden, self.heads));
        }
        cost.norm(tokens * d);
        cost
    }
}

/// Loads a CLIP text encoder from a transformers directory (`config.json` +
/// `model.safetensors`), e.g. Stable Diffusion's `text_encoder/`.
pub fn load_clip_text(
    dir: &Path,
    device: &Device,
) -> Result<(ClipTextConfig, ClipTextModel), ModelError> {
    let config = ClipTextConfig::from_json_file(&dir.join(CONFIG_FILE))?;
    let file = dir.join(TRANSFORMERS_WEIGHTS_FILE);
    let names = tensor_names(&file)?;
    let naming = if names.iter().any(|n| n.starts_with("text_model.")) {
        &CLIP_PREFIXED_NAMING
    } else {
        &CLIP_NAMING
    };
    let model = load_safetensors_named(ClipTextModel::new(&config, device), &file, device, naming)?;
    Ok((config, model))
}

/// Saves a CLIP text encoder as a transformers directory (transformers 5 names), atomically.
pub fn save_clip_text(
    dir: &Path,
    config: &ClipTextConfig,
    model: &ClipTextModel,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    save_safetensors_named(model, &dir.join(TRANSFORMERS_WEIGHTS_FILE), &CLIP_NAMING)?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())
}
