//! Stage 8: sample grids of every width at equal sampling cost (Fig. 10).

use std::path::Path;

use burn::tensor::Tensor;
use ldmscale_diffusion::SamplerId;
use ldmscale_model::UNet;
use ldmscale_model::weights::{load_unet, write_atomic};
use ldmscale_pipeline::{SamplingSpec, values};

use super::evaluator::Evaluator;
use super::family::Family;
use super::first_stage::FirstStageModel;
use super::latents::Latents;
use super::sweep;
use crate::analysis::{Setting, optimal_cfg, settings};
use crate::bootstrap::FidCi;
use crate::cell::Cell;
use crate::config::StudyConfig;
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::{Fingerprint, stable_seed};
use crate::grid::{self, EqualCostGrid, GridRow};
use crate::stage::Stage;

/// Where grids and the learning check are kept.
pub const DIR: &str = "grids";
/// Columns of the sample grids.
const GRID_COLUMNS: usize = 8;
/// Tiles are scaled up to at least this many pixels, so small images stay visible.
const MIN_TILE_PX: usize = 96;
const GAP_PX: usize = 4;

/// DDIM samples of the sweep's prompts with the sweep's seed 0, measured: what the grids and
/// the learning check draw.
pub struct DdimProbe<'a> {
    /// The decoder.
    pub first: &'a FirstStageModel,
    /// Prompts and latent shape.
    pub latents: &'a Latents,
    /// FID.
    pub evaluator: &'a Evaluator,
}

impl DdimProbe<'_> {
    /// The images of every sweep prompt, their FID and interval.
    pub fn measure(
        &self,
        cx: &StudyContext,
        unet: &UNet,
        steps: u32,
        cfg: f64,
        bootstrap_seed: u64,
    ) -> Result<(Tensor<4>, f64, Option<FidCi>), StudyError> {
        let model = self.latents.model(unet, self.first);
        let spec = SamplingSpec {
            sampler: SamplerId::Ddim,
            steps,
            cfg,
            seed: 0,
        };
        let prompts = self
            .latents
            .prompts(sweep::samples_per_cell(cx), &cx.device);
        let images = model.generate(&spec, &prompts.cond, &prompts.null)?.images;
        let (fid, ci) = self.evaluator.fid(images.clone(), bootstrap_seed)?;
        Ok((images, fid, ci))
    }
}

/// Draws the grids of `sweep.grid_budgets`.
pub struct GridsStage<'a> {
    /// The trained widths.
    pub family: &'a Family,
    /// The sweep's cells (each width's optimal guidance).
    pub cells: &'a [Cell],
    /// How samples are drawn.
    pub probe: DdimProbe<'a>,
}

/// What the grids depend on.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    Fingerprint::of(
        "grids",
        &(sweep::fingerprint(config), &config.sweep.grid_budgets),
    )
}

fn files(dir: &Path, budget: f64) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.join(format!("equal-cost-{budget}.json")),
        dir.join(format!("equal-cost-{budget}.png")),
    )
}

impl Stage for GridsStage<'_> {
    type Output = Vec<EqualCostGrid>;
    const NAME: &'static str = "grids";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<Vec<EqualCostGrid>>, StudyError> {
        let mut grids = Vec::new();
        for &budget in &cx.config.sweep.grid_budgets {
            let (json, png) = files(&cx.path(DIR), budget);
            let (Ok(text), Ok(png)) = (std::fs::read_to_string(json), std::fs::read(png)) else {
                return Ok(None);
            };
            let Ok(mut grid) = serde_json::from_str::<EqualCostGrid>(&text) else {
                return Ok(None);
            };
            grid.png = png;
            grids.push(grid);
        }
        Ok(Some(grids))
    }

    fn run(&self, cx: &StudyContext) -> Result<Vec<EqualCostGrid>, StudyError> {
        let optimal = optimal_cfg(&settings(self.cells));
        let mut unets = Vec::new();
        let [_, h, w] = self.probe.latents.latent_shape;
        for (width, dir) in &self.family.models {
            let (_, unet) = load_unet(dir, &cx.device)?;
            let gflops = unet.cost(h, w, self.probe.latents.val_text.length).gflops();
            unets.push((*width as u32, unet, gflops));
        }
        let mut grids = Vec::new();
        for &budget in &cx.config.sweep.grid_budgets {
            tracing::info!("samples at equal cost: {budget} normalised cost x steps");
            let grid = self.grid(cx, budget, &unets, &optimal)?;
            save(&cx.path(DIR), &grid)?;
            grids.push(grid);
        }
        Ok(grids)
    }
}

impl GridsStage<'_> {
    /// One row per width, each at the DDIM step count that spends `budget` normalised cost x
    /// steps at its own optimal guidance, with the same prompts and noise.
    fn grid(
        &self,
        cx: &StudyContext,
        budget: f64,
        unets: &[(u32, UNet, f64)],
        optimal: &[Setting],
    ) -> Result<EqualCostGrid, StudyError> {
        let largest = unets.iter().map(|u| u.2).fold(0.0, f64::max);
        let (mut rows, mut tiles) = (Vec::new(), Vec::new());
        for (width, unet, gflops) in unets {
            let normalised = gflops / largest;
            // The guidance the sweep found best near the step count a guided run would get.
            let guided_steps = grid::steps_for_budget(budget, normalised, true);
            let ddim = SamplerId::Ddim.as_str();
            let cfg = grid::optimal_guidance(optimal, *width, ddim, guided_steps).unwrap_or(1.0);
            let guided = cfg > 1.0;
            let steps = grid::steps_for_budget(budget, normalised, guided);
            let seed = stable_seed(&["grid", &budget.to_string(), &width.to_string()]);
            let (images, fid, fid_ci) = self.probe.measure(cx, unet, steps, cfg, seed)?;
            let [n, ..] = images.dims();
            tiles.extend(values(images.narrow(0, 0, GRID_COLUMNS.min(n))));
            let evaluations = steps as f64 * if guided { 2.0 } else { 1.0 };
            rows.push(GridRow {
                width: *width,
                steps,
                cfg,
                cost_gflops: evaluations * gflops,
                normalised: evaluations * normalised,
                fid,
                fid_ci,
                samples: n as u32,
            });
        }
        let res = cx.config.resolution;
        let cols = tiles.len() / (rows.len() * 3 * res * res);
        let scale = MIN_TILE_PX.div_ceil(res).max(1);
        let png = grid::tiles_png(&tiles, rows.len(), cols, res, scale, GAP_PX)
            .map_err(StudyError::stage("grids"))?;
        Ok(EqualCostGrid {
            budget,
            sampler: SamplerId::Ddim.to_string(),
            rows,
            tile_px: (res * scale) as u32,
            gap_px: GAP_PX as u32,
            png,
        })
    }
}

/// Writes a grid's JSON and PNG.
fn save(dir: &Path, grid: &EqualCostGrid) -> Result<(), StudyError> {
    std::fs::create_dir_all(dir).map_err(StudyError::io(dir))?;
    let (json, png) = files(dir, grid.budget);
    write_atomic(&png, &grid.png)?;
    let text = serde_json::to_string_pretty(grid).expect("grid serialises");
    write_atomic(&json, text.as_bytes())?;
    Ok(())
}
