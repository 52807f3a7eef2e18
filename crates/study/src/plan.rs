//! The budget planner: which width, sampler, steps and guidance give the best FID within a
//! sampling budget, from a results store.

use std::sync::Arc;

use serde::Serialize;

use crate::analysis::{Setting, settings_paired};
use crate::cell::{Cell, Variant};
use crate::findings::{Difference, Verdict};
use crate::pairing::Pairing;

/// A budget in GFLOPs per image or in measured milliseconds per image on this machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Sampling GFLOPs per image (CFG's doubled evaluations counted).
    Gflops(f64),
    /// Wall milliseconds per image, as measured during the sweep.
    Milliseconds(f64),
}

/// The planner's answer.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    /// The best setting within budget.
    pub best: Setting,
    /// The runner-up from another model size, if any (how much the choice of size matters).
    pub runner_up: Option<Setting>,
    /// `FID(runner-up) - FID(best)` with its 95% interval (paired where both kept their
    /// features, else the range the two intervals allow); None without a runner-up.
    pub margin: Option<Difference>,
    /// Whether the margin's interval lies above 0 (false without a runner-up).
    pub decided: bool,
    /// Settings (width, sampler, steps, guidance) measured within budget.
    pub candidates: usize,
}

/// Recommends a setting for `budget`, or explains why none fits.
pub fn recommend(cells: &[Cell], budget: Budget) -> Result<Recommendation, String> {
    recommend_paired(cells, budget, None)
}

/// [`recommend`] with the margin over the runner-up paired where `pairing` kept both sides'
/// features.
pub fn recommend_paired(
    cells: &[Cell],
    budget: Budget,
    pairing: Option<Arc<Pairing>>,
) -> Result<Recommendation, String> {
    // The question is which text-to-image model to sample: downstream variants answer others.
    let base: Vec<Cell> = cells
        .iter()
        .filter(|c| c.variant == Variant::Base)
        .cloned()
        .collect();
    let cells = &base[..];
    if cells.is_empty() {
        return Err("the results store has no cells: run a sweep first (`ldmscale study`)".into());
    }
    // Every guidance rate competes: an unguided cell costs half a guided one, so choosing each
    // setting's best guidance before applying the budget would drop cells that fit.
    let all = settings_paired(cells, pairing);
    let fits = |s: &Setting| match budget {
        Budget::Gflops(g) => s.cost_gflops <= g * (1.0 + 1e-9),
        Budget::Milliseconds(ms) => s.ms_per_image <= ms,
    };
    let within: Vec<Setting> = all.iter().filter(|s| fits(s)).cloned().collect();
    let Some(best) = within
        .iter()
        .min_by(|a, b| a.fid.total_cmp(&b.fid))
        .cloned()
    else {
        let cheapest = all
            .iter()
            .min_by(|a, b| a.cost_gflops.total_cmp(&b.cost_gflops))
            .expect("non-empty");
        return Err(format!(
            "no measured setting fits the budget; the cheapest is the {}-filter model with {} {} steps at guidance {}: {:.4} GFLOPs, {:.1} ms per image",
            cheapest.width,
            cheapest.steps,
            cheapest.sampler,
            cheapest.cfg,
            cheapest.cost_gflops,
            cheapest.ms_per_image
        ));
    };
    let runner_up = within
        .iter()
        .filter(|s| s.width != best.width)
        .min_by(|a, b| a.fid.total_cmp(&b.fid))
        .cloned();
    let (best, runner_up) = crate::analysis::paired_order(best, runner_up);
    let margin = runner_up.as_ref().map(|r| Difference::fid_gap(&best, r));
    Ok(Recommendation {
        decided: margin.is_some_and(|m| m.verdict() == Verdict::Holds),
        margin,
        best,
        runner_up,
        candidates: within.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::settings;
    use crate::analysis::tests::paper_like;
    use crate::bootstrap::{CiMethod, FidCi};

    #[test]
    fn small_budgets_pick_small_models_and_large_budgets_large_ones() {
        let cells = paper_like();
        let low = recommend(&cells, Budget::Gflops(5.0)).unwrap();
        assert_eq!(low.best.width, 32);
        let high = recommend(&cells, Budget::Gflops(1e6)).unwrap();
        assert_eq!(high.best.width, 64);
        assert!(high.runner_up.is_some());
        // No intervals: a margin, but nothing decided.
        let m = high.margin.unwrap();
        assert_eq!(m.value, high.runner_up.unwrap().fid - high.best.fid);
        assert!(m.value > 0.0 && !high.decided);
        assert!(low.margin.is_none() && !low.decided, "only one size fits");
        let none = recommend(&cells, Budget::Gflops(1e-3)).unwrap_err();
        assert!(none.contains("cheapest"), "{none}");
        assert!(recommend(&[], Budget::Gflops(1.0)).is_err());
    }

    /// The planner against a brute-force scan of every stored setting, at budgets between and
    /// on every measured cost (an unguided cell is cheaper than its guided twin).
    #[test]
    fn planner_equals_a_brute_force_scan() {
        let cells = paper_like();
        let all = settings(&cells);
        let mut budgets: Vec<f64> = all.iter().map(|s| s.cost_gflops).collect();
        budgets.extend(all.iter().map(|s| s.cost_gflops * 1.37));
        for budget in budgets {
            let scan = all
                .iter()
                .filter(|s| s.cost_gflops <= budget)
                .min_by(|a, b| a.fid.total_cmp(&b.fid))
                .expect("each budget is at least one setting's cost");
            let rec = recommend(&cells, Budget::Gflops(budget)).unwrap();
            assert_eq!(rec.best.fid, scan.fid, "budget {budget}");
            assert!(rec.best.cost_gflops <= budget * (1.0 + 1e-9));
            let fitting = all.iter().filter(|s| s.cost_gflops <= budget).count();
            assert_eq!(rec.candidates, fitting, "budget {budget}");
        }
    }

    /// The reported case: the cheapest cells are unguided, and their guided twins of lower FID
    /// cost twice as much; a budget between the two must still find the unguided cells.
    #[test]
    fn unguided_cells_count_when_guided_ones_do_not_fit() {
        let cells = paper_like();
        let all = settings(&cells);
        let unguided = all
            .iter()
            .filter(|s| s.cfg == 1.0)
            .min_by(|a, b| a.cost_gflops.total_cmp(&b.cost_gflops))
            .expect("paper_like has unguided cells");
        let rec = recommend(&cells, Budget::Gflops(unguided.cost_gflops)).unwrap();
        assert_eq!(rec.best.cfg, 1.0);
    }

    /// The margin decides when the intervals leave room for no other order.
    #[test]
    fn the_margin_decides_only_outside_its_interval() {
        let with_half = |half: f64| -> Vec<Cell> {
            let mut cells = paper_like();
            for c in &mut cells {
                let (low, high) = (c.fid - half, c.fid + half);
                let method = CiMethod::Bootstrap;
                c.fid_ci = Some(FidCi {
                    low,
                    high,
                    method,
                    replicates: 100,
                });
            }
            cells
        };
        let narrow = recommend(&with_half(0.01), Budget::Gflops(1e6)).unwrap();
        let i = narrow.margin.unwrap().interval.unwrap();
        assert!(i.low > 0.0 && narrow.decided, "{i:?}");
        let wide = recommend(&with_half(100.0), Budget::Gflops(1e6)).unwrap();
        let i = wide.margin.unwrap().interval.unwrap();
        assert!(i.low < 0.0 && !wide.decided, "{i:?}");
    }
}
