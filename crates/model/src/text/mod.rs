//! Text encoders that condition the UNet: per-token hidden states `[batch, tokens, width]` and an
//! attention mask `[batch, tokens]`, behind one trait ([`TextEncoder`]).
//!
//! - [`bert::Bert`]: transformers' `BertModel` (all-MiniLM-L6-v2, the text encoder available
//!   offline; also the architecture of the small encoders trained here, [`tiny`]).
//! - [`clip::ClipTextModel`]: transformers' `CLIPTextModel`, Stable Diffusion's text encoder,
//!   loaded from a directory the user supplies.
//! - [`ContextProjection`]: a trainable linear map from an encoder's width to the UNet's
//!   `cross_attention_dim` (MiniLM is 384 wide, the paper's UNets read 1024).
//!
//! Tokenization is [`tokenizer::TextTokenizer`] over a `tokenizer.json` (the `tokenizers` crate).

pub mod bert;
pub mod clip;
mod layers;
pub mod tiny;
pub mod tokenizer;

use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::cost::Cost;
use crate::error::ModelError;
use crate::weights::{CONFIG_FILE, Naming, load_safetensors_named, save_safetensors_named};
pub use bert::{Bert, BertConfig};
pub use clip::{ClipTextConfig, ClipTextModel};
pub use tiny::{TinyTextSpec, tiny_text_conditioner, with_reserved_words, word_tokenizer};
pub use tokenizer::{Padding, TextTokenizer, TokenizerOptions};

/// Token ids of a batch of captions, right-padded to one length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    /// Ids, `batch * len` row-major.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding, `batch * len` row-major.
    pub mask: Vec<u8>,
    /// Number of captions.
    pub batch: usize,
    /// Tokens per caption.
    pub len: usize,
}

impl TokenBatch {
    /// A batch from per-caption id lists (with the special tokens already in place), right-padded
    /// with `pad_id` to `pad_to` (or the longest) tokens.
    pub fn from_rows(rows: &[Vec<u32>], pad_id: u32, pad_to: Option<usize>) -> Self {
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        let len = pad_to.unwrap_or(longest).max(longest);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for row in rows {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(pad_id, len - row.len()));
            mask.extend(std::iter::repeat_n(1u8, row.len()));
            mask.extend(std::iter::repeat_n(0u8, len - row.len()));
        }
        Self {
            ids,
            mask,
            batch: rows.len(),
            len,
        }
    }

    /// The ids of caption `i`, padding included.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[i * self.len..(i + 1) * self.len]
    }

    /// Ids as a `[batch, len]` tensor.
    pub fn ids_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = self.ids.iter().map(|&i| i as i64).collect();
        Tensor::from_data(TensorData::new(ids, [self.batch, self.len]), device)
    }

    /// The mask as a `[batch, len]` float tensor (1 real, 0 padding).
    pub fn mask_tensor(&self, device: &Device) -> Tensor<2> {
        let mask: Vec<f32> = self.mask.iter().map(|&m| m as f32).collect();
        Tensor::from_data(TensorData::new(mask, [self.batch, self.len]), device)
    }
}

/// What a text encoder hands the UNet.
#[derive(Clone, Debug)]
pub struct TextStates {
    /// Per-token hidden states, `[batch, tokens, width]`.
    pub hidden: Tensor<3>,
    /// `[batch, tokens]`: 1 for real tokens, 0 for padding. The UNet's cross-attention reads
    /// every position (as Stable Diffusion does); the mask is for pooling and losses.
    pub mask: Tensor<2>,
}

/// A text encoder: token ids in, per-token hidden states out.
pub trait TextEncoder {
    /// Width of the hidden states.
    fn hidden_size(&self) -> usize;

    /// Longest token sequence the encoder accepts (its position table).
    fn max_positions(&self) -> usize;

    /// Encodes a batch; the ids must be below the vocabulary size and at most
    /// [`max_positions`](Self::max_positions) long.
    fn encode(&self, tokens: &TokenBatch, device: &Device) -> TextStates;

    /// Cost of encoding one caption of `tokens` tokens.
    fn cost(&self, tokens: usize) -> Cost;
}

/// A loaded text encoder of any supported kind.
#[derive(Module, Debug)]
pub enum TextModel {
    /// transformers' `BertModel` (MiniLM, or an encoder trained here).
    Bert(Bert),
    /// transformers' `CLIPTextModel`.
    Clip(ClipTextModel),
}

impl TextEncoder for TextModel {
    fn hidden_size(&self) -> usize {
        match self {
            TextModel::Bert(m) => m.hidden_size(),
            TextModel::Clip(m) => m.hidden_size(),
        }
    }

    fn max_positions(&self) -> usize {
        match self {
            TextModel::Bert(m) => m.max_positions(),
            TextModel::Clip(m) => m.max_positions(),
        }
    }

    fn encode(&self, tokens: &TokenBatch, device: &Device) -> TextStates {
        match self {
            TextModel::Bert(m) => m.encode(tokens, device),
            TextModel::Clip(m) => m.encode(tokens, device),
        }
    }

    fn cost(&self, tokens: usize) -> Cost {
        match self {
            TextModel::Bert(m) => TextEncoder::cost(m, tokens),
            TextModel::Clip(m) => TextEncoder::cost(m, tokens),
        }
    }
}

/// The configuration of a [`TextModel`], as its `config.json` holds it.
#[derive(Clone, Debug, PartialEq)]
pub enum TextModelConfig {
    /// transformers `BertConfig`.
    Bert(BertConfig),
    /// transformers `CLIPTextConfig`.
    Clip(ClipTextConfig),
}

/// A tokenizer and the encoder it feeds, loaded from (and saved as) one transformers directory
/// (`config.json`, `model.safetensors`, `tokenizer.json`).
#[derive(Debug)]
pub struct TextConditioner {
    /// Captions to token ids.
    pub tokenizer: TextTokenizer,
    /// Token ids to hidden states.
    pub encoder: TextModel,
    /// The encoder's configuration.
    pub config: TextModelConfig,
}

impl TextConditioner {
    /// Loads the directory's encoder (by `model_type` in `config.json`: "bert" or
    /// "clip_text_model") and its `tokenizer.json`. `options` default by model type when `None`:
    /// BERT truncates to 77 tokens (or its position table) and pads to the longest caption, CLIP
    /// pads to its 77 positions as Stable Diffusion does.
    pub fn load(
        dir: &Path,
        options: Option<TokenizerOptions>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let (config, encoder) = load_text_model(dir, device)?;
        let positions = encoder.max_positions();
        let options = options.unwrap_or(match &encoder {
            TextModel::Bert(_) => TokenizerOptions::longest(positions.min(77)),
            TextModel::Clip(_) => TokenizerOptions::fixed(positions),
        });
        if options.max_length > positions {
            return Err(ModelError::Config {
                file: dir.join(CONFIG_FILE).display().to_string(),
                message: format!(
                    "max_position_embeddings {positions} is below the requested max_length {}",
                    options.max_length
                ),
            });
        }
        let tokenizer = TextTokenizer::from_file(&dir.join(tokenizer::TOKENIZER_FILE), &options)?;
        Ok(Self {
            tokenizer,
            encoder,
            config,
        })
    }

    /// Tokenizes and encodes `captions`.
    pub fn encode(&self, captions: &[&str], device: &Device) -> Result<TextStates, ModelError> {
        let tokens = self.tokenizer.tokenize(captions)?;
        Ok(self.encoder.encode(&tokens, device))
    }

    /// Saves encoder, config and tokenizer as a transformers directory, each file atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        match (&self.config, &self.encoder) {
            (TextModelConfig::Bert(config), TextModel::Bert(model)) => {
                bert::save_bert(dir, config, model)?
            }
            (TextModelConfig::Clip(config), TextModel::Clip(model)) => {
                clip::save_clip_text(dir, config, model)?
            }
            _ => panic!("TextConditioner: config and encoder are of different kinds"),
        }
        self.tokenizer.save(&dir.join(tokenizer::TOKENIZER_FILE))
    }
}

/// Loads the text encoder of a transformers directory, by `model_type` in its `config.json`.
pub fn load_text_model(
    dir: &Path,
    device: &Device,
) -> Result<(TextModelConfig, TextModel), ModelError> {
    let config_file = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&config_file).map_err(|e| ModelError::io(&config_file, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: config_file.display().to_string(),
        message: e.to_string(),
    })?;
    match value.get("model_type").and_then(|v| v.as_str()) {
        Some("bert") => {
            let (config, model) = bert::load_bert(dir, device)?;
            Ok((TextModelConfig::Bert(config), TextModel::Bert(model)))
        }
        Some("clip_text_model") => {
            let (config, model) = clip::load_clip_text(dir, device)?;
            Ok((TextModelConfig::Clip(config), TextModel::Clip(model)))
        }
        other => Err(ModelError::Config {
            file: config_file.display().to_string(),
            message: format!(
                "model_type: {other:?} is not a supported text encoder; expected \"bert\" or \"clip_text_model\""
            ),
        }),
    }
}

/// Where `tools/fetch-assets.sh minilm` puts all-MiniLM-L6-v2: `$LDMSCALE_CACHE/assets/minilm`
/// (default `~/.cache/ldmscale/assets/minilm`).
pub fn default_minilm_dir() -> std::path::PathBuf {
    let cache = std::env::var_os("LDMSCALE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            std::path::PathBuf::from(home).join(".cache/ldmscale")
        });
    cache.join("assets/minilm")
}

/// Trainable linear map from a text encoder's width to the UNet's `cross_attention_dim`.
#[derive(Module, Debug)]
pub struct ContextProjection {
    pub(crate) proj: Linear,
}

/// Weights file of a saved [`ContextProjection`].
pub const CONTEXT_PROJECTION_FILE: &str = "context_projection.safetensors";

impl ContextProjection {
    /// A projection from `text_width` to `context_width` (PyTorch's default initialisation).
    pub fn new(text_width: usize, context_width: usize, device: &Device) -> Self {
        Self {
            proj: LinearConfig::new(text_width, context_width).init(device),
        }
    }

    /// `[batch, tokens, text_width]` to `[batch, tokens, context_width]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.proj.forward(hidden)
    }

    /// Input and output widths.
    pub fn widths(&self) -> (usize, usize) {
        let [d_in, d_out] = self.proj.weight.lazy_shape().dims();
        (d_in, d_out)
    }

    /// Cost for `tokens` tokens.
    pub fn cost(&self, tokens: usize) -> Cost {
        let (d_in, d_out) = self.widths();
        let mut cost = Cost::default();
        cost.linear(tokens, d_in, d_out);
        cost
    }

    /// Loads `file` (tensors `proj.weight` `[context, text]` and `proj.bias`) into a projection
    /// of the given widths.
    pub fn load(
        file: &Path,
        text_width: usize,
        context_width: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        load_safetensors_named(
            Self::new(text_width, context_width, device),
            file,
            device,
            &Naming::DIFFUSERS,
        )
    }

    /// Saves to `file` atomically.
    pub fn save(&self, file: &Path) -> Result<(), ModelError> {
        save_safetensors_named(self, file, &Naming::DIFFUSERS)
    }
}

/// Attention's "masked" flags `[batch, heads, len, len]` from a `[batch, len]` 1/0 key mask
/// and/or a causal mask; `None` when neither applies.
pub(crate) fn attention_mask(
    key_mask: Option<&Tensor<2>>,
    shape: [usize; 3],
    causal: bool,
    device: &Device,
) -> Option<Tensor<4, Bool>> {
    let [batch, heads, len] = shape;
    let padded = key_mask.map(|mask| {
        mask.clone()
            .lower_elem(0.5)
            .reshape([batch, 1, 1, len])
            .expand([batch, heads, len, len])
    });
    let future = causal.then(|| {
        Tensor::<2, Bool>::tril_mask([len, len], 0, device)
            .reshape([1, 1, len, len])
            .expand([batch, heads, len, len])
    });
    match (padded, future) {
        (Some(p), Some(f)) => Some(p.bool_or(f)),
        (p, f) => p.or(f),
    }
}
