//! Stage 8: adaptive sampling of the budget frontier. After the sweep, each budget whose
//! winner's margin over the runner-up has a paired interval containing 0 is undecided; the
//! cells of both settings are measured again with more samples (the same prompts extended,
//! the same seeds), round after round, until decided or the section's caps are reached. Each
//! round's plan is stored before it is measured, so a killed run resumes the same plan.
//!
//! FID falls as the sample grows, so a refined cell's headline FID, interval and KID stay over
//! its first `samples_per_cell` images, comparable with every other cell; the extra images
//! serve the paired comparison only, whose two sides are refined together.

use std::collections::{BTreeMap, HashMap};

use ldmscale_model::weights::load_unet;
use serde::{Deserialize, Serialize};

use super::sweep::{self, SweepStage};
use crate::analysis::{BudgetWinner, optimal_cfg, settings_paired, winners};
use crate::cell::{Cell, CellKey, Metric};
use crate::config::{AdaptiveSampling, StudyConfig, SweepCell};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::findings::Verdict;
use crate::fingerprint::Fingerprint;
use crate::pairing::Pairing;
use crate::stage::Stage;
use crate::store::Store;

/// The metric naming the round that last measured a cell (absent: the sweep's first pass).
pub const ROUND: &str = "sampling_round";

/// More samples for the frontier's undecided winners.
pub struct AdaptiveStage<'a> {
    /// The sweep, whose cells are measured again.
    pub sweep: SweepStage<'a>,
}

/// What the refined cells depend on: the sweep and the section.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    Fingerprint::of(
        "adaptive",
        &(sweep::fingerprint(config), &config.sweep.adaptive),
    )
}

/// The store key recording that every round of this fingerprint is done.
fn done_key(fp: &Fingerprint) -> String {
    format!("adaptive:done:{}", fp.as_str())
}

/// The store key of round `round`'s plan.
fn plan_key(fp: &Fingerprint, round: u32) -> String {
    format!("adaptive:{}:round{round}", fp.as_str())
}

/// One cell to measure again, and with how many samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Refinement {
    key: CellKey,
    samples: u32,
}

impl Stage for AdaptiveStage<'_> {
    type Output = Vec<Cell>;
    const NAME: &'static str = "adaptive";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<Vec<Cell>>, StudyError> {
        let store = Store::open(&sweep::store_path(cx))?;
        let done = store.meta(&done_key(&fingerprint(cx.config)))?.is_some();
        let off = !runs(cx);
        match done || off {
            true => sweep::grid_cells(cx, &store).map(Some),
            false => Ok(None),
        }
    }

    fn run(&self, cx: &StudyContext) -> Result<Vec<Cell>, StudyError> {
        let mut store = Store::open(&sweep::store_path(cx))?;
        let Some(section) = cx.config.sweep.adaptive.as_ref().filter(|_| runs(cx)) else {
            if cx.shard.is_some() {
                tracing::info!(
                    "adaptive sampling needs every cell: it runs on the merged store (`ldmscale study` without --shard after `ldmscale results merge`)"
                );
            }
            return sweep::grid_cells(cx, &store);
        };
        let fp = fingerprint(cx.config);
        for round in 1..=section.rounds {
            let plan = self.plan(cx, &store, section, &fp, round)?;
            if plan.is_empty() {
                tracing::info!("adaptive sampling: round {round}: nothing left to decide");
                break;
            }
            tracing::info!(
                "adaptive sampling: round {round}: {} cells to {} samples",
                plan.len(),
                plan[0].samples
            );
            self.measure(cx, &mut store, &plan, round)?;
        }
        store.set_meta(&done_key(&fp), "1")?;
        sweep::grid_cells(cx, &store)
    }
}

/// Whether this run refines: the section asks for rounds and the run sees every cell.
fn runs(cx: &StudyContext) -> bool {
    cx.shard.is_none()
        && cx
            .config
            .sweep
            .adaptive
            .as_ref()
            .is_some_and(|a| a.rounds > 0)
}

impl AdaptiveStage<'_> {
    /// Round `round`'s cells: stored ones when the round was planned before, else chosen now
    /// and stored.
    fn plan(
        &self,
        cx: &StudyContext,
        store: &Store,
        section: &AdaptiveSampling,
        fp: &Fingerprint,
        round: u32,
    ) -> Result<Vec<Refinement>, StudyError> {
        let key = plan_key(fp, round);
        if let Some(json) = store.meta(&key)? {
            return serde_json::from_str(&json).map_err(|e| {
                StudyError::Config(format!("{}: stored plan {key}: {e}", store.file()))
            });
        }
        let cells = sweep::grid_cells(cx, store)?;
        let pairing = Pairing::from_store(store, &cells)?;
        let optimal = optimal_cfg(&settings_paired(&cells, pairing));
        let prompts = self.sweep.latents.val_text.len();
        let target = section.samples(cx.config.sweep.samples_per_cell, round, prompts);
        let plan = choose(
            &winners(&optimal, None),
            &cells,
            target,
            section.max_cells_per_round,
        );
        let json = serde_json::to_string(&plan).expect("a plan serialises");
        store.set_meta(&key, &json)?;
        Ok(plan)
    }

    /// Measures the plan's cells again, width by width, replacing their rows.
    fn measure(
        &self,
        cx: &StudyContext,
        store: &mut Store,
        plan: &[Refinement],
        round: u32,
    ) -> Result<(), StudyError> {
        let stored: HashMap<CellKey, Cell> =
            store.cells()?.into_iter().map(|c| (c.key(), c)).collect();
        let mut by_width: BTreeMap<u32, Vec<&Refinement>> = BTreeMap::new();
        for r in plan {
            by_width.entry(r.key.width).or_default().push(r);
        }
        let bar = crate::progress::bar(plan.len() as u64, "adaptive");
        for (width, refinements) in by_width {
            let Some((_, dir)) = self
                .sweep
                .family
                .models
                .iter()
                .find(|(w, _)| *w as u32 == width)
            else {
                continue;
            };
            let (_, unet) = load_unet(dir, &cx.device)?;
            let inputs = self
                .sweep
                .width_inputs_for(cx, &unet, refinements[0].samples as usize);
            for r in refinements {
                bar.inc(1);
                let old = stored.get(&r.key);
                if old.is_some_and(|c| c.n_samples >= r.samples) {
                    continue; // measured before the run was stopped
                }
                let Some(old) = old else { continue };
                let cell = SweepCell {
                    sampler: old.sampler,
                    steps: old.steps,
                    cfg: old.cfg,
                    seed: old.seed,
                };
                let headline = Some(cx.config.sweep.samples_per_cell as usize);
                let (mut measured, features) =
                    self.sweep
                        .measure_with_headline(&inputs, r.key.clone(), &cell, headline)?;
                measured.metrics.push(Metric {
                    name: ROUND.into(),
                    value: round as f64,
                    ci: None,
                });
                store.insert_with_features(&measured, features.as_ref())?;
            }
        }
        bar.finish_and_clear();
        Ok(())
    }
}

/// The cells of the undecided comparisons, those nearest to decided first, whole comparisons
/// only, at most `max_cells`; cells already at `target` samples are left out.
fn choose(
    winners: &[BudgetWinner],
    cells: &[Cell],
    target: u32,
    max_cells: u32,
) -> Vec<Refinement> {
    let samples: HashMap<CellKey, u32> = cells.iter().map(|c| (c.key(), c.n_samples)).collect();
    let mut undecided: Vec<(f64, Vec<CellKey>)> = winners
        .iter()
        .filter_map(|w| {
            let margin = w.margin()?;
            if margin.verdict() == Verdict::Holds {
                return None;
            }
            let closeness = margin.interval.map_or(0.0, |i| {
                margin.value / ((i.high - i.low) / 2.0).max(f64::MIN_POSITIVE)
            });
            let runner_up = w.runner_up.as_ref()?;
            let keys = w.best.keys.iter().chain(&runner_up.keys);
            Some((closeness, keys.cloned().collect()))
        })
        .collect();
    undecided.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut plan: Vec<Refinement> = Vec::new();
    for (_, keys) in undecided {
        let new: Vec<CellKey> = keys
            .into_iter()
            .filter(|k| samples.get(k).is_some_and(|&n| n < target))
            .filter(|k| !plan.iter().any(|r| &r.key == k))
            .collect();
        if plan.len() + new.len() > max_cells as usize {
            continue;
        }
        plan.extend(new.into_iter().map(|key| Refinement {
            key,
            samples: target,
        }));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::cell;
    use crate::bootstrap::{CiMethod, FidCi};

    /// Width 8 and 16 at two budgets: at the cheap one 16 filters win by 0.2 +- 1 (undecided),
    /// at the dear one 8 filters by 5 +- 1 (decided); a third width far behind.
    fn frontier_cells(n: u32) -> Vec<Cell> {
        let c = |width, steps, fid: f64, half: f64| {
            let mut c = cell(width, "ddim", steps, 1.0, fid);
            c.n_samples = n;
            c.fid_ci = Some(FidCi {
                low: fid - half,
                high: fid + half,
                method: CiMethod::Bootstrap,
                replicates: 100,
            });
            c
        };
        vec![
            c(8, 2, 10.2, 0.5),
            c(8, 64, 2.0, 0.5),
            c(16, 1, 10.0, 0.5),
            c(16, 16, 7.0, 0.5),
            c(32, 1, 40.0, 0.5),
        ]
    }

    #[test]
    fn only_undecided_comparisons_are_refined() {
        let cells = frontier_cells(32);
        let optimal = optimal_cfg(&settings_paired(&cells, None));
        let plan = choose(&winners(&optimal, None), &cells, 64, 16);
        let mut got: Vec<(u32, u32)> = plan.iter().map(|r| (r.key.width, r.key.steps)).collect();
        got.sort();
        // Undecided: 16x1 over 8x2 (0.2 +- 1) at the budgets both fit; 8x64 wins the dear
        // budgets over 16x16 by 5 +- 1.
        assert!(got.contains(&(16, 1)) && got.contains(&(8, 2)), "{got:?}");
        assert!(!got.contains(&(8, 64)), "{got:?}");
        assert!(plan.iter().all(|r| r.samples == 64));

        // Cells already at the target are not measured again; a cap of 1 fits no comparison.
        let done = frontier_cells(64);
        assert!(choose(&winners(&optimal, None), &done, 64, 16).is_empty());
        assert!(choose(&winners(&optimal, None), &cells, 64, 1).is_empty());
    }
}
