//! The dataset trait every source implements, and deterministic train/val splits.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::image::Image;
use crate::rng::{hash_str, hash_u64s};

/// One captioned image.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Stable identifier within its dataset (a file path, `coco/<image id>`, `shapes/<index>`).
    pub id: String,
    /// The picture, RGB.
    pub image: Image,
    /// Its caption.
    pub caption: String,
}

/// A random-access source of captioned images.
///
/// Indices run over `0..len()` for finite datasets and over all of `usize` for infinite
/// (procedural) ones. `get` decodes one example; `id` and `split_key` must be cheap (no image
/// decoding), because splits hash them for every index.
pub trait Dataset: Send + Sync {
    /// A short description for messages, e.g. `coco:/data/captions_val2014.json`.
    fn name(&self) -> String;

    /// The number of examples, or `None` for an infinite dataset.
    fn len(&self) -> Option<usize>;

    /// True when a finite dataset has no examples.
    fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The identifier of example `index`.
    fn id(&self, index: usize) -> Result<String, DataError>;

    /// The key that decides the example's train/val side. Examples that must stay together
    /// (several captions of one image) share it; by default it is the id.
    fn split_key(&self, index: usize) -> Result<String, DataError> {
        self.id(index)
    }

    /// Reads example `index`.
    fn get(&self, index: usize) -> Result<Example, DataError>;
}

impl<D: Dataset + ?Sized> Dataset for Box<D> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn len(&self) -> Option<usize> {
        (**self).len()
    }
    fn id(&self, index: usize) -> Result<String, DataError> {
        (**self).id(index)
    }
    fn split_key(&self, index: usize) -> Result<String, DataError> {
        (**self).split_key(index)
    }
    fn get(&self, index: usize) -> Result<Example, DataError> {
        (**self).get(index)
    }
}

impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn len(&self) -> Option<usize> {
        (**self).len()
    }
    fn id(&self, index: usize) -> Result<String, DataError> {
        (**self).id(index)
    }
    fn split_key(&self, index: usize) -> Result<String, DataError> {
        (**self).split_key(index)
    }
    fn get(&self, index: usize) -> Result<Example, DataError> {
        (**self).get(index)
    }
}

/// Checks `index` against a finite length.
pub(crate) fn check_index(name: &str, index: usize, len: usize) -> Result<(), DataError> {
    if index < len {
        Ok(())
    } else {
        Err(DataError::OutOfRange {
            dataset: name.to_string(),
            index,
            len,
        })
    }
}

/// Which side of a train/val split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Examples whose key hashes outside the validation fraction.
    Train,
    /// Examples whose key hashes inside the validation fraction.
    Val,
    /// Every example.
    All,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::All => "all",
        })
    }
}

impl std::str::FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "all" => Ok(Split::All),
            _ => Err(DataError::Spec {
                spec: s.to_string(),
                message: "split must be train, val or all".into(),
            }),
        }
    }
}

/// How examples are assigned to train and val: by a stable hash of the split key, so the
/// assignment does not depend on order, on the dataset's size, or on which examples could be
/// decoded, and a new example never moves an old one to the other side.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Fraction of keys (in expectation) that go to val, in [0, 1].
    pub val_fraction: f64,
    /// Mixed into the hash: a different salt draws a different, equally sized val set.
    #[serde(default)]
    pub salt: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            val_fraction: 0.01,
            salt: 0,
        }
    }
}

impl SplitConfig {
    /// True when `key` belongs to val.
    pub fn is_val(&self, key: &str) -> bool {
        let h = hash_u64s(&[self.salt, hash_str(key)]);
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.val_fraction
    }

    /// True when `key` belongs to `split`.
    pub fn contains(&self, split: Split, key: &str) -> bool {
        match split {
            Split::All => true,
            Split::Val => self.is_val(key),
            Split::Train => !self.is_val(key),
        }
    }

    fn validate(&self) -> Result<(), DataError> {
        if (0.0..=1.0).contains(&self.val_fraction) {
            Ok(())
        } else {
            Err(DataError::Spec {
                spec: format!("val_fraction = {}", self.val_fraction),
                message: "the validation fraction must lie in [0, 1]".into(),
            })
        }
    }
}

/// One side of a split of a dataset, itself a dataset (indices renumbered from 0).
pub struct SplitDataset<D> {
    inner: D,
    split: Split,
    config: SplitConfig,
    members: Members,
}

enum Members {
    /// Every example of the source, in order: no index held (a paper-scale source has
    /// hundreds of millions).
    All,
    /// Finite source: the member indices, in source order.
    Finite(Vec<usize>),
    /// Infinite source: members found so far by scanning source indices in order.
    Infinite(Mutex<Scan>),
}

struct Scan {
    found: Vec<usize>,
    next_source: usize,
}

/// How far an infinite-source scan may go past the last member before giving up; at any
/// fraction a split can use (>= 1e-4) the chance of a gap this long is nil.
const MAX_SCAN_GAP: usize = 10_000_000;

impl<D: Dataset> SplitDataset<D> {
    /// Selects `split` of `inner`. For a finite dataset this hashes every key once, now.
    pub fn new(inner: D, split: Split, config: SplitConfig) -> Result<Self, DataError> {
        config.validate()?;
        let members = match inner.len() {
            _ if split == Split::All => Members::All,
            Some(len) => {
                let mut found = Vec::new();
                for i in 0..len {
                    if config.contains(split, &inner.split_key(i)?) {
                        found.push(i);
                    }
                }
                Members::Finite(found)
            }
            None => {
                let side_fraction = match split {
                    Split::All => 1.0,
                    Split::Val => config.val_fraction,
                    Split::Train => 1.0 - config.val_fraction,
                };
                if side_fraction < 1e-4 {
                    return Err(DataError::Empty {
                        dataset: inner.name(),
                        detail: format!(
                            ": the {split} side of an infinite dataset needs a fraction of at \
                             least 1e-4 (val_fraction = {})",
                            config.val_fraction
                        ),
                    });
                }
                Members::Infinite(Mutex::new(Scan {
                    found: Vec::new(),
                    next_source: 0,
                }))
            }
        };
        Ok(SplitDataset {
            inner,
            split,
            config,
            members,
        })
    }

    /// The source index of member `index`.
    pub fn source_index(&self, index: usize) -> Result<usize, DataError> {
        match &self.members {
            Members::All => match self.inner.len() {
                Some(len) => check_index(&self.name(), index, len).map(|()| index),
                None => Ok(index),
            },
            Members::Finite(found) => {
                check_index(&self.name(), index, found.len())?;
                Ok(found[index])
            }
            Members::Infinite(scan) => {
                let mut scan = scan.lock().unwrap_or_else(|p| p.into_inner());
                let mut gap = 0;
                while scan.found.len() <= index {
                    let i = scan.next_source;
                    if self.config.contains(self.split, &self.inner.split_key(i)?) {
                        scan.found.push(i);
                        gap = 0;
                    } else {
                        gap += 1;
                        if gap > MAX_SCAN_GAP {
                            return Err(DataError::Empty {
                                dataset: self.name(),
                                detail: format!(": no member within {MAX_SCAN_GAP} indices"),
                            });
                        }
                    }
                    scan.next_source = i + 1;
                }
                Ok(scan.found[index])
            }
        }
    }

    /// The wrapped dataset.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Which side this is.
    pub fn split(&self) -> Split {
        self.split
    }
}

impl<D: Dataset> Dataset for SplitDataset<D> {
    fn name(&self) -> String {
        format!(
            "{} [{} split, val fraction {}, salt {}]",
            self.inner.name(),
            self.split,
            self.config.val_fraction,
            self.config.salt
        )
    }

    fn len(&self) -> Option<usize> {
        match &self.members {
            Members::All => self.inner.len(),
            Members::Finite(found) => Some(found.len()),
            Members::Infinite(_) => None,
        }
    }

    fn id(&self, index: usize) -> Result<String, DataError> {
        self.inner.id(self.source_index(index)?)
    }

    fn split_key(&self, index: usize) -> Result<String, DataError> {
        self.inner.split_key(self.source_index(index)?)
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        self.inner.get(self.source_index(index)?)
    }
}

/// An example left out, with why: an unreadable image, an image without caption, a caption
/// without image. Sources list the ones found while indexing; the batch loader lists the ones
/// that failed to load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The file, `shard.tar:member` or example id.
    pub what: String,
    /// Why it was left out.
    pub reason: String,
}

impl Skipped {
    pub(crate) fn warn(what: impl Into<String>, reason: impl Into<String>) -> Self {
        let s = Skipped {
            what: what.into(),
            reason: reason.into(),
        };
        tracing::warn!(target: "ldmscale_data", "skipping {}: {}", s.what, s.reason);
        s
    }
}
