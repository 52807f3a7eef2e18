//! A small text encoder trained from scratch, for tests and as the default in-domain encoder: a
//! word-level vocabulary built from the dataset's captions and a few BERT layers.
//!
//! Both parts are standard formats, so a trained encoder is a transformers directory:
//! `tokenizer.json` is a `tokenizers` WordLevel model (BERT normalisation: lowercase, words and
//! punctuation split; `[CLS] caption [SEP]`), and the encoder is a [`Bert`] saved as `BertModel`.

use burn::tensor::Device;
use serde_json::json;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::wordlevel::WordLevelTrainer;
use tokenizers::{AddedToken, Tokenizer};

use super::bert::{Bert, BertConfig};
use super::tokenizer::{TextTokenizer, TokenizerOptions};
use super::{TextConditioner, TextModel, TextModelConfig};
use crate::error::ModelError;

/// Special tokens of the word-level vocabularies, at ids 0, 1, 2, 3.
pub const SPECIAL_TOKENS: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

/// Sizes of a small text encoder and its vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TinyTextSpec {
    /// Width of the hidden states.
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Most tokens per caption (special tokens included); also the position table's length.
    pub max_length: usize,
    /// Most vocabulary entries, special tokens included.
    pub max_vocab: usize,
    /// Words seen fewer times than this map to `[UNK]`.
    pub min_count: u64,
    /// Words given ids after the learned vocabulary whatever their count: identifiers the
    /// captions never use (a DreamBooth subject's "sks"), which would otherwise be `[UNK]`.
    pub reserved: Vec<String>,
}

impl Default for TinyTextSpec {
    /// 2 layers of width 64 with 4 heads, 32 tokens, up to 4096 words seen at least twice.
    fn default() -> Self {
        Self {
            width: 64,
            layers: 2,
            heads: 4,
            max_length: 32,
            max_vocab: 4096,
            min_count: 2,
            reserved: Vec::new(),
        }
    }
}

/// A `tokenizer.json` for a word-level vocabulary learned from `captions`: ids 0-3 are
/// [`SPECIAL_TOKENS`], then words by decreasing count, ties in byte order (deterministic).
pub fn word_tokenizer<S: AsRef<str> + Send + Sync>(
    captions: &[S],
    max_vocab: usize,
    min_count: u64,
    max_length: usize,
) -> Result<TextTokenizer, ModelError> {
    let fail = |message: String| ModelError::Config {
        file: "word vocabulary".into(),
        message,
    };
    if max_vocab <= SPECIAL_TOKENS.len() {
        return Err(fail(format!(
            "max_vocab {max_vocab} leaves no room beside the {} special tokens",
            SPECIAL_TOKENS.len()
        )));
    }
    let specials: serde_json::Map<String, serde_json::Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let skeleton = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": specials, "unk_token": "[UNK]"}
    });
    let mut tokenizer: Tokenizer = skeleton
        .to_string()
        .parse()
        .map_err(|e| fail(format!("building the tokenizer: {e}")))?;
    let trainer = WordLevelTrainer::builder()
        .vocab_size(max_vocab)
        .min_frequency(min_count)
        .show_progress(false)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .build()
        .map_err(|e| fail(format!("vocabulary trainer: {e}")))?;
    let mut trainer = TrainerWrapper::from(trainer);
    tokenizer
        .train(&mut trainer, captions.iter())
        .map_err(|e| fail(format!("counting words: {e}")))?;
    for (i, token) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(token) != Some(i as u32) {
            return Err(fail(format!(
                "special token {token} did not land at id {i}"
            )));
        }
    }
    TextTokenizer::new(tokenizer, &TokenizerOptions::longest(max_length)).map_err(fail)
}

/// `tokenizer` with `words` appended to its vocabulary, in order; a word it already holds, or
/// one the normaliser would split or change, is an error naming it.
pub fn with_reserved_words(
    tokenizer: TextTokenizer,
    words: &[String],
    max_length: usize,
) -> Result<TextTokenizer, ModelError> {
    if words.is_empty() {
        return Ok(tokenizer);
    }
    let fail = |message: String| ModelError::Config {
        file: "word vocabulary".into(),
        message,
    };
    let mut json: serde_json::Value = serde_json::from_str(
        &tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| fail(e.to_string()))?,
    )
    .map_err(|e| fail(e.to_string()))?;
    let vocab = json["model"]["vocab"]
        .as_object_mut()
        .ok_or_else(|| fail("not a word-level vocabulary".into()))?;
    for word in words {
        let plain = !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !plain {
            return Err(fail(format!(
                "reserved word {word:?}: expected lower-case letters and digits (one word)"
            )));
        }
        if vocab.contains_key(word) {
            return Err(fail(format!(
                "reserved word {word:?} is already a word of the captions; choose one they never use"
            )));
        }
        let id = vocab.len();
        vocab.insert(word.clone(), json!(id));
    }
    let inner: Tokenizer = json
        .to_string()
        .parse()
        .map_err(|e| fail(format!("rebuilding the tokenizer: {e}")))?;
    TextTokenizer::new(inner, &TokenizerOptions::longest(max_length)).map_err(fail)
}

/// A fresh (untrained) small encoder over a vocabulary built from `captions`.
pub fn tiny_text_conditioner<S: AsRef<str> + Send + Sync>(
    captions: &[S],
    spec: &TinyTextSpec,
    device: &Device,
) -> Result<TextConditioner, ModelError> {
    let learned = word_tokenizer(captions, spec.max_vocab, spec.min_count, spec.max_length)?;
    let tokenizer = with_reserved_words(learned, &spec.reserved, spec.max_length)?;
    let config = BertConfig::small(
        tokenizer.vocab_size(),
        spec.width,
        spec.layers,
        spec.heads,
        spec.max_length,
    );
    config.validate().map_err(|message| ModelError::Config {
        file: "tiny text encoder".into(),
        message,
    })?;
    let encoder = TextModel::Bert(Bert::new(&config, device));
    Ok(TextConditioner {
        tokenizer,
        encoder,
        config: TextModelConfig::Bert(config),
    })
}
