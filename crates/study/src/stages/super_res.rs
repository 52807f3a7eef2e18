//! Stage: every width finetuned for x4 super-resolution from its pretrained weights with one
//! recipe, and each finetune snapshot measured on the frozen evaluation set without guidance:
//! FID against the HR images, PSNR and SSIM (BasicSR), and LPIPS or, without its trunk, the
//! in-domain perceptual distance (Secs. 3.2, 3.5; Figs. 4, 5, 12).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use ldmscale_data::degrade::FloatImage;
use ldmscale_data::image::Image;
use ldmscale_diffusion::{PredictionType, SamplerId};
use ldmscale_eval::lpips::{Lpips, LpipsNet, default_heads_path};
use ldmscale_eval::{RgbView, SrMetricOptions, psnr, ssim};
use ldmscale_model::UNet;
use ldmscale_model::weights::{load_unet, write_atomic};
use ldmscale_pipeline::{SrSampling, SuperResolution, values};
use ldmscale_train::optimizer::{AdamWConfig, LrSchedule};
use ldmscale_train::tasks::SrData;
use ldmscale_train::{DeviceThreads, Objective, SuperRes, TrainConfig, TrainState, checkpoint};

use super::evaluator::{self, Evaluator, Reference};
use super::family::{self, Family};
use super::first_stage::FirstStageModel;
use super::sr_data::{self, DIR, SrSets, section};
use super::sweep::{self, keeps};
use crate::bootstrap::mean_interval;
use crate::cell::{Cell, CellKey, Metric, SUPER_RES, Variant};
use crate::config::{StudyConfig, SuperResConfig};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::pairing::Pairing;
use crate::stage::Stage;
use crate::store::{FeatureRows, Store, shard_owns};
use crate::super_res::{
    FINETUNE_COST, IN_DOMAIN_PERCEPTUAL, LPIPS, PSNR, SSIM, SrResults, UNRELATED_PSNR, fig5_png,
};

/// The file in a run directory naming the fingerprint it was finetuned for.
const FINGERPRINT_FILE: &str = "fingerprint";
/// Evaluation images shown per width in Fig. 5.
const FIG5_IMAGES: usize = 8;
/// Bootstrap replicates of the per-image metrics' intervals, at most.
const MEAN_REPLICATES: u32 = 200;

/// Finetunes and measures every width.
pub struct SuperResStage<'a> {
    /// The pretrained widths.
    pub family: &'a Family,
    /// Pairs, evaluation set and empty prompt.
    pub sets: &'a SrSets,
    /// FID features.
    pub evaluator: &'a Evaluator,
    /// The decoder.
    pub first: &'a FirstStageModel,
}

/// Width `width`'s finetune run directory.
pub fn run_dir(out: &Path, width: usize) -> PathBuf {
    out.join(DIR).join(format!("w{width}"))
}

/// What width `width`'s finetuned models depend on.
pub fn run_fingerprint(config: &StudyConfig, width: usize) -> Fingerprint {
    let recipe = config
        .super_res
        .as_ref()
        .map(|sr| train_config(config, sr, width));
    Fingerprint::of(
        "super-res-run",
        &(
            family::width_fingerprint(config, width),
            sr_data::fingerprint(config),
            recipe,
        ),
    )
}

/// What width `width`'s SR cells depend on: its models, the features and the frozen set.
fn cells_fingerprint(config: &StudyConfig, width: usize, eval_hash: &str) -> Fingerprint {
    let lpips = config.super_res.as_ref().map(|sr| &sr.lpips_trunk);
    Fingerprint::of(
        "super-res-cells",
        &(
            run_fingerprint(config, width),
            evaluator::fingerprint(config),
            eval_hash,
            config.sweep.bootstrap,
            lpips,
        ),
    )
}

fn meta_key(width: usize) -> String {
    format!("fingerprint:{SUPER_RES}:w{width}")
}

/// One width's finetune as the study configures it (no EMA, no caption dropout).
pub fn train_config(config: &StudyConfig, sr: &SuperResConfig, width: usize) -> TrainConfig {
    TrainConfig {
        model: family::model_config(config, width),
        steps: sr.steps,
        batch_size: sr.batch_size,
        grad_accum: 1,
        learning_rate: sr.learning_rate,
        warmup_steps: sr.warmup_steps,
        lr_schedule: LrSchedule::Constant,
        adamw: AdamWConfig::default(),
        grad_clip: Some(1.0),
        ema: None,
        text_dropout: 0.0,
        objective: sr.objective,
        snr_gamma: None,
        seed: sr.seed,
        checkpoint_every: (sr.steps / 4).max(1),
        keep_last: 1,
        snapshot_steps: sr.evaluated_steps(),
        log_every: 10,
        eval_every: 0,
        devices: Vec::new(),
    }
}

/// The evaluation grid of one finetuned model.
fn grid(sr: &SuperResConfig) -> Vec<(SamplerId, u32)> {
    let mut out = Vec::new();
    for &sampler in &sr.samplers {
        out.extend(sr.sample_steps.iter().map(|&steps| (sampler, steps)));
    }
    out
}

fn cell_key(sr: &SuperResConfig, width: usize, finetune: u64, at: (SamplerId, u32)) -> CellKey {
    CellKey {
        variant: Variant::SuperRes {
            finetune_steps: finetune,
        },
        width: width as u32,
        sampler: at.0,
        steps: at.1,
        cfg_milli: 1000,
        seed: sr.seed,
    }
}

/// Every key the config asks for.
fn all_keys(config: &StudyConfig, sr: &SuperResConfig) -> Vec<CellKey> {
    let mut keys = Vec::new();
    for &w in &config.widths {
        for finetune in sr.evaluated_steps() {
            keys.extend(grid(sr).into_iter().map(|at| cell_key(sr, w, finetune, at)));
        }
    }
    keys
}

fn fig5_path(cx: &StudyContext) -> PathBuf {
    cx.path(DIR).join("fig5.png")
}

impl Stage for SuperResStage<'_> {
    type Output = SrResults;
    const NAME: &'static str = "super-res";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        let hash = &self.sets.eval.hash;
        let widths: Vec<Fingerprint> = cx
            .config
            .widths
            .iter()
            .map(|&w| cells_fingerprint(cx.config, w, hash))
            .collect();
        let grid = cx
            .config
            .super_res
            .as_ref()
            .map(|sr| (grid(sr), sr.evaluated_steps()));
        Fingerprint::of("super-res", &(widths, grid))
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<SrResults>, StudyError> {
        let sr = section(cx)?;
        let store = Store::open(&sweep::store_path(cx))?;
        for &w in &cx.config.widths {
            let current = cells_fingerprint(cx.config, w, &self.sets.eval.hash);
            if store.meta(&meta_key(w))?.as_deref() != Some(current.as_str()) {
                return Ok(None);
            }
        }
        for key in all_keys(cx.config, sr) {
            if owns(cx, &key) && !store.contains(&key)? {
                return Ok(None);
            }
        }
        let Ok(fig5) = std::fs::read(fig5_path(cx)) else {
            return Ok(None);
        };
        let baseline = self.measure(cx, sr)?.baseline(cx, sr)?;
        Ok(Some(self.results(cx, sr, &store, fig5, baseline)?))
    }

    fn run(&self, cx: &StudyContext) -> Result<SrResults, StudyError> {
        let sr = section(cx)?;
        if let Some((i, n)) = cx.array_task(Self::NAME) {
            for (w, pretrained) in self.family.models.iter().skip(i).step_by(n) {
                self.finetune(cx, sr, *w, pretrained)?;
            }
            return Err(StudyError::OnlyDone);
        }
        let mut store = Store::open(&sweep::store_path(cx))?;
        let measure = self.measure(cx, sr)?;
        keep_reference(&mut store, &measure.reference)?;
        let mut finals = Vec::new();
        for (w, pretrained) in &self.family.models {
            let snapshots = self.finetune(cx, sr, *w, pretrained)?;
            self.refresh_width(cx, &mut store, *w)?;
            for (step, dir) in &snapshots {
                measure.snapshot(cx, sr, &mut store, (*w, *step), dir)?;
            }
            if let Some((_, last)) = snapshots.last() {
                finals.push((*w, self.fig5_samples(cx, sr, last)?));
            }
        }
        let res = sr.hr_side(cx.config.resolution);
        let fig5 =
            fig5_png(&self.sets.eval, &finals, res).map_err(StudyError::stage(Self::NAME))?;
        write_atomic(&fig5_path(cx), &fig5)?;
        let baseline = measure.baseline(cx, sr)?;
        self.results(cx, sr, &store, fig5, baseline)
    }
}

/// Stores the HR set's features, which the SR cells' kept features are paired against.
fn keep_reference(store: &mut Store, reference: &Reference) -> Result<(), StudyError> {
    let rows = reference.rows()?;
    if keeps(&rows) && store.variant_reference_features(SUPER_RES)?.as_ref() != Some(&rows) {
        store.set_variant_reference_features(SUPER_RES, &rows)?;
    }
    Ok(())
}

fn owns(cx: &StudyContext, key: &CellKey) -> bool {
    cx.shard.is_none_or(|(i, n)| shard_owns(key, i, n))
}

/// Equally sized square images as a tensor in [-1, 1].
fn hr_tensor(images: &[FloatImage], cx: &StudyContext) -> Tensor<4> {
    let res = images.first().map_or(0, |i| i.width);
    let mut chw = Vec::with_capacity(images.len() * 3 * res * res);
    for image in images {
        chw.extend(image.to_image().to_chw_f32());
    }
    Tensor::from_data(
        TensorData::new(chw, [images.len(), 3, res, res]),
        &cx.device,
    )
}

impl SuperResStage<'_> {
    /// Finetunes (or resumes) one width; returns its evaluated snapshots, oldest first.
    fn finetune(
        &self,
        cx: &StudyContext,
        sr: &SuperResConfig,
        width: usize,
        pretrained: &Path,
    ) -> Result<Vec<(u64, PathBuf)>, StudyError> {
        let run = run_dir(&cx.out, width);
        let fingerprint = run_fingerprint(cx.config, width);
        match read_fingerprint(&run) {
            Some(old) if old != fingerprint => cx.retire(&run, old.as_str())?,
            _ => {}
        }
        let config = train_config(cx.config, sr, width);
        let (t2i_config, unet) = load_unet(pretrained, &cx.device)?;
        let context = self.sets.context.clone();
        let fail = |source| StudyError::Train { width, source };
        let task =
            SuperRes::new(&config, &self.sets.pairs, (&t2i_config, unet), context).map_err(fail)?;
        let sync = DeviceThreads::new(std::slice::from_ref(&cx.device)).map_err(fail)?;
        tracing::info!("super-res: finetuning width {width} ({} steps)", sr.steps);
        ldmscale_train::train_task(&config, &task, &sync, &run, true, None).map_err(fail)?;
        write_atomic(
            &run.join(FINGERPRINT_FILE),
            format!("{fingerprint}\n").as_bytes(),
        )?;
        let wanted = sr.evaluated_steps();
        Ok(checkpoint::snapshots(&run)
            .into_iter()
            .filter(|(step, _)| wanted.contains(step))
            .collect())
    }

    /// Drops a width's SR cells measured for another model, evaluator or evaluation set.
    fn refresh_width(
        &self,
        cx: &StudyContext,
        store: &mut Store,
        width: usize,
    ) -> Result<(), StudyError> {
        let current = cells_fingerprint(cx.config, width, &self.sets.eval.hash);
        let key = meta_key(width);
        if store.meta(&key)?.as_deref() != Some(current.as_str()) {
            let variant = Variant::SuperRes { finetune_steps: 0 };
            let removed = store.remove_width(variant, width as u32)?;
            if removed > 0 {
                tracing::info!("super-res width {width}: {removed} stale cells measured again");
            }
            store.set_meta(&key, current.as_str())?;
        }
        Ok(())
    }

    /// The first evaluation images super-resolved by a final model at the grid's most steps.
    fn fig5_samples(
        &self,
        cx: &StudyContext,
        sr: &SuperResConfig,
        snapshot: &Path,
    ) -> Result<Vec<f32>, StudyError> {
        let (config, unet) = load_unet(&snapshot.join("unet"), &cx.device)?;
        let model = self.model(&unet, &config, sr)?;
        let n = FIG5_IMAGES.min(self.sets.eval.hr.len());
        let lr = self.sets.eval.lr_latents.clone().narrow(0, 0, n);
        let spec = SrSampling {
            sampler: sr.samplers[0],
            steps: *sr.sample_steps.iter().max().expect("validated non-empty"),
            seed: sr.seed,
        };
        Ok(values(model.generate(&lr, &spec)?.images))
    }

    /// The SR model sampling as it was trained (its prediction type).
    fn model<'m>(
        &'m self,
        unet: &'m UNet,
        config: &ldmscale_model::UNetConfig,
        sr: &SuperResConfig,
    ) -> Result<SuperResolution<'m>, StudyError> {
        let mut model = SuperResolution::new(
            unet,
            config,
            &self.first.vae,
            &self.first.config,
            self.sets.context.clone(),
        )?;
        model.scheduler.prediction_type = match sr.objective {
            Objective::Epsilon => PredictionType::Epsilon,
            Objective::VPrediction => PredictionType::VPrediction,
        };
        Ok(model)
    }

    /// What the cells are measured against: the HR set's features and the perceptual network.
    fn measure(
        &self,
        cx: &StudyContext,
        sr: &SuperResConfig,
    ) -> Result<Measure<'_, '_>, StudyError> {
        let hr = hr_tensor(&self.sets.eval.hr, cx);
        Ok(Measure {
            stage: self,
            reference: self.evaluator.reference_of(hr.clone())?,
            hr,
            perceptual: Perceptual::new(sr, cx)?,
        })
    }

    /// The stored cells of the config's grid, with what the report shows beside them.
    fn results(
        &self,
        cx: &StudyContext,
        sr: &SuperResConfig,
        store: &Store,
        fig5: Vec<u8>,
        baseline: Vec<Metric>,
    ) -> Result<SrResults, StudyError> {
        let keys: std::collections::HashSet<CellKey> =
            all_keys(cx.config, sr).into_iter().collect();
        let cells: Vec<Cell> = store
            .cells()?
            .into_iter()
            .filter(|c| keys.contains(&c.key()))
            .collect();
        let pairing = match store.variant_reference_features(SUPER_RES)? {
            Some(reference) => Pairing::with_reference(store, reference, &cells)?,
            None => None,
        };
        Ok(SrResults {
            cells,
            fig5,
            eval_pairs: self.sets.eval.hr.len(),
            eval_hash: self.sets.eval.hash.clone(),
            perceptual: Perceptual::name(sr),
            baseline,
            pairing,
        })
    }
}

/// What every cell of the stage measures against.
struct Measure<'a, 's> {
    stage: &'a SuperResStage<'s>,
    reference: Reference,
    hr: Tensor<4>,
    perceptual: Perceptual,
}

impl Measure<'_, '_> {
    /// Measures every missing cell of one snapshot (`at` = (width, finetune step)).
    fn snapshot(
        &self,
        cx: &StudyContext,
        sr: &SuperResConfig,
        store: &mut Store,
        (width, step): (usize, u64),
        dir: &Path,
    ) -> Result<(), StudyError> {
        let missing: Vec<(SamplerId, u32)> = grid(sr)
            .into_iter()
            .filter(|&at| {
                let key = cell_key(sr, width, step, at);
                owns(cx, &key) && !store.contains(&key).unwrap_or(false)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let (config, unet) = load_unet(&dir.join("unet"), &cx.device)?;
        let finetune = read_state(dir)?;
        let model = self.stage.model(&unet, &config, sr)?;
        let [_, h, w] = self.stage.sets.pairs.latent_shape();
        let [_, length, _] = self.stage.sets.context.dims();
        let gflops_per_eval = unet.cost(h, w, length).gflops();
        for at in missing {
            let key = cell_key(sr, width, step, at);
            tracing::info!(
                "super-res: w{width} after {step} finetune steps, {} x{}",
                at.0,
                at.1
            );
            let (mut cell, features) = self.cell(&model, key, sr.seed)?;
            cell.params = unet.num_params() as u64;
            cell.gflops_per_eval = gflops_per_eval;
            cell.metrics.push(Metric {
                name: FINETUNE_COST.into(),
                value: finetune.normalized_cost_x_iterations,
                ci: None,
            });
            store.insert_with_features(&cell, keeps(&features).then_some(&features))?;
        }
        Ok(())
    }

    /// Samples the evaluation set at `key` and measures it; also returns the FID features.
    fn cell(
        &self,
        model: &SuperResolution,
        key: CellKey,
        seed: u64,
    ) -> Result<(Cell, FeatureRows), StudyError> {
        let spec = SrSampling {
            sampler: key.sampler,
            steps: key.steps,
            seed,
        };
        let lr = &self.stage.sets.eval.lr_latents;
        let t0 = Instant::now();
        let generated = model.generate(lr, &spec)?;
        let wall_seconds = t0.elapsed().as_secs_f64();
        let images = generated.images;
        let evaluator = self.stage.evaluator;
        let (fid, fid_ci, features) =
            evaluator.fid_against(&self.reference, images.clone(), key.seed_for("bootstrap"))?;
        let mut metrics = self.pixel_metrics(&images, &key)?;
        let distances = self
            .perceptual
            .distances(evaluator, images.clone(), self.hr.clone())?;
        metrics.push(mean_metric(self.perceptual.metric(), &distances, &key));
        let cell = Cell {
            variant: key.variant,
            width: key.width,
            params: 0,
            sampler: key.sampler,
            steps: key.steps,
            cfg: 1.0,
            seed: key.seed,
            n_samples: images.dims()[0] as u32,
            fid,
            fid_ci,
            in_domain_clip: None,
            metrics,
            evaluations: generated.evaluations as u64,
            gflops_per_eval: 0.0,
            wall_seconds,
        };
        Ok((cell, features))
    }

    /// The bicubic x4 upsampling of the LR images, measured like a cell: what finetuning has
    /// to beat.
    fn baseline(&self, cx: &StudyContext, sr: &SuperResConfig) -> Result<Vec<Metric>, StudyError> {
        let images = hr_tensor(&self.stage.sets.eval.upsampled, cx).clamp(-1.0, 1.0);
        let key = CellKey {
            width: 0,
            ..cell_key(sr, 0, 0, (SamplerId::Ddim, 0))
        };
        let (fid, ci, _) = self.stage.evaluator.fid_against(
            &self.reference,
            images.clone(),
            key.seed_for("bootstrap"),
        )?;
        let mut metrics = vec![Metric {
            name: "fid".into(),
            value: fid,
            ci,
        }];
        metrics.extend(self.pixel_metrics(&images, &key)?);
        metrics.push(self.unrelated_psnr(&key)?);
        let distances = self
            .perceptual
            .distances(self.stage.evaluator, images, self.hr.clone())?;
        metrics.push(mean_metric(self.perceptual.metric(), &distances, &key));
        Ok(metrics)
    }

    /// PSNR of every HR image against the next one: what a model that ignores the LR image
    /// scores (the floor of the learning check).
    fn unrelated_psnr(&self, key: &CellKey) -> Result<Metric, StudyError> {
        let hr: Vec<Image> = self
            .stage
            .sets
            .eval
            .hr
            .iter()
            .map(|i| i.to_image())
            .collect();
        let mut values = Vec::with_capacity(hr.len());
        for (i, a) in hr.iter().enumerate() {
            let b = &hr[(i + 1) % hr.len()];
            let (w, h) = (a.width() as usize, a.height() as usize);
            let (a, b) = (
                RgbView::new(a.as_bytes(), w, h),
                RgbView::new(b.as_bytes(), w, h),
            );
            values.push(psnr(a, b, SrMetricOptions::default())?.min(100.0));
        }
        Ok(mean_metric(UNRELATED_PSNR, &values, key))
    }

    /// PSNR and SSIM of every image against its HR image, as BasicSR computes them on the
    /// 8-bit images (RGB, no border cut: the study's images are small).
    fn pixel_metrics(&self, images: &Tensor<4>, key: &CellKey) -> Result<Vec<Metric>, StudyError> {
        let [n, _, h, w] = images.dims();
        let generated = values(images.clone());
        let options = SrMetricOptions::default();
        let (mut p, mut s) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (chw, hr) in generated
            .chunks_exact(3 * h * w)
            .zip(&self.stage.sets.eval.hr)
        {
            let sr = Image::from_chw_f32(w as u32, h as u32, chw).expect("3 x h x w");
            let hr = hr.to_image();
            let a = RgbView::new(sr.as_bytes(), w, h);
            let b = RgbView::new(hr.as_bytes(), w, h);
            // Capped so one exact reconstruction cannot make the mean infinite.
            p.push(psnr(a, b, options)?.min(100.0));
            s.push(ssim(a, b, options)?);
        }
        Ok(vec![mean_metric(PSNR, &p, key), mean_metric(SSIM, &s, key)])
    }
}

/// The mean of per-image `values` with its bootstrap interval.
fn mean_metric(name: &str, values: &[f64], key: &CellKey) -> Metric {
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    Metric {
        name: name.into(),
        value: mean,
        ci: mean_interval(values, MEAN_REPLICATES as usize, key.seed_for(name)),
    }
}

/// LPIPS where the study was given its trunk, else the in-domain perceptual distance.
enum Perceptual {
    Lpips(Box<Lpips>),
    InDomain,
}

impl Perceptual {
    fn new(sr: &SuperResConfig, cx: &StudyContext) -> Result<Self, StudyError> {
        let Some(trunk) = &sr.lpips_trunk else {
            return Ok(Perceptual::InDomain);
        };
        let net = LpipsNet::Alex;
        let lpips = Lpips::load(net, Path::new(trunk), &default_heads_path(net), &cx.device)
            .map_err(|e| StudyError::MissingAsset {
                what: format!("super_res.lpips_trunk = {trunk:?}"),
                asset: "lpips",
                source: Box::new(e),
            })?;
        Ok(Perceptual::Lpips(Box::new(lpips)))
    }

    /// The metric's name in the store.
    fn name(sr: &SuperResConfig) -> &'static str {
        match sr.lpips_trunk {
            Some(_) => LPIPS,
            None => IN_DOMAIN_PERCEPTUAL,
        }
    }

    fn metric(&self) -> &'static str {
        match self {
            Perceptual::Lpips(_) => LPIPS,
            Perceptual::InDomain => IN_DOMAIN_PERCEPTUAL,
        }
    }

    /// Per-image distances of `a` and `b` (`[N, 3, H, W]` in [-1, 1]).
    fn distances(
        &self,
        evaluator: &Evaluator,
        a: Tensor<4>,
        b: Tensor<4>,
    ) -> Result<Vec<f64>, StudyError> {
        let d = match self {
            Perceptual::Lpips(lpips) => lpips.forward(a, b)?,
            Perceptual::InDomain => {
                let clip = &evaluator.features.clip.model;
                let cos = (clip.embed_images(a) * clip.embed_images(b)).sum_dim(1);
                let [n, _] = cos.dims();
                cos.reshape([n]).neg().add_scalar(1.0)
            }
        };
        Ok(values(d).into_iter().map(f64::from).collect())
    }
}

fn read_fingerprint(run: &Path) -> Option<Fingerprint> {
    let text = std::fs::read_to_string(run.join(FINGERPRINT_FILE)).ok()?;
    Some(Fingerprint(text.trim().to_string()))
}

/// The training state a snapshot was taken at (its finetune compute).
fn read_state(snapshot: &Path) -> Result<TrainState, StudyError> {
    let path = snapshot.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(StudyError::io(&path))?;
    serde_json::from_str(&text)
        .map_err(|e| StudyError::Config(format!("{}: not a training state: {e}", path.display())))
}
