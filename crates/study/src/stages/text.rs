//! Stage 3: the frozen text encoder.

use std::path::Path;

use burn::tensor::Device;
use ldmscale_model::init::seeded_init;
use ldmscale_model::text::{
    Bert, BertConfig, ClipTextConfig, ClipTextModel, TextConditioner, TextEncoder,
    TextModel as Encoder, TextModelConfig, TinyTextSpec, default_minilm_dir, tiny_text_conditioner,
};

use super::data::{self, Splits};
use crate::config::{StudyConfig, TextEncoderSpec};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::stage::{Estimate, Stage};

/// The study directory's text encoder.
pub const DIR: &str = "text_encoder";
/// Tokens per caption (at most; fewer when the encoder has fewer positions).
pub const MAX_TOKENS: usize = 32;

/// The encoder with the text-state shape the study uses.
pub struct TextModel {
    /// Tokenizer and encoder.
    pub conditioner: TextConditioner,
    /// Tokens per caption.
    pub length: usize,
    /// State width.
    pub width: usize,
}

/// Makes (tiny-random, over the training captions' words) or loads the text encoder.
pub struct TextStage<'a> {
    /// The examples (their captions are the tiny encoder's vocabulary).
    pub data: &'a Splits,
}

/// What the encoder depends on: its spec, and for the tiny one the captions it was built over.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    let vocabulary =
        (config.text_encoder == TextEncoderSpec::TinyRandom).then(|| data::fingerprint(config));
    let reserved = reserved_words(config);
    if reserved.is_empty() {
        return Fingerprint::of(
            "text-encoder",
            &(config.text_encoder.to_string(), vocabulary),
        );
    }
    Fingerprint::of(
        "text-encoder",
        &(config.text_encoder.to_string(), vocabulary, reserved),
    )
}

/// Words the tiny encoder reserves beyond the captions': every standard DreamBooth subject's
/// identifier of the section's domain (else they would all be `[UNK]`), whichever subjects
/// the section picks, so that changing the pick does not change the encoder and retrain the
/// family.
pub fn reserved_words(config: &StudyConfig) -> Vec<String> {
    let (Some(d), TextEncoderSpec::TinyRandom) = (&config.dreambooth, &config.text_encoder) else {
        return Vec::new();
    };
    let standard = d.domain(config).standard();
    standard
        .into_iter()
        .map(|(_, identifier)| identifier)
        .collect()
}

impl Stage for TextStage<'_> {
    type Output = TextModel;
    const NAME: &'static str = "text-encoder";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<TextModel>, StudyError> {
        Ok(TextConditioner::load(&cx.path(DIR), None, &cx.device)
            .ok()
            .map(with_shape))
    }

    fn run(&self, cx: &StudyContext) -> Result<TextModel, StudyError> {
        let dir = cx.path(DIR);
        if let Some(old) = cx.recorded(Self::NAME) {
            cx.retire(&dir, old.as_str())?;
        }
        // Only the tiny encoder's vocabulary reads the captions.
        let captions = match cx.config.text_encoder {
            TextEncoderSpec::TinyRandom => self.data.train.captions(usize::MAX)?,
            _ => Vec::new(),
        };
        let conditioner = make_reserving(
            &cx.config.text_encoder,
            &captions,
            &reserved_words(cx.config),
            &cx.device,
        )?;
        conditioner.save(&dir)?;
        Ok(with_shape(conditioner))
    }
}

fn with_shape(conditioner: TextConditioner) -> TextModel {
    let length = state_length(conditioner.encoder.max_positions());
    let width = conditioner.encoder.hidden_size();
    TextModel {
        conditioner,
        length,
        width,
    }
}

/// The text encoder `spec` names: a tiny-random BERT over the words of `captions` (seeded),
/// MiniLM from the asset cache, or a transformers directory.
pub fn make(
    spec: &TextEncoderSpec,
    captions: &[String],
    device: &Device,
) -> Result<TextConditioner, StudyError> {
    make_reserving(spec, captions, &[], device)
}

/// [`make`], the tiny encoder reserving `reserved` words after the captions' (ignored by the
/// other encoders, whose tokenizers are fixed).
pub fn make_reserving(
    spec: &TextEncoderSpec,
    captions: &[String],
    reserved: &[String],
    device: &Device,
) -> Result<TextConditioner, StudyError> {
    let tiny = TinyTextSpec {
        reserved: reserved.to_vec(),
        ..TinyTextSpec::default()
    };
    Ok(match spec {
        TextEncoderSpec::TinyRandom => {
            let mut made = None;
            seeded_init(device, 17, || {
                made = Some(tiny_text_conditioner(captions, &tiny, device));
                made.as_ref()
                    .and_then(|r| r.as_ref().ok())
                    .map(|t| t.encoder.clone())
            });
            made.expect("built")?
        }
        TextEncoderSpec::MiniLm => TextConditioner::load(&default_minilm_dir(), None, device)
            .map_err(|e| StudyError::MissingAsset {
                what: "text_encoder = \"minilm\"".into(),
                asset: "minilm",
                source: Box::new(e),
            })?,
        TextEncoderSpec::Dir(path) | TextEncoderSpec::Clip(path) => {
            TextConditioner::load(Path::new(path), None, device)?
        }
    })
}

/// The encoder saved in `dir` by an earlier run, else the one `spec` names, made and saved
/// there (what `ldmscale train` shares with the study).
pub fn load_or_make(
    spec: &TextEncoderSpec,
    dir: &Path,
    captions: &[String],
    device: &Device,
) -> Result<TextConditioner, StudyError> {
    if let Ok(t) = TextConditioner::load(dir, None, device) {
        return Ok(t);
    }
    let t = make(spec, captions, device)?;
    t.save(dir)?;
    Ok(t)
}

/// Tokens of text state per caption: the encoder's positions, at most [`MAX_TOKENS`]. What the
/// study encodes captions to, the latent cache keeps and `--dry-run` assumes, so that the dry
/// run's choice of what the cache keeps is the build's.
pub fn state_length(max_positions: usize) -> usize {
    max_positions.min(MAX_TOKENS)
}

/// The text-state shape `--dry-run` assumes, and a missing or unreadable encoder directory.
pub fn estimate(config: &StudyConfig) -> (Estimate, [usize; 2]) {
    let mut e = Estimate::default();
    let (shape, _) = match assumed(&config.text_encoder) {
        Ok(assumed) => assumed,
        Err(problem) => {
            e.problems.push(problem);
            assumed_by_default(&config.text_encoder)
        }
    };
    e.lines.push(format!(
        "text encoder: {}, states {}x{}",
        config.text_encoder, shape[0], shape[1]
    ));
    (e, shape)
}

/// GFLOPs of encoding one caption (at [`state_length`] tokens) with the encoder `--dry-run`
/// assumes.
pub fn caption_gflops(config: &StudyConfig) -> f64 {
    assumed(&config.text_encoder)
        .unwrap_or_else(|_| assumed_by_default(&config.text_encoder))
        .1
}

/// States shape and GFLOPs a caption of the encoder `spec` names: its directory's
/// `config.json` where it has one.
fn assumed(spec: &TextEncoderSpec) -> Result<([usize; 2], f64), String> {
    let dir = match spec {
        TextEncoderSpec::TinyRandom => return Ok(assumed_by_default(spec)),
        TextEncoderSpec::MiniLm => default_minilm_dir(),
        TextEncoderSpec::Dir(path) | TextEncoderSpec::Clip(path) => path.into(),
    };
    let file = dir.join("config.json");
    if !file.exists() {
        return match spec {
            TextEncoderSpec::MiniLm => Ok(assumed_by_default(spec)),
            _ => Err(format!(
                "text_encoder {:?}: no config.json (a transformers directory is needed)",
                dir.display()
            )),
        };
    }
    let config =
        read_config(&file).map_err(|e| format!("text_encoder {:?}: {e}", dir.display()))?;
    Ok(shape_and_cost(&config))
}

/// What a spec's encoder usually is: the tiny encoder, all-MiniLM-L6-v2, or Stable Diffusion
/// 2's text encoder (OpenCLIP ViT-H/14 less its last layer, the paper's scale).
fn assumed_by_default(spec: &TextEncoderSpec) -> ([usize; 2], f64) {
    let config = match spec {
        TextEncoderSpec::TinyRandom => {
            let t = TinyTextSpec::default();
            TextModelConfig::Bert(BertConfig::small(
                t.max_vocab,
                t.width,
                t.layers,
                t.heads,
                t.max_length,
            ))
        }
        TextEncoderSpec::MiniLm => TextModelConfig::Bert(BertConfig::small(30522, 384, 6, 12, 512)),
        TextEncoderSpec::Dir(_) | TextEncoderSpec::Clip(_) => {
            TextModelConfig::Clip(ClipTextConfig {
                vocab_size: 49408,
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 23,
                num_attention_heads: 16,
                max_position_embeddings: 77,
                hidden_act: "gelu".into(),
                layer_norm_eps: 1e-5,
                other: Default::default(),
            })
        }
    };
    shape_and_cost(&config)
}

/// A transformers `config.json` of a BERT or CLIP text model (by its `model_type`).
fn read_config(file: &Path) -> Result<TextModelConfig, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("config.json: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("config.json: {e}"))?;
    let config = match value.get("model_type").and_then(|v| v.as_str()) {
        Some("bert") => BertConfig::from_json_file(file).map(TextModelConfig::Bert),
        Some("clip_text_model") => ClipTextConfig::from_json_file(file).map(TextModelConfig::Clip),
        other => {
            return Err(format!(
                "config.json: model_type {other:?} is not \"bert\" or \"clip_text_model\""
            ));
        }
    };
    config.map_err(|e| e.to_string())
}

/// States shape and GFLOPs a caption of the encoder `config` describes (built lazily: nothing
/// is allocated).
fn shape_and_cost(config: &TextModelConfig) -> ([usize; 2], f64) {
    let device = Device::flex();
    let model = match config {
        TextModelConfig::Bert(c) => Encoder::Bert(Bert::new(c, &device)),
        TextModelConfig::Clip(c) => Encoder::Clip(ClipTextModel::new(c, &device)),
    };
    let length = state_length(model.max_positions());
    ([length, model.hidden_size()], model.cost(length).gflops())
}
