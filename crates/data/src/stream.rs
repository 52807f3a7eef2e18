//! A split's first examples read on demand instead of held in memory: streamed in order by a
//! [`PrefetchLoader`] (background workers, at most [`PREFETCH`] batches held), or fetched by
//! index. Both see the same examples under the same indices, so a latent cache built from the
//! stream lines up with images fetched by index later.
//!
//! Unlike [`load_captioned`](crate::load_captioned), an example that fails to decode is an
//! error naming it, not skipped: skipping would shift every later index.

use std::sync::Arc;

use crate::batch::{Cursor, LoaderConfig};
use crate::captioned::{Captioned, STUDY_SPLIT};
use crate::dataset::{Dataset, Example, Split, SplitDataset, check_index};
use crate::error::DataError;
use crate::prefetch::{Extent, PrefetchLoader};
use crate::spec::DatasetSpec;
use crate::transform::Transform;

/// Batches a stream holds ahead of its consumer (queued or being decoded).
pub const PREFETCH: usize = 4;

/// Examples `0..len` of one split of a dataset at one resolution (centre crop).
#[derive(Clone)]
pub struct CaptionedSet {
    data: Arc<Prefix>,
    resolution: usize,
}

/// The first `len` examples of a dataset, as a finite dataset of its own.
struct Prefix {
    inner: SplitDataset<Box<dyn Dataset>>,
    len: usize,
}

impl Dataset for Prefix {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn len(&self) -> Option<usize> {
        Some(self.len)
    }
    fn id(&self, index: usize) -> Result<String, DataError> {
        check_index(&self.name(), index, self.len)?;
        self.inner.id(index)
    }
    fn get(&self, index: usize) -> Result<Example, DataError> {
        check_index(&self.name(), index, self.len)?;
        self.inner.get(index)
    }
}

impl CaptionedSet {
    /// The first `count` examples of `split` of `dataset` (all of a smaller finite split; fewer
    /// than 2 is an error) at `resolution`. `shapes` renders at `resolution`. Nothing is decoded.
    pub fn open(
        dataset: &str,
        resolution: usize,
        split: Split,
        count: usize,
    ) -> Result<Self, DataError> {
        let spec_text = match dataset {
            "shapes" => format!("shapes:resolution={resolution}"),
            other => other.to_string(),
        };
        let spec: DatasetSpec = spec_text.parse()?;
        let inner = SplitDataset::new(spec.open()?, split, STUDY_SPLIT)?;
        let len = inner.len().map_or(count, |n| n.min(count));
        if len < 2 {
            return Err(DataError::Empty {
                dataset: spec_text,
                detail: format!(": only {len} {split} examples, 2 needed"),
            });
        }
        Ok(CaptionedSet {
            data: Arc::new(Prefix { inner, len }),
            resolution,
        })
    }

    /// Examples in the set.
    pub fn len(&self) -> usize {
        self.data.len
    }

    /// Never true: a set holds at least two examples.
    pub fn is_empty(&self) -> bool {
        self.data.len == 0
    }

    /// Image side in pixels.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// Every example from `start` on, in order, decoded `batch` at a time ahead of the consumer.
    pub fn stream(&self, start: usize, batch: usize) -> Result<CaptionedStream, DataError> {
        check_index(&self.data.name(), start, self.len())?;
        let config = LoaderConfig {
            batch_size: batch,
            seed: 0,
            shuffle: false,
            workers: 0,
        };
        let cursor = Cursor {
            epoch: 0,
            position: start as u64,
        };
        let loader = PrefetchLoader::new(
            self.data.clone(),
            self.transform(),
            config,
            cursor,
            Extent::OnePass,
            PREFETCH,
        )?;
        Ok(CaptionedStream {
            loader,
            held: Captioned::default(),
        })
    }

    /// The examples at `indices`, decoded now, in that order.
    pub fn get(&self, indices: &[usize]) -> Result<Captioned, DataError> {
        let transform = self.transform();
        let mut out = Captioned::default();
        for &index in indices {
            let example = self.data.get(index).map_err(|e| DataError::Example {
                dataset: self.data.name(),
                id: format!("index {index}"),
                source: Box::new(e),
            })?;
            // A centre crop draws nothing: the key is unused.
            let image = transform.apply(&example.image, index as u64);
            out.images.extend(image.to_chw_f32());
            out.captions.push(example.caption);
        }
        Ok(out)
    }

    /// The first `n` examples (all of a smaller set).
    pub fn first(&self, n: usize) -> Result<Captioned, DataError> {
        let n = n.min(self.len());
        self.stream(0, n.clamp(1, 256))?.take_examples(n)
    }

    /// The first `n` captions (all of a smaller set), in order; their images are decoded on
    /// the way and dropped.
    pub fn captions(&self, n: usize) -> Result<Vec<String>, DataError> {
        let n = n.min(self.len());
        let mut out = Vec::with_capacity(n);
        for batch in self.stream(0, n.clamp(1, 64))? {
            out.extend(batch?.captions);
            if out.len() >= n {
                break;
            }
        }
        out.truncate(n);
        Ok(out)
    }

    fn transform(&self) -> Transform {
        Transform::center(self.resolution as u32)
    }
}

/// A set's examples in order, from background workers; see [`CaptionedSet::stream`].
pub struct CaptionedStream {
    loader: PrefetchLoader,
    /// Examples loaded and not yet handed out by [`CaptionedStream::take_examples`].
    held: Captioned,
}

impl CaptionedStream {
    /// The next `n` examples (fewer at the end of the set).
    pub fn take_examples(&mut self, n: usize) -> Result<Captioned, DataError> {
        while self.held.len() < n {
            match self.loader.next() {
                Some(batch) => {
                    let batch = batch?;
                    self.held.images.extend(batch.images_chw_f32());
                    self.held
                        .captions
                        .extend(batch.examples.into_iter().map(|e| e.caption));
                }
                None => break,
            }
        }
        let n = n.min(self.held.len());
        let per = self.held.images.len() / self.held.len().max(1);
        let rest = Captioned {
            images: self.held.images.split_off(n * per),
            captions: self.held.captions.split_off(n),
        };
        Ok(std::mem::replace(&mut self.held, rest))
    }
}

impl Iterator for CaptionedStream {
    type Item = Result<Captioned, DataError>;

    /// The next batch as the loader made it.
    fn next(&mut self) -> Option<Self::Item> {
        if !self.held.is_empty() {
            return Some(Ok(std::mem::take(&mut self.held)));
        }
        let batch = self.loader.next()?;
        Some(batch.map(|b| Captioned {
            images: b.images_chw_f32(),
            captions: b.examples.into_iter().map(|e| e.caption).collect(),
        }))
    }
}
