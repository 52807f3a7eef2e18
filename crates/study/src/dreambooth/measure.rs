//! Measuring a DreamBooth finetune: its samples of a subject's evaluation prompts and of the
//! class twins, scored with the metrics of [`super::metrics`] against real renders. The
//! per-image values of every subject are pooled per (width, prior) before the intervals.

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_data::Image;
use ldmscale_data::dreambooth::{DreamBoothSubjects, EvalPrompt, SubjectInfo};
use ldmscale_eval::RgbImage;
use ldmscale_eval::clip::ClipModel;
use ldmscale_eval::dino::DinoModel;
use ldmscale_pipeline::{LatentDiffusion, SamplingSpec, encode_text, values};

use super::classifier::{self, SubjectClassifier};
use super::metrics;
use crate::config::DreamBoothConfig;
use crate::error::StudyError;
use crate::stages::evaluator::Evaluator;
use crate::stages::text::TextModel;

/// Held-out renders per subject the classifier trains on (and as many distractors).
pub const CLASSIFIER_IMAGES: usize = 96;
/// Real images per subject that generations are compared with.
pub const REAL_IMAGES: usize = 32;
/// Minimally edited prompts per image for prompt accuracy.
pub const VARIANTS: usize = 4;

/// What one subject is scored against, independent of the model.
pub struct SubjectInputs {
    /// The subject's name, identifier and prompts.
    pub subject: SubjectInfo,
    /// Its classifier and that classifier's held-out accuracy.
    pub classifier: (SubjectClassifier, f64),
    /// Evaluation prompts used, each repeated `samples_per_prompt` times (rows of generation).
    pub prompts: Vec<EvalPrompt>,
    /// FID features of held-out renders `[REAL_IMAGES, d]` and `d`.
    pub real_features: (Vec<f32>, usize),
    /// In-domain CLIP embeddings of the held-out renders.
    pub real_clip: Vec<f32>,
    /// FID features of real class images (plain shapes of its kind; other emoji of its class).
    pub real_class_features: Vec<f32>,
    /// Text states of the generation rows: subject prompts, class twins.
    pub states: (Tensor<3>, Tensor<3>),
    /// CLIP text embeddings of the twins (one per row) and of twin + variants (VARIANTS + 1
    /// per row, the twin first).
    pub twin_embeddings: (Vec<f32>, Vec<f32>),
    /// The reference models' embeddings of the held-out renders and the twins.
    pub reference: ReferenceInputs,
}

/// Real DINO and CLIP models from local directories (`[dreambooth] dino`, `clip`).
#[derive(Debug, Default)]
pub struct ReferenceModels {
    /// A transformers ViTModel (DINO).
    pub dino: Option<DinoModel>,
    /// A transformers CLIPModel.
    pub clip: Option<ClipModel>,
}

impl ReferenceModels {
    /// The models `config` names, loaded on `device`; an unreadable one is named by field.
    pub fn load(config: &DreamBoothConfig, device: &Device) -> Result<Self, StudyError> {
        let named = |field: &str, dir: &std::path::Path, e: ldmscale_eval::EvalError| {
            StudyError::Config(format!("dreambooth.{field} = {}: {e}", dir.display()))
        };
        let dino = match &config.dino {
            Some(dir) => Some(DinoModel::load(dir, device).map_err(|e| named("dino", dir, e))?),
            None => None,
        };
        let clip = match &config.clip {
            Some(dir) => Some(ClipModel::load(dir, device).map_err(|e| named("clip", dir, e))?),
            None => None,
        };
        Ok(ReferenceModels { dino, clip })
    }
}

/// What the reference models see of one subject, independent of the finetune.
#[derive(Debug, Default)]
pub struct ReferenceInputs {
    /// DINO embeddings of the held-out renders and their width.
    pub dino_real: Option<(Vec<f32>, usize)>,
    /// CLIP image embeddings of the held-out renders and their width.
    pub clip_real: Option<(Vec<f32>, usize)>,
    /// CLIP text embeddings of the twins, one per generation row.
    pub clip_twins: Option<Vec<f32>>,
}

/// Everything the measuring needs beside the model.
pub struct Scorer<'a> {
    /// FID features and the in-domain CLIP.
    pub evaluator: &'a Evaluator,
    /// The frozen text encoder.
    pub text: &'a TextModel,
    /// The section.
    pub config: &'a DreamBoothConfig,
    /// Image side.
    pub resolution: u32,
    /// Where models run.
    pub device: &'a Device,
    /// Real DINO / CLIP, where the section names them.
    pub reference: &'a ReferenceModels,
}

/// Per-image (or per-prompt) values pooled over subjects for one (width, prior).
#[derive(Clone, Debug, Default)]
pub struct Pooled {
    /// P(subject) of subject-prompt samples.
    pub subject_fidelity: Vec<f64>,
    /// Mean cosine to real renders in the FID feature space.
    pub feature_cosine: Vec<f64>,
    /// Mean cosine to real renders in the in-domain CLIP.
    pub clip_i: Vec<f64>,
    /// Cosine with the prompt's class twin.
    pub clip_t: Vec<f64>,
    /// 1 when the twin outranks its variants.
    pub prompt_accuracy: Vec<f64>,
    /// P(subject) of class-prompt samples.
    pub pres: Vec<f64>,
    /// Cosine distance among one prompt's samples.
    pub div: Vec<f64>,
    /// Mean DINO cosine to real renders (reference model).
    pub dino: Vec<f64>,
    /// Mean CLIP image cosine to real renders (reference model).
    pub clip_i_real: Vec<f64>,
    /// CLIP cosine with the class twin (reference model).
    pub clip_t_real: Vec<f64>,
    /// FID features of subject-prompt samples and of the real renders (all subjects).
    pub generated: Vec<f32>,
    /// See `generated`.
    pub real: Vec<f32>,
    /// Class-prompt samples' features: finetuned, base, and real class images.
    pub drift: (Vec<f32>, Vec<f32>, Vec<f32>),
    /// Feature width.
    pub dim: usize,
    /// Normalised cost x iterations of each finetune.
    pub finetune_cost: Vec<f64>,
    /// Denoiser evaluations per image.
    pub evaluations: u64,
    /// Wall seconds spent sampling.
    pub wall_seconds: f64,
}

impl Scorer<'_> {
    /// The model-independent inputs of subject `name`.
    pub fn subject_inputs(
        &self,
        set: &dyn DreamBoothSubjects,
        name: &str,
    ) -> Result<SubjectInputs, StudyError> {
        let (c, res) = (self.config, self.resolution);
        let subject = set.info(name)?;
        let classifier = classifier::for_subject(set, name, CLASSIFIER_IMAGES, res, c.seed)?;
        let all = set.prompts(name)?;
        let prompts: Vec<EvalPrompt> = c
            .prompt_indices(all.len())
            .into_iter()
            .map(|i| all[i].clone())
            .collect();
        // Renders from seeds the classifier never saw.
        let real = set.held_out(name, REAL_IMAGES, res, c.seed.wrapping_add(2))?;
        let real = images_tensor(real.iter().map(|e| &e.image), self.device);
        let class = set.class_images(name, REAL_IMAGES, res, c.seed.wrapping_add(2))?;
        let class = images_tensor(class.iter().map(|e| &e.image), self.device);
        let clip = &self.evaluator.features.clip.model;
        let rows = |f: fn(&EvalPrompt) -> String| -> Vec<String> {
            let each = prompts.iter().map(f);
            each.flat_map(|p| std::iter::repeat_n(p, c.samples_per_prompt))
                .collect()
        };
        let (subject_rows, twin_rows) =
            (rows(|p| p.prompt.clone()), rows(|p| p.class_prompt.clone()));
        let candidates: Vec<String> = twin_rows
            .iter()
            .flat_map(|t| {
                let mut v = vec![t.clone()];
                v.extend(metrics::prompt_variants(t, VARIANTS, |w, next| {
                    set.word_alternatives(w, next)
                }));
                v.resize(VARIANTS + 1, t.clone());
                v
            })
            .collect();
        Ok(SubjectInputs {
            reference: self.reference_inputs(&real, &twin_rows)?,
            real_features: self.evaluator.features.features(real.clone())?,
            real_clip: values(clip.embed_images(real)),
            real_class_features: self.evaluator.features.features(class)?.0,
            states: (self.states(&subject_rows)?.0, self.states(&twin_rows)?.0),
            twin_embeddings: (self.embed_text(&twin_rows)?, self.embed_text(&candidates)?),
            subject,
            classifier,
            prompts,
        })
    }

    /// Text states and mask of `captions`.
    fn states(&self, captions: &[String]) -> Result<(Tensor<3>, Tensor<2>), StudyError> {
        let t = encode_text(
            &self.text.conditioner,
            captions,
            self.text.length,
            self.device,
        )?;
        Ok((t.states_tensor(self.device), t.mask_tensor(self.device)))
    }

    fn embed_text(&self, captions: &[String]) -> Result<Vec<f32>, StudyError> {
        let (states, mask) = self.states(captions)?;
        Ok(values(
            self.evaluator.features.clip.model.embed_text(states, mask),
        ))
    }

    /// The sampling of evaluation images (and class images).
    pub fn sampling(&self) -> SamplingSpec {
        SamplingSpec {
            sampler: ldmscale_diffusion::SamplerId::Ddim,
            steps: self.config.sample_steps,
            cfg: self.config.cfg,
            seed: self.config.seed,
        }
    }

    /// FID features of `model`'s samples of the class twins (PRES, language drift).
    pub fn class_samples(
        &self,
        model: &LatentDiffusion<'_>,
        inputs: &SubjectInputs,
        null: &Tensor<3>,
    ) -> Result<Tensor<4>, StudyError> {
        Ok(model
            .generate(&self.sampling(), &inputs.states.1, null)?
            .images)
    }

    /// Scores one finetuned model on one subject into `pooled`; `base_class` are the base
    /// model's class-twin samples (same prompts and noise). Returns the subject-prompt samples.
    pub fn score(
        &self,
        model: &LatentDiffusion<'_>,
        inputs: &SubjectInputs,
        (null, base_class): (&Tensor<3>, &Tensor<4>),
        pooled: &mut Pooled,
    ) -> Result<Tensor<4>, StudyError> {
        let t0 = std::time::Instant::now();
        let generated = model.generate(&self.sampling(), &inputs.states.0, null)?;
        pooled.wall_seconds += t0.elapsed().as_secs_f64();
        pooled.evaluations = generated.evaluations as u64;
        let images = generated.images;
        let class = self.class_samples(model, inputs, null)?;
        self.score_subject(&images, inputs, pooled)?;
        let prob = |t: &Tensor<4>| -> Vec<f64> {
            let c = &inputs.classifier.0;
            to_images(t).iter().map(|i| c.probability(i)).collect()
        };
        pooled.subject_fidelity.extend(prob(&images));
        pooled.pres.extend(prob(&class));
        let features = |t: &Tensor<4>| self.evaluator.features.features(t.clone());
        pooled.drift.0.extend(features(&class)?.0);
        pooled.drift.1.extend(features(base_class)?.0);
        pooled.drift.2.extend(&inputs.real_class_features);
        Ok(images)
    }

    /// The reference models' embeddings of the held-out renders `real` and of `twins`.
    fn reference_inputs(
        &self,
        real: &Tensor<4>,
        twins: &[String],
    ) -> Result<ReferenceInputs, StudyError> {
        let real = rgb_images(real)?;
        let embed = |t: Tensor<2>| {
            let d = t.dims()[1];
            (values(t), d)
        };
        let r = self.reference;
        let twins: Vec<&str> = twins.iter().map(String::as_str).collect();
        Ok(ReferenceInputs {
            dino_real: r
                .dino
                .as_ref()
                .map(|m| m.image_embeddings(&real))
                .transpose()?
                .map(embed),
            clip_real: r
                .clip
                .as_ref()
                .map(|m| m.image_embeddings(&real))
                .transpose()?
                .map(embed),
            clip_twins: (r.clip.as_ref())
                .map(|m| m.text_embeddings(&twins))
                .transpose()?
                .map(values),
        })
    }

    /// The reference models' scores of subject-prompt samples.
    fn score_reference(
        &self,
        images: &Tensor<4>,
        inputs: &ReferenceInputs,
        pooled: &mut Pooled,
    ) -> Result<(), StudyError> {
        let r = self.reference;
        if r.dino.is_none() && r.clip.is_none() {
            return Ok(());
        }
        let generated = rgb_images(images)?;
        if let (Some(dino), Some((real, d))) = (&r.dino, &inputs.dino_real) {
            let emb = values(dino.image_embeddings(&generated)?);
            pooled.dino.extend(metrics::cosine_to_real(&emb, real, *d));
        }
        if let (Some(clip), Some((real, d)), Some(twins)) =
            (&r.clip, &inputs.clip_real, &inputs.clip_twins)
        {
            let emb = values(clip.image_embeddings(&generated)?);
            pooled
                .clip_i_real
                .extend(metrics::cosine_to_real(&emb, real, *d));
            pooled
                .clip_t_real
                .extend(metrics::image_text_cosine(&emb, twins, *d));
        }
        Ok(())
    }

    /// The feature and CLIP scores of subject-prompt samples.
    fn score_subject(
        &self,
        images: &Tensor<4>,
        inputs: &SubjectInputs,
        pooled: &mut Pooled,
    ) -> Result<(), StudyError> {
        let (real, d) = &inputs.real_features;
        let (generated, _) = self.evaluator.features.features(images.clone())?;
        pooled
            .feature_cosine
            .extend(metrics::cosine_to_real(&generated, real, *d));
        pooled.div.extend(metrics::diversity(
            &generated,
            self.config.samples_per_prompt,
            *d,
        ));
        let clip = values(
            self.evaluator
                .features
                .clip
                .model
                .embed_images(images.clone()),
        );
        let dim = inputs.real_clip.len() / REAL_IMAGES;
        pooled
            .clip_i
            .extend(metrics::cosine_to_real(&clip, &inputs.real_clip, dim));
        let (twins, candidates) = &inputs.twin_embeddings;
        pooled
            .clip_t
            .extend(metrics::image_text_cosine(&clip, twins, dim));
        let k = VARIANTS + 1;
        pooled
            .prompt_accuracy
            .extend(metrics::prompt_ranked_first(&clip, candidates, k, dim));
        pooled.generated.extend(generated);
        pooled.real.extend(real);
        pooled.dim = *d;
        self.score_reference(images, &inputs.reference, pooled)
    }
}

/// Images `[N, 3, H, W]` in [-1, 1] of `images`.
pub fn images_tensor<'i>(images: impl Iterator<Item = &'i Image>, device: &Device) -> Tensor<4> {
    let mut data = Vec::new();
    let mut shape = [0, 3, 0, 0];
    for image in images {
        data.extend(image.to_chw_f32());
        shape = [
            shape[0] + 1,
            3,
            image.height() as usize,
            image.width() as usize,
        ];
    }
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// The 8-bit images of a `[N, 3, H, W]` tensor in [-1, 1], as the reference models take them.
fn rgb_images(images: &Tensor<4>) -> Result<Vec<RgbImage>, StudyError> {
    to_images(images)
        .into_iter()
        .map(|i| {
            let (w, h) = (i.width() as usize, i.height() as usize);
            Ok(RgbImage::new(w, h, i.into_bytes())?)
        })
        .collect()
}

/// The images of a `[N, 3, H, W]` tensor in [-1, 1].
pub fn to_images(images: &Tensor<4>) -> Vec<Image> {
    let [_, _, h, w] = images.dims();
    let data = values(images.clone());
    data.chunks_exact(3 * h * w)
        .map(|chw| Image::from_chw_f32(w as u32, h as u32, chw).expect("3 x h x w values"))
        .collect()
}
