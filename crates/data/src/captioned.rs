//! The first usable examples of a split, decoded and centre-cropped into memory: what the
//! study and `ldmscale train` read when a dataset is small enough to hold.

use crate::{DataError, Dataset, DatasetSpec, Split, SplitConfig, SplitDataset, Transform};

/// Captioned images of one split, as `[3, H, W]` floats in [-1, 1].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Captioned {
    /// `N x 3 x H x W` values.
    pub images: Vec<f32>,
    /// `N` captions.
    pub captions: Vec<String>,
}

impl Captioned {
    /// Examples held.
    pub fn len(&self) -> usize {
        self.captions.len()
    }

    /// Whether no example is held.
    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }

    /// Examples `start..start + count`, for images of side `res`.
    pub fn slice(&self, start: usize, count: usize, res: usize) -> Captioned {
        let per = 3 * res * res;
        Captioned {
            images: self.images[start * per..(start + count) * per].to_vec(),
            captions: self.captions[start..start + count].to_vec(),
        }
    }
}

/// The split the study holds out: 10% of every dataset, salt 0.
pub const STUDY_SPLIT: SplitConfig = SplitConfig {
    val_fraction: 0.1,
    salt: 0,
};

/// The first `count` usable examples of `split` of `dataset` at `resolution` (centre crop);
/// examples that fail to decode are skipped with a warning. `shapes` renders at `resolution`.
pub fn load_captioned(
    dataset: &str,
    resolution: usize,
    split: Split,
    count: usize,
) -> Result<Captioned, DataError> {
    let spec_text = if dataset == "shapes" {
        format!("shapes:resolution={resolution}")
    } else {
        dataset.to_string()
    };
    let spec: DatasetSpec = spec_text.parse()?;
    let data = SplitDataset::new(spec.open()?, split, STUDY_SPLIT)?;
    let transform = Transform::center(resolution as u32);
    let mut out = Captioned::default();
    let mut index = 0;
    while out.len() < count && data.len().is_none_or(|n| index < n) {
        match data.get(index) {
            Ok(ex) => {
                out.images
                    .extend(transform.apply(&ex.image, index as u64).to_chw_f32());
                out.captions.push(ex.caption);
            }
            Err(err) => tracing::warn!("{spec_text}: skipping example {index}: {err}"),
        }
        index += 1;
    }
    if out.len() < 2 {
        return Err(DataError::Empty {
            dataset: spec_text,
            detail: format!(": only {} usable {split:?} examples, 2 needed", out.len()),
        });
    }
    Ok(out)
}
