//! Stage: DreamBooth (Sec. 3.2, Fig. 6). Every finetuned width is finetuned on every subject
//! of the `[dreambooth]` section with one recipe, without and with prior preservation (class
//! images generated once by the base width), then sampled on the subject's evaluation prompts
//! and their class twins with the same noise for every width, and scored
//! ([`crate::dreambooth`]). One cell per (width, prior) pools every subject's images. The
//! subjects are the section's domain's ([`ldmscale_data::dreambooth::DreamBoothSubjects`]):
//! patterned shapes on a `shapes` study, left-out emoji on an `emoji` one.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use ldmscale_data::Image;
use ldmscale_data::dreambooth::DreamBoothSubjects;
use ldmscale_eval::{GaussianStats, frechet_distance};
use ldmscale_model::weights::{load_unet, write_atomic};
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_pipeline::values;
use ldmscale_train::class_images::{ClassImageRequest, ensure_class_images};
use ldmscale_train::optimizer::{AdamWConfig, LrSchedule};
use ldmscale_train::tasks::DreamBooth;
use ldmscale_train::{DeviceThreads, InMemory, RunSummary, TrainConfig, TrainingData, train_task};

use super::evaluator::{self, Evaluator};
use super::family::{self, Family};
use super::first_stage::{self, FirstStageModel};
use super::latents::Latents;
use super::sweep;
use super::text::{self, TextModel};
use crate::cell::{Cell, CellKey, Metric, Variant};
use crate::config::{DreamBoothConfig, StudyConfig};
use crate::context::StudyContext;
use crate::dreambooth::measure::{Pooled, ReferenceModels, Scorer, SubjectInputs, images_tensor};
use crate::dreambooth::results::{
    CLASSIFIER_ACCURACY, DreamBoothResults, FIG6_GAP, PairedGap, pooled_metrics,
};
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::stage::{Estimate, Stage};
use crate::store::Store;

/// The stage's directory in the study.
pub const DIR: &str = "dreambooth";
/// The file in a run directory naming the fingerprint it was finetuned for.
const FINGERPRINT_FILE: &str = "fingerprint";

/// Finetunes and measures every width on every subject.
pub struct DreamBoothStage<'a> {
    /// The pretrained widths.
    pub family: &'a Family,
    /// Latent shape and the empty caption.
    pub latents: &'a Latents,
    /// FID features and the in-domain CLIP.
    pub evaluator: &'a Evaluator,
    /// Encoder and decoder.
    pub first: &'a FirstStageModel,
    /// The frozen text encoder (with the identifiers reserved).
    pub text: &'a TextModel,
}

fn section<'c>(cx: &StudyContext<'c>) -> Result<&'c DreamBoothConfig, StudyError> {
    cx.config
        .dreambooth
        .as_ref()
        .ok_or_else(|| StudyError::Config("the study has no [dreambooth] section".into()))
}

/// One finetune's run directory.
pub fn run_dir(out: &Path, subject: &str, prior: bool, width: usize) -> PathBuf {
    let kind = if prior { "prior" } else { "plain" };
    out.join(DIR)
        .join(subject)
        .join(kind)
        .join(format!("w{width}"))
}

/// The base width's class images of a subject.
fn class_dir(out: &Path, subject: &str, width: usize) -> PathBuf {
    out.join(DIR)
        .join(subject)
        .join("class")
        .join(format!("w{width}"))
}

/// One finetune as the study configures it (constant LR, no EMA, no caption dropout).
pub fn train_config(config: &StudyConfig, d: &DreamBoothConfig, width: usize) -> TrainConfig {
    TrainConfig {
        steps: d.steps,
        batch_size: d.batch_size,
        learning_rate: d.learning_rate,
        warmup_steps: 0,
        lr_schedule: LrSchedule::Constant,
        adamw: AdamWConfig::default(),
        ema: None,
        text_dropout: 0.0,
        seed: d.seed,
        checkpoint_every: (d.steps / 2).max(1),
        keep_last: 1,
        snapshot_steps: Vec::new(),
        eval_every: 0,
        ..family::train_config(config, width)
    }
}

/// What width `width`'s finetunes depend on.
fn run_fingerprint(config: &StudyConfig, width: usize) -> Fingerprint {
    let d = config.dreambooth.as_ref();
    let recipe = d.map(|d| (train_config(config, d, width), d));
    Fingerprint::of(
        "dreambooth-run",
        &(
            family::width_fingerprint(config, width),
            text::fingerprint(config),
            first_stage::fingerprint(config),
            recipe,
        ),
    )
}

/// What width `width`'s class images depend on: the base, its encoders and the sampling (their
/// count only extends the folder).
fn class_fingerprint(config: &StudyConfig, width: usize) -> Fingerprint {
    let sampling = config
        .dreambooth
        .as_ref()
        .map(|d| (d.sample_steps, d.cfg, d.seed));
    Fingerprint::of(
        "dreambooth-class",
        &(
            family::width_fingerprint(config, width),
            text::fingerprint(config),
            first_stage::fingerprint(config),
            sampling,
        ),
    )
}

/// What width `width`'s cells depend on: its finetunes and the measuring.
fn cells_fingerprint(config: &StudyConfig, width: usize) -> Fingerprint {
    let measuring = (evaluator::fingerprint(config), config.sweep.bootstrap);
    Fingerprint::of(
        "dreambooth-cells",
        &(run_fingerprint(config, width), measuring),
    )
}

fn meta_key(width: usize) -> String {
    format!("fingerprint:dreambooth:w{width}")
}

fn cell_key(d: &DreamBoothConfig, width: usize, prior: bool) -> CellKey {
    CellKey {
        variant: Variant::DreamBooth {
            prior,
            finetune_steps: d.steps,
        },
        width: width as u32,
        sampler: ldmscale_diffusion::SamplerId::Ddim,
        steps: d.sample_steps,
        cfg_milli: (d.cfg * 1000.0).round() as i64,
        seed: d.seed,
    }
}

fn all_keys(config: &StudyConfig, d: &DreamBoothConfig) -> Vec<CellKey> {
    let widths = d.finetuned_widths(config);
    let keys = widths
        .iter()
        .flat_map(|&w| [false, true].map(|p| cell_key(d, w, p)));
    keys.collect()
}

fn fig6_path(cx: &StudyContext) -> PathBuf {
    cx.path(DIR).join("fig6.png")
}

/// The paired gaps of the finding, kept beside Fig. 6 (the store keeps no per-image values).
fn paired_path(cx: &StudyContext) -> PathBuf {
    cx.path(DIR).join("paired.json")
}

/// Subject fidelity per image of each width, without and with the prior.
type FidelityByWidth = Vec<(usize, [Vec<f64>; 2])>;

fn side((width, fidelity): &(usize, [Vec<f64>; 2]), prior: bool) -> (u32, &[f64]) {
    (*width as u32, &fidelity[prior as usize])
}

/// The largest minus the smallest width, per prior setting, over the same images.
fn paired_gaps(cx: &StudyContext, scores: &FidelityByWidth) -> Vec<PairedGap> {
    let (Some(small), Some(large)) = (scores.first(), scores.last()) else {
        return Vec::new();
    };
    if small.0 == large.0 {
        return Vec::new();
    }
    let replicates = cx.config.sweep.bootstrap as usize;
    let seed = ldmscale_util::hash::stable_seed(&["dreambooth paired gap"]);
    [false, true]
        .into_iter()
        .filter_map(|prior| {
            let sides = (side(small, prior), side(large, prior));
            PairedGap::of(prior, sides, replicates, seed)
        })
        .collect()
}

impl Stage for DreamBoothStage<'_> {
    type Output = DreamBoothResults;
    const NAME: &'static str = "dreambooth";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        let Some(d) = &cx.config.dreambooth else {
            return Fingerprint::of("dreambooth", &());
        };
        let widths: Vec<Fingerprint> = (d.finetuned_widths(cx.config).iter())
            .map(|&w| cells_fingerprint(cx.config, w))
            .collect();
        Fingerprint::of("dreambooth", &(widths, all_keys(cx.config, d)))
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<DreamBoothResults>, StudyError> {
        let d = section(cx)?;
        let store = Store::open(&sweep::store_path(cx))?;
        for w in d.finetuned_widths(cx.config) {
            let current = cells_fingerprint(cx.config, w);
            if store.meta(&meta_key(w))?.as_deref() != Some(current.as_str()) {
                return Ok(None);
            }
        }
        for key in all_keys(cx.config, d) {
            if !store.contains(&key)? {
                return Ok(None);
            }
        }
        let Ok(fig6) = std::fs::read(fig6_path(cx)) else {
            return Ok(None);
        };
        let paired = std::fs::read(paired_path(cx)).ok();
        let Some(paired) = paired.and_then(|b| serde_json::from_slice(&b).ok()) else {
            return Ok(None);
        };
        Ok(Some(DreamBoothResults {
            fig6,
            paired,
            ..results(cx, d, &store)?
        }))
    }

    fn run(&self, cx: &StudyContext) -> Result<DreamBoothResults, StudyError> {
        let d = section(cx)?;
        let set = d.open_subjects(cx.config)?;
        let set = set.as_ref();
        let reference = ReferenceModels::load(d, &cx.device)?;
        let scorer = self.scorer(cx, d, &reference);
        let mut inputs = Vec::new();
        for name in d.subject_names(cx.config) {
            inputs.push(scorer.subject_inputs(set, &name)?);
        }
        if let Some(task) = cx.array_task(Self::NAME) {
            return self.train_share(cx, (d, set), &inputs, task);
        }
        let mut store = Store::open(&sweep::store_path(cx))?;
        let mut rows = vec![self.instance_row(cx, d, set, &inputs[0])?];
        let mut fidelity = Vec::new();
        for w in d.finetuned_widths(cx.config) {
            let (width_rows, scores) = self.width(cx, (d, set, &scorer), w, &inputs, &mut store)?;
            rows.extend(width_rows);
            fidelity.push((w, scores));
        }
        let fig6 = stack_rows(&rows).to_png();
        let paired = paired_gaps(cx, &fidelity);
        let json = serde_json::to_vec_pretty(&paired)
            .map_err(|e| StudyError::stage(Self::NAME)(e.to_string()))?;
        write_atomic(&paired_path(cx), &json)?;
        write_atomic(&fig6_path(cx), &fig6)?;
        Ok(DreamBoothResults {
            fig6,
            paired,
            ..results(cx, d, &store)?
        })
    }
}

impl DreamBoothStage<'_> {
    fn scorer<'s>(
        &'s self,
        cx: &'s StudyContext,
        d: &'s DreamBoothConfig,
        reference: &'s ReferenceModels,
    ) -> Scorer<'s> {
        Scorer {
            reference,
            evaluator: self.evaluator,
            text: self.text,
            config: d,
            resolution: cx.config.resolution as u32,
            device: &cx.device,
        }
    }

    /// An array task's share: every subject finetuned, without and with the prior, on the
    /// widths j with j mod n = i; measuring waits for the run after the array.
    fn train_share(
        &self,
        cx: &StudyContext,
        (d, set): (&DreamBoothConfig, &dyn DreamBoothSubjects),
        inputs: &[SubjectInputs],
        (i, n): (usize, usize),
    ) -> Result<DreamBoothResults, StudyError> {
        for width in d.finetuned_widths(cx.config).into_iter().skip(i).step_by(n) {
            let (unet_config, base) = load_unet(&self.base_dir(width)?, &cx.device)?;
            for prior in [false, true] {
                for subject in inputs {
                    let base = (&unet_config, &base);
                    self.finetune(cx, (d, set), width, subject, prior, base)?;
                }
            }
        }
        Err(StudyError::OnlyDone)
    }

    /// The trained family member of `width`.
    fn base_dir(&self, width: usize) -> Result<std::path::PathBuf, StudyError> {
        let dir = self.family.models.iter().find(|(w, _)| *w == width);
        dir.map(|(_, dir)| dir.clone()).ok_or_else(|| {
            StudyError::Config(format!("dreambooth.widths: width {width} was not trained"))
        })
    }

    /// Width `width` without and with the prior; returns its Fig. 6 rows (first subject) and
    /// its subject fidelity per image in each setting (for the paired gap).
    fn width(
        &self,
        cx: &StudyContext,
        (d, set, scorer): (&DreamBoothConfig, &dyn DreamBoothSubjects, &Scorer),
        width: usize,
        inputs: &[SubjectInputs],
        store: &mut Store,
    ) -> Result<(Vec<Image>, [Vec<f64>; 2]), StudyError> {
        refresh(cx, store, width)?;
        let (unet_config, base) = load_unet(&self.base_dir(width)?, &cx.device)?;
        let null = self.latents.null.states_tensor(&cx.device);
        let base_model = self.latents.model(&base, self.first);
        let mut base_class = Vec::new();
        for i in inputs {
            base_class.push(scorer.class_samples(&base_model, i, &null)?);
        }
        let mut rows = Vec::new();
        let mut fidelity: [Vec<f64>; 2] = Default::default();
        for prior in [false, true] {
            let mut pooled = Pooled::default();
            let mut first_samples = None;
            for (i, subject) in inputs.iter().enumerate() {
                let base = (&unet_config, &base);
                let summary = self.finetune(cx, (d, set), width, subject, prior, base)?;
                pooled
                    .finetune_cost
                    .push(summary.state.normalized_cost_x_iterations);
                let tuned_dir = run_dir(&cx.out, &subject.subject.name, prior, width).join("unet");
                let (_, tuned) = load_unet(&tuned_dir, &cx.device)?;
                let model = self.latents.model(&tuned, self.first);
                let images = scorer.score(&model, subject, (&null, &base_class[i]), &mut pooled)?;
                first_samples.get_or_insert(images);
            }
            let samples = first_samples.expect("at least one subject");
            rows.push(fig6_row(
                &samples,
                d.samples_per_prompt,
                d.prompts.min(samples.dims()[0]),
            ));
            let key = cell_key(d, width, prior);
            if !store.contains(&key)? {
                let cell = self.cell(cx, key, (&base, &pooled), inputs)?;
                store.insert(&cell)?;
            }
            fidelity[prior as usize] = pooled.subject_fidelity;
        }
        Ok((rows, fidelity))
    }

    /// Finetunes (or resumes) one subject on one width; a run made for another config is
    /// moved aside.
    fn finetune(
        &self,
        cx: &StudyContext,
        (d, set): (&DreamBoothConfig, &dyn DreamBoothSubjects),
        width: usize,
        subject: &SubjectInputs,
        prior: bool,
        (unet_config, base): (&UNetConfig, &UNet),
    ) -> Result<RunSummary, StudyError> {
        let name = &subject.subject.name;
        let run = run_dir(&cx.out, name, prior, width);
        let fingerprint = run_fingerprint(cx.config, width);
        if let Some(old) = read_fingerprint(&run).filter(|old| *old != fingerprint) {
            cx.retire(&run, old.as_str())?;
        }
        let res = cx.config.resolution;
        let examples = set.instances(name, d.instances, res as u32, d.seed)?;
        let captions: Vec<String> = examples.iter().map(|e| e.caption.clone()).collect();
        let images = examples.iter().map(|e| &e.image);
        let instance = self.encode(
            cx,
            (images, &captions),
            format!("dreambooth {name} instances"),
        )?;
        let class = match prior {
            false => None,
            true => Some(self.class_data(cx, d, subject, width, (unet_config, base))?),
        };
        let class_data = class
            .as_ref()
            .map(|c| (c as &dyn TrainingData, d.prior_weight));
        let config = train_config(cx.config, d, width);
        let train_err = |source| StudyError::Train { width, source };
        let task = DreamBooth::new(&config, &instance, class_data, (unet_config, base.clone()))
            .map_err(train_err)?;
        tracing::info!(
            "dreambooth: {name} on width {width}, prior {prior} ({} steps)",
            d.steps
        );
        let sync = DeviceThreads::new(std::slice::from_ref(&cx.device)).map_err(train_err)?;
        let summary = train_task(&config, &task, &sync, &run, false, None).map_err(train_err)?;
        write_atomic(
            &run.join(FINGERPRINT_FILE),
            format!("{fingerprint}\n").as_bytes(),
        )?;
        Ok(summary)
    }

    /// The base width's class images of the subject (made once), encoded.
    fn class_data(
        &self,
        cx: &StudyContext,
        d: &DreamBoothConfig,
        subject: &SubjectInputs,
        width: usize,
        (_, base): (&UNetConfig, &UNet),
    ) -> Result<InMemory, StudyError> {
        let request = ClassImageRequest {
            prompt: subject.subject.class_prompt.clone(),
            count: d.class_images,
            sampling: self.scorer(cx, d, &ReferenceModels::default()).sampling(),
        };
        let dir = class_dir(&cx.out, &subject.subject.name, width);
        // Made by another base or sampling: moved aside, made again (never mixed).
        let fingerprint = class_fingerprint(cx.config, width);
        if let Some(old) = read_fingerprint(&dir).filter(|old| *old != fingerprint) {
            cx.retire(&dir, old.as_str())?;
        }
        let model = self.latents.model(base, self.first);
        let images =
            ensure_class_images(&dir, &request, &model, &self.text.conditioner, &cx.device)
                .map_err(|source| StudyError::Train { width, source })?;
        write_atomic(
            &dir.join(FINGERPRINT_FILE),
            format!("{fingerprint}\n").as_bytes(),
        )?;
        let captions = vec![request.prompt.clone(); images.len()];
        let key = format!("dreambooth {} class images w{width}", subject.subject.name);
        self.encode(cx, (images.iter(), &captions), key)
    }

    /// Images and captions encoded by the frozen first stage and text encoder.
    fn encode<'i>(
        &self,
        cx: &StudyContext,
        (images, captions): (impl Iterator<Item = &'i Image>, &[String]),
        key: String,
    ) -> Result<InMemory, StudyError> {
        let floats: Vec<f32> = images.flat_map(|i| i.to_chw_f32()).collect();
        let (vae, text) = (
            (&self.first.vae, &self.first.config),
            &self.text.conditioner,
        );
        let res = cx.config.resolution;
        let key = format!(
            "{key} res:{res} seed:{}",
            cx.config.dreambooth.as_ref().map_or(0, |d| d.seed)
        );
        Ok(InMemory::encode(
            vae.0,
            vae.1,
            text,
            (&floats, captions),
            res,
            key,
            &cx.device,
        )?)
    }

    /// One (width, prior)'s cell from its pooled values.
    fn cell(
        &self,
        cx: &StudyContext,
        key: CellKey,
        (unet, pooled): (&UNet, &Pooled),
        inputs: &[SubjectInputs],
    ) -> Result<Cell, StudyError> {
        let err = StudyError::stage("dreambooth");
        let replicates = cx.config.sweep.bootstrap as usize;
        let mut metrics =
            pooled_metrics(pooled, replicates, key.seed_for("bootstrap")).map_err(err)?;
        let accuracy = inputs.iter().map(|i| i.classifier.1).fold(1.0, f64::min);
        metrics.push(Metric {
            name: CLASSIFIER_ACCURACY.into(),
            value: accuracy,
            ci: None,
        });
        let d = pooled.dim;
        let fid = frechet_distance(
            &GaussianStats::from_features(&pooled.generated, d)?,
            &GaussianStats::from_features(&pooled.real, d)?,
        )?;
        let [_, h, w] = self.latents.latent_shape;
        Ok(Cell {
            variant: key.variant,
            width: key.width,
            params: unet.num_params() as u64,
            sampler: key.sampler,
            steps: key.steps,
            cfg: key.cfg_milli as f64 / 1000.0,
            seed: key.seed,
            n_samples: pooled.subject_fidelity.len() as u32,
            fid,
            fid_ci: None,
            in_domain_clip: None,
            metrics,
            evaluations: pooled.evaluations,
            gflops_per_eval: unet.cost(h, w, self.latents.val_text.length).gflops(),
            wall_seconds: pooled.wall_seconds,
        })
    }

    /// Fig. 6's first row: the first subject's instance images, padded white to the row.
    fn instance_row(
        &self,
        cx: &StudyContext,
        d: &DreamBoothConfig,
        set: &dyn DreamBoothSubjects,
        first: &SubjectInputs,
    ) -> Result<Image, StudyError> {
        let res = cx.config.resolution as u32;
        let examples = set.instances(&first.subject.name, d.instances, res, d.seed)?;
        let images = images_tensor(examples.iter().map(|e| &e.image), &cx.device);
        Ok(tile_row(
            values(images),
            d.instances,
            res as usize,
            first.prompts.len(),
        ))
    }
}

/// Sample 0 of each of the first `prompts` prompts, as one row.
fn fig6_row(samples: &Tensor<4>, per_prompt: usize, prompts: usize) -> Image {
    let [n, _, size, _] = samples.dims();
    let rows: Vec<i64> = (0..prompts)
        .map(|p| (p * per_prompt).min(n - 1) as i64)
        .collect();
    let index = Tensor::<1, Int>::from_data(rows.as_slice(), &samples.device());
    let picked = samples.clone().select(0, index);
    tile_row(values(picked), prompts, size, prompts)
}

/// Pixels enlarged in Fig. 6, and the white gap between tiles.
const SCALE: usize = 4;
const GAP: usize = FIG6_GAP as usize;

/// `count` images (`3 x size x size` floats each) as one row of `columns` tiles, white after.
fn tile_row(mut chw: Vec<f32>, count: usize, size: usize, columns: usize) -> Image {
    let columns = columns.max(count);
    chw.resize(columns * 3 * size * size, 1.0);
    Image::grid_from_nchw(&chw, columns, size, columns, SCALE, GAP).expect("whole tiles")
}

/// Rows of possibly different widths stacked top to bottom on white, `GAP` apart.
fn stack_rows(rows: &[Image]) -> Image {
    let width = rows.iter().map(Image::width).max().unwrap_or(1);
    let gaps = GAP as u32 * (rows.len() as u32).saturating_sub(1);
    let height = rows.iter().map(Image::height).sum::<u32>() + gaps;
    let mut out = Image::filled(width, height.max(1), [255, 255, 255]);
    let mut top = 0;
    for row in rows {
        for y in 0..row.height() {
            for x in 0..row.width() {
                out.set_pixel(x, top + y, row.pixel(x, y));
            }
        }
        top += row.height() + GAP as u32;
    }
    out
}

/// Drops a width's DreamBooth cells measured for other finetunes or measuring.
fn refresh(cx: &StudyContext, store: &mut Store, width: usize) -> Result<(), StudyError> {
    let current = cells_fingerprint(cx.config, width);
    let key = meta_key(width);
    if store.meta(&key)?.as_deref() != Some(current.as_str()) {
        for prior in [false, true] {
            let variant = Variant::DreamBooth {
                prior,
                finetune_steps: 0,
            };
            store.remove_width(variant, width as u32)?;
        }
        store.set_meta(&key, current.as_str())?;
    }
    Ok(())
}

/// The stored cells of the config's keys.
fn results(
    cx: &StudyContext,
    d: &DreamBoothConfig,
    store: &Store,
) -> Result<DreamBoothResults, StudyError> {
    let keys: std::collections::HashSet<CellKey> = all_keys(cx.config, d).into_iter().collect();
    let mut cells: Vec<Cell> = store.cells()?;
    cells.retain(|c| keys.contains(&c.key()));
    cells.sort_by_key(|c| (c.variant, c.width));
    Ok(DreamBoothResults {
        cells,
        fig6: Vec::new(),
        subjects: d.subject_names(cx.config),
        learning_rate: d.learning_rate,
        paired: Vec::new(),
    })
}

fn read_fingerprint(run: &Path) -> Option<Fingerprint> {
    let text = std::fs::read_to_string(run.join(FINGERPRINT_FILE)).ok()?;
    Some(Fingerprint(text.trim().to_string()))
}

/// The section's compute for `--dry-run`, from each width's GFLOPs per evaluation: a forward
/// and backward pass (3 forwards) per training row (instance rows, doubled with the prior),
/// and the evaluations of class images, evaluation samples and class-twin samples.
pub fn estimate(config: &StudyConfig, gflops: &[f64]) -> Estimate {
    let Some(d) = &config.dreambooth else {
        return Estimate::default();
    };
    let subjects = d.subject_names(config).len() as f64;
    let per_sample = d.sample_steps as f64 * if d.cfg > 1.0 { 2.0 } else { 1.0 };
    let rows = (d.prompts * d.samples_per_prompt) as f64;
    let mut e = Estimate::default();
    for (&w, &g) in config.widths.iter().zip(gflops) {
        if !d.finetuned_widths(config).contains(&w) {
            continue;
        }
        let train_rows = (d.batch_size as u64 * d.steps) as f64 * (1.0 + 2.0);
        e.train_gflops += subjects * 3.0 * train_rows * g;
        // Base class twins once; per prior setting, subject prompts and class twins.
        let samples = d.class_images as f64 + rows * (1.0 + 2.0 * 2.0);
        e.sample_gflops += subjects * samples * per_sample * g;
    }
    e.lines.push(format!(
        "\ndreambooth: widths {:?} x subjects {:?} x (no prior, prior), {} steps of batch {} \
         at lr {}; {} class images; {} prompts x {} samples at {} DDIM steps, CFG {}",
        d.finetuned_widths(config),
        d.subject_names(config),
        d.steps,
        d.batch_size,
        d.learning_rate,
        d.class_images,
        d.prompts,
        d.samples_per_prompt,
        d.sample_steps,
        d.cfg
    ));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_pick_and_recipe_leave_the_encoder_and_class_images_alone() {
        let tiny = StudyConfig::preset("tiny").unwrap();
        let mut other = tiny.clone();
        let d = other.dreambooth.as_mut().unwrap();
        d.subjects = vec!["dotted-hexagon".into()];
        d.learning_rate = 1e-2;
        d.steps = 99;
        assert_eq!(text::fingerprint(&other), text::fingerprint(&tiny));
        assert_eq!(class_fingerprint(&other, 8), class_fingerprint(&tiny, 8));
        assert_ne!(run_fingerprint(&other, 8), run_fingerprint(&tiny, 8));
        other.dreambooth.as_mut().unwrap().cfg = 5.0;
        assert_ne!(class_fingerprint(&other, 8), class_fingerprint(&tiny, 8));
        let mut without = tiny.clone();
        without.dreambooth = None;
        assert_ne!(text::fingerprint(&without), text::fingerprint(&tiny));
        assert_eq!(text::reserved_words(&tiny), ["sks", "zwx", "qlv", "bnq"]);
        // The tiny study's encoder as before the emoji domain, and a section without `domain`
        // hashes as before (the field is left out), so its directories resume.
        assert_eq!(text::fingerprint(&tiny).as_str(), "336929b45d6bb4eb");
        let section = serde_json::to_value(tiny.dreambooth.as_ref().unwrap()).unwrap();
        assert!(section.get("domain").is_none(), "{section}");
    }

    #[test]
    fn the_estimate_counts_finetunes_and_samples_of_the_chosen_widths() {
        let mut c = StudyConfig::preset("tiny").unwrap();
        let gflops = [1.0, 4.0];
        let e = estimate(&c, &gflops);
        // Width 8 only (1 GFLOP/eval): 1 subject x 3 passes x 8 steps x 2 rows x (1 + 2).
        assert_eq!(e.train_gflops, 3.0 * 8.0 * 2.0 * 3.0);
        // 8 class images + 8 rows x 5 sample sets, 8 guided steps (16 evaluations) each.
        assert_eq!(e.sample_gflops, (8.0 + 8.0 * 5.0) * 16.0);
        assert!(e.lines[0].contains("dreambooth: widths [8]"));
        c.dreambooth.as_mut().unwrap().widths = Vec::new();
        assert_eq!(estimate(&c, &gflops).train_gflops, 5.0 * e.train_gflops);
        c.dreambooth = None;
        assert!(estimate(&c, &gflops).lines.is_empty());
    }
}
