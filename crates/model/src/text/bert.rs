//! transformers' `BertModel` (post-LayerNorm bidirectional encoder), as in
//! sentence-transformers' all-MiniLM-L6-v2: embeddings (word + position + token type, then
//! LayerNorm), layers of self-attention and a GELU feed-forward, each followed by a residual
//! LayerNorm. Weights load from transformers' `model.safetensors` names unchanged.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::{Activation, layer_cost, multi_head_attention};
use super::{TextEncoder, TextStates, TokenBatch, attention_mask};
use crate::cost::Cost;
use crate::error::ModelError;
use crate::weights::{
    CONFIG_FILE, Naming, load_safetensors_named, save_safetensors_named, tensor_names, write_atomic,
};

/// File name of the weights inside a transformers model directory.
pub const TRANSFORMERS_WEIGHTS_FILE: &str = "model.safetensors";

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_absolute() -> String {
    "absolute".into()
}

/// Configuration of a BERT encoder (transformers `BertConfig`, field names as in its
/// `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Length of the position table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (segment A/B); every token here is type 0.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Only "absolute" is supported.
    #[serde(default = "default_absolute")]
    pub position_embedding_type: String,
    /// Everything else in config.json (dropout, `architectures`, ...), kept so it round-trips.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    /// A small encoder trained from scratch ([`super::tiny`]): `layers` layers of width `width`
    /// with `heads` heads and a 4x feed-forward.
    pub fn small(
        vocab_size: usize,
        width: usize,
        layers: usize,
        heads: usize,
        max_positions: usize,
    ) -> Self {
        let mut other = serde_json::Map::new();
        other.insert("model_type".into(), "bert".into());
        other.insert("architectures".into(), serde_json::json!(["BertModel"]));
        other.insert("pad_token_id".into(), 0.into());
        // Dropout is not implemented here; recording 0 makes transformers agree in training mode.
        other.insert("hidden_dropout_prob".into(), 0.0.into());
        other.insert("attention_probs_dropout_prob".into(), 0.0.into());
        Self {
            vocab_size,
            hidden_size: width,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * width,
            hidden_act: default_act(),
            max_position_embeddings: max_positions,
            type_vocab_size: 2,
            layer_norm_eps: default_eps(),
            position_embedding_type: default_absolute(),
            other,
        }
    }

    /// Reads and validates a transformers `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, ModelError> {
        crate::error::read_json_config(path, Self::validate)
    }

    /// The config as transformers writes it.
    pub fn to_json(&self) -> String {
        crate::error::json_config_with(self, "model_type", "bert")
    }

    /// Checks every setting this implementation relies on; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(kind) = self.other.get("model_type")
            && kind != "bert"
        {
            return Err(format!("model_type: {kind} is not \"bert\""));
        }
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
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
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type: unsupported {:?}; expected \"absolute\"",
                self.position_embedding_type
            ));
        }
        if self.other.get("is_decoder").and_then(|v| v.as_bool()) == Some(true) {
            return Err("is_decoder: true is not supported (encoder only)".into());
        }
        Ok(())
    }
}

/// Word, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub(crate) word_embeddings: Embedding,
    pub(crate) position_embeddings: Embedding,
    pub(crate) token_type_embeddings: Embedding,
    pub(crate) layer_norm: LayerNorm,
}

/// Query, key and value projections (transformers `BertSelfAttention`).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
}

/// Output projection, residual and LayerNorm after attention or the feed-forward.
#[derive(Module, Debug)]
pub struct BertSelfOutput {
    pub(crate) dense: Linear,
    pub(crate) layer_norm: LayerNorm,
}

/// Self-attention with its output block.
#[derive(Module, Debug)]
pub struct BertAttention {
    pub(crate) self_attention: BertSelfAttention,
    pub(crate) output: BertSelfOutput,
}

/// The feed-forward's first projection.
#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub(crate) dense: Linear,
}

/// The feed-forward's second projection, residual and LayerNorm.
#[derive(Module, Debug)]
pub struct BertOutput {
    pub(crate) dense: Linear,
    pub(crate) layer_norm: LayerNorm,
}

/// One post-LN transformer layer.
#[derive(Module, Debug)]
pub struct BertLayer {
    pub(crate) attention: BertAttention,
    pub(crate) intermediate: BertIntermediate,
    pub(crate) output: BertOutput,
}

/// The layer stack.
#[derive(Module, Debug)]
pub struct BertEncoder {
    pub(crate) layer: Vec<BertLayer>,
}

/// A BERT encoder (transformers `BertModel` without its pooler, which conditioning does not use).
#[derive(Module, Debug)]
pub struct Bert {
    pub(crate) embeddings: BertEmbeddings,
    pub(crate) encoder: BertEncoder,
    heads: usize,
    #[module(skip)]
    activation: Activation,
}

/// transformers' names: `LayerNorm` and `self` cannot be Rust field names. The pooler (and the
/// `position_ids` buffer older files carry) are not used.
pub const BERT_NAMING: Naming = Naming {
    prefix: "",
    renames: &[
        ("Struct:BertEmbeddings", "layer_norm", "LayerNorm"),
        ("Struct:BertSelfOutput", "layer_norm", "LayerNorm"),
        ("Struct:BertOutput", "layer_norm", "LayerNorm"),
        ("Struct:BertAttention", "self_attention", "self"),
    ],
    ignored: &[
        "embeddings.position_ids",
        "embeddings.token_type_ids",
        "pooler.",
    ],
    // TensorFlow-era checkpoints name LayerNorm parameters gamma / beta.
    legacy: &[("weight", "gamma"), ("bias", "beta")],
};

/// [`BERT_NAMING`] for files of task models (`BertForMaskedLM`, ...), whose encoder sits under
/// `bert.` beside the task heads.
pub const BERT_PREFIXED_NAMING: Naming = Naming {
    prefix: "bert.",
    renames: BERT_NAMING.renames,
    ignored: &[
        "bert.embeddings.position_ids",
        "bert.embeddings.token_type_ids",
        "bert.pooler.",
        "cls.",
    ],
    legacy: BERT_NAMING.legacy,
};

impl Bert {
    /// Builds the model for `config` (lazily initialised; PyTorch-style defaults). Panics on an
    /// invalid config: call [`BertConfig::validate`] first for user-supplied configs.
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        if let Err(message) = config.validate() {
            panic!("invalid BERT config: {message}");
        }
        let d = config.hidden_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let layer = (0..config.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_attention: BertSelfAttention {
                        query: linear(d, d),
                        key: linear(d, d),
                        value: linear(d, d),
                    },
                    output: BertSelfOutput {
                        dense: linear(d, d),
                        layer_norm: norm(),
                    },
                },
                intermediate: BertIntermediate {
                    dense: linear(d, config.intermediate_size),
                },
                output: BertOutput {
                    dense: linear(config.intermediate_size, d),
                    layer_norm: norm(),
                },
            })
            .collect();
        Self {
            embeddings: BertEmbeddings {
                word_embeddings: EmbeddingConfig::new(config.vocab_size, d).init(device),
                position_embeddings: EmbeddingConfig::new(config.max_position_embeddings, d)
                    .init(device),
                token_type_embeddings: EmbeddingConfig::new(config.type_vocab_size, d).init(device),
                layer_norm: norm(),
            },
            encoder: BertEncoder { layer },
            heads: config.num_attention_heads,
            activation: Activation::from_name(&config.hidden_act).expect("validated"),
        }
    }

    /// Last hidden states `[batch, len, hidden]` for `ids` `[batch, len]`, attending only to
    /// keys where `mask` `[batch, len]` is 1 (all tokens when `None`).
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Option<Tensor<2>>) -> Tensor<3> {
        let [batch, len] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device).reshape([1, len]);
        let types = Tensor::<2, Int>::zeros([1, len], &device);
        let e = &self.embeddings;
        let x = e.word_embeddings.forward(ids)
            + e.token_type_embeddings.forward(types)
            + e.position_embeddings.forward(positions);
        let mut x = e.layer_norm.forward(x);
        let mask = attention_mask(mask.as_ref(), [batch, self.heads, len], false, &device);
        for layer in &self.encoder.layer {
            let attention = &layer.attention.self_attention;
            let context = multi_head_attention(
                attention.query.forward(x.clone()),
                attention.key.forward(x.clone()),
                attention.value.forward(x.clone()),
                self.heads,
                mask.clone(),
            );
            let out = &layer.attention.output;
            x = out.layer_norm.forward(out.dense.forward(context) + x);
            let hidden = self
                .activation
                .apply(layer.intermediate.dense.forward(x.clone()));
            let out = &layer.output;
            x = out.layer_norm.forward(out.dense.forward(hidden) + x);
        }
        x
    }

    fn intermediate_size(&self) -> usize {
        self.encoder
            .layer
            .first()
            .map(|l| l.intermediate.dense.weight.lazy_shape().dims::<2>()[1])
            .unwrap_or(0)
    }
}

impl TextEncoder for Bert {
    fn hidden_size(&self) -> usize {
        self.embeddings
            .word_embeddings
            .weight
            .lazy_shape()
            .dims::<2>()[1]
    }

    fn max_positions(&self) -> usize {
        self.embeddings
            .position_embeddings
            .weight
            .lazy_shape()
            .dims::<2>()[0]
    }

    fn encode(&self, tokens: &TokenBatch, device: &Device) -> TextStates {
        let mask = tokens.mask_tensor(device);
        TextStates {
            hidden: self.forward(tokens.ids_tensor(device), Some(mask.clone())),
            mask,
        }
    }

    fn cost(&self, tokens: usize) -> Cost {
        let d = self.hidden_size();
        let mut cost = Cost::default();
        cost.elementwise(2 * tokens * d); // embedding sums
        cost.norm(tokens * d);
        for _ in &self.encoder.layer {
            cost.add(layer_cost(tokens, d, self.intermediate_size(), self.heads));
        }
        cost
    }
}

/// Loads a BERT encoder from a transformers directory (`config.json` + `model.safetensors`),
/// e.g. all-MiniLM-L6-v2. Files of task models (weights under `bert.`) load too.
pub fn load_bert(dir: &Path, device: &Device) -> Result<(BertConfig, Bert), ModelError> {
    let config = BertConfig::from_json_file(&dir.join(CONFIG_FILE))?;
    let file = dir.join(TRANSFORMERS_WEIGHTS_FILE);
    let names = tensor_names(&file)?;
    let naming = if names.iter().any(|n| n.starts_with("bert.embeddings.")) {
        &BERT_PREFIXED_NAMING
    } else {
        &BERT_NAMING
    };
    let model = load_safetensors_named(Bert::new(&config, device), &file, device, naming)?;
    Ok((config, model))
}

/// Saves a BERT encoder as a transformers directory (`BertModel` names), atomically.
pub fn save_bert(dir: &Path, config: &BertConfig, model: &Bert) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    save_safetensors_named(model, &dir.join(TRANSFORMERS_WEIGHTS_FILE), &BERT_NAMING)?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())
}
