//! Seeded, resumable batching. The order of examples is a pure function of (seed, epoch), and
//! the whole state of a run through the data is a [`Cursor`] (epoch, position), which is
//! serialisable: save it with a checkpoint, resume with it, and the following batches are
//! identical to those an uninterrupted run would have seen, augmentations included.

use ldmscale_util::permutation::{Permutation, SHUFFLED_IN_MEMORY_MAX};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Example, Skipped};
use crate::error::DataError;
use crate::rng::{SplitMix64, hash_u64s};
use crate::transform::Transform;

/// Where a run through the data stands: the next example is at `position` of epoch `epoch`'s
/// order. Infinite datasets stay in epoch 0 and `position` is the example index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Examples consumed in the current pass (loaded or skipped).
    pub position: u64,
}

/// Produces example indices in a seeded per-epoch order.
#[derive(Clone, Debug)]
pub struct Sampler {
    len: Option<usize>,
    seed: u64,
    shuffle: bool,
    cursor: Cursor,
    order: Option<(u64, Vec<usize>)>,
}

impl Sampler {
    /// A sampler over `len` examples (`None`: infinite, taken in index order), starting at
    /// `cursor`. With `shuffle`, each epoch is a permutation drawn from (seed, epoch).
    pub fn new(
        len: Option<usize>,
        seed: u64,
        shuffle: bool,
        cursor: Cursor,
    ) -> Result<Self, DataError> {
        if let Some(n) = len {
            if n == 0 {
                return Err(DataError::Empty {
                    dataset: "sampler".into(),
                    detail: ": nothing to batch".into(),
                });
            }
            if cursor.position >= n as u64 {
                return Err(DataError::Spec {
                    spec: format!("cursor {cursor:?}"),
                    message: format!("position past the end of a dataset of {n} examples"),
                });
            }
        } else if cursor.epoch != 0 {
            return Err(DataError::Spec {
                spec: format!("cursor {cursor:?}"),
                message: "an infinite dataset has only epoch 0".into(),
            });
        }
        Ok(Sampler {
            len,
            seed,
            shuffle,
            cursor,
            order: None,
        })
    }

    /// Where the next index comes from.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The order of epoch `epoch` (a finite dataset's indices) of a set shuffled in memory.
    pub fn epoch_order(len: usize, seed: u64, shuffle: bool, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..len).collect();
        if shuffle {
            SplitMix64::new(hash_u64s(&[seed, epoch, 0x5348_5546])).shuffle(&mut order);
        }
        order
    }

    /// The next index and the cursor it was taken at; advances.
    pub fn next_index(&mut self) -> (usize, Cursor) {
        let at = self.cursor;
        let index = match self.len {
            None => {
                self.cursor.position += 1;
                at.position as usize
            }
            Some(n) => {
                let index = self.index_in_epoch(n, at);
                self.cursor.position += 1;
                if self.cursor.position == n as u64 {
                    self.cursor = Cursor {
                        epoch: at.epoch + 1,
                        position: 0,
                    };
                }
                index
            }
        };
        (index, at)
    }

    /// The index at `at` of an epoch of `n`: the position itself unshuffled, else from the
    /// epoch's order held in memory, or past [`SHUFFLED_IN_MEMORY_MAX`] from its
    /// [`Permutation`] (no order held).
    fn index_in_epoch(&mut self, n: usize, at: Cursor) -> usize {
        if !self.shuffle {
            return at.position as usize;
        }
        if n > SHUFFLED_IN_MEMORY_MAX {
            let key = hash_u64s(&[self.seed, at.epoch, 0x5045_524D]);
            return Permutation::new(n as u64, key).at(at.position) as usize;
        }
        let stale = self.order.as_ref().is_none_or(|(e, _)| *e != at.epoch);
        if stale {
            let order = Self::epoch_order(n, self.seed, self.shuffle, at.epoch);
            self.order = Some((at.epoch, order));
        }
        self.order.as_ref().expect("order set above").1[at.position as usize]
    }

    /// The next `count` indices.
    pub fn next_indices(&mut self, count: usize) -> Vec<usize> {
        (0..count).map(|_| self.next_index().0).collect()
    }
}

/// Batching settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Seed of the shuffle and of the transform's random choices.
    pub seed: u64,
    /// Shuffle each epoch (finite datasets; infinite ones are taken in index order).
    pub shuffle: bool,
    /// Threads decoding in parallel; 0 uses every core.
    #[serde(default)]
    pub workers: usize,
}

/// One batch of transformed examples.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The examples, all of the transform's size.
    pub examples: Vec<Example>,
    /// Each example's dataset index.
    pub indices: Vec<usize>,
    /// Examples that failed to load while filling this batch (each also logged as a warning).
    pub skipped: Vec<Skipped>,
    /// The cursor this batch started at.
    pub start: Cursor,
    /// The cursor after it: resuming here continues with the next batch.
    pub end: Cursor,
}

impl Batch {
    /// Images as `[B, 3, H, W]` floats in [-1, 1], batch-major.
    pub fn images_chw_f32(&self) -> Vec<f32> {
        self.examples
            .iter()
            .flat_map(|e| e.image.to_chw_f32())
            .collect()
    }

    /// The captions, in batch order.
    pub fn captions(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.caption.as_str()).collect()
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// True for an empty batch (never produced by the loader).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}

/// Loads, transforms and batches a dataset in a seeded, resumable order. Examples that fail
/// to load (an unreadable image, a missing file) are skipped with a warning and reported in
/// [`Batch::skipped`]; the batch is filled from the following ones, so every batch is full.
pub struct BatchLoader<D> {
    dataset: D,
    transform: Transform,
    config: LoaderConfig,
    sampler: Sampler,
}

/// Reads example `index` and transforms it with the random key of (seed, epoch, index), so
/// its augmentation does not depend on which thread or batch loads it.
pub(crate) fn load_example<D: Dataset + ?Sized>(
    dataset: &D,
    transform: &Transform,
    seed: u64,
    index: usize,
    at: Cursor,
) -> Result<Example, DataError> {
    let mut example = dataset.get(index)?;
    let key = hash_u64s(&[seed, at.epoch, index as u64]);
    example.image = transform.apply(&example.image, key);
    Ok(example)
}

/// Consecutive failures after which an infinite dataset is declared broken.
const MAX_CONSECUTIVE_FAILURES: usize = 10_000;

impl<D: Dataset> BatchLoader<D> {
    /// A loader from the start of the data.
    pub fn new(dataset: D, transform: Transform, config: LoaderConfig) -> Result<Self, DataError> {
        Self::resume(dataset, transform, config, Cursor::default())
    }

    /// A loader continuing at `cursor` (from [`BatchLoader::cursor`] or [`Batch::end`]).
    pub fn resume(
        dataset: D,
        transform: Transform,
        config: LoaderConfig,
        cursor: Cursor,
    ) -> Result<Self, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::Spec {
                spec: "batch_size = 0".into(),
                message: "a batch needs at least one example".into(),
            });
        }
        let sampler = Sampler::new(dataset.len(), config.seed, config.shuffle, cursor).map_err(
            |e| match e {
                DataError::Empty { .. } => DataError::Empty {
                    dataset: dataset.name(),
                    detail: ": nothing to batch".into(),
                },
                other => other,
            },
        )?;
        Ok(BatchLoader {
            dataset,
            transform,
            config,
            sampler,
        })
    }

    /// Where the next batch starts; save it to resume.
    pub fn cursor(&self) -> Cursor {
        self.sampler.cursor()
    }

    /// The dataset.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    fn load(&self, index: usize, at: Cursor) -> Result<Example, DataError> {
        load_example(&self.dataset, &self.transform, self.config.seed, index, at)
    }

    /// Loads `slots` in parallel on up to `workers` threads, results in slot order.
    fn load_all(&self, slots: &[(usize, Cursor)]) -> Vec<Result<Example, DataError>> {
        let workers = match self.config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(slots.len());
        if workers <= 1 {
            return slots.iter().map(|&(i, at)| self.load(i, at)).collect();
        }
        let chunk = slots.len().div_ceil(workers);
        std::thread::scope(|scope| {
            let handles: Vec<_> = slots
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|&(i, at)| self.load(i, at))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a data loading thread panicked"))
                .collect()
        })
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Result<Batch, DataError> {
        let start = self.sampler.cursor();
        let want = self.config.batch_size;
        let mut examples = Vec::with_capacity(want);
        let mut indices = Vec::with_capacity(want);
        let mut skipped = Vec::new();
        let mut failures_in_a_row = 0usize;
        let limit = self.dataset.len().unwrap_or(MAX_CONSECUTIVE_FAILURES);
        while examples.len() < want {
            let slots: Vec<(usize, Cursor)> = (examples.len()..want)
                .map(|_| self.sampler.next_index())
                .collect();
            for ((index, _), result) in slots.iter().zip(self.load_all(&slots)) {
                match result {
                    Ok(example) => {
                        examples.push(example);
                        indices.push(*index);
                        failures_in_a_row = 0;
                    }
                    Err(e) if e.is_per_example() => {
                        let what = self
                            .dataset
                            .id(*index)
                            .unwrap_or_else(|_| format!("index {index}"));
                        skipped.push(Skipped::warn(what, e.to_string()));
                        failures_in_a_row += 1;
                        if failures_in_a_row >= limit {
                            return Err(DataError::Empty {
                                dataset: self.dataset.name(),
                                detail: format!(
                                    ": {failures_in_a_row} examples in a row failed to load, \
                                     the last: {e}"
                                ),
                            });
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Batch {
            examples,
            indices,
            skipped,
            start,
            end: self.sampler.cursor(),
        })
    }
}

impl<D: Dataset> Iterator for BatchLoader<D> {
    type Item = Result<Batch, DataError>;

    /// Never ends: epochs follow one another.
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_batch())
    }
}
