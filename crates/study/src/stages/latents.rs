//! Stage 4: the training set encoded once into the on-disk latent cache, and the held-out
//! captions' text states (the sweep's prompts).

use std::path::Path;

use burn::tensor::{Device, Tensor};
use ldmscale_data::{
    CacheKey, CachedText, Captioned, Crop, StorageDtype, TextStorage, TokenDtype, file_sha256,
    split_ranges,
};
use ldmscale_model::UNet;
use ldmscale_model::text::TextTokenizer;
use ldmscale_model::text::bert::TRANSFORMERS_WEIGHTS_FILE;
use ldmscale_model::weights::WEIGHTS_FILE;
use ldmscale_pipeline::{LatentDiffusion, TextBatch, encode_images, encode_text};

use super::data::{self, Splits};
use super::first_stage::{self, FirstStageModel};
use super::text::{self, TextModel};
use crate::config::{CACHED_TEXT_STATES_BUDGET, CacheTextStates, FirstStage, StudyConfig};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::latents::{
    CacheOrigin, CachedTrainingData, TextEncoding, build_range_streamed, open_or_build_streamed,
    token_rows,
};
use crate::stage::{Estimate, Stage};

/// The cache's directory in the study.
pub const DIR: &str = "latents/train";
/// Examples per cache shard.
const SHARD: usize = 256;

/// The encoded data every later stage reads.
pub struct Latents {
    /// The training set as training data.
    pub train: CachedTrainingData,
    /// `[channels, side, side]` of a latent.
    pub latent_shape: [usize; 3],
    /// Text states of the held-out captions sampled from: the first
    /// [`data::prompts_used`], not the whole evaluation set.
    pub val_text: TextBatch,
    /// The empty caption's states (guidance's unconditional branch).
    pub null: TextBatch,
}

/// Encodes the training set (reusing a cache built for the same key).
pub struct LatentsStage<'a> {
    /// The examples.
    pub data: &'a Splits,
    /// The autoencoder.
    pub first: &'a FirstStageModel,
    /// The text encoder.
    pub text: &'a TextModel,
}

/// What the encoded set depends on (`cache_text_states` only when set, so that studies from
/// before it keep their fingerprints; "auto"'s choice follows from the encoder and the data).
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    let upstream = (first_stage::fingerprint(config), text::fingerprint(config));
    match config.cache_text_states {
        CacheTextStates::Auto => Fingerprint::of("latents", &upstream),
        choice => Fingerprint::of("latents", &(upstream, choice)),
    }
}

/// What the cache keeps of each of `examples` captions whose states are `[L, D]` (absent: f32
/// states, the layout of every cache before the choice): "auto" keeps states while all of them
/// fit [`CACHED_TEXT_STATES_BUDGET`], in f32 when f32 fits, else f16, and token ids when even
/// f16 does not; true keeps states (f16 past the budget); false keeps token ids, as many as
/// `tokenizer` keeps of a caption.
pub fn text_storage(
    choice: CacheTextStates,
    examples: usize,
    [l, d]: [usize; 2],
    tokenizer: &TextTokenizer,
) -> Option<TextStorage> {
    match states_dtype(choice, examples, [l, d]) {
        None => Some(TextStorage::Tokens {
            tokens: tokenizer.max_length(),
            ids: TokenDtype::for_vocab(tokenizer.vocab_size()),
        }),
        Some(StorageDtype::F32) => None,
        Some(dtype) => Some(TextStorage::States { dtype }),
    }
}

/// [`text_storage`]'s choice before the tokenizer: the dtype states are kept in, or None for
/// token ids.
pub fn states_dtype(
    choice: CacheTextStates,
    examples: usize,
    [l, d]: [usize; 2],
) -> Option<StorageDtype> {
    let f32_bytes = (l * d * 4) as u64 * examples as u64;
    let states = match choice {
        CacheTextStates::Auto => f32_bytes / 2 <= CACHED_TEXT_STATES_BUDGET,
        CacheTextStates::Yes => true,
        CacheTextStates::No => false,
    };
    let fits = f32_bytes <= CACHED_TEXT_STATES_BUDGET;
    states.then_some(if fits {
        StorageDtype::F32
    } else {
        StorageDtype::F16
    })
}

/// The dry run's line on what the cache keeps of each caption (states `text_shape` of the text
/// stage's [`text::state_length`], the build's), and with token ids the frozen text encoder's
/// compute over the family's training (`caption_gflops` a caption, every training example of
/// every width).
pub fn estimate(config: &StudyConfig, text_shape: [usize; 2], caption_gflops: f64) -> Estimate {
    let mut e = Estimate::default();
    let kept = match states_dtype(config.cache_text_states, config.train_examples, text_shape) {
        Some(StorageDtype::F32) => "text states in f32".to_string(),
        Some(StorageDtype::F16) => "text states in f16".to_string(),
        None => {
            let captions = config.widths.len() as f64
                * (config.recipe.batch_size as u64 * config.recipe.steps) as f64;
            e.train_gflops = captions * caption_gflops;
            format!(
                "token ids; the frozen text encoder runs on every training batch: \
                 {caption_gflops:.3} GFLOPs a caption, {:.3e} GFLOPs over the family's training \
                 (in the training compute below)",
                e.train_gflops
            )
        }
    };
    e.lines.push(format!(
        "latent cache: {kept} (cache_text_states = {})",
        toml_value(config.cache_text_states)
    ));
    e
}

fn toml_value(choice: CacheTextStates) -> &'static str {
    match choice {
        CacheTextStates::Auto => "\"auto\"",
        CacheTextStates::Yes => "true",
        CacheTextStates::No => "false",
    }
}

impl Stage for LatentsStage<'_> {
    type Output = Latents;
    const NAME: &'static str = "latents";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<Latents>, StudyError> {
        let key = self.cache_key(cx)?;
        match ldmscale_data::LatentCache::open(&cx.path(DIR), &key) {
            Ok(cache) if cache.len() == self.data.train.len() => {
                self.with_prompts(cx, cache).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn run(&self, cx: &StudyContext) -> Result<Latents, StudyError> {
        let key = self.cache_key(cx)?;
        let dir = cx.path(DIR);
        let res = cx.config.resolution;
        let encode = |part: &Captioned| {
            tracing::info!("encoding {} training images and captions", part.len());
            let f = self.first;
            let latents = encode_images(&f.vae, &f.config, &part.images, res, &cx.device);
            Ok((latents, self.encode_captions(&key, &part.captions, cx)?))
        };
        // An array task (--only latents --shard i/N) builds its range of whole shards and
        // stops; the run after the array builds what is missing and joins the ranges.
        if let Some((i, n)) = cx.array_task(Self::NAME) {
            let range = split_ranges(self.data.train.len(), SHARD, n)[i].clone();
            tracing::info!("latent cache: examples {range:?}, part {} of {n}", i + 1);
            build_range_streamed(&dir, &key, &self.data.train, range, SHARD, encode)
                .map_err(StudyError::stage(Self::NAME))?;
            return Err(StudyError::OnlyDone);
        }
        let (cache, origin) = open_or_build_streamed(&dir, &key, &self.data.train, SHARD, encode)
            .map_err(StudyError::stage(Self::NAME))?;
        if let CacheOrigin::Rebuilt { mismatch } = &origin {
            tracing::info!(
                "latent cache {} was built for another setting ({mismatch}); rebuilt",
                dir.display()
            );
        }
        self.with_prompts(cx, cache)
    }
}

/// Text states of prompts: the conditional ones, their mask and the empty caption's.
pub struct Prompts {
    /// `[N, L, D]`.
    pub cond: Tensor<3>,
    /// `[N, L]`.
    pub mask: Tensor<2>,
    /// `[1, L, D]`.
    pub null: Tensor<3>,
}

impl Latents {
    /// The first `n` held-out captions (fewer when there are fewer).
    pub fn prompts(&self, n: usize, device: &Device) -> Prompts {
        let n = n.min(self.val_text.len());
        Prompts {
            cond: self.val_text.states_tensor(device).narrow(0, 0, n),
            mask: self.val_text.mask_tensor(device).narrow(0, 0, n),
            null: self.null.states_tensor(device),
        }
    }

    /// `unet` over these latents, decoded by `first`.
    pub fn model<'a>(&self, unet: &'a UNet, first: &'a FirstStageModel) -> LatentDiffusion<'a> {
        LatentDiffusion {
            unet,
            vae: &first.vae,
            vae_config: &first.config,
            latent_shape: self.latent_shape,
        }
    }
}

impl LatentsStage<'_> {
    /// The cache key: the data, both encoders (by the hash of their weights) and the shapes.
    fn cache_key(&self, cx: &StudyContext) -> Result<CacheKey, StudyError> {
        let c = cx.config;
        let res = c.resolution;
        let f = self.first.vae.downsampling_factor();
        let vae_weights = match &c.first_stage {
            FirstStage::Pretrained { path }
                if !cx.path(first_stage::DIR).join(WEIGHTS_FILE).exists() =>
            {
                Path::new(path).join(WEIGHTS_FILE)
            }
            _ => cx.path(first_stage::DIR).join(WEIGHTS_FILE),
        };
        let text_weights = cx.path(text::DIR).join(TRANSFORMERS_WEIGHTS_FILE);
        let source = c.train_source().map_err(StudyError::Config)?;
        Ok(CacheKey {
            dataset: source.spec.to_string(),
            split: format!(
                "{}, first {} usable examples",
                source.part(),
                self.data.train.len()
            ),
            resolution: [res as u32, res as u32],
            crop: Crop::Center,
            image_encoder: match &c.first_stage {
                FirstStage::Train { .. } => format!("KL-f{f} trained by the study"),
                FirstStage::Pretrained { path } => format!("KL-f{f} from {path}"),
            },
            image_encoder_hash: file_sha256(&vae_weights)?,
            text_encoder: c.text_encoder.to_string(),
            text_encoder_hash: file_sha256(&text_weights)?,
            latent_shape: self.latent_shape(res),
            text_shape: [self.text.length, self.text.width],
            scaling_factor: self.first.config.scaling_factor as f32,
            dtype: StorageDtype::F32,
            text_storage: text_storage(
                c.cache_text_states,
                self.data.train.len(),
                [self.text.length, self.text.width],
                &self.text.conditioner.tokenizer,
            ),
        })
    }

    /// Captions as the cache keeps them: the encoder's states and masks, or token ids.
    fn encode_captions(
        &self,
        key: &CacheKey,
        captions: &[String],
        cx: &StudyContext,
    ) -> Result<CachedText, String> {
        let t = &self.text.conditioner;
        if let TextStorage::Tokens { .. } = key.text() {
            return token_rows(&t.tokenizer, captions).map(CachedText::Tokens);
        }
        let states =
            encode_text(t, captions, self.text.length, &cx.device).map_err(|e| e.to_string())?;
        let mask = states.mask.iter().map(|&m| (m > 0.5) as u8).collect();
        Ok(CachedText::States {
            states: states.states,
            mask,
        })
    }

    fn latent_shape(&self, res: usize) -> [usize; 3] {
        let f = self.first.vae.downsampling_factor();
        [self.first.config.latent_channels, res / f, res / f]
    }

    /// The cache as training data, beside the held-out and empty captions' states.
    fn with_prompts(
        &self,
        cx: &StudyContext,
        cache: ldmscale_data::LatentCache,
    ) -> Result<Latents, StudyError> {
        let t = self.text;
        let captions = self.data.val.captions(data::prompts_used(cx.config))?;
        let val_text = encode_text(&t.conditioner, &captions, t.length, &cx.device)?;
        let null = encode_text(&t.conditioner, &[String::new()], t.length, &cx.device)?;
        let c = cx.config;
        let source = c.train_source().map_err(StudyError::Config)?;
        let encoder = matches!(cache.key().text(), TextStorage::Tokens { .. }).then(|| {
            let t = &self.text.conditioner;
            TextEncoding::new(t.tokenizer.clone(), t.encoder.clone(), &cx.device)
        });
        let train = CachedTrainingData {
            cache,
            encoder,
            null: null.states.clone(),
            // As before the cache, so checkpoints of earlier runs still resume.
            key: format!(
                "{}@{} vae:{} text:{}",
                source.spec, c.resolution, self.first.config.scaling_factor, c.text_encoder
            ),
        };
        Ok(Latents {
            train,
            latent_shape: self.latent_shape(c.resolution),
            val_text,
            null,
        })
    }
}

#[cfg(test)]
mod tests {
    use ldmscale_model::text::word_tokenizer;

    use super::*;

    /// The tiny preset's latents fingerprint as it was before `cache_text_states` ("auto"
    /// adds nothing), so an existing study keeps its cache and everything trained from it; a
    /// value set explicitly is part of it.
    #[test]
    fn cache_text_states_changes_the_fingerprint_only_when_set() {
        let mut tiny = StudyConfig::preset("tiny").unwrap();
        assert_eq!(fingerprint(&tiny).as_str(), "676c3b87be636aa1");
        let auto = fingerprint(&tiny);
        tiny.cache_text_states = CacheTextStates::No;
        let ids = fingerprint(&tiny);
        tiny.cache_text_states = CacheTextStates::Yes;
        assert!(auto != ids && ids != fingerprint(&tiny) && auto != fingerprint(&tiny));
    }

    /// "auto" keeps f32 states while they fit the budget, f16 when only f16 fits, token ids
    /// beyond; true and false force states or ids.
    #[test]
    fn text_storage_is_chosen_by_size() {
        let tokenizer = word_tokenizer(&["a red circle", "a blue square"], 4096, 1, 32).unwrap();
        let ids = Some(TextStorage::Tokens {
            tokens: 32,
            ids: TokenDtype::U16,
        });
        let f16 = Some(TextStorage::States {
            dtype: StorageDtype::F16,
        });
        let tiny = [32, 64]; // 8 KiB of f32 states a caption
        let clip = [32, 1024];
        let rule = |choice, examples, shape| text_storage(choice, examples, shape, &tokenizer);
        use CacheTextStates::{Auto, No, Yes};
        assert_eq!(
            rule(Auto, 2048, tiny),
            None,
            "the tiny preset: f32 states as before"
        );
        assert_eq!(rule(Auto, 8 << 20, tiny), None, "64 GiB of f32 states");
        assert_eq!(rule(Auto, (8 << 20) + 1, tiny), f16);
        assert_eq!(rule(Auto, 16 << 20, tiny), f16, "64 GiB of f16 states");
        assert_eq!(rule(Auto, (16 << 20) + 1, tiny), ids);
        assert_eq!(rule(Auto, 600_000_000, clip), ids, "the paper");
        assert_eq!(rule(Yes, 600_000_000, clip), f16);
        assert_eq!(rule(Yes, 10, clip), None);
        assert_eq!(rule(No, 10, tiny), ids);
    }

    #[test]
    fn the_dry_run_says_what_the_cache_keeps() {
        let line = |c: &StudyConfig| estimate(c, [32, 1024], 2.5);
        let tiny = StudyConfig::preset("tiny").unwrap();
        let said = line(&tiny).lines.join("\n");
        assert!(
            said.contains("text states in f32") && said.contains("\"auto\""),
            "{said}"
        );
        assert_eq!(
            line(&tiny).train_gflops,
            0.0,
            "states: no encoder while training"
        );
        let paper = StudyConfig::preset("paper").unwrap();
        let said = line(&paper).lines.join("\n");
        assert!(
            said.contains("token ids") && said.contains("2.500 GFLOPs a caption"),
            "{said}"
        );
        let captions =
            paper.widths.len() as u64 * paper.recipe.steps * paper.recipe.batch_size as u64;
        assert_eq!(line(&paper).train_gflops, captions as f64 * 2.5);
    }

    /// A CLIP encoder's states are 32 tokens in the dry run as in the build (not its 77
    /// positions), so near the budget the dry run keeps what the build keeps: f32 states for as
    /// many examples as 32 x 1024 f32 states fit in 64 GiB.
    #[test]
    fn the_dry_run_assumes_the_builds_text_length() {
        let dir = tempfile::tempdir().unwrap();
        let clip = ldmscale_model::text::ClipTextConfig {
            vocab_size: 1000,
            hidden_size: 1024,
            intermediate_size: 64,
            num_hidden_layers: 1,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            other: Default::default(),
        };
        std::fs::write(dir.path().join("config.json"), clip.to_json()).unwrap();
        let mut config = StudyConfig::preset("tiny").unwrap();
        config.text_encoder =
            crate::config::TextEncoderSpec::Clip(dir.path().display().to_string());
        // 49 GiB of f32 states at 32 tokens; at 77, 117 GiB in f32 and 59 GiB in f16 (the f16
        // the dry run said before).
        config.train_examples = 400_000;
        let (e, shape) = text::estimate(&config);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        assert_eq!(shape, [text::state_length(77), 1024]);
        assert_eq!(shape[0], 32);
        let said = estimate(&config, shape, text::caption_gflops(&config))
            .lines
            .join("\n");
        assert!(said.contains("text states in f32"), "{said}");
        let tokenizer = word_tokenizer(&["a red circle"], 4096, 1, 32).unwrap();
        let built = text_storage(config.cache_text_states, 400_000, shape, &tokenizer);
        assert_eq!(built, None, "the build keeps f32 states too");
        assert!(text::caption_gflops(&config) > 0.0);
    }
}
