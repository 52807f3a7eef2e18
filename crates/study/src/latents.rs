//! The study's training set on disk: the first stage's latents and the text encoder's states in
//! a [`LatentCache`], written once and read by every width's training (and by a resumed study,
//! which then encodes nothing).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_data::{CacheKey, Captioned, CaptionedSet, DataError, LatentCache, LatentCacheWriter};
use ldmscale_train::TrainingData;

/// Encoded examples `start..start + count`: latents `[count, C, h, w]`, text states
/// `[count, L, D]`, masks `[count, L]` (non-zero = real token).
pub type EncodedChunk = (Vec<f32>, Vec<f32>, Vec<u8>);

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
/// differing fields; an interrupted encoding resumes at its last whole shard.
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
    let [c, h, w] = key.latent_shape;
    let [l, d] = key.text_shape;
    let mut start = done;
    while start < count {
        let n = chunk.min(count - start);
        let (latents, states, mask) = encode(start, n)?;
        if latents.len() != n * c * h * w || states.len() != n * l * d || mask.len() != n * l {
            return Err(format!(
                "{}: the encoder returned {} latent, {} text and {} mask values for {n} examples of {:?} / {:?}",
                dir.display(),
                latents.len(),
                states.len(),
                mask.len(),
                key.latent_shape,
                key.text_shape
            ));
        }
        for i in 0..n {
            writer
                .push(
                    &(start + i).to_string(),
                    &latents[i * c * h * w..(i + 1) * c * h * w],
                    &states[i * l * d..(i + 1) * l * d],
                    &mask[i * l..(i + 1) * l],
                )
                .map_err(|e| e.to_string())?;
        }
        start += n;
    }
    writer.finish().map_err(|e| e.to_string())?;
    let cache = LatentCache::open(dir, key).map_err(|e| e.to_string())?;
    Ok((cache, origin))
}

/// [`open_or_build`] over `set`, read in order by one stream opened where the build stands (past
/// the shards an interrupted build stored), never held whole: `encode` turns each chunk of
/// examples into latents, text states and mask.
pub fn open_or_build_streamed(
    dir: &Path,
    key: &CacheKey,
    set: &CaptionedSet,
    chunk: usize,
    mut encode: impl FnMut(&Captioned) -> Result<EncodedChunk, String>,
) -> Result<(LatentCache, CacheOrigin), String> {
    let mut stream = None;
    open_or_build(dir, key, set.len(), chunk, |start, n| {
        let stream = match &mut stream {
            Some(s) => s,
            None => stream.insert(set.stream(start, chunk).map_err(|e| e.to_string())?),
        };
        let part = stream.take_examples(n).map_err(|e| e.to_string())?;
        if part.len() != n {
            return Err(format!(
                "the training set ended at example {} of {}",
                start + part.len(),
                set.len()
            ));
        }
        encode(&part)
    })
}

/// A latent cache seen as training data, with the null caption's states beside it.
pub struct CachedTrainingData {
    /// The cache.
    pub cache: LatentCache,
    /// Null caption states `[L, D]`.
    pub null: Vec<f32>,
    /// What a checkpoint records as its data.
    pub key: String,
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
        let b = self.cache.batch(indices).map_err(|e| e.to_string())?;
        let [c, h, w] = self.latent_shape();
        let [l, d] = self.context_shape();
        let n = indices.len();
        Ok((
            Tensor::from_data(TensorData::new(b.latents, [n, c, h, w]), device),
            Tensor::from_data(TensorData::new(b.text_states, [n, l, d]), device),
        ))
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
    use ldmscale_data::{Crop, StorageDtype};

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
            Ok((v(8), v(6), vec![1u8; n * 3]))
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
        Ok((take(8), take(6), vec![1u8; part.len() * 3]))
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
