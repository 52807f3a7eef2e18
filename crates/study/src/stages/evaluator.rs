//! Stage 5: what cells are measured with: the in-domain CLIP (trained on the training pairs)
//! and the FID features and reference statistics of the held-out images.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use ldmscale_data::CaptionedSet;
use ldmscale_eval::npz::{read_stats, write_stats};
use ldmscale_eval::stats::kernel_inception_distance;
use ldmscale_eval::{
    FidExtractor, FidMode, GaussianStats, KidOptions, RgbImage, StatsAccumulator, frechet_distance,
};
use ldmscale_pipeline::values;

use super::data::{self, Splits};
use super::first_stage::images_tensor;
use super::latents::{self, Latents};
use crate::bootstrap::{self, FeatureFile, FeatureFileWriter, FidCi, KidResampler, Rows};
use crate::cell::Metric;
use crate::config::{FidFeaturesKind, StudyConfig};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::in_domain;
use crate::stage::Stage;
use crate::store::{FeatureRows, KID};

/// The in-domain CLIP's recipe: held-out pairs at most, steps, batch, seed.
const CLIP_HELD_OUT_MAX: usize = 64;
const CLIP_STEPS: u64 = 300;
const CLIP_BATCH: usize = 64;
/// Reference images decoded and measured at a time.
const REFERENCE_BATCH: usize = 64;

/// The networks images are measured with.
pub struct Features {
    /// The in-domain CLIP (the CLIP score of every cell; FID features unless Inception).
    pub clip: in_domain::Trained,
    inception: Option<Box<FidExtractor>>,
}

/// The reference set's statistics and features, with what cells are measured against it.
pub struct Evaluator {
    /// The feature networks.
    pub features: Features,
    reference: Reference,
    bootstrap: u32,
}

/// A reference set as FID sees it: its statistics and features (the evaluation set's in a
/// mapped file on disk, which the bootstrap resamples in place).
pub struct Reference {
    stats: GaussianStats,
    features: Rows,
}

impl Reference {
    /// The features as rows, for paired comparisons.
    pub fn rows(&self) -> Result<FeatureRows, StudyError> {
        FeatureRows::new(self.values().to_vec(), self.stats.dim())
            .map_err(StudyError::stage("evaluator"))
    }

    fn values(&self) -> &[f32] {
        (*self.features).as_ref()
    }
}

/// Trains the in-domain CLIP and computes the reference statistics. Training it again is
/// deterministic and takes seconds, so it is done on every run rather than stored.
pub struct EvaluatorStage<'a> {
    /// The examples (held-out images are the reference set).
    pub data: &'a Splits,
    /// The encoded training pairs the CLIP learns from.
    pub latents: &'a Latents,
}

/// What the evaluator depends on.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    Fingerprint::of(
        "evaluator",
        &(
            latents::fingerprint(config),
            data::fingerprint(config),
            config.fid_features,
        ),
    )
}

impl Stage for EvaluatorStage<'_> {
    type Output = Evaluator;
    const NAME: &'static str = "evaluator";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<Evaluator>, StudyError> {
        self.run(cx).map(Some)
    }

    fn run(&self, cx: &StudyContext) -> Result<Evaluator, StudyError> {
        tracing::info!("evaluator: in-domain CLIP");
        let clip = self.train_clip(cx)?;
        let inception = match cx.config.fid_features {
            FidFeaturesKind::Inception => Some(Box::new(load_inception(cx)?)),
            FidFeaturesKind::InDomain => None,
        };
        let features = Features { clip, inception };
        let path = reference_path(&features, cx, self.data.val.len())?;
        let (stats, reference_features) =
            features.reference_stats(&path, &self.data.val, &cx.device)?;
        Ok(Evaluator {
            features,
            reference: Reference {
                stats,
                features: Arc::new(reference_features),
            },
            bootstrap: cx.config.sweep.bootstrap,
        })
    }
}

impl EvaluatorStage<'_> {
    fn train_clip(&self, cx: &StudyContext) -> Result<in_domain::Trained, StudyError> {
        let pairs = CachedPairs {
            images: &self.data.train,
            train: &self.latents.train,
        };
        let held = (in_domain::Pairs::len(&pairs) / 8).clamp(2, CLIP_HELD_OUT_MAX);
        in_domain::train(&pairs, held, CLIP_STEPS, CLIP_BATCH, 0, &cx.device)
            .map_err(StudyError::stage("evaluator"))
    }
}

/// Training images by index beside their captions' text states from the latent cache (built
/// from the same set in the same order; a cache of token ids is encoded as it is read).
struct CachedPairs<'a> {
    images: &'a CaptionedSet,
    train: &'a crate::latents::CachedTrainingData,
}

impl in_domain::Pairs for CachedPairs<'_> {
    fn len(&self) -> usize {
        self.train.cache.len().min(self.images.len())
    }

    fn text_width(&self) -> usize {
        self.train.cache.key().text_shape[1]
    }

    fn fetch(&self, indices: &[usize], device: &Device) -> Result<in_domain::Batch, String> {
        let images = self.images.get(indices).map_err(|e| e.to_string())?;
        let (states, mask) = self.train.text(indices, device)?;
        Ok((
            images_tensor(&images.images, self.images.resolution(), device),
            states,
            mask,
        ))
    }
}

fn load_inception(cx: &StudyContext) -> Result<FidExtractor, StudyError> {
    FidExtractor::load(
        &ldmscale_eval::default_inception_path(),
        FidMode::PytorchFid,
        &cx.device,
    )
    .map_err(|e| StudyError::MissingAsset {
        what: "fid_features = \"inception\"".into(),
        asset: "inception",
        source: Box::new(e),
    })
}

/// Inception reference statistics are cached per dataset, split, resolution, count and mode
/// under `$LDMSCALE_CACHE/stats/` (they do not depend on the study); in-domain ones live in
/// the study directory (they depend on its encoder).
fn reference_path(
    features: &Features,
    cx: &StudyContext,
    n_val: usize,
) -> Result<PathBuf, StudyError> {
    if features.inception.is_none() {
        return Ok(cx.path("eval").join("reference_in_domain.npz"));
    }
    let c = cx.config;
    let eval = c.eval_source().map_err(StudyError::Config)?;
    let name: String = format!(
        "{}-{}-{}px-{}-pytorch-fid.npz",
        eval.spec, eval.split, c.resolution, n_val
    )
    .chars()
    .map(|ch| {
        if ch.is_ascii_alphanumeric() || "-_.".contains(ch) {
            ch
        } else {
            '_'
        }
    })
    .collect();
    Ok(ldmscale_data::cache_root().join("stats").join(name))
}

impl Features {
    /// Features `[N, dim]` (row-major) of images in [-1, 1], `[N, 3, H, W]`, and `dim`.
    pub fn features(&self, images: Tensor<4>) -> Result<(Vec<f32>, usize), StudyError> {
        let Some(extractor) = &self.inception else {
            let f = self.clip.model.image_features(images);
            let [_, d] = f.dims();
            return Ok((values(f), d));
        };
        let [_, _, h, w] = images.dims();
        // Quantised to 8 bits, as images are saved before pytorch-fid reads them.
        let rgb = values(images)
            .chunks(3 * h * w)
            .map(|chw| RgbImage::from_signed_chw(w, h, chw))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((extractor.features(&rgb), ldmscale_eval::FEATURE_DIM))
    }

    /// Statistics of `images`, decoded and measured a batch at a time, and their features
    /// `[N, dim]` written to `features_path` as they come (never gathered in memory).
    fn streamed_stats(
        &self,
        images: &CaptionedSet,
        features_path: &Path,
        device: &Device,
    ) -> Result<(GaussianStats, FeatureFile), StudyError> {
        let err = || StudyError::stage("evaluator");
        let res = images.resolution();
        let (mut acc, mut file) = (None, None);
        for batch in images.stream(0, REFERENCE_BATCH)? {
            let (features, d) = self.features(images_tensor(&batch?.images, res, device))?;
            acc.get_or_insert_with(|| StatsAccumulator::new(d))
                .add(&features)?;
            let writer = match &mut file {
                Some(w) => w,
                None => file.insert(
                    FeatureFileWriter::create(features_path, images.len(), d).map_err(err())?,
                ),
            };
            writer.append(&features).map_err(err())?;
        }
        let stats = acc.map_or_else(|| StatsAccumulator::new(1).finish(), |a| a.finish())?;
        let file = file.expect("a set holds at least two examples");
        Ok((stats, file.finish().map_err(err())?))
    }

    /// What FID is computed on, for the report.
    pub fn describe(&self) -> String {
        match self.inception {
            None => format!(
                "in-domain CLIP image features ({} dims)",
                in_domain::FEATURE_DIM
            ),
            Some(_) => "FID Inception pool3 (2048 dims), pytorch-fid mode".into(),
        }
    }

    /// The reference statistics and features: read from `path` for Inception (cached across
    /// studies), else computed and written there. The images are streamed a batch at a time,
    /// the statistics accumulated and the features written to `*.features.npy` beside `path`,
    /// which stays mapped (bootstrap, KID, pairing).
    fn reference_stats(
        &self,
        path: &Path,
        images: &CaptionedSet,
        device: &Device,
    ) -> Result<(GaussianStats, FeatureFile), StudyError> {
        let features_path = path.with_extension("features.npy");
        // The in-domain encoder is retrained on every run, so its statistics are rewritten.
        if self.inception.is_some()
            && let Ok(stats) = read_stats(path)
            && let Ok(features) = FeatureFile::open(&features_path)
            && features.dim() == stats.dim()
        {
            return Ok((stats, features));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StudyError::io(dir))?;
        }
        let (stats, features) = self.streamed_stats(images, &features_path, device)?;
        write_stats(path, &stats)?;
        Ok((stats, features))
    }
}

impl Evaluator {
    /// FID of `images` against the reference, without an interval.
    pub fn fid_point(&self, images: Tensor<4>) -> Result<f64, StudyError> {
        Ok(self.generated_fid(&self.reference, images)?.0)
    }

    /// Another reference set (`images` in [-1, 1]) measured with the same features: the HR
    /// images of a downstream task.
    pub fn reference_of(&self, images: Tensor<4>) -> Result<Reference, StudyError> {
        let (features, d) = self.features.features(images)?;
        let stats = GaussianStats::from_features(&features, d)?;
        Ok(Reference {
            stats,
            features: Arc::new(features),
        })
    }

    /// FID of `images` and their features `[N, dim]`, row-major.
    fn generated_fid(
        &self,
        reference: &Reference,
        images: Tensor<4>,
    ) -> Result<(f64, Vec<f32>, usize), StudyError> {
        let (generated, d) = self.features.features(images)?;
        let stats = GaussianStats::from_features(&generated, d)?;
        Ok((frechet_distance(&stats, &reference.stats)?, generated, d))
    }

    /// FID of `images` against the reference, with its bootstrap interval (replicates seeded
    /// by `seed`) when the study asks for one.
    pub fn fid(&self, images: Tensor<4>, seed: u64) -> Result<(f64, Option<FidCi>), StudyError> {
        let (fid, ci, _) = self.fid_and_features(images, seed)?;
        Ok((fid, ci))
    }

    /// The reference set's features, for paired comparisons.
    pub fn reference_rows(&self) -> Result<FeatureRows, StudyError> {
        self.reference.rows()
    }

    /// [`Evaluator::fid`] with the generated images' features.
    pub fn fid_and_features(
        &self,
        images: Tensor<4>,
        seed: u64,
    ) -> Result<(f64, Option<FidCi>, FeatureRows), StudyError> {
        self.fid_against(&self.reference, images, seed)
    }

    /// [`Evaluator::fid_and_features`] against another reference set.
    pub fn fid_against(
        &self,
        reference: &Reference,
        images: Tensor<4>,
        seed: u64,
    ) -> Result<(f64, Option<FidCi>, FeatureRows), StudyError> {
        let (fid, generated, d) = self.generated_fid(reference, images)?;
        let ci = self.interval(reference, fid, &generated, d, seed)?;
        let rows = FeatureRows::new(generated, d).map_err(StudyError::stage("sweep"))?;
        Ok((fid, ci, rows))
    }

    /// KID of `generated` against the reference: the kernel form with a bootstrap interval
    /// (when the study asks for intervals) up to `MAX_KID_ROWS` rows a side, clean-fid's
    /// subset estimator without one beyond.
    pub fn kid(&self, generated: &FeatureRows, seed: u64) -> Result<Metric, StudyError> {
        let err = StudyError::stage("sweep");
        let reference = self.reference.values();
        let m = reference.len() / generated.dim.max(1);
        let (value, ci) = if generated.rows.max(m) <= bootstrap::MAX_KID_ROWS {
            let k = KidResampler::new(&generated.data, reference, generated.dim).map_err(err)?;
            k.with_interval(self.bootstrap as usize, seed)
        } else {
            let options = KidOptions {
                seed,
                ..Default::default()
            };
            let kid =
                kernel_inception_distance(&generated.data, reference, generated.dim, options)?;
            (kid.mean, None)
        };
        Ok(Metric {
            name: KID.into(),
            value,
            ci,
        })
    }

    fn interval(
        &self,
        reference: &Reference,
        fid: f64,
        generated: &[f32],
        d: usize,
        seed: u64,
    ) -> Result<Option<FidCi>, StudyError> {
        if self.bootstrap < 2 {
            return Ok(None);
        }
        let replicates = self.bootstrap as usize;
        let generated: Rows = Arc::new(generated.to_vec());
        let reference = reference.features.clone();
        let ci = bootstrap::fid_interval_of(generated, reference, d, fid, replicates, seed)
            .map_err(StudyError::stage("sweep"))?;
        Ok(Some(ci))
    }
}
