//! The points a scaling law is fitted to, and the cost of a width that was not trained.

use std::collections::BTreeMap;

use faer::Mat;
use faer::linalg::solvers::SolveLstsq;

use super::FrontierPoint;
use crate::analysis::settings;
use crate::cell::{Cell, Variant};

/// Each base width's sampling frontier: at each number of evaluations per image the best
/// seed-averaged FID over samplers, steps and guidance, kept only where it beats every cheaper
/// point of the width (what a user with that budget would run).
pub fn frontier(cells: &[Cell]) -> Vec<FrontierPoint> {
    let base: Vec<Cell> = cells
        .iter()
        .filter(|c| c.variant == Variant::Base)
        .cloned()
        .collect();
    let gflops: BTreeMap<u32, f64> = base.iter().map(|c| (c.width, c.gflops_per_eval)).collect();
    let mut best: BTreeMap<(u32, u64), FrontierPoint> = BTreeMap::new();
    for s in settings(&base) {
        let per_eval = gflops[&s.width];
        if per_eval <= 0.0 {
            continue;
        }
        let evaluations = (s.cost_gflops / per_eval).round();
        let point = FrontierPoint {
            width: s.width,
            params: s.params,
            evaluations,
            gflops_per_eval: per_eval,
            fid: s.fid,
        };
        let slot = best
            .entry((s.width, evaluations as u64))
            .or_insert(point.clone());
        if point.fid < slot.fid {
            *slot = point;
        }
    }
    let mut out = Vec::new();
    let mut floor: Option<(u32, f64)> = None;
    for ((width, _), point) in best {
        let beaten = matches!(floor, Some((w, f)) if w == width && f <= point.fid);
        if !beaten {
            floor = Some((width, point.fid));
            out.push(point);
        }
    }
    out
}

/// Parameters and GFLOPs per evaluation as functions of the width, for widths not trained.
///
/// Every channel count of the family is a multiple of the width, so weights and convolution
/// FLOPs grow as width², norms, biases and attention over fixed tokens as width: both are
/// quadratics in the width, fitted exactly from three or more measured widths.
#[derive(Clone, Debug, PartialEq)]
pub struct WidthCosts {
    params: [f64; 3],
    gflops: [f64; 3],
}

impl WidthCosts {
    /// From the frontier's widths (at least three).
    pub fn fit(points: &[FrontierPoint]) -> Result<Self, String> {
        let by_width: BTreeMap<u32, (f64, f64)> = points
            .iter()
            .map(|p| (p.width, (p.params as f64, p.gflops_per_eval)))
            .collect();
        if by_width.len() < 3 {
            return Err(format!(
                "the cost of an untrained width is fitted from at least 3 measured widths; the store has {}",
                by_width.len()
            ));
        }
        let rows: Vec<(f64, f64, f64)> = by_width
            .iter()
            .map(|(&w, &(p, g))| (w as f64, p, g))
            .collect();
        Ok(Self {
            params: quadratic(&rows, |r| r.1),
            gflops: quadratic(&rows, |r| r.2),
        })
    }

    /// Parameters of width `width`.
    pub fn params(&self, width: u32) -> u64 {
        eval(&self.params, width as f64).round().max(0.0) as u64
    }

    /// GFLOPs of one evaluation of width `width`.
    pub fn gflops_per_eval(&self, width: u32) -> f64 {
        eval(&self.gflops, width as f64)
    }
}

/// `c0 + c1 w + c2 w²` fitted by least squares (exact through three points).
fn quadratic(rows: &[(f64, f64, f64)], y: impl Fn(&(f64, f64, f64)) -> f64) -> [f64; 3] {
    // Width in units of the largest keeps the columns of one scale.
    let scale = rows.iter().map(|r| r.0).fold(1.0, f64::max);
    let design = Mat::from_fn(rows.len(), 3, |i, j| (rows[i].0 / scale).powi(j as i32));
    let target = Mat::from_fn(rows.len(), 1, |i, _| y(&rows[i]));
    let c = design.col_piv_qr().solve_lstsq(&target);
    [c[(0, 0)], c[(1, 0)] / scale, c[(2, 0)] / (scale * scale)]
}

fn eval(c: &[f64; 3], w: f64) -> f64 {
    c[0] + c[1] * w + c[2] * w * w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::cell;

    #[test]
    fn the_frontier_keeps_each_widths_best_and_drops_dominated_points() {
        let mut cells = vec![
            cell(8, "ddim", 4, 1.0, 9.0),
            cell(8, "ddim", 4, 3.0, 6.0),  // 8 evaluations
            cell(8, "ddim", 8, 1.0, 7.0),  // 8 evaluations, worse than guided x4
            cell(8, "ddim", 16, 1.0, 6.5), // 16 evaluations but no better than 6.0: dropped
            cell(8, "ddim", 16, 3.0, 5.0),
            cell(16, "ddim", 4, 1.0, 8.0),
        ];
        let mut other = cell(8, "ddim", 4, 3.0, 1.0);
        other.variant = Variant::SuperRes { finetune_steps: 5 };
        cells.push(other);
        let f = frontier(&cells);
        let got: Vec<(u32, f64, f64)> = f.iter().map(|p| (p.width, p.evaluations, p.fid)).collect();
        assert_eq!(
            got,
            vec![(8, 4.0, 9.0), (8, 8.0, 6.0), (8, 32.0, 5.0), (16, 4.0, 8.0)]
        );
    }

    #[test]
    fn untrained_widths_cost_what_the_quadratic_says() {
        let truth = |w: f64| (40.0 + 7.0 * w + 2.5 * w * w, 0.01 + 0.0004 * w * w);
        let points: Vec<FrontierPoint> = [8u32, 16, 32]
            .iter()
            .map(|&w| FrontierPoint {
                width: w,
                params: truth(w as f64).0 as u64,
                evaluations: 4.0,
                gflops_per_eval: truth(w as f64).1,
                fid: 3.0,
            })
            .collect();
        let costs = WidthCosts::fit(&points).unwrap();
        assert_eq!(costs.params(24), truth(24.0).0 as u64);
        assert!((costs.gflops_per_eval(64) - truth(64.0).1).abs() < 1e-9);
        assert!(
            WidthCosts::fit(&points[..2])
                .unwrap_err()
                .contains("at least 3")
        );
    }
}
