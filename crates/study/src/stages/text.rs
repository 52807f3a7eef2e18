//! Stage 3: the frozen text encoder.

use std::path::Path;

use burn::tensor::Device;
use ldmscale_model::text::{
    TextConditioner, TextEncoder, TinyTextSpec, default_minilm_dir, tiny_text_conditioner,
};
use ldmscale_train::params;

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
    let length = conditioner.encoder.max_positions().min(MAX_TOKENS);
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
            params::seeded_init(device, 17, || {
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

/// The text-state shape `--dry-run` assumes, and a missing encoder directory.
pub fn estimate(config: &StudyConfig) -> (Estimate, [usize; 2]) {
    let mut e = Estimate::default();
    let shape = match &config.text_encoder {
        TextEncoderSpec::TinyRandom => [MAX_TOKENS, TinyTextSpec::default().width],
        TextEncoderSpec::MiniLm => [MAX_TOKENS, 384],
        TextEncoderSpec::Dir(_) | TextEncoderSpec::Clip(_) => [77, 1024],
    };
    if let Some(dir) = config.text_encoder.path()
        && !Path::new(dir).join("config.json").exists()
    {
        e.problems.push(format!(
            "text_encoder {dir:?}: no config.json (a transformers directory is needed)"
        ));
    }
    e.lines.push(format!(
        "text encoder: {}, states {}x{}",
        config.text_encoder, shape[0], shape[1]
    ));
    (e, shape)
}
