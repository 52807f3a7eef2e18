//! A latent cache: a dataset encoded once into autoencoder latents and text-encoder states,
//! stored as safetensors shards and read back memory-mapped, so every model width of a family
//! trains from the same encodings without running the encoders again.
//!
//! The cache knows nothing of the encoders: the caller pushes plain arrays (latent `[C, h, w]`,
//! text states `[L, D]`, attention mask `[L]`) and reads plain arrays back. A [`CacheKey`]
//! records what was encoded and how (dataset spec, split, resolution, crop, encoder names and
//! weight hashes, latent and text shapes, latent scaling factor, storage dtype); opening a cache
//! with a different key is an error that names each differing field.
//!
//! Layout of a cache folder:
//! - `manifest.json`: format, version, key, `complete`, example count, shard list;
//! - `shard-00000.safetensors`, ...: tensors `latents` `[n, C, h, w]`, `text_states`
//!   `[n, L, D]` (f32 or f16) and `text_mask` `[n, L]` (u8), with the example ids as the JSON
//!   array `ids` in the safetensors metadata.
//!
//! To train from a cache, draw indices with a [`crate::Sampler`] (seeded shuffle, resumable
//! cursor) and read them with [`LatentCache::batch`].
//!
//! Every file is written atomically, and the manifest is rewritten after each shard, so an
//! interrupted encoding resumes at the last whole shard ([`LatentCacheWriter::create`] then
//! reports how many examples are already stored).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ldmscale_model::weights::write_atomic;
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::DataError;
use crate::rng::hash_str;
use crate::transform::Crop;

/// How cached arrays are stored on disk (they are always read back as f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    /// Exact.
    F32,
    /// Half the size; rounding error ~1e-3 relative.
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
    /// Storage dtype of latents and text states.
    pub dtype: StorageDtype,
}

impl CacheKey {
    /// The differing fields, as `field: cache has X, asked for Y`.
    fn differences(&self, asked: &CacheKey) -> Vec<String> {
        let a = serde_json::to_value(self).expect("key serialises");
        let b = serde_json::to_value(asked).expect("key serialises");
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            unreachable!("a struct serialises to an object")
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: cache has {v}, asked for {}", b[k]))
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
    text_states: Vec<u8>,
    text_mask: Vec<u8>,
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
            text_states: Vec::new(),
            text_mask: Vec::new(),
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

    /// Adds one example: `latent` `[C, h, w]`, `text_states` `[L, D]`, `text_mask` `[L]`
    /// (nonzero = real token), all row-major.
    pub fn push(
        &mut self,
        id: &str,
        latent: &[f32],
        text_states: &[f32],
        text_mask: &[u8],
    ) -> Result<(), DataError> {
        let key = &self.manifest.key;
        let checks = [
            (
                "latent",
                latent.len(),
                key.latent_len(),
                format!("{:?}", key.latent_shape),
            ),
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
        for (what, got, want, shape) in checks {
            if got != want {
                return Err(DataError::Cache {
                    dir: self.dir.display().to_string(),
                    message: format!(
                        "example {id:?}: {what} has {got} values, the key's shape {shape} needs {want}"
                    ),
                });
            }
        }
        let dtype = key.dtype;
        encode(latent, dtype, &mut self.latents);
        encode(text_states, dtype, &mut self.text_states);
        self.text_mask
            .extend(text_mask.iter().map(|&m| (m != 0) as u8));
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
        let dtype = key.dtype.safetensors();
        let [c, h, w] = key.latent_shape;
        let [l, d] = key.text_shape;
        let tensors = [
            (
                "latents",
                RawTensor {
                    dtype,
                    shape: vec![n, c, h, w],
                    data: std::mem::take(&mut self.latents),
                },
            ),
            (
                "text_states",
                RawTensor {
                    dtype,
                    shape: vec![n, l, d],
                    data: std::mem::take(&mut self.text_states),
                },
            ),
            (
                "text_mask",
                RawTensor {
                    dtype: Dtype::U8,
                    shape: vec![n, l],
                    data: std::mem::take(&mut self.text_mask),
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

fn encode(values: &[f32], dtype: StorageDtype, out: &mut Vec<u8>) {
    match dtype {
        StorageDtype::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        StorageDtype::F16 => values
            .iter()
            .for_each(|v| out.extend(half::f16::from_f32(*v).to_le_bytes())),
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
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

/// One memory-mapped shard: byte ranges of each tensor's data.
struct MappedShard {
    map: memmap2::Mmap,
    count: usize,
    ids: Vec<String>,
    latents: std::ops::Range<usize>,
    text_states: std::ops::Range<usize>,
    text_mask: std::ops::Range<usize>,
}

/// Examples read from a cache, batch-major, ready to become tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedBatch {
    /// Their ids.
    pub ids: Vec<String>,
    /// `[B, C, h, w]`.
    pub latents: Vec<f32>,
    /// `[B, L, D]`.
    pub text_states: Vec<f32>,
    /// `[B, L]`, 1 for real tokens, 0 for padding.
    pub text_mask: Vec<u8>,
}

/// A finished latent cache, opened read-only and memory-mapped.
pub struct LatentCache {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<MappedShard>,
    /// Global index of each shard's first example.
    starts: Vec<usize>,
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

    fn locate(&self, index: usize) -> Result<(&MappedShard, usize), DataError> {
        if index >= self.len() {
            return Err(DataError::OutOfRange {
                dataset: format!("latent cache {}", self.dir.display()),
                index,
                len: self.len(),
            });
        }
        let s = self.starts.partition_point(|&start| start <= index) - 1;
        Ok((&self.shards[s], index - self.starts[s]))
    }

    /// The id of example `index`.
    pub fn id(&self, index: usize) -> Result<&str, DataError> {
        let (shard, i) = self.locate(index)?;
        Ok(&shard.ids[i])
    }

    /// Reads the examples at `indices` (any order, repeats allowed).
    pub fn batch(&self, indices: &[usize]) -> Result<CachedBatch, DataError> {
        let key = &self.manifest.key;
        let (ll, tl, l) = (key.latent_len(), key.text_len(), key.text_shape[0]);
        let b = key.dtype.bytes();
        let mut out = CachedBatch {
            ids: Vec::with_capacity(indices.len()),
            latents: Vec::with_capacity(indices.len() * ll),
            text_states: Vec::with_capacity(indices.len() * tl),
            text_mask: Vec::with_capacity(indices.len() * l),
        };
        for &index in indices {
            let (shard, i) = self.locate(index)?;
            let bytes = &shard.map[..];
            let lat = &bytes[shard.latents.clone()][i * ll * b..(i + 1) * ll * b];
            let txt = &bytes[shard.text_states.clone()][i * tl * b..(i + 1) * tl * b];
            let mask = &bytes[shard.text_mask.clone()][i * l..(i + 1) * l];
            decode(lat, key.dtype, &mut out.latents);
            decode(txt, key.dtype, &mut out.text_states);
            out.text_mask.extend_from_slice(mask);
            out.ids.push(shard.ids[i].clone());
        }
        Ok(out)
    }
}

fn map_shard(path: &Path, count: usize, key: &CacheKey) -> Result<MappedShard, DataError> {
    let err = |message: String| DataError::Cache {
        dir: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: shards are written once through a temporary file and a rename and never modified
    // in place, so the mapped bytes do not change while mapped (short of someone overwriting
    // the cache by hand).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
    let (header_len, meta) = SafeTensors::read_metadata(&map[..])
        .map_err(|e| err(format!("not a readable safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    let [c, h, w] = key.latent_shape;
    let [l, d] = key.text_shape;
    let dtype = key.dtype.safetensors();
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
    let latents = range("latents", dtype, vec![count, c, h, w])?;
    let text_states = range("text_states", dtype, vec![count, l, d])?;
    let text_mask = range("text_mask", Dtype::U8, vec![count, l])?;
    let ids: Vec<String> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ids"))
        .ok_or_else(|| err("no \"ids\" in the metadata".into()))
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| {
                err(format!(
                    "metadata \"ids\" is not a JSON list of strings: {e}"
                ))
            })
        })?;
    if ids.len() != count {
        return Err(err(format!("{} ids for {count} examples", ids.len())));
    }
    Ok(MappedShard {
        map,
        count,
        ids,
        latents,
        text_states,
        text_mask,
    })
}
