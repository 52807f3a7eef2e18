//! Stage 1: the training and evaluation examples, opened for streaming: nothing is decoded
//! here, and no stage holds a whole set in memory.

use std::path::Path;

use ldmscale_data::{CaptionedSet, DatasetSpec};

use crate::config::{DataSource, StudyConfig};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::stage::{Estimate, Stage};

/// The examples of both roles.
pub struct Splits {
    /// Training examples.
    pub train: CaptionedSet,
    /// Evaluation examples: the FID reference set and the evaluation prompts.
    pub val: CaptionedSet,
}

/// Evaluation captions any stage samples from: a cell's samples, at most the adaptive rounds'
/// cap (the first of the evaluation set, one per sample); only these are encoded.
pub fn prompts_used(config: &StudyConfig) -> usize {
    let adaptive = config.sweep.adaptive.as_ref();
    let most = adaptive.map_or(0, |a| a.max_samples_per_cell);
    config.sweep.samples_per_cell.max(most) as usize
}

/// Loads the splits (cheap and deterministic: done again on every run, never stored).
pub struct Data;

/// What the examples depend on. A single `dataset` hashes as it did before separate sources,
/// so an unchanged old config keeps every fingerprint and its study resumes.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    let sizes = (
        config.resolution,
        config.train_examples,
        config.val_examples,
    );
    match (&config.dataset, &config.train_dataset, &config.eval_dataset) {
        (Some(dataset), None, None) => {
            Fingerprint::of("data", &(dataset, sizes.0, sizes.1, sizes.2))
        }
        (shared, train, eval) => {
            Fingerprint::of("data", &(("train", train), ("eval", eval), shared, sizes))
        }
    }
}

/// The first `count` examples of `source`, opened for streaming.
pub fn load(
    source: DataSource,
    resolution: usize,
    count: usize,
) -> Result<CaptionedSet, StudyError> {
    let spec = source.spec.to_string();
    CaptionedSet::open(&spec, resolution, source.split, count).map_err(|e| StudyError::Stage {
        stage: "data",
        message: format!("{} = {spec}: {e}", source.field),
    })
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
        let [train, eval] = c.sources().map_err(StudyError::Config)?;
        tracing::info!(
            "data: {} at {}x{}",
            c.describe_data(),
            c.resolution,
            c.resolution
        );
        let splits = Splits {
            train: load(train, c.resolution, c.train_examples)?,
            val: load(eval, c.resolution, c.val_examples)?,
        };
        check_eval_size(c, eval, splits.val.len())?;
        Ok(splits)
    }
}

/// An evaluation set too small for a cell's samples (one per evaluation caption), named.
fn check_eval_size(c: &StudyConfig, eval: DataSource, held: usize) -> Result<(), StudyError> {
    let wanted = c.sweep.samples_per_cell as usize;
    if held >= wanted {
        return Ok(());
    }
    Err(StudyError::Config(format!(
        "{}: {} holds {held} evaluation examples, fewer than sweep.samples_per_cell = {wanted} \
         (one evaluation caption per sample); lower samples_per_cell or use a larger set",
        eval.field, eval
    )))
}

/// The files of `source` that are missing, each naming its config field.
fn missing_inputs(source: DataSource) -> Vec<String> {
    let inputs: Vec<(&Path, &str)> = match source.spec {
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
    let mut problems: Vec<String> = inputs
        .into_iter()
        .filter(|(p, _)| !p.exists())
        .map(|(path, what)| format!("{}: {path:?} does not exist ({what})", source.field))
        .collect();
    if let DatasetSpec::Wds { shards } = source.spec {
        match ldmscale_data::webdataset::expand_braces(shards) {
            Ok(paths) => {
                let missing: Vec<&String> =
                    paths.iter().filter(|p| !Path::new(p).exists()).collect();
                if let Some(first) = missing.first() {
                    problems.push(format!(
                        "{}: {} of {} shards of {shards} do not exist (first: {first})",
                        source.field,
                        missing.len(),
                        paths.len()
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", source.field)),
        }
    }
    problems
}

/// The datasets' files that are missing.
pub fn estimate(config: &StudyConfig) -> Estimate {
    let mut e = Estimate::default();
    match config.sources() {
        Ok([train, eval]) => {
            e.problems.extend(missing_inputs(train));
            if eval.spec != train.spec {
                e.problems.extend(missing_inputs(eval));
            }
        }
        Err(problem) => e.problems.push(problem),
    }
    e.lines.push(format!(
        "data: {} at {}x{}, {} train / {} val examples",
        config.describe_data(),
        config.resolution,
        config.resolution,
        config.train_examples,
        config.val_examples
    ));
    e
}

#[cfg(test)]
mod tests {
    use ldmscale_data::{Split, load_captioned};

    use super::*;

    /// The tiny preset's data fingerprint from before separate sources (SHA-256 of
    /// `["data",["shapes",16,256,64]]`): an old study directory still resumes.
    #[test]
    fn a_single_dataset_keeps_its_old_fingerprint() {
        let tiny = StudyConfig::preset("tiny").unwrap();
        assert_eq!(fingerprint(&tiny).as_str(), "f2c6618778806f94");
        let mut separate = tiny.clone();
        separate.train_dataset = separate.dataset.take();
        separate.eval_dataset = Some("shapes:seed=5".parse().unwrap());
        let other_eval = {
            let mut c = separate.clone();
            c.eval_dataset = Some("shapes:seed=6".parse().unwrap());
            c
        };
        let prints = [&tiny, &separate, &other_eval].map(fingerprint);
        assert!(
            prints[0] != prints[1] && prints[1] != prints[2],
            "{prints:?}"
        );
    }

    #[test]
    fn separate_sources_are_read_whole_and_apart() {
        let mut c = StudyConfig::preset("tiny").unwrap();
        c.dataset = None;
        c.train_dataset = Some("shapes:seed=1".parse().unwrap());
        c.eval_dataset = Some("shapes:seed=2".parse().unwrap());
        c.validate().unwrap();
        let [train, eval] = c.sources().unwrap();
        assert_eq!((train.split, eval.split), (Split::All, Split::All));
        let (t, e) = (load(train, 16, 6).unwrap(), load(eval, 16, 6).unwrap());
        let (t, e) = (t.first(6).unwrap(), e.first(6).unwrap());
        let whole = |spec: &str| load_captioned(spec, 16, Split::All, 6).unwrap();
        assert_eq!(t, whole("shapes:seed=1"));
        assert_eq!(e, whole("shapes:seed=2"));
        assert_ne!(t.images, e.images);
    }

    #[test]
    fn an_eval_set_smaller_than_a_cell_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..3u8 {
            let png = ldmscale_data::Image::filled(16, 16, [k * 80, 9, 99]).to_png();
            std::fs::write(dir.path().join(format!("{k}.png")), png).unwrap();
            std::fs::write(dir.path().join(format!("{k}.txt")), "a caption").unwrap();
        }
        let mut c = StudyConfig::preset("tiny").unwrap();
        c.train_dataset = c.dataset.take();
        c.eval_dataset = Some(format!("folder:{}", dir.path().display()).parse().unwrap());
        c.validate().unwrap();
        let [_, eval] = c.sources().unwrap();
        let held = load(eval, 16, c.val_examples).unwrap().len();
        let err = check_eval_size(&c, eval, held).unwrap_err().to_string();
        let expected = "holds 3 evaluation examples, fewer than sweep.samples_per_cell = 16";
        assert!(
            err.starts_with("eval_dataset: folder:") && err.contains(expected),
            "{err}"
        );
        let mut smaller = c.clone();
        smaller.sweep.samples_per_cell = 3;
        check_eval_size(&smaller, eval, held).unwrap();
        c.sweep.samples_per_cell = 65;
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("sweep.samples_per_cell: 65 is more than val_examples (64)"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_source_is_named_by_its_field() {
        let mut c = StudyConfig::preset("tiny").unwrap();
        c.dataset = None;
        c.train_dataset = Some("shapes".parse().unwrap());
        c.eval_dataset = Some("folder:/nonexistent/coco".parse().unwrap());
        let [_, eval] = c.sources().unwrap();
        let err = load(eval, 16, 4).err().unwrap().to_string();
        assert!(
            err.contains("eval_dataset = folder:/nonexistent/coco"),
            "{err}"
        );
        let problems = estimate(&c).problems;
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("eval_dataset: \"/nonexistent/coco\"")),
            "{problems:?}"
        );
        c.train_dataset = Some("wds:/nonexistent/{000..009}.tar".parse().unwrap());
        let problems = estimate(&c).problems;
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("train_dataset: 10 of 10 shards")),
            "{problems:?}"
        );
    }
}
