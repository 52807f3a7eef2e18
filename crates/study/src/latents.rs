//! The study's training set on disk: the first stage's latents and the text encoder's states
//! (or the captions' token ids, for a large encoder) in a [`LatentCache`], written once and read
//! by every width's training (and by a resumed study, which then encodes nothing). A token-id
//! cache runs the frozen text encoder on each batch as it is read, on the batch's device, in
//! [`CachedTrainingData::text`]: the one place every reader of the cache's text goes through.

use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_data::{
    CacheKey, CachedText, Captioned, CaptionedSet, CaptionedStream, DataError, LatentCache,
    LatentCacheWriter, range_dir, ranges_in,
};
use ldmscale_model::text::{TextModel, TextTokenizer};
use ldmscale_pipeline::encode_tokens;
use ldmscale_train::TrainingData;

/// Encoded examples `start..start + count`: latents `[count, C, h, w]`, and the captions as the
/// cache keeps them (states `[count, L, D]` with masks `[count, L]`, non-zero = real token; or
/// each caption's token ids).
pub type EncodedChunk = (Vec<f32>, CachedText);

/// How [`open_or_build`] got its cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOrigin {
    /// A finished cache with the same key was there.
    Reused,
    /// Encoded now (`resumed_at` examples were already stored by an interrupted run).
    Built {
        /// Examples found from an earlier, interrupted encoding.
        resumed_at: usize,
    },
    /// A cache built with another key was there and has been replaced; the fields that differed.
    Rebuilt {
        /// `field: cache has X, asked for Y` for each differing field.
        mismatch: String,
    },
}

/// Opens the cache in `dir` built with `key`, or encodes `count` examples into it with
/// `encode(start, count)` (in chunks of `chunk`). A cache in `dir` with another key (another
/// resolution, autoencoder or text encoder) is replaced, and the returned origin names the
/// differing fields; an interrupted encoding resumes at its last whole shard. Where ranges of
/// the cache were built apart ([`build_range`], array tasks), the ranges missing or unfinished
/// are built here and all of them joined.
pub fn open_or_build(
    dir: &Path,
    key: &CacheKey,
    count: usize,
    chunk: usize,
    mut encode: impl FnMut(usize, usize) -> Result<EncodedChunk, String>,
) -> Result<(LatentCache, CacheOrigin), String> {
    let mut origin = CacheOrigin::Built { resumed_at: 0 };
    match LatentCache::open(dir, key) {
        Ok(cache) if cache.len() == count => return Ok((cache, CacheOrigin::Reused)),
        Ok(cache) => {
            origin = CacheOrigin::Rebuilt {
                mismatch: format!("count: cache has {}, asked for {count}", cache.len()),
            };
        }
        Err(DataError::CacheKeyMismatch { mismatch, .. }) => {
            origin = CacheOrigin::Rebuilt { mismatch };
        }
        Err(_) => {}
    }
    if !ranges_in(dir).map_err(|e| e.to_string())?.is_empty() {
        return build_ranges_and_join(dir, key, count, chunk, origin, &mut encode);
    }
    if matches!(origin, CacheOrigin::Rebuilt { .. }) {
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut writer = match LatentCacheWriter::create(dir, key.clone(), chunk.max(1)) {
        Ok(w) => w,
        // An unfinished cache with another key: start over.
        Err(DataError::CacheKeyMismatch { mismatch, .. }) => {
            std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            origin = CacheOrigin::Rebuilt { mismatch };
            LatentCacheWriter::create(dir, key.clone(), chunk.max(1)).map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    let done = writer.len();
    if let CacheOrigin::Built { resumed_at } = &mut origin {
        *resumed_at = done;
    }
    let mut start = done;
    while start < count {
        let n = chunk.min(count - start);
        let (latents, text) = encode(start, n)?;
        push_chunk(&mut writer, dir, key, start, n, &latents, &text)?;
        start += n;
    }
    writer.finish().map_err(|e| e.to_string())?;
    let cache = LatentCache::open(dir, key).map_err(|e| e.to_string())?;
    Ok((cache, origin))
}

/// Builds examples `range` of the cache in `dir` as a part of it of their own
/// ([`range_dir`]; an array task's share), resuming an unfinished part and replacing one built
/// with another key; returns how many examples were stored already.
pub fn build_range(
    dir: &Path,
    key: &CacheKey,
    range: Range<usize>,
    chunk: usize,
    encode: &mut impl FnMut(usize, usize) -> Result<EncodedChunk, String>,
) -> Result<usize, String> {
    if range.is_empty() {
        return Ok(0);
    }
    let part = range_dir(dir, &range);
    if LatentCache::open(&part, key).is_ok_and(|c| c.len() == range.len()) {
        return Ok(range.len());
    }
    let create = || LatentCacheWriter::create(&part, key.clone(), chunk.max(1));
    let mut writer = match create() {
        Ok(w) => w,
        // Another key, or finished with another count: this range starts over.
        Err(DataError::CacheKeyMismatch { .. } | DataError::Cache { .. }) => {
            std::fs::remove_dir_all(&part).map_err(|e| format!("{}: {e}", part.display()))?;
            create().map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    let done = writer.len();
    let mut start = range.start + done;
    while start < range.end {
        let n = chunk.min(range.end - start);
        let (latents, text) = encode(start, n)?;
        push_chunk(&mut writer, &part, key, start, n, &latents, &text)?;
        start += n;
    }
    writer.finish().map_err(|e| e.to_string())?;
    Ok(done)
}

/// The rest of a cache built in ranges: ranges of another key are dropped, those missing
/// (gaps, a failed array task) or unfinished are built here, then all are joined; a stale
/// joined manifest is replaced.
fn build_ranges_and_join(
    dir: &Path,
    key: &CacheKey,
    count: usize,
    chunk: usize,
    origin: CacheOrigin,
    encode: &mut impl FnMut(usize, usize) -> Result<EncodedChunk, String>,
) -> Result<(LatentCache, CacheOrigin), String> {
    let io = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
    // What a one-process build (or a join for another key) left at the top is not reused.
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_file() && (name == ldmscale_data::cache::MANIFEST || name.starts_with("shard-"))
        {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    for range in ranges_in(dir).map_err(|e| e.to_string())? {
        let part = range_dir(dir, &range);
        if let Err(DataError::CacheKeyMismatch { .. }) =
            LatentCacheWriter::create(&part, key.clone(), chunk.max(1))
        {
            std::fs::remove_dir_all(&part).map_err(|e| io(&part, e))?;
        }
    }
    let mut todo = Vec::new();
    for range in ranges_in(dir).map_err(|e| e.to_string())? {
        let at = todo.last().map_or(0, |r: &Range<usize>| r.end);
        if range.start < at || range.end > count {
            return Err(format!(
                "{}: range {range:?} overlaps the ranges before it or passes {count} examples \
                 (array tasks of another --shard count?); delete the range-* folders to rebuild",
                dir.display()
            ));
        }
        if range.start > at {
            todo.push(at..range.start);
        }
        todo.push(range);
    }
    let at = todo.last().map_or(0, |r| r.end);
    if at < count {
        todo.push(at..count);
    }
    let mut resumed_at = 0;
    for range in todo {
        resumed_at += build_range(dir, key, range, chunk, encode)?;
    }
    let cache = LatentCache::join(dir, key, count).map_err(|e| e.to_string())?;
    Ok(match origin {
        CacheOrigin::Built { .. } => (cache, CacheOrigin::Built { resumed_at }),
        rebuilt => (cache, rebuilt),
    })
}

/// Stores examples `start..start + n`, checking that the encoder returned `n` of each.
fn push_chunk(
    writer: &mut LatentCacheWriter,
    dir: &Path,
    key: &CacheKey,
    start: usize,
    n: usize,
    latents: &[f32],
    text: &CachedText,
) -> Result<(), String> {
    let [c, h, w] = key.latent_shape;
    let [l, d] = key.text_shape;
    let ll = c * h * w;
    let (text_ok, text_count) = match text {
        CachedText::States { states, mask } => (
            states.len() == n * l * d && mask.len() == n * l,
            format!("{} text and {} mask values", states.len(), mask.len()),
        ),
        CachedText::Tokens(rows) => (rows.len() == n, format!("{} token rows", rows.len())),
    };
    if latents.len() != n * ll || !text_ok {
        return Err(format!(
            "{}: the encoder returned {} latent values and {text_count} for {n} examples of {:?} / {:?}",
            dir.display(),
            latents.len(),
            key.latent_shape,
            key.text_shape
        ));
    }
    for i in 0..n {
        let id = (start + i).to_string();
        let latent = &latents[i * ll..(i + 1) * ll];
        match text {
            CachedText::States { states, mask } => writer.push(
                &id,
                latent,
                &states[i * l * d..(i + 1) * l * d],
                &mask[i * l..(i + 1) * l],
            ),
            CachedText::Tokens(rows) => writer.push_tokens(&id, latent, &rows[i]),
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// [`open_or_build`] over `set`, read in order by one stream opened where the build stands (past
/// the shards an interrupted build stored), never held whole: `encode` turns each chunk of
/// examples into latents, text states and mask.
pub fn open_or_build_streamed(
    dir: &Path,
    key: &CacheKey,
    set: &CaptionedSet,
    chunk: usize,
    encode: impl FnMut(&Captioned) -> Result<EncodedChunk, String>,
) -> Result<(LatentCache, CacheOrigin), String> {
    open_or_build(dir, key, set.len(), chunk, streamed(set, chunk, encode))
}

/// [`build_range`] over `set`, read by one stream opened where the range's build stands.
pub fn build_range_streamed(
    dir: &Path,
    key: &CacheKey,
    set: &CaptionedSet,
    range: Range<usize>,
    chunk: usize,
    encode: impl FnMut(&Captioned) -> Result<EncodedChunk, String>,
) -> Result<usize, String> {
    build_range(dir, key, range, chunk, &mut streamed(set, chunk, encode))
}

/// `encode(start, n)` over `set`'s examples, read in order by a stream opened at the first
/// `start` asked for, and again wherever a call does not follow the one before (the next
/// range of a cache built in ranges).
fn streamed(
    set: &CaptionedSet,
    chunk: usize,
    mut encode: impl FnMut(&Captioned) -> Result<EncodedChunk, String>,
) -> impl FnMut(usize, usize) -> Result<EncodedChunk, String> {
    let mut stream: Option<(usize, CaptionedStream)> = None;
    move |start, n| {
        let (next, s) = match &mut stream {
            Some((next, s)) if *next == start => (next, s),
            _ => {
                let opened = set.stream(start, chunk).map_err(|e| e.to_string())?;
                let (next, s) = stream.insert((start, opened));
                (next, s)
            }
        };
        let part = s.take_examples(n).map_err(|e| e.to_string())?;
        if part.len() != n {
            return Err(format!(
                "the training set ended at example {} of {}",
                start + part.len(),
                set.len()
            ));
        }
        *next = start + n;
        encode(&part)
    }
}

/// Each caption's token ids as `tokenizer` makes them (special tokens included, padding cut).
pub fn token_rows(tokenizer: &TextTokenizer, captions: &[String]) -> Result<Vec<Vec<u32>>, String> {
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let tokens = tokenizer.tokenize(&refs).map_err(|e| e.to_string())?;
    Ok((0..tokens.batch)
        .map(|i| {
            let mask = &tokens.mask[i * tokens.len..(i + 1) * tokens.len];
            // The mask is a prefix of ones: the tokenizer pads on the right.
            let real = mask.iter().filter(|&&m| m != 0).count();
            tokens.row(i)[..real].to_vec()
        })
        .collect())
}

/// A latent cache seen as training data, with the null caption's states beside it.
pub struct CachedTrainingData {
    /// The cache.
    pub cache: LatentCache,
    /// Null caption states `[L, D]`.
    pub null: Vec<f32>,
    /// What a checkpoint records as its data.
    pub key: String,
    /// The frozen text encoder, for a cache of token ids (None for a cache of states).
    pub encoder: Option<TextEncoding>,
}

/// The frozen text encoder a token-id cache's batches are encoded by, on each device a batch
/// is asked for (a copy per device, made at the first batch there).
pub struct TextEncoding {
    tokenizer: TextTokenizer,
    copies: Mutex<Vec<(Device, TextModel)>>,
}

impl TextEncoding {
    /// `encoder` (on `device`) over ids padded as `tokenizer` pads.
    pub fn new(tokenizer: TextTokenizer, encoder: TextModel, device: &Device) -> Self {
        TextEncoding {
            tokenizer,
            copies: Mutex::new(vec![(device.clone(), encoder)]),
        }
    }

    /// States `[B, length, D]` and mask `[B, length]` of captions' token ids, on `device`.
    fn encode(&self, rows: &[Vec<u32>], length: usize, device: &Device) -> (Tensor<3>, Tensor<2>) {
        let encoder = {
            let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
            match copies.iter().find(|(d, _)| d == device) {
                Some((_, e)) => e.clone(),
                None => {
                    let moved = copies[0].1.clone().to_device(device);
                    copies.push((device.clone(), moved.clone()));
                    moved
                }
            }
        };
        encode_tokens(&self.tokenizer, &encoder, rows, length, device)
    }
}

impl CachedTrainingData {
    /// Latents `[B, C, h, w]`, text states `[B, L, D]` and mask `[B, L]` of examples
    /// `indices`: the states as stored, or (a token-id cache) encoded now on `device`.
    pub fn read(
        &self,
        indices: &[usize],
        device: &Device,
    ) -> Result<(Tensor<4>, Tensor<3>, Tensor<2>), String> {
        let b = self.cache.batch(indices).map_err(|e| e.to_string())?;
        let [c, h, w] = self.latent_shape();
        let [l, d] = self.context_shape();
        let n = indices.len();
        let latents = Tensor::from_data(TensorData::new(b.latents, [n, c, h, w]), device);
        let (states, mask) = match (b.text, &self.encoder) {
            (CachedText::States { states, mask }, _) => {
                let mask: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
                (
                    Tensor::from_data(TensorData::new(states, [n, l, d]), device),
                    Tensor::from_data(TensorData::new(mask, [n, l]), device),
                )
            }
            (CachedText::Tokens(rows), Some(encoder)) => encoder.encode(&rows, l, device),
            (CachedText::Tokens(_), None) => {
                return Err(format!(
                    "the latent cache of {} holds token ids, and no text encoder was given to encode them",
                    self.key
                ));
            }
        };
        Ok((latents, states, mask))
    }

    /// Text states `[B, L, D]` and mask `[B, L]` of examples `indices` (see [`Self::read`]).
    pub fn text(
        &self,
        indices: &[usize],
        device: &Device,
    ) -> Result<(Tensor<3>, Tensor<2>), String> {
        self.read(indices, device)
            .map(|(_, states, mask)| (states, mask))
    }
}

impl TrainingData for CachedTrainingData {
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn latent_shape(&self) -> [usize; 3] {
        self.cache.key().latent_shape
    }
    fn context_shape(&self) -> [usize; 2] {
        self.cache.key().text_shape
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>), String> {
        self.read(indices, device)
            .map(|(latents, states, _)| (latents, states))
    }
    fn null_context(&self, device: &Device) -> Tensor<3> {
        let [l, d] = self.context_shape();
        Tensor::from_data(TensorData::new(self.null.clone(), [1, l, d]), device)
    }
    fn key(&self) -> String {
        self.key.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldmscale_data::{Crop, StorageDtype, TextStorage, TokenDtype};
    use ldmscale_model::text::{TextConditioner, TextEncoder, TinyTextSpec, tiny_text_conditioner};
    use ldmscale_pipeline::{encode_text, values};
    use ldmscale_train::{TrainConfig, checkpoint, train};

    fn key(resolution: u32, vae_hash: &str) -> CacheKey {
        CacheKey {
            dataset: "shapes".into(),
            split: "train".into(),
            resolution: [resolution, resolution],
            crop: Crop::Center,
            image_encoder: "kl".into(),
            image_encoder_hash: vae_hash.into(),
            text_encoder: "tiny".into(),
            text_encoder_hash: "t".into(),
            latent_shape: [2, 2, 2],
            text_shape: [3, 2],
            scaling_factor: 1.0,
            dtype: StorageDtype::F32,
            text_storage: None,
        }
    }

    /// A fake encoder: example i's values are all i (so reads can be checked).
    fn fake(calls: &mut usize) -> impl FnMut(usize, usize) -> Result<EncodedChunk, String> + '_ {
        move |start, n| {
            *calls += n;
            let v = |per: usize| {
                (start..start + n)
                    .flat_map(|i| std::iter::repeat_n(i as f32, per))
                    .collect::<Vec<f32>>()
            };
            let mask = vec![1u8; n * 3];
            Ok((v(8), CachedText::States { states: v(6), mask }))
        }
    }

    #[test]
    fn built_once_reused_and_rebuilt_for_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latents");
        let mut calls = 0;
        let (cache, origin) = open_or_build(&path, &key(16, "a"), 10, 4, fake(&mut calls)).unwrap();
        assert_eq!(origin, CacheOrigin::Built { resumed_at: 0 });
        assert_eq!((cache.len(), calls), (10, 10));
        let data = CachedTrainingData {
            cache,
            null: vec![0.0; 6],
            key: "k".into(),
            encoder: None,
        };
        let (l, t) = data.batch(&[7, 2], &Device::flex()).unwrap();
        assert_eq!(l.dims(), [2, 2, 2, 2]);
        let v = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        assert_eq!((v[0], v[6]), (7.0, 2.0));

        // Same key: nothing encoded.
        let mut again = 0;
        let (_, origin) = open_or_build(&path, &key(16, "a"), 10, 4, fake(&mut again)).unwrap();
        assert_eq!((origin, again), (CacheOrigin::Reused, 0));

        // Another resolution or autoencoder: rebuilt, naming the field.
        let mut other = 0;
        let (_, origin) = open_or_build(&path, &key(32, "b"), 10, 4, fake(&mut other)).unwrap();
        match origin {
            CacheOrigin::Rebuilt { mismatch } => {
                assert!(mismatch.contains("resolution"), "{mismatch}");
                assert!(mismatch.contains("image_encoder_hash"), "{mismatch}");
            }
            o => panic!("expected a rebuild, got {o:?}"),
        }
        assert_eq!(other, 10);
        // And the old key is now the mismatching one.
        assert!(LatentCache::open(&path, &key(16, "a")).is_err());
    }

    /// A fake encoder of images: each example's first pixel values as its latent and states.
    fn pixels(part: &Captioned) -> Result<EncodedChunk, String> {
        let per = part.images.len() / part.len();
        let take = |k: usize| -> Vec<f32> {
            part.images
                .chunks(per)
                .flat_map(|image| image[..k].to_vec())
                .collect()
        };
        let mask = vec![1u8; part.len() * 3];
        Ok((
            take(8),
            CachedText::States {
                states: take(6),
                mask,
            },
        ))
    }

    /// A streamed build abandoned midway (the encoder fails on its second chunk, after a stray
    /// shard file was left as by a crash before the manifest was written) is never readable as a
    /// cache, and resumes to exactly what one uninterrupted build writes.
    #[test]
    fn an_abandoned_streamed_build_resumes_to_the_same_cache() {
        let set = CaptionedSet::open("shapes", 16, ldmscale_data::Split::Train, 10).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latents");
        let mut chunks = 0;
        let abandoned = open_or_build_streamed(&path, &key(16, "a"), &set, 4, |part| {
            chunks += 1;
            if chunks == 2 {
                return Err("killed".into());
            }
            pixels(part)
        });
        assert!(abandoned.is_err());
        std::fs::write(path.join("shard-00001.safetensors"), b"half a shard").unwrap();
        let err = LatentCache::open(&path, &key(16, "a")).err().unwrap();
        assert!(err.to_string().contains("incomplete"), "{err}");
        let (resumed, origin) =
            open_or_build_streamed(&path, &key(16, "a"), &set, 4, pixels).unwrap();
        assert_eq!(origin, CacheOrigin::Built { resumed_at: 4 });
        let fresh_dir = tempfile::tempdir().unwrap();
        let (fresh, _) =
            open_or_build_streamed(fresh_dir.path(), &key(16, "a"), &set, 4, pixels).unwrap();
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(resumed.batch(&all).unwrap(), fresh.batch(&all).unwrap());
    }

    /// Captions of varied lengths and a tiny text encoder over their words.
    fn captions_and_encoder() -> (Vec<String>, TextConditioner) {
        let captions: Vec<String> = [
            "a red circle",
            "a big blue square on the left of a small green triangle",
            "green",
            "two red squares",
            "a blue triangle above a red circle",
            "a small circle",
            "a red square on the right",
            "blue",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect();
        let spec = TinyTextSpec {
            min_count: 1,
            ..TinyTextSpec::default()
        };
        let conditioner = tiny_text_conditioner(&captions, &spec, &Device::flex()).unwrap();
        (captions, conditioner)
    }

    /// The training data of `captions` with fixed latents, their text kept as `storage`.
    fn cached(
        dir: &Path,
        captions: &[String],
        text: &TextConditioner,
        storage: Option<TextStorage>,
    ) -> CachedTrainingData {
        let device = Device::flex();
        let length = text.encoder.max_positions().min(32);
        let mut k = key(16, "a");
        k.latent_shape = [4, 8, 8];
        k.text_shape = [length, text.encoder.hidden_size()];
        k.text_storage = storage;
        let (cache, _) = open_or_build(dir, &k, captions.len(), 3, |start, n| {
            let latents = (start * 256..(start + n) * 256)
                .map(|i| ((i as f32) * 0.37).sin())
                .collect();
            let part = &captions[start..start + n];
            let text = match k.text() {
                TextStorage::Tokens { .. } => {
                    CachedText::Tokens(token_rows(&text.tokenizer, part)?)
                }
                TextStorage::States { .. } => {
                    let s = encode_text(text, part, length, &device).map_err(|e| e.to_string())?;
                    let mask = s.mask.iter().map(|&m| (m > 0.5) as u8).collect();
                    CachedText::States {
                        states: s.states,
                        mask,
                    }
                }
            };
            Ok((latents, text))
        })
        .unwrap();
        let null = encode_text(text, &[String::new()], length, &device).unwrap();
        let encoder = matches!(k.text(), TextStorage::Tokens { .. })
            .then(|| TextEncoding::new(text.tokenizer.clone(), text.encoder.clone(), &device));
        CachedTrainingData {
            cache,
            null: null.states,
            key: "captions".into(),
            encoder,
        }
    }

    fn token_ids(text: &TextConditioner) -> Option<TextStorage> {
        Some(TextStorage::Tokens {
            tokens: text.tokenizer.max_length(),
            ids: TokenDtype::U16,
        })
    }

    fn train_config(steps: u64) -> TrainConfig {
        TrainConfig::from_toml(
            &format!(
                "steps = {steps}\nbatch_size = 2\nlearning_rate = 1e-3\nwarmup_steps = 1\n\
                 checkpoint_every = 2\nkeep_last = 2\n[model]\nfamily = \"small\"\nwidth = 8\n\
                 heads = 2\nnorm_groups = 4\n"
            ),
            "test",
        )
        .unwrap()
    }

    fn losses(run: &Path) -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    }

    /// Token ids encoded as batches are read give the states a states cache stored (to float
    /// rounding: a batch pads to its own longest caption), and a run trained from either has
    /// the same losses to 1e-5.
    #[test]
    fn training_from_token_ids_matches_training_from_states() {
        let (captions, text) = captions_and_encoder();
        let dir = tempfile::tempdir().unwrap();
        let states = cached(&dir.path().join("s"), &captions, &text, None);
        let ids = cached(&dir.path().join("t"), &captions, &text, token_ids(&text));
        let device = Device::flex();
        let pick = [1, 2, 7, 4];
        let (sl, ss, sm) = states.read(&pick, &device).unwrap();
        let (il, is, im) = ids.read(&pick, &device).unwrap();
        assert_eq!(values(sl), values(il));
        assert_eq!(values(sm), values(im));
        let (a, b) = (values(ss), values(is));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 1e-5, "states differ by {worst}");

        let (run_s, run_i) = (dir.path().join("run-s"), dir.path().join("run-i"));
        train(&train_config(4), &states, &run_s, &device, false).unwrap();
        train(&train_config(4), &ids, &run_i, &device, false).unwrap();
        let (ls, li) = (losses(&run_s), losses(&run_i));
        assert_eq!(ls.len(), 4);
        eprintln!("token ids vs states: states {worst:e} apart at most; losses {ls:?} vs {li:?}");
        for (x, y) in ls.iter().zip(&li) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "losses {ls:?} vs {li:?}"
            );
        }
    }

    /// A run from a token-id cache stopped after a checkpoint and resumed ends with the same
    /// bits as one run straight through.
    #[test]
    fn a_token_id_run_resumes_bit_identically() {
        let (captions, text) = captions_and_encoder();
        let dir = tempfile::tempdir().unwrap();
        let ids = cached(&dir.path().join("t"), &captions, &text, token_ids(&text));
        let device = Device::flex();
        let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
        let a = train(&train_config(4), &ids, &straight, &device, false).unwrap();
        train(&train_config(2), &ids, &split, &device, false).unwrap();
        let resumed = train(&train_config(4), &ids, &split, &device, false).unwrap();
        assert_eq!(resumed.steps_run, 2, "resumed from step 2");
        assert_eq!(a.state, resumed.state);
        let last = |run: &Path| {
            let (_, dir) = checkpoint::list(run).pop().expect("a checkpoint");
            std::fs::read(dir.join("optimizer.safetensors")).unwrap()
        };
        assert_eq!(last(&straight), last(&split));
        assert_eq!(losses(&straight), losses(&split));
    }

    /// A token-id cache read without an encoder is an error, not states of zeros.
    #[test]
    fn token_ids_without_an_encoder_are_refused() {
        let (captions, text) = captions_and_encoder();
        let dir = tempfile::tempdir().unwrap();
        let mut ids = cached(dir.path(), &captions, &text, token_ids(&text));
        ids.encoder = None;
        let err = ids.read(&[0], &Device::flex()).err().unwrap();
        assert!(
            err.contains("holds token ids") && err.contains("captions"),
            "{err}"
        );
    }

    /// The shard files of a cache, in order, as bytes.
    fn shard_bytes(dir: &Path) -> Vec<Vec<u8>> {
        let text = std::fs::read_to_string(dir.join(ldmscale_data::cache::MANIFEST)).unwrap();
        let m: ldmscale_data::cache::Manifest = serde_json::from_str(&text).unwrap();
        let files = m.shards.iter().map(|s| dir.join(&s.file));
        files.map(|f| std::fs::read(f).unwrap()).collect()
    }

    /// Array tasks each build their range of the cache (2 or 3 of them: the last killed midway
    /// and left unfinished, the first never run); the run after them builds what is missing,
    /// resumes the unfinished range and joins: the same ids, values and shard bytes as one
    /// process's build.
    #[test]
    fn a_cache_built_by_array_tasks_equals_one_process_build() {
        let whole = tempfile::tempdir().unwrap();
        let mut calls = 0;
        let (one, _) = open_or_build(whole.path(), &key(16, "a"), 10, 2, fake(&mut calls)).unwrap();
        let all: Vec<usize> = (0..10).collect();
        for parts in [2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let ranges = ldmscale_data::split_ranges(10, 2, parts);
            let last = ranges.last().unwrap().clone();
            let mut failing = |start: usize, n: usize| {
                if start == last.start + 2 {
                    return Err("killed".to_string());
                }
                fake(&mut 0)(start, n)
            };
            let killed = build_range(dir.path(), &key(16, "a"), last.clone(), 2, &mut failing);
            assert!(killed.is_err());
            // The middle task (3 parts) ran; the first never did.
            let middle: usize = ranges[1..parts - 1].iter().map(|r| r.len()).sum();
            for r in &ranges[1..parts - 1] {
                build_range(dir.path(), &key(16, "a"), r.clone(), 2, &mut fake(&mut 0)).unwrap();
            }
            let mut rest = 0;
            let (joined, origin) =
                open_or_build(dir.path(), &key(16, "a"), 10, 2, fake(&mut rest)).unwrap();
            assert_eq!(
                origin,
                CacheOrigin::Built {
                    resumed_at: 2 + middle
                }
            );
            assert_eq!(
                rest,
                10 - 2 - middle,
                "{parts} parts: only what was missing"
            );
            assert_eq!(joined.batch(&all).unwrap(), one.batch(&all).unwrap());
            assert_eq!(shard_bytes(dir.path()), shard_bytes(whole.path()));
            // And then it is a finished cache.
            let (_, origin) =
                open_or_build(dir.path(), &key(16, "a"), 10, 2, fake(&mut 0)).unwrap();
            assert_eq!(origin, CacheOrigin::Reused);
        }
    }

    /// Ranges streamed from the training set (each stream opened at its range) and joined equal
    /// one streamed build; ranges of another key are dropped and built again.
    #[test]
    fn streamed_ranges_join_to_the_streamed_build() {
        let set = CaptionedSet::open("shapes", 16, ldmscale_data::Split::Train, 10).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let (one, _) =
            open_or_build_streamed(fresh.path(), &key(16, "a"), &set, 4, pixels).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ranges = ldmscale_data::split_ranges(10, 4, 2);
        build_range_streamed(
            dir.path(),
            &key(16, "b"),
            &set,
            ranges[0].clone(),
            4,
            pixels,
        )
        .unwrap();
        build_range_streamed(
            dir.path(),
            &key(16, "a"),
            &set,
            ranges[1].clone(),
            4,
            pixels,
        )
        .unwrap();
        let (joined, origin) =
            open_or_build_streamed(dir.path(), &key(16, "a"), &set, 4, pixels).unwrap();
        assert_eq!(
            origin,
            CacheOrigin::Built {
                resumed_at: ranges[1].len()
            }
        );
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(joined.batch(&all).unwrap(), one.batch(&all).unwrap());
    }

    #[test]
    fn an_interrupted_encoding_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latents");
        let mut calls = 0;
        let mut failing = |start: usize, n: usize| {
            if start >= 4 {
                return Err("killed".to_string());
            }
            fake(&mut calls)(start, n)
        };
        assert!(open_or_build(&path, &key(16, "a"), 10, 4, &mut failing).is_err());
        let mut rest = 0;
        let (cache, origin) = open_or_build(&path, &key(16, "a"), 10, 4, fake(&mut rest)).unwrap();
        assert_eq!(origin, CacheOrigin::Built { resumed_at: 4 });
        assert_eq!((cache.len(), rest), (10, 6));
    }
}
