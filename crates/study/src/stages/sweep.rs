//! Stage 7: the sweep: width x sampler x steps x guidance x seed, one store row per cell.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Tensor;
use ldmscale_model::UNet;
use ldmscale_model::weights::load_unet;
use ldmscale_pipeline::{LatentDiffusion, SamplingSpec};

use super::evaluator::{self, Evaluator};
use super::family::{self, Family};
use super::first_stage::FirstStageModel;
use super::latents::{Latents, Prompts};
use crate::cell::{Cell, CellKey, Variant};
use crate::config::{StudyConfig, SweepCell};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::{Fingerprint, per_width};
use crate::stage::Stage;
use crate::store::{FeatureRows, STUDY_FINGERPRINT, Store, shard_owns};

/// Measures every cell the store lacks.
pub struct SweepStage<'a> {
    /// The trained widths.
    pub family: &'a Family,
    /// Prompts and latent shape.
    pub latents: &'a Latents,
    /// FID and CLIP score.
    pub evaluator: &'a Evaluator,
    /// The decoder.
    pub first: &'a FirstStageModel,
}

/// What width `width`'s cells depend on (not the grid: a cell's key says where in it it lies).
pub fn width_fingerprint(config: &StudyConfig, width: usize) -> Fingerprint {
    let s = &config.sweep;
    Fingerprint::of(
        "sweep",
        &(
            family::width_fingerprint(config, width),
            evaluator::fingerprint(config),
            s.samples_per_cell,
            s.bootstrap,
        ),
    )
}

/// What the sweep depends on: every width's cells and the grid.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    let widths = per_width(config, width_fingerprint);
    let s = &config.sweep;
    Fingerprint::of(
        "sweep",
        &(
            widths,
            &s.samplers,
            &s.steps,
            &s.cfg,
            &s.seeds,
            s.dpm_max_steps,
        ),
    )
}

/// The store key recording which fingerprint a width's cells were measured for.
fn meta_key(width: usize) -> String {
    format!("fingerprint:{}:w{width}", Variant::Base)
}

/// The store this run writes (one per shard).
pub fn store_path(cx: &StudyContext) -> PathBuf {
    match cx.shard {
        Some((i, n)) => cx.path(format!("results.shard{i}of{n}.sqlite")),
        None => cx.path("results.sqlite"),
    }
}

/// The key of a sweep cell of `width`.
pub fn cell_key(width: usize, cell: &SweepCell) -> CellKey {
    CellKey {
        variant: Variant::Base,
        width: width as u32,
        sampler: cell.sampler,
        steps: cell.steps,
        cfg_milli: (cell.cfg * 1000.0).round() as i64,
        seed: cell.seed,
    }
}

impl Stage for SweepStage<'_> {
    type Output = Vec<Cell>;
    const NAME: &'static str = "sweep";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<Vec<Cell>>, StudyError> {
        let store = Store::open(&store_path(cx))?;
        let cells = cx.config.cells();
        for &w in &cx.config.widths {
            let current = width_fingerprint(cx.config, w);
            if store.meta(&meta_key(w))?.as_deref() != Some(current.as_str()) {
                return Ok(None);
            }
            for cell in &cells {
                if self.owns(cx, w, cell) && !store.contains(&cell_key(w, cell))? {
                    return Ok(None);
                }
            }
        }
        grid_cells(cx, &store).map(Some)
    }

    fn run(&self, cx: &StudyContext) -> Result<Vec<Cell>, StudyError> {
        let mut store = Store::open(&store_path(cx))?;
        record_study(cx.config, &store)?;
        self.keep_reference(&mut store)?;
        let cells = cx.config.cells();
        let bar = crate::progress::bar((cells.len() * self.family.models.len()) as u64, "sweep");
        for (w, dir) in &self.family.models {
            self.refresh_width(cx, &mut store, *w)?;
            let (_, unet) = load_unet(dir, &cx.device)?;
            let width = self.width_inputs(cx, &unet);
            for cell in &cells {
                bar.inc(1);
                let key = cell_key(*w, cell);
                if !self.owns(cx, *w, cell) || store.contains(&key)? {
                    continue;
                }
                bar.set_message(format!(
                    "w{w} {} x{} cfg {}",
                    cell.sampler, cell.steps, cell.cfg
                ));
                let (measured, features) = self.measure(&width, key, cell)?;
                store.insert_with_features(&measured, features.as_ref())?;
            }
        }
        bar.finish_and_clear();
        grid_cells(cx, &store)
    }
}

impl SweepStage<'_> {
    fn owns(&self, cx: &StudyContext, width: usize, cell: &SweepCell) -> bool {
        cx.shard
            .is_none_or(|(i, n)| shard_owns(&cell_key(width, cell), i, n))
    }

    /// Drops a width's cells measured for another model or evaluator.
    fn refresh_width(
        &self,
        cx: &StudyContext,
        store: &mut Store,
        width: usize,
    ) -> Result<(), StudyError> {
        let current = width_fingerprint(cx.config, width);
        let key = meta_key(width);
        if store.meta(&key)?.as_deref() != Some(current.as_str()) {
            let removed = store.remove_width(Variant::Base, width as u32)?;
            if removed > 0 {
                tracing::info!(
                    "width {width}: {removed} cells were measured for another model; measuring again"
                );
            }
            store.set_meta(&key, current.as_str())?;
        }
        Ok(())
    }

    /// What every cell of one width shares: its model, cost, prompts and their CLIP text
    /// embedding.
    pub(crate) fn width_inputs<'a>(&'a self, cx: &StudyContext, unet: &'a UNet) -> WidthInputs<'a> {
        self.width_inputs_for(cx, unet, samples_per_cell(cx))
    }

    /// [`Self::width_inputs`] with the first `samples` prompts (adaptive sampling's rounds).
    pub(crate) fn width_inputs_for<'a>(
        &'a self,
        cx: &StudyContext,
        unet: &'a UNet,
        samples: usize,
    ) -> WidthInputs<'a> {
        let prompts = self.latents.prompts(samples, &cx.device);
        let [_, h, w] = self.latents.latent_shape;
        let clip = &self.evaluator.features.clip.model;
        WidthInputs {
            model: self.latents.model(unet, self.first),
            params: unet.num_params() as u64,
            gflops_per_eval: unet.cost(h, w, self.latents.val_text.length).gflops(),
            text_embedding: clip.embed_text(prompts.cond.clone(), prompts.mask.clone()),
            prompts,
        }
    }

    /// Stores the reference features the cells' kept features are paired against.
    fn keep_reference(&self, store: &mut Store) -> Result<(), StudyError> {
        let reference = self.evaluator.reference_rows()?;
        if keeps(&reference) && store.reference_features()?.as_ref() != Some(&reference) {
            store.set_reference_features(&reference)?;
        }
        Ok(())
    }

    /// Samples one cell's images and measures them; the features are kept where small.
    pub(crate) fn measure(
        &self,
        width: &WidthInputs,
        key: CellKey,
        cell: &SweepCell,
    ) -> Result<(Cell, Option<FeatureRows>), StudyError> {
        self.measure_with_headline(width, key, cell, None)
    }

    /// [`Self::measure`], with the cell's FID, interval, KID and CLIP score taken over its first
    /// `headline` images only and the features of all of them kept. Adaptive sampling measures
    /// a cell again with more images to decide a paired comparison; FID falls with the sample
    /// size, so its headline stays at the sweep's size, comparable with every other cell.
    pub(crate) fn measure_with_headline(
        &self,
        width: &WidthInputs,
        key: CellKey,
        cell: &SweepCell,
        headline: Option<usize>,
    ) -> Result<(Cell, Option<FeatureRows>), StudyError> {
        let spec = SamplingSpec {
            sampler: cell.sampler,
            steps: cell.steps,
            cfg: cell.cfg,
            seed: cell.seed,
        };
        let prompts = &width.prompts;
        let t0 = Instant::now();
        let generated = width.model.generate(&spec, &prompts.cond, &prompts.null)?;
        let wall_seconds = t0.elapsed().as_secs_f64();
        let [n_samples, _, _] = prompts.cond.dims();
        let scored = headline.unwrap_or(n_samples).min(n_samples);
        let images = generated.images.clone().narrow(0, 0, scored);
        let (fid, fid_ci, scored_features) = self
            .evaluator
            .fid_and_features(images.clone(), key.seed_for("bootstrap"))?;
        let features = match scored < n_samples {
            true => self.all_features(generated.images)?,
            false => scored_features.clone(),
        };
        let clip = &self.evaluator.features.clip.model;
        let text = width.text_embedding.clone().narrow(0, 0, scored);
        let cos: f32 = (clip.embed_images(images) * text)
            .sum_dim(1)
            .mean()
            .into_scalar();
        let cell = Cell {
            variant: key.variant,
            width: key.width,
            params: width.params,
            sampler: cell.sampler,
            steps: cell.steps,
            cfg: cell.cfg,
            seed: cell.seed,
            n_samples: n_samples as u32,
            fid,
            fid_ci,
            // Unclamped, unlike torchmetrics' CLIP score: an in-domain encoder's cosines centre
            // near zero and a negative mean is information, not noise.
            in_domain_clip: Some(100.0 * cos as f64),
            metrics: vec![self.evaluator.kid(&scored_features, key.seed_for("kid"))?],
            evaluations: generated.evaluations as u64,
            gflops_per_eval: width.gflops_per_eval,
            wall_seconds,
        };
        Ok((cell, keeps(&features).then_some(features)))
    }

    /// The FID features of every image.
    fn all_features(&self, images: Tensor<4>) -> Result<FeatureRows, StudyError> {
        let (data, d) = self.evaluator.features.features(images)?;
        FeatureRows::new(data, d).map_err(StudyError::stage("sweep"))
    }
}

/// The most feature values kept per cell (4 MB): the small presets' cells (quick: 32 x 128)
/// are compared paired; `full` (1000 x 2048) and `paper` would need gigabytes of store, and
/// their findings fall back to the marginal intervals.
const MAX_KEPT_VALUES: usize = 1 << 20;

pub(crate) fn keeps(rows: &FeatureRows) -> bool {
    rows.data.len() <= MAX_KEPT_VALUES
}

/// See [`SweepStage::width_inputs`].
pub(crate) struct WidthInputs<'a> {
    model: LatentDiffusion<'a>,
    params: u64,
    gflops_per_eval: f64,
    prompts: Prompts,
    text_embedding: Tensor<2>,
}

/// The stored cells that lie on the current config's grid (a store may hold cells of an
/// earlier, larger grid).
pub fn grid_cells(cx: &StudyContext, store: &Store) -> Result<Vec<Cell>, StudyError> {
    let cells = cx.config.cells();
    let mut keys = std::collections::HashSet::new();
    for &w in &cx.config.widths {
        keys.extend(cells.iter().map(|c| cell_key(w, c)));
    }
    Ok(store
        .cells()?
        .into_iter()
        .filter(|c| keys.contains(&c.key()))
        .collect())
}

/// Records that the store holds `config`'s cells (adopting a store made before fingerprints).
pub fn adopt_store(cx: &StudyContext, config: &StudyConfig) -> Result<(), StudyError> {
    let path = store_path(cx);
    if !path.exists() {
        return Ok(());
    }
    let store = Store::open(&path)?;
    record_study(config, &store)?;
    for &w in &config.widths {
        if store.meta(&meta_key(w))?.is_none() {
            store.set_meta(&meta_key(w), width_fingerprint(config, w).as_str())?;
        }
    }
    Ok(())
}

/// Records which study the store's cells belong to, so `results merge` can refuse another's.
fn record_study(config: &StudyConfig, store: &Store) -> Result<(), StudyError> {
    let study = evaluator::fingerprint(config);
    store.set_meta(STUDY_FINGERPRINT, study.as_str())?;
    Ok(())
}

/// Images per cell: one per prompt.
pub fn samples_per_cell(cx: &StudyContext) -> usize {
    cx.config.sweep.samples_per_cell as usize
}
