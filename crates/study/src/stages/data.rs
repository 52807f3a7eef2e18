//! Stage 1: the training and held-out examples, decoded into memory.

use std::path::Path;

use ldmscale_data::{Captioned, DatasetSpec, Split, load_captioned};

use crate::config::StudyConfig;
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::stage::{Estimate, Stage};

/// The examples of both splits.
pub struct Splits {
    /// Training examples.
    pub train: Captioned,
    /// Held-out examples: the FID reference set and the evaluation prompts.
    pub val: Captioned,
}

/// Loads the splits (cheap and deterministic: done again on every run, never stored).
pub struct Data;

/// What the examples depend on.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    Fingerprint::of(
        "data",
        &(
            &config.dataset,
            config.resolution,
            config.train_examples,
            config.val_examples,
        ),
    )
}

impl Stage for Data {
    type Output = Splits;
    const NAME: &'static str = "data";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<Splits>, StudyError> {
        self.run(cx).map(Some)
    }

    fn run(&self, cx: &StudyContext) -> Result<Splits, StudyError> {
        let c = cx.config;
        tracing::info!("data: {} at {}x{}", c.dataset, c.resolution, c.resolution);
        let dataset = c.dataset.to_string();
        Ok(Splits {
            train: load_captioned(&dataset, c.resolution, Split::Train, c.train_examples)?,
            val: load_captioned(&dataset, c.resolution, Split::Val, c.val_examples)?,
        })
    }
}

/// The dataset's files that are missing.
pub fn estimate(config: &StudyConfig) -> Estimate {
    let mut e = Estimate::default();
    let inputs: Vec<(&Path, &str)> = match &config.dataset {
        DatasetSpec::Coco {
            annotations,
            images,
            ..
        } => vec![
            (annotations, "the COCO captions json"),
            (images, "the COCO image folder"),
        ],
        DatasetSpec::Folder { path } => vec![(path, "the image folder")],
        _ => Vec::new(),
    };
    for (path, what) in inputs.into_iter().filter(|(p, _)| !p.exists()) {
        e.problems
            .push(format!("dataset: {path:?} does not exist ({what})"));
    }
    e.lines.push(format!(
        "data: {} at {}x{}, {} train / {} val examples",
        config.dataset,
        config.resolution,
        config.resolution,
        config.train_examples,
        config.val_examples
    ));
    e
}
