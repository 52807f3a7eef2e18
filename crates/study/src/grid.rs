//! Sample grids of the model family at equal sampling cost (the paper's Fig. 10): every width
//! gets the step count whose cost matches one budget, the same sampler, prompts and noise, and
//! its own optimal guidance.

use serde::{Deserialize, Serialize};

use crate::analysis::Setting;
use crate::bootstrap::FidCi;

/// One row of an equal-cost grid: a width and how it was sampled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridRow {
    /// Base width.
    pub width: u32,
    /// Sampling steps chosen for the budget.
    pub steps: u32,
    /// Guidance rate (the width's optimal one).
    pub cfg: f64,
    /// Sampling GFLOPs per image actually spent.
    pub cost_gflops: f64,
    /// The same in normalised cost x steps (the largest width's evaluations).
    pub normalised: f64,
    /// FID of the row's full sample set (`samples` images).
    pub fid: f64,
    /// Its 95% interval.
    pub fid_ci: Option<FidCi>,
    /// Images behind the FID.
    pub samples: u32,
}

/// An equal-cost grid: rows of samples, one per width, as a PNG.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EqualCostGrid {
    /// Budget in normalised cost x steps.
    pub budget: f64,
    /// Sampler used by every row.
    pub sampler: String,
    /// Rows, smallest width first.
    pub rows: Vec<GridRow>,
    /// Height in pixels of one row of tiles in the PNG.
    pub tile_px: u32,
    /// White pixels between rows (and columns).
    pub gap_px: u32,
    /// PNG bytes (not in the JSON sidecar; read from the .png beside it).
    #[serde(skip)]
    pub png: Vec<u8>,
}

/// Steps that spend `budget` normalised cost x steps with a model whose evaluation costs
/// `normalised_cost` of the largest width's (guidance doubling the evaluations), at least 1.
pub fn steps_for_budget(budget: f64, normalised_cost: f64, guided: bool) -> u32 {
    let per_step = normalised_cost * if guided { 2.0 } else { 1.0 };
    (budget / per_step).round().max(1.0) as u32
}

/// The guidance rate with the best FID for `width` and `sampler` at the measured step count
/// nearest (in log steps) to `steps`.
pub fn optimal_guidance(optimal: &[Setting], width: u32, sampler: &str, steps: u32) -> Option<f64> {
    optimal
        .iter()
        .filter(|s| s.width == width && s.sampler == sampler)
        .min_by(|a, b| {
            let da = ((a.steps as f64).ln() - (steps as f64).ln()).abs();
            let db = ((b.steps as f64).ln() - (steps as f64).ln()).abs();
            da.total_cmp(&db)
        })
        .map(|s| s.cfg)
}

/// A PNG of `rows x cols` tiles (`tiles` is `rows * cols` images `[3, res, res]` in [-1, 1],
/// row-major), each scaled up `scale` times (nearest neighbour) with a `gap`-pixel white border
/// between tiles.
pub fn tiles_png(
    tiles: &[f32],
    rows: usize,
    cols: usize,
    res: usize,
    scale: usize,
    gap: usize,
) -> Result<Vec<u8>, String> {
    if tiles.len() != rows * cols * 3 * res * res || rows == 0 || cols == 0 {
        return Err(format!(
            "grid: {} values are not {rows} x {cols} images of 3 x {res} x {res}",
            tiles.len()
        ));
    }
    let grid = ldmscale_data::Image::grid_from_nchw(tiles, rows * cols, res, cols, scale, gap)
        .ok_or_else(|| format!("grid: scale {scale} must be at least 1"))?;
    Ok(grid.to_png())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_match_the_budget() {
        // The largest model with guidance spends 2 evaluations per step.
        assert_eq!(steps_for_budget(16.0, 1.0, true), 8);
        assert_eq!(steps_for_budget(16.0, 1.0, false), 16);
        // A model a quarter as costly gets four times the steps.
        assert_eq!(steps_for_budget(16.0, 0.25, true), 32);
        assert_eq!(steps_for_budget(0.1, 1.0, true), 1);
    }

    #[test]
    fn tiles_are_placed_and_scaled() {
        // 2 x 2 tiles of 1 x 1 pixel: black, white, red, blue; scaled 3x with a 1 px gap.
        let tiles = [
            -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 1.0f32,
        ];
        let png = tiles_png(&tiles, 2, 2, 1, 3, 1).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (7, 7));
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(3, 0).0, [255, 255, 255], "gap");
        assert_eq!(img.get_pixel(6, 2).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(2, 6).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(6, 6).0, [0, 0, 255]);
        assert!(tiles_png(&tiles, 3, 2, 1, 3, 1).is_err());
    }

    #[test]
    fn guidance_comes_from_the_nearest_measured_steps() {
        let s = |steps: u32, cfg: f64| Setting {
            width: 8,
            params: 1,
            sampler: "ddim".into(),
            steps,
            cfg,
            fid: 1.0,
            fid_ci: None,
            clip: None,
            cost_gflops: 1.0,
            ms_per_image: 1.0,
            seeds: 1,
            ..Default::default()
        };
        let opt = [s(2, 1.0), s(8, 3.0), s(16, 5.0)];
        assert_eq!(optimal_guidance(&opt, 8, "ddim", 1), Some(1.0));
        assert_eq!(optimal_guidance(&opt, 8, "ddim", 9), Some(3.0));
        assert_eq!(optimal_guidance(&opt, 8, "ddim", 40), Some(5.0));
        assert_eq!(optimal_guidance(&opt, 16, "ddim", 4), None);
    }
}
