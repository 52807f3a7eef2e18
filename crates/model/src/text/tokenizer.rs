//! Captions to token ids with a Hugging Face `tokenizer.json` (the `tokenizers` crate): BERT
//! WordPiece (MiniLM), CLIP BPE (a file the user supplies), or the word-level vocabularies built
//! here ([`super::tiny`]).
//!
//! Padding and truncation in the file are replaced by ours: truncation to `max_length` tokens
//! (special tokens included, as transformers' `truncation=True, max_length=...`), right padding to
//! the longest caption or to `max_length`. MiniLM's file pads to 128 on its own; that is switched off.

use std::path::Path;
use std::str::FromStr;

use tokenizers::{Tokenizer, TruncationParams};

use super::TokenBatch;
use crate::error::ModelError;

/// File name of the tokenizer inside a transformers directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How a batch is padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// To the longest caption of the batch.
    Longest,
    /// To `max_length` (Stable Diffusion's CLIP prompts: always 77 tokens).
    MaxLength,
}

/// Truncation and padding settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerOptions {
    /// Most tokens per caption, special tokens included.
    pub max_length: usize,
    /// Padding strategy.
    pub padding: Padding,
    /// The padding token; `None` takes the file's padding token, or `[PAD]` if it has one.
    pub pad_token: Option<String>,
}

impl TokenizerOptions {
    /// Truncate to `max_length`, pad to the longest caption.
    pub fn longest(max_length: usize) -> Self {
        Self {
            max_length,
            padding: Padding::Longest,
            pad_token: None,
        }
    }

    /// Truncate and pad to `max_length`.
    pub fn fixed(max_length: usize) -> Self {
        Self {
            max_length,
            padding: Padding::MaxLength,
            pad_token: None,
        }
    }
}

/// A `tokenizer.json` tokenizer with our truncation and padding.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
    padding: Padding,
    pad_id: u32,
}

impl TextTokenizer {
    /// Reads `file` (a `tokenizer.json`).
    /// Without a padding token in `options` or in the file, the `pad_token` of a
    /// `tokenizer_config.json` beside it is used, as transformers does (CLIP files record theirs
    /// only there).
    pub fn from_file(file: &Path, options: &TokenizerOptions) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(file).map_err(|e| ModelError::io(file, e))?;
        let mut options = options.clone();
        if options.pad_token.is_none() {
            options.pad_token = sibling_pad_token(file)?;
        }
        Self::from_json(&text, &options).map_err(|message| ModelError::Config {
            file: file.display().to_string(),
            message,
        })
    }

    /// Parses the contents of a `tokenizer.json`; the error says what is wrong.
    pub fn from_json(json: &str, options: &TokenizerOptions) -> Result<Self, String> {
        let inner = Tokenizer::from_str(json).map_err(|e| format!("not a tokenizer: {e}"))?;
        Self::new(inner, options)
    }

    /// Wraps a tokenizer, replacing its padding and truncation with `options`.
    pub fn new(mut inner: Tokenizer, options: &TokenizerOptions) -> Result<Self, String> {
        if options.max_length < 2 {
            return Err(format!(
                "max_length {} leaves no room for a caption",
                options.max_length
            ));
        }
        let pad_token = match (inner.get_padding(), &options.pad_token) {
            (_, Some(token)) => token.clone(),
            (Some(params), None) => params.pad_token.clone(),
            (None, None) => "[PAD]".to_string(),
        };
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| {
            format!("padding token {pad_token:?} is not in the vocabulary; name one (pad_token)")
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: options.max_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| format!("truncation to {}: {e}", options.max_length))?;
        Ok(Self {
            inner,
            max_length: options.max_length,
            padding: options.padding,
            pad_id,
        })
    }

    /// Tokenizes `captions` with the tokenizer's special tokens (e.g. `[CLS] ... [SEP]`,
    /// `<|startoftext|> ... <|endoftext|>`), truncated and right-padded.
    pub fn tokenize(&self, captions: &[&str]) -> Result<TokenBatch, ModelError> {
        let rows = captions
            .iter()
            .enumerate()
            .map(|(i, caption)| {
                self.inner
                    .encode(*caption, true)
                    .map(|encoding| encoding.get_ids().to_vec())
                    .map_err(|e| ModelError::Config {
                        file: TOKENIZER_FILE.into(),
                        message: format!("caption {i} ({caption:?}) could not be tokenized: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.pad(&rows))
    }

    /// Rows of token ids (special tokens included, unpadded) padded as [`tokenize`](Self::tokenize)
    /// pads them: to the longest row or to `max_length`.
    pub fn pad(&self, rows: &[Vec<u32>]) -> TokenBatch {
        let pad_to = (self.padding == Padding::MaxLength).then_some(self.max_length);
        TokenBatch::from_rows(rows, self.pad_id, pad_to)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Most tokens per caption.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Writes the tokenizer as a `tokenizer.json`, atomically, with the padding (as configured
    /// here) and truncation recorded in the file so transformers' fast tokenizer behaves alike.
    pub fn save(&self, file: &Path) -> Result<(), ModelError> {
        let mut tokenizer = self.inner.clone();
        let pad_token = tokenizer
            .id_to_token(self.pad_id)
            .unwrap_or_else(|| "[PAD]".into());
        tokenizer.with_padding(Some(tokenizers::PaddingParams {
            strategy: match self.padding {
                Padding::Longest => tokenizers::PaddingStrategy::BatchLongest,
                Padding::MaxLength => tokenizers::PaddingStrategy::Fixed(self.max_length),
            },
            pad_id: self.pad_id,
            pad_token,
            ..Default::default()
        }));
        let json = tokenizer
            .to_string(true)
            .map_err(|e| ModelError::io(file, e))?;
        crate::weights::write_atomic(file, json.as_bytes())
    }
}

/// The `pad_token` of the `tokenizer_config.json` beside `file`, if there is one.
fn sibling_pad_token(file: &Path) -> Result<Option<String>, ModelError> {
    let config = file.with_file_name("tokenizer_config.json");
    if !config.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config).map_err(|e| ModelError::io(&config, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: config.display().to_string(),
        message: e.to_string(),
    })?;
    // A plain string, or an AddedToken object with its text under "content".
    Ok(match value.get("pad_token") {
        Some(serde_json::Value::String(token)) => Some(token.clone()),
        Some(token) => token
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        None => None,
    })
}
