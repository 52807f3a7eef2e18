//! A latent cache: a dataset encoded once into autoencoder latents and, per caption, either the
//! text encoder's states or its token ids, stored as safetensors shards and read back
//! memory-mapped, so every model width of a family trains from the same encodings without
//! running the image encoder again.
//!
//! The cache knows nothing of the encoders: the caller pushes plain arrays (latent `[C, h, w]`,
//! then text states `[L, D]` with attention mask `[L]`, or a caption's token ids) and reads
//! plain arrays back. Token ids are what a large text encoder's captions are kept as (77 x 1024
//! f32 states are 315 KB an example; 77 u16 ids are 154 bytes): the frozen encoder then runs
//! when a batch is read. A [`CacheKey`] records what was encoded and how (dataset spec, split,
//! resolution, crop, encoder names and weight hashes, latent and text shapes, latent scaling
//! factor, storage dtype, [`TextStorage`]); opening a cache with a different key is an error
//! that names each differing field.
//!
//! Layout of a cache folder:
//! - `manifest.json`: format, version, key, `complete`, example count, shard list;
//! - `shard-00000.safetensors`, ...: tensor `latents` `[n, C, h, w]` and either `text_states`
//!   `[n, L, D]` (f32 or f16) with `text_mask` `[n, L]` (u8), or `text_tokens` `[n, T]` (u16 or
//!   u32, zero after each caption's end) with `text_token_count` `[n]` (u32), with the example
//!   ids as the JSON array `ids` in the safetensors metadata. A key without `text_storage` (every
//!   cache written before token ids existed) stores states in the key's `dtype`.
//!
//! To train from a cache, draw indices with a [`crate::Sampler`] (seeded shuffle, resumable
//! cursor) and read them with [`LatentCache::batch`].
//!
//! Every file is written atomically, and the manifest is rewritten after each shard, so an
//! interrupted encoding resumes at the last whole shard ([`LatentCacheWriter::create`] then
//! reports how many examples are already stored).
//!
//! A cache can also be built in parts, by several processes at once: each writes a contiguous
//! range of examples ([`split_ranges`], bounds on shard multiples) as a cache of its own in
//! [`range_dir`] (`range-START-END/` inside the cache folder, resumable like any cache), and
//! [`LatentCache::join`] indexes the finished ranges in one manifest whose shards are theirs
//! (`range-.../shard-00000.safetensors`): the same examples, ids and shard bytes as one process
//! writes. A range that is missing or unfinished is never indexed.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ldmscale_model::weights::write_atomic;
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use half::f16;

use crate::error::DataError;
use crate::rng::hash_str;
use crate::transform::Crop;

/// How cached arrays are stored on disk (they are always read back as f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    /// Exact.
    F32,
    /// Half the size; rounding error at most 2^-11 (4.9e-4) relative for magnitudes from
    /// 6.1e-5 to 65504, 3e-8 absolute below; larger magnitudes are refused.
    F16,
}

impl StorageDtype {
    fn safetensors(self) -> Dtype {
        match self {
            StorageDtype::F32 => Dtype::F32,
            StorageDtype::F16 => Dtype::F16,
        }
    }

    fn bytes(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::F16 => 2,
        }
    }
}

/// How token ids are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// Vocabularies of at most 65,536 entries (BERT's 30,522, CLIP's 49,408).
    U16,
    /// Any vocabulary.
    U32,
}

impl TokenDtype {
    /// The narrowest dtype holding every id below `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            TokenDtype::U16 => Dtype::U16,
            TokenDtype::U32 => Dtype::U32,
        }
    }

    fn bytes(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }
}

/// What a cache keeps of each caption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TextStorage {
    /// The text encoder's states `[L, D]` in `dtype`, with the mask `[L]`.
    States {
        /// Their storage dtype (f16 halves them; see [`StorageDtype`]).
        dtype: StorageDtype,
    },
    /// The caption's token ids, at most `tokens` of them (special tokens included); the text
    /// encoder runs on them when the example is read.
    Tokens {
        /// Longest token sequence (the tokenizer's truncation length).
        tokens: usize,
        /// How ids are stored.
        ids: TokenDtype,
    },
}

/// What a cache holds and how it was made; two caches are interchangeable exactly when their
/// keys are equal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKey {
    /// The dataset spec string (see [`crate::DatasetSpec`]).
    pub dataset: String,
    /// The split and its settings, e.g. `train (val fraction 0.01, salt 0)`.
    pub split: String,
    /// Image size fed to the image encoder, `[height, width]`.
    pub resolution: [u32; 2],
    /// How images were cropped to it.
    pub crop: Crop,
    /// Image encoder (autoencoder) name.
    pub image_encoder: String,
    /// Hash of its weights (e.g. [`file_sha256`] of the weights file).
    pub image_encoder_hash: String,
    /// Text encoder name.
    pub text_encoder: String,
    /// Hash of its weights.
    pub text_encoder_hash: String,
    /// Shape of one latent, `[C, h, w]`.
    pub latent_shape: [usize; 3],
    /// Shape of one example's text states, `[L, D]` (the mask is `[L]`).
    pub text_shape: [usize; 2],
    /// The factor latents were multiplied by before storing (0.18215 for SD's autoencoder).
    pub scaling_factor: f32,
    /// Storage dtype of latents (and of text states when `text_storage` is absent).
    pub dtype: StorageDtype,
    /// What is kept of each caption; absent: text states in `dtype` (the only layout before
    /// token ids, so those caches keep their keys and folders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_storage: Option<TextStorage>,
}

impl CacheKey {
    /// The differing fields, as `field: cache has X, asked for Y`.
    fn differences(&self, asked: &CacheKey) -> Vec<String> {
        let a = serde_json::to_value(self).expect("key serialises");
        let b = serde_json::to_value(asked).expect("key serialises");
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            unreachable!("a struct serialises to an object")
        };
        // A field absent on one side (an old key's `text_storage`) shows as null.
        let null = serde_json::Value::Null;
        let fields: Vec<&String> = a
            .keys()
            .chain(b.keys().filter(|k| !a.contains_key(*k)))
            .collect();
        fields
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
                format!("{k}: cache has {x}, asked for {y}")
            })
            .collect()
    }

    /// A folder name under `root` unique to this key (readable prefix + hash of the whole
    /// key), so caches for several settings can live side by side.
    pub fn dir_in(&self, root: &Path) -> PathBuf {
        let json = serde_json::to_string(self).expect("key serialises");
        let kind: String = self
            .dataset
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        root.join(format!(
            "{kind}-{}x{}-{:016x}",
            self.resolution[0],
            self.resolution[1],
            hash_str(&json)
        ))
    }

    fn latent_len(&self) -> usize {
        self.latent_shape.iter().product()
    }

    fn text_len(&self) -> usize {
        self.text_shape.iter().product()
    }

    /// What is kept of each caption (an absent `text_storage` resolved).
    pub fn text(&self) -> TextStorage {
        self.text_storage
            .unwrap_or(TextStorage::States { dtype: self.dtype })
    }
}

/// `count` examples in `parts` contiguous ranges, each a whole number of `shard_size` shards
/// (the last range ends at `count`), as even as whole shards allow; with more parts than
/// shards, some are empty.
pub fn split_ranges(count: usize, shard_size: usize, parts: usize) -> Vec<Range<usize>> {
    let shards = count.div_ceil(shard_size.max(1));
    let parts = parts.max(1);
    let bound = |i: usize| (i * shards / parts * shard_size).min(count);
    (0..parts).map(|i| bound(i)..bound(i + 1)).collect()
}

/// The folder, inside cache folder `dir`, of the part of a cache holding examples `range`.
pub fn range_dir(dir: &Path, range: &Range<usize>) -> PathBuf {
    dir.join(format!(
        "{RANGE_PREFIX}{:012}-{:012}",
        range.start, range.end
    ))
}

const RANGE_PREFIX: &str = "range-";

/// The ranges of examples whose part folders ([`range_dir`]) are in `dir`, by start.
pub fn ranges_in(dir: &Path) -> Result<Vec<Range<usize>>, DataError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DataError::io(dir, e)),
    };
    let mut ranges = Vec::new();
    for entry in entries {
        let name = entry.map_err(|e| DataError::io(dir, e))?.file_name();
        let bounds = name.to_str().and_then(|n| n.strip_prefix(RANGE_PREFIX));
        let parsed = bounds
            .and_then(|b| b.split_once('-'))
            .and_then(|(a, b)| Some(a.parse::<usize>().ok()?..b.parse::<usize>().ok()?));
        if let Some(range) = parsed.filter(|r| r.start < r.end) {
            ranges.push(range);
        }
    }
    ranges.sort_by_key(|r| (r.start, r.end));
    Ok(ranges)
}

/// The SHA-256 of a file as lower-case hex, for [`CacheKey`]'s encoder hashes.
pub fn file_sha256(path: &Path) -> Result<String, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

const FORMAT: &str = "ldmscale-latent-cache";
const VERSION: u32 = 1;
/// File name of the manifest in a cache folder.
pub const MANIFEST: &str = "manifest.json";

/// The manifest of a cache folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `ldmscale-latent-cache`.
    pub format: String,
    /// Layout version (1).
    pub version: u32,
    /// What the cache holds.
    pub key: CacheKey,
    /// False while encoding is unfinished.
    pub complete: bool,
    /// Examples stored.
    pub count: usize,
    /// The shards, in order.
    pub shards: Vec<ShardEntry>,
}

/// One shard file of a cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name within the cache folder.
    pub file: String,
    /// Examples in it.
    pub count: usize,
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, DataError> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| DataError::Cache {
        dir: path.display().to_string(),
        message: format!("not a latent cache manifest: {e}"),
    })?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(DataError::Cache {
            dir: path.display().to_string(),
            message: format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                manifest.format, manifest.version
            ),
        });
    }
    Ok(Some(manifest))
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), DataError> {
    let json = serde_json::to_string_pretty(manifest).expect("manifest serialises");
    Ok(write_atomic(&dir.join(MANIFEST), json.as_bytes())?)
}

/// A tensor to serialise.
struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes a latent cache shard by shard.
pub struct LatentCacheWriter {
    dir: PathBuf,
    shard_size: usize,
    manifest: Manifest,
    ids: Vec<String>,
    latents: Vec<u8>,
    /// Text states, or token ids padded with zeros.
    text: Vec<u8>,
    /// Masks, or token counts.
    text_extent: Vec<u8>,
}

impl LatentCacheWriter {
    /// Starts a cache in `dir` (created if needed) with `shard_size` examples per shard, or
    /// resumes an unfinished one with the same key: [`LatentCacheWriter::len`] then tells how
    /// many examples (in push order) are already stored, to be skipped by the caller. A
    /// finished cache or one with another key is an error.
    pub fn create(dir: &Path, key: CacheKey, shard_size: usize) -> Result<Self, DataError> {
        let err = |message: String| DataError::Cache {
            dir: dir.display().to_string(),
            message,
        };
        if shard_size == 0 {
            return Err(err("shard size must be at least 1".into()));
        }
        if key.latent_len() == 0 || key.text_len() == 0 {
            return Err(err(format!(
                "latent shape {:?} and text shape {:?} must have no zero dimension",
                key.latent_shape, key.text_shape
            )));
        }
        if let TextStorage::Tokens { tokens: 0, .. } = key.text() {
            return Err(err("text_storage: tokens must be at least 1".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let manifest = match read_manifest(dir)? {
            Some(m) if m.key != key => {
                return Err(DataError::CacheKeyMismatch {
                    dir: dir.display().to_string(),
                    mismatch: m.key.differences(&key).join("; "),
                });
            }
            Some(m) if m.complete => {
                return Err(err(format!(
                    "already complete ({} examples); open it with LatentCache::open",
                    m.count
                )));
            }
            Some(m) => {
                for s in &m.shards {
                    if !dir.join(&s.file).is_file() {
                        return Err(err(format!(
                            "shard {} listed in the manifest is missing",
                            s.file
                        )));
                    }
                }
                m
            }
            None => Manifest {
                format: FORMAT.into(),
                version: VERSION,
                key,
                complete: false,
                count: 0,
                shards: Vec::new(),
            },
        };
        Ok(LatentCacheWriter {
            dir: dir.to_path_buf(),
            shard_size,
            manifest,
            ids: Vec::new(),
            latents: Vec::new(),
            text: Vec::new(),
            text_extent: Vec::new(),
        })
    }

    /// Examples stored or pending.
    pub fn len(&self) -> usize {
        self.manifest.count + self.ids.len()
    }

    /// True when nothing has been stored or pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn error(&self, message: String) -> DataError {
        DataError::Cache {
            dir: self.dir.display().to_string(),
            message,
        }
    }

    /// Adds one example of a cache that stores text states: `latent` `[C, h, w]`,
    /// `text_states` `[L, D]`, `text_mask` `[L]` (nonzero = real token), all row-major.
    pub fn push(
        &mut self,
        id: &str,
        latent: &[f32],
        text_states: &[f32],
        text_mask: &[u8],
    ) -> Result<(), DataError> {
        let key = &self.manifest.key;
        let TextStorage::States { dtype: text_dtype } = key.text() else {
            return Err(self.error(format!(
                "example {id:?}: this cache stores token ids (text_storage {:?}), not text states",
                key.text()
            )));
        };
        let checks = [
            latent_check(key, latent),
            (
                "text states",
                text_states.len(),
                key.text_len(),
                format!("{:?}", key.text_shape),
            ),
            (
                "text mask",
                text_mask.len(),
                key.text_shape[0],
                format!("[{}]", key.text_shape[0]),
            ),
        ];
        self.check_lengths(id, checks)?;
        for (what, values, dtype) in [
            ("latent", latent, self.manifest.key.dtype),
            ("text states", text_states, text_dtype),
        ] {
            let too_big = values.iter().find(|v| v.abs() > f16::MAX.to_f32());
            if let (StorageDtype::F16, Some(v)) = (dtype, too_big) {
                return Err(self.error(format!(
                    "example {id:?}: {what} value {v} is beyond f16's range (65504)"
                )));
            }
        }
        encode(latent, self.manifest.key.dtype, &mut self.latents);
        encode(text_states, text_dtype, &mut self.text);
        self.text_extent
            .extend(text_mask.iter().map(|&m| (m != 0) as u8));
        self.pushed(id)
    }

    /// Adds one example of a cache that stores token ids: `latent` `[C, h, w]` row-major and
    /// the caption's ids (special tokens included, no padding; 1 to the key's `tokens` of
    /// them).
    pub fn push_tokens(
        &mut self,
        id: &str,
        latent: &[f32],
        tokens: &[u32],
    ) -> Result<(), DataError> {
        let key = &self.manifest.key;
        let TextStorage::Tokens { tokens: most, ids } = key.text() else {
            return Err(self.error(format!(
                "example {id:?}: this cache stores text states (text_storage {:?}), not token ids",
                key.text()
            )));
        };
        self.check_lengths(id, [latent_check(key, latent)])?;
        if tokens.is_empty() || tokens.len() > most {
            return Err(self.error(format!(
                "example {id:?}: {} token ids, the key's text_storage holds 1 to {most}",
                tokens.len()
            )));
        }
        if let Some(big) = tokens
            .iter()
            .find(|&&t| ids == TokenDtype::U16 && t > 0xffff)
        {
            return Err(self.error(format!(
                "example {id:?}: token id {big} does not fit the key's u16 ids"
            )));
        }
        for &t in tokens
            .iter()
            .chain(std::iter::repeat_n(&0, most - tokens.len()))
        {
            match ids {
                TokenDtype::U16 => self.text.extend((t as u16).to_le_bytes()),
                TokenDtype::U32 => self.text.extend(t.to_le_bytes()),
            }
        }
        encode(latent, key.dtype, &mut self.latents);
        self.text_extent.extend((tokens.len() as u32).to_le_bytes());
        self.pushed(id)
    }

    /// Each `(what, got, want, shape)` must have `got == want`.
    fn check_lengths<const N: usize>(
        &self,
        id: &str,
        checks: [(&str, usize, usize, String); N],
    ) -> Result<(), DataError> {
        for (what, got, want, shape) in checks {
            if got != want {
                return Err(self.error(format!(
                    "example {id:?}: {what} has {got} values, the key's shape {shape} needs {want}"
                )));
            }
        }
        Ok(())
    }

    /// Records a pushed example; a full shard is written.
    fn pushed(&mut self, id: &str) -> Result<(), DataError> {
        self.ids.push(id.to_string());
        if self.ids.len() == self.shard_size {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending examples as a shard and updates the manifest.
    fn flush(&mut self) -> Result<(), DataError> {
        let n = self.ids.len();
        if n == 0 {
            return Ok(());
        }
        let key = &self.manifest.key;
        let [c, h, w] = key.latent_shape;
        let [
            (text, text_dtype, text_shape),
            (extent, extent_dtype, extent_shape),
        ] = text_tensors(key, n);
        let tensors = [
            (
                "latents",
                RawTensor {
                    dtype: key.dtype.safetensors(),
                    shape: vec![n, c, h, w],
                    data: std::mem::take(&mut self.latents),
                },
            ),
            (
                text,
                RawTensor {
                    dtype: text_dtype,
                    shape: text_shape,
                    data: std::mem::take(&mut self.text),
                },
            ),
            (
                extent,
                RawTensor {
                    dtype: extent_dtype,
                    shape: extent_shape,
                    data: std::mem::take(&mut self.text_extent),
                },
            ),
        ];
        let ids = serde_json::to_string(&std::mem::take(&mut self.ids)).expect("ids serialise");
        let metadata = HashMap::from([("ids".to_string(), ids)]);
        let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (*k, t)), Some(metadata))
            .map_err(|e| DataError::Cache {
                dir: self.dir.display().to_string(),
                message: format!("serialising a shard: {e}"),
            })?;
        let file = format!("shard-{:05}.safetensors", self.manifest.shards.len());
        write_atomic(&self.dir.join(&file), &bytes)?;
        self.manifest.shards.push(ShardEntry { file, count: n });
        self.manifest.count += n;
        write_manifest(&self.dir, &self.manifest)
    }

    /// Writes the last shard and marks the cache complete.
    pub fn finish(mut self) -> Result<Manifest, DataError> {
        self.flush()?;
        self.manifest.complete = true;
        write_manifest(&self.dir, &self.manifest)?;
        Ok(self.manifest)
    }
}

/// The `(what, got, want, shape)` check of a latent's length.
fn latent_check(key: &CacheKey, latent: &[f32]) -> (&'static str, usize, usize, String) {
    (
        "latent",
        latent.len(),
        key.latent_len(),
        format!("{:?}", key.latent_shape),
    )
}

/// Name, dtype and shape of a shard's two text tensors (states and mask, or token ids and
/// counts) for `n` examples.
fn text_tensors(key: &CacheKey, n: usize) -> [(&'static str, Dtype, Vec<usize>); 2] {
    let [l, d] = key.text_shape;
    match key.text() {
        TextStorage::States { dtype } => [
            ("text_states", dtype.safetensors(), vec![n, l, d]),
            ("text_mask", Dtype::U8, vec![n, l]),
        ],
        TextStorage::Tokens { tokens, ids } => [
            ("text_tokens", ids.safetensors(), vec![n, tokens]),
            ("text_token_count", Dtype::U32, vec![n]),
        ],
    }
}

fn encode(values: &[f32], dtype: StorageDtype, out: &mut Vec<u8>) {
    match dtype {
        StorageDtype::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        StorageDtype::F16 => values
            .iter()
            .for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
    }
}

fn decode(bytes: &[u8], dtype: StorageDtype, out: &mut Vec<f32>) {
    match dtype {
        StorageDtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        StorageDtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

/// One shard as checked at open: where it is and the byte ranges of each tensor's data. Its ids
/// stay in the header and are read when asked for, so an open cache holds no per-example memory
/// (a `String` an id held would be ~40 GB at 600M examples).
struct MappedShard {
    path: PathBuf,
    count: usize,
    latents: std::ops::Range<usize>,
    /// Text states, or token ids.
    text: std::ops::Range<usize>,
    /// Masks, or token counts.
    text_extent: std::ops::Range<usize>,
}

/// Examples read from a cache, batch-major, ready to become tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedBatch {
    /// Their ids.
    pub ids: Vec<String>,
    /// `[B, C, h, w]`.
    pub latents: Vec<f32>,
    /// Their captions, as the cache keeps them.
    pub text: CachedText,
}

/// Captions as a cache keeps them ([`TextStorage`]).
#[derive(Clone, Debug, PartialEq)]
pub enum CachedText {
    /// The text encoder's states.
    States {
        /// `[B, L, D]`.
        states: Vec<f32>,
        /// `[B, L]`, 1 for real tokens, 0 for padding.
        mask: Vec<u8>,
    },
    /// Each caption's token ids (special tokens included, no padding), for the text encoder
    /// to run on.
    Tokens(Vec<Vec<u32>>),
}

/// Most shards a cache keeps mapped at once: Linux allows a process 65,530 maps by default, and
/// the paper's 600M examples are 2.3M shards of 256.
pub const MAX_MAPPED_SHARDS: usize = 1024;

/// A finished latent cache, opened read-only; its shards are memory-mapped when read, at most
/// [`MAX_MAPPED_SHARDS`] at a time (the least recently read unmapped first).
pub struct LatentCache {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<MappedShard>,
    /// Global index of each shard's first example.
    starts: Vec<usize>,
    maps: std::sync::Mutex<ShardMaps>,
}

/// The shards mapped now, by index, with when each was last read.
#[derive(Default)]
struct ShardMaps {
    open: std::collections::HashMap<usize, (std::sync::Arc<memmap2::Mmap>, u64)>,
    reads: u64,
}

impl ShardMaps {
    /// Shard `s`'s map, mapping `path` (and unmapping the least recently read past
    /// [`MAX_MAPPED_SHARDS`]) when it is not mapped.
    fn get(&mut self, s: usize, path: &Path) -> Result<std::sync::Arc<memmap2::Mmap>, DataError> {
        self.reads += 1;
        if let Some((map, last)) = self.open.get_mut(&s) {
            *last = self.reads;
            return Ok(map.clone());
        }
        if self.open.len() >= MAX_MAPPED_SHARDS {
            let oldest = self.open.iter().min_by_key(|(_, (_, last))| *last);
            let oldest = *oldest.expect("full, so not empty").0;
            self.open.remove(&oldest);
        }
        let map = std::sync::Arc::new(map_file(path)?);
        self.open.insert(s, (map.clone(), self.reads));
        Ok(map)
    }
}

impl LatentCache {
    /// Opens the cache in `dir`, which must have been built with exactly `key`.
    pub fn open(dir: &Path, key: &CacheKey) -> Result<Self, DataError> {
        let cache = Self::open_any(dir)?;
        let diff = cache.manifest.key.differences(key);
        if !diff.is_empty() {
            return Err(DataError::CacheKeyMismatch {
                dir: dir.display().to_string(),
                mismatch: diff.join("; "),
            });
        }
        Ok(cache)
    }

    /// Indexes the finished part caches of `dir` ([`range_dir`]), which must hold examples
    /// `0..count` between them with no gap or overlap, each built with `key`, as one cache
    /// (its manifest written atomically last) and opens it. A range missing, unfinished, built
    /// with another key or holding other than its examples is an error naming it, and nothing
    /// is indexed.
    pub fn join(dir: &Path, key: &CacheKey, count: usize) -> Result<Self, DataError> {
        let err = |message: String| DataError::Cache {
            dir: dir.display().to_string(),
            message,
        };
        let mut manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            key: key.clone(),
            complete: true,
            count: 0,
            shards: Vec::new(),
        };
        for range in ranges_in(dir)? {
            let part = range_dir(dir, &range);
            let name = part.file_name().expect("a range folder").to_string_lossy();
            if range.start != manifest.count {
                return Err(err(format!(
                    "{name} starts at example {}, the ranges before end at {}: {}",
                    range.start,
                    manifest.count,
                    if range.start > manifest.count {
                        "a gap"
                    } else {
                        "an overlap"
                    }
                )));
            }
            let m = read_manifest(&part)?
                .ok_or_else(|| err(format!("{name} has no {MANIFEST}: never started")))?;
            let problem = if m.key != *key {
                Some(format!(
                    "was built for another key ({})",
                    m.key.differences(key).join("; ")
                ))
            } else if !m.complete {
                Some(format!(
                    "is unfinished ({} of {} examples)",
                    m.count,
                    range.len()
                ))
            } else if m.count != range.len() {
                Some(format!(
                    "holds {} examples for a range of {}",
                    m.count,
                    range.len()
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(err(format!("{name} {problem}; build it again")));
            }
            manifest.shards.extend(m.shards.iter().map(|s| ShardEntry {
                file: format!("{name}/{}", s.file),
                count: s.count,
            }));
            manifest.count = range.end;
        }
        if manifest.count != count {
            return Err(err(format!(
                "the ranges hold examples 0..{}, {count} are needed",
                manifest.count
            )));
        }
        write_manifest(dir, &manifest)?;
        Self::open(dir, key)
    }

    /// Opens the cache in `dir` whatever its key (to inspect it).
    pub fn open_any(dir: &Path) -> Result<Self, DataError> {
        let err = |message: String| DataError::Cache {
            dir: dir.display().to_string(),
            message,
        };
        let manifest = read_manifest(dir)?.ok_or_else(|| {
            err(format!(
                "no {MANIFEST}: not a latent cache, or never started"
            ))
        })?;
        if !manifest.complete {
            return Err(err(format!(
                "incomplete: encoding stopped after {} examples; run it again to resume",
                manifest.count
            )));
        }
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = Vec::with_capacity(manifest.shards.len());
        let mut total = 0;
        for entry in &manifest.shards {
            let shard = map_shard(&dir.join(&entry.file), entry.count, &manifest.key)?;
            starts.push(total);
            total += shard.count;
            shards.push(shard);
        }
        if total != manifest.count {
            return Err(err(format!(
                "shards hold {total} examples, the manifest says {}",
                manifest.count
            )));
        }
        Ok(LatentCache {
            dir: dir.to_path_buf(),
            manifest,
            shards,
            starts,
            maps: Default::default(),
        })
    }

    /// What the cache holds.
    pub fn key(&self) -> &CacheKey {
        &self.manifest.key
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.manifest.count
    }

    /// True when the cache holds no example.
    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }

    /// How many of its shards are mapped now (at most [`MAX_MAPPED_SHARDS`]).
    pub fn mapped_shards(&self) -> usize {
        self.maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .len()
    }

    /// Example `index`'s shard (its number and layout) and place in it.
    fn locate(&self, index: usize) -> Result<(usize, &MappedShard, usize), DataError> {
        if index >= self.len() {
            return Err(DataError::OutOfRange {
                dataset: format!("latent cache {}", self.dir.display()),
                index,
                len: self.len(),
            });
        }
        let s = self.starts.partition_point(|&start| start <= index) - 1;
        Ok((s, &self.shards[s], index - self.starts[s]))
    }

    /// Shard `s`'s bytes.
    fn mapped(&self, s: usize) -> Result<std::sync::Arc<memmap2::Mmap>, DataError> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.get(s, &self.shards[s].path)
    }

    /// The id of example `index`, read from its shard's header.
    pub fn id(&self, index: usize) -> Result<String, DataError> {
        let (s, shard, i) = self.locate(index)?;
        self.shard_id(shard, &self.mapped(s)?, i)
    }

    /// Id `i` of `shard` mapped as `map` (checked at open: the header lists one id per example).
    fn shard_id(&self, shard: &MappedShard, map: &[u8], i: usize) -> Result<String, DataError> {
        let read = read_ids(map, Some(i)).and_then(|(_, id)| {
            id.ok_or_else(|| format!("no id {i} among its {} examples", shard.count))
        });
        read.map_err(|message| DataError::Cache {
            dir: self.dir.display().to_string(),
            message,
        })
    }

    /// Reads the examples at `indices` (any order, repeats allowed).
    pub fn batch(&self, indices: &[usize]) -> Result<CachedBatch, DataError> {
        let key = &self.manifest.key;
        let ll = key.latent_len();
        let b = key.dtype.bytes();
        let mut out = CachedBatch {
            ids: Vec::with_capacity(indices.len()),
            latents: Vec::with_capacity(indices.len() * ll),
            text: match key.text() {
                TextStorage::States { .. } => CachedText::States {
                    states: Vec::with_capacity(indices.len() * key.text_len()),
                    mask: Vec::with_capacity(indices.len() * key.text_shape[0]),
                },
                TextStorage::Tokens { .. } => CachedText::Tokens(Vec::with_capacity(indices.len())),
            },
        };
        for &index in indices {
            let (s, shard, i) = self.locate(index)?;
            let map = self.mapped(s)?;
            let lat = &map[shard.latents.clone()][i * ll * b..(i + 1) * ll * b];
            decode(lat, key.dtype, &mut out.latents);
            self.read_text(shard, &map, i, &mut out.text)?;
            out.ids.push(self.shard_id(shard, &map, i)?);
        }
        Ok(out)
    }

    /// Appends example `i` of `shard`'s caption (`shard` mapped as `map`) to `out`.
    fn read_text(
        &self,
        shard: &MappedShard,
        map: &[u8],
        i: usize,
        out: &mut CachedText,
    ) -> Result<(), DataError> {
        let key = &self.manifest.key;
        let text = &map[shard.text.clone()];
        let extent = &map[shard.text_extent.clone()];
        match (key.text(), out) {
            (TextStorage::States { dtype }, CachedText::States { states, mask }) => {
                let (tl, l, b) = (key.text_len(), key.text_shape[0], dtype.bytes());
                decode(&text[i * tl * b..(i + 1) * tl * b], dtype, states);
                mask.extend_from_slice(&extent[i * l..(i + 1) * l]);
            }
            (TextStorage::Tokens { tokens, ids }, CachedText::Tokens(rows)) => {
                let count =
                    u32::from_le_bytes(extent[i * 4..(i + 1) * 4].try_into().expect("4 bytes"));
                let count = count as usize;
                if count == 0 || count > tokens {
                    return Err(DataError::Cache {
                        dir: self.dir.display().to_string(),
                        message: format!(
                            "example {:?}: text_token_count {count}, expected 1 to {tokens}",
                            self.shard_id(shard, map, i)?
                        ),
                    });
                }
                let b = ids.bytes();
                let row = &text[i * tokens * b..(i * tokens + count) * b];
                rows.push(
                    row.chunks_exact(b)
                        .map(|c| match ids {
                            TokenDtype::U16 => u16::from_le_bytes([c[0], c[1]]) as u32,
                            TokenDtype::U32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                        })
                        .collect(),
                );
            }
            _ => unreachable!("the batch's text follows the key"),
        }
        Ok(())
    }
}

fn map_shard(path: &Path, count: usize, key: &CacheKey) -> Result<MappedShard, DataError> {
    let err = |message: String| DataError::Cache {
        dir: path.display().to_string(),
        message,
    };
    let map = map_file(path)?;
    let (header_len, meta) = SafeTensors::read_metadata(&map[..])
        .map_err(|e| err(format!("not a readable safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    let [c, h, w] = key.latent_shape;
    let range = |name: &str, want_dtype: Dtype, want_shape: Vec<usize>| {
        let info = meta
            .info(name)
            .ok_or_else(|| err(format!("missing tensor {name:?}")))?;
        if info.dtype != want_dtype || info.shape != want_shape {
            return Err(err(format!(
                "tensor {name:?} is {:?} {:?}, expected {want_dtype:?} {want_shape:?}",
                info.dtype, info.shape
            )));
        }
        Ok(data_start + info.data_offsets.0..data_start + info.data_offsets.1)
    };
    let latents = range("latents", key.dtype.safetensors(), vec![count, c, h, w])?;
    let [
        (text, text_dtype, text_shape),
        (extent, extent_dtype, extent_shape),
    ] = text_tensors(key, count);
    let text = range(text, text_dtype, text_shape)?;
    let text_extent = range(extent, extent_dtype, extent_shape)?;
    let (ids, _) = read_ids(&map, None).map_err(err)?;
    if ids != count {
        return Err(err(format!("{ids} ids for {count} examples")));
    }
    Ok(MappedShard {
        path: path.to_path_buf(),
        count,
        latents,
        text,
        text_extent,
    })
}

/// `path` mapped read-only.
fn map_file(path: &Path) -> Result<memmap2::Mmap, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: shards are written once through a temporary file and a rename and never modified
    // in place, so the mapped bytes do not change while mapped (short of someone overwriting
    // the cache by hand).
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))
}

/// Reads the ids list (`ids` in the metadata) of the safetensors file `bytes`: how many ids it
/// holds and, when asked for, id `nth`, without keeping the others.
fn read_ids(bytes: &[u8], nth: Option<usize>) -> Result<(usize, Option<String>), String> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a readable safetensors file: {e}"))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ids"))
        .ok_or_else(|| "no \"ids\" in the metadata".to_string())?;
    let mut de = serde_json::Deserializer::from_str(json);
    serde::Deserializer::deserialize_seq(&mut de, IdList { nth })
        .and_then(|read| de.end().map(|_| read))
        .map_err(|e| format!("metadata \"ids\" is not a JSON list of strings: {e}"))
}

/// Visits a JSON list of strings, counting them and keeping the `nth`.
struct IdList {
    nth: Option<usize>,
}

impl<'de> serde::de::Visitor<'de> for IdList {
    type Value = (usize, Option<String>);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of strings")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (mut count, mut kept) = (0, None);
        while let Some(id) = seq.next_element::<String>()? {
            if self.nth == Some(count) {
                kept = Some(id);
            }
            count += 1;
        }
        Ok((count, kept))
    }
}
