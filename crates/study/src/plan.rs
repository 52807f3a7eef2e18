//! The budget planner: which width, sampler, steps and guidance give the best FID within a
//! sampling budget, from a results store.

use serde::Serialize;

use crate::analysis::{Setting, optimal_cfg, settings};
use crate::cell::Cell;

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
    /// Settings measured within budget.
    pub candidates: usize,
}

/// Recommends a setting for `budget`, or explains why none fits.
pub fn recommend(cells: &[Cell], budget: Budget) -> Result<Recommendation, String> {
    if cells.is_empty() {
        return Err("the results store has no cells: run a sweep first (`ldmscale study`)".into());
    }
    let optimal = optimal_cfg(&settings(cells));
    let fits = |s: &Setting| match budget {
        Budget::Gflops(g) => s.cost_gflops <= g * (1.0 + 1e-9),
        Budget::Milliseconds(ms) => s.ms_per_image <= ms,
    };
    let within: Vec<Setting> = optimal.iter().filter(|s| fits(s)).cloned().collect();
    let Some(best) = within
        .iter()
        .min_by(|a, b| a.fid.total_cmp(&b.fid))
        .cloned()
    else {
        let cheapest = optimal
            .iter()
            .min_by(|a, b| a.cost_gflops.total_cmp(&b.cost_gflops))
            .expect("non-empty");
        return Err(format!(
            "no measured setting fits the budget; the cheapest is the {}-filter model with {} {} steps: {:.3} GFLOPs, {:.1} ms per image",
            cheapest.width,
            cheapest.steps,
            cheapest.sampler,
            cheapest.cost_gflops,
            cheapest.ms_per_image
        ));
    };
    let runner_up = within
        .iter()
        .filter(|s| s.width != best.width)
        .min_by(|a, b| a.fid.total_cmp(&b.fid))
        .cloned();
    Ok(Recommendation {
        best,
        runner_up,
        candidates: within.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::paper_like;

    #[test]
    fn small_budgets_pick_small_models_and_large_budgets_large_ones() {
        let cells = paper_like();
        let low = recommend(&cells, Budget::Gflops(5.0)).unwrap();
        assert_eq!(low.best.width, 32);
        let high = recommend(&cells, Budget::Gflops(1e6)).unwrap();
        assert_eq!(high.best.width, 64);
        assert!(high.runner_up.is_some());
        let none = recommend(&cells, Budget::Gflops(1e-3)).unwrap_err();
        assert!(none.contains("cheapest"), "{none}");
        assert!(recommend(&[], Budget::Gflops(1.0)).is_err());
    }
}
