//! The paper's analysis of a sweep: optimal guidance per model and step count (Fig. 8), FID
//! against sampling cost at the optimal guidance (Figs. 9, 11), the best model under a budget and
//! the costs where a larger model overtakes a smaller one. The paper's claims judged on these
//! are in [`crate::findings`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::bootstrap::{CiMethod, FidCi};
use crate::cell::{Cell, CellKey};
use crate::findings::Difference;
use crate::pairing::{Pairing, PairingHandle};
use crate::store::KID;

/// A (model, sampler, steps, guidance) setting with its FID averaged over seeds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Setting {
    /// Base width.
    pub width: u32,
    /// Parameters.
    pub params: u64,
    /// Sampler.
    pub sampler: String,
    /// Steps.
    pub steps: u32,
    /// Guidance rate.
    pub cfg: f64,
    /// Mean FID over seeds.
    pub fid: f64,
    /// 95% interval: a single seed's bootstrap interval, or (several seeds) the spread of the
    /// mean over seeds; `FidCi::method` says which.
    pub fid_ci: Option<FidCi>,
    /// Mean CLIP-type score over seeds, where measured.
    pub clip: Option<f64>,
    /// Mean KID over seeds, where every seed measured it.
    pub kid: Option<f64>,
    /// Its 95% interval, by the rule of `fid_ci`.
    pub kid_ci: Option<FidCi>,
    /// Sampling GFLOPs per image.
    pub cost_gflops: f64,
    /// Wall milliseconds per image.
    pub ms_per_image: f64,
    /// Seeds averaged.
    pub seeds: usize,
    /// Images per seed (the fewest of its cells; adaptive sampling adds to undecided ones).
    pub samples: u32,
    /// The cells averaged, by seed.
    #[serde(skip)]
    pub keys: Vec<CellKey>,
    /// The kept features, for paired comparisons.
    #[serde(skip)]
    pub pairing: PairingHandle,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The keys of a setting's cells, by seed.
fn seed_ordered_keys(cells: &[&Cell]) -> Vec<CellKey> {
    let mut keys: Vec<CellKey> = cells.iter().map(|c| c.key()).collect();
    keys.sort_by_key(|k| k.seed);
    keys
}

/// A cell's CLIP score: the general one where measured, else the in-domain one.
fn clip_score(c: &&Cell) -> Option<f64> {
    let general = c.metrics.iter().find(|m| m.name == "clip").map(|m| m.value);
    general.or(c.in_domain_clip)
}

/// Averages cells over seeds.
pub fn settings(cells: &[Cell]) -> Vec<Setting> {
    settings_paired(cells, None)
}

/// [`settings`] linked to the kept features, for paired comparisons.
pub fn settings_paired(cells: &[Cell], pairing: Option<Arc<Pairing>>) -> Vec<Setting> {
    let mut groups: BTreeMap<(u32, String, u32, i64), Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        let cfg_milli = c.key().cfg_milli;
        groups
            .entry((c.width, c.sampler.as_str().to_string(), c.steps, cfg_milli))
            .or_default()
            .push(c);
    }
    groups
        .into_values()
        .map(|g| setting_of(&g, &pairing))
        .collect()
}

/// The mean of per-seed values and its 95% interval: the one seed's own interval, or (several
/// seeds) mean +- 1.96 standard errors over seeds.
fn seed_mean(values: &[(f64, Option<FidCi>)]) -> Option<(f64, Option<FidCi>)> {
    let mean = mean(values.iter().map(|v| v.0))?;
    if values.len() == 1 {
        return Some((mean, values[0].1));
    }
    let n = values.len() as f64;
    let var = values.iter().map(|v| (v.0 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = 1.96 * var.sqrt() / n.sqrt();
    let ci = FidCi {
        low: mean - half,
        high: mean + half,
        method: CiMethod::SeedSpread,
        replicates: values.len() as u32,
    };
    Some((mean, Some(ci)))
}

/// A cell's KID metric with its interval.
fn kid_of(c: &&Cell) -> Option<(f64, Option<FidCi>)> {
    let m = c.metrics.iter().find(|m| m.name == KID)?;
    Some((m.value, m.ci))
}

/// The KID over seeds, only when every seed measured it (a partial mean would mix seeds).
fn seed_kid(g: &[&Cell]) -> (Option<f64>, Option<FidCi>) {
    let kids: Option<Vec<_>> = g.iter().map(kid_of).collect();
    match kids.as_deref().and_then(seed_mean) {
        Some((kid, ci)) => (Some(kid), ci),
        None => (None, None),
    }
}

/// One setting from its cells (one per seed).
fn setting_of(g: &[&Cell], pairing: &Option<Arc<Pairing>>) -> Setting {
    let first = g[0];
    let fids: Vec<_> = g.iter().map(|c| (c.fid, c.fid_ci)).collect();
    let (fid, fid_ci) = seed_mean(&fids).expect("non-empty");
    let (kid, kid_ci) = seed_kid(g);
    Setting {
        width: first.width,
        params: first.params,
        sampler: first.sampler.as_str().to_string(),
        steps: first.steps,
        cfg: first.cfg,
        fid,
        fid_ci,
        clip: mean(g.iter().filter_map(clip_score)),
        kid,
        kid_ci,
        cost_gflops: first.sampling_gflops(),
        ms_per_image: mean(g.iter().map(|c| c.ms_per_image())).expect("non-empty"),
        seeds: g.len(),
        samples: g.iter().map(|c| c.n_samples).min().expect("non-empty"),
        keys: seed_ordered_keys(g),
        pairing: PairingHandle(pairing.clone()),
    }
}

/// For every (model, sampler, steps), the guidance rate with the lowest FID (Fig. 8).
pub fn optimal_cfg(settings: &[Setting]) -> Vec<Setting> {
    let mut best: BTreeMap<(u32, String, u32), Setting> = BTreeMap::new();
    for s in settings {
        let key = (s.width, s.sampler.clone(), s.steps);
        match best.get(&key) {
            Some(b) if b.fid <= s.fid => {}
            _ => {
                best.insert(key, s.clone());
            }
        }
    }
    best.into_values().collect()
}

/// The lowest FID a model reaches within `budget` GFLOPs per image (over its optimal settings of
/// `sampler`, or of any sampler when `None`).
pub fn best_within<'a>(
    optimal: &'a [Setting],
    width: Option<u32>,
    sampler: Option<&str>,
    budget: f64,
) -> Option<&'a Setting> {
    optimal
        .iter()
        .filter(|s| width.is_none_or(|w| s.width == w))
        .filter(|s| sampler.is_none_or(|x| s.sampler == x))
        .filter(|s| s.cost_gflops <= budget * (1.0 + 1e-9))
        .min_by(|a, b| a.fid.total_cmp(&b.fid))
}

/// Models measured, smallest first.
pub fn widths(optimal: &[Setting]) -> Vec<u32> {
    let mut w: Vec<u32> = optimal.iter().map(|s| s.width).collect();
    w.sort();
    w.dedup();
    w
}

/// Samplers measured.
pub fn samplers(optimal: &[Setting]) -> Vec<String> {
    let mut s: Vec<String> = optimal.iter().map(|s| s.sampler.clone()).collect();
    s.sort();
    s.dedup();
    s
}

/// Every distinct cost at which some setting is measured, ascending.
pub fn budgets(optimal: &[Setting]) -> Vec<f64> {
    let mut b: Vec<f64> = optimal.iter().map(|s| s.cost_gflops).collect();
    b.sort_by(f64::total_cmp);
    b.dedup_by(|a, b| (*a - *b).abs() <= 1e-9 * b.abs());
    b
}

/// Which model is best at each budget (for one sampler or all).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetWinner {
    /// GFLOPs per image.
    pub budget: f64,
    /// The winning setting.
    pub best: Setting,
    /// The best setting of another model size within the same budget, if one fits.
    pub runner_up: Option<Setting>,
}

impl BudgetWinner {
    /// `FID(runner-up) - FID(winner)` with its 95% interval (paired where both kept their
    /// features); None when no other size fits the budget. The winner is decided only when
    /// the interval lies above 0.
    pub fn margin(&self) -> Option<Difference> {
        let other = self.runner_up.as_ref()?;
        Some(Difference::fid_gap(&self.best, other))
    }
}

/// The best setting at every measured budget, with the best of the other sizes.
pub fn winners(optimal: &[Setting], sampler: Option<&str>) -> Vec<BudgetWinner> {
    budgets(optimal)
        .into_iter()
        .filter_map(|b| {
            let best = best_within(optimal, None, sampler, b)?;
            let other = runner_up(optimal, best.width, sampler, b).cloned();
            let (best, runner_up) = paired_order(best.clone(), other);
            Some(BudgetWinner {
                budget: b,
                best,
                runner_up,
            })
        })
        .collect()
}

/// The winner and runner-up as their paired comparison orders them. Both are chosen by their
/// headline FIDs, over the sweep's sample size; where adaptive sampling measured both again
/// with more samples, the paired difference over those can reverse the order, and it is the
/// better-informed of the two.
pub fn paired_order(best: Setting, runner_up: Option<Setting>) -> (Setting, Option<Setting>) {
    match runner_up {
        Some(other) if Difference::fid_gap(&best, &other).value < 0.0 => (other, Some(best)),
        other => (best, other),
    }
}

/// The lowest-FID setting of a width other than `winner` within `budget`.
fn runner_up<'a>(
    optimal: &'a [Setting],
    winner: u32,
    sampler: Option<&str>,
    budget: f64,
) -> Option<&'a Setting> {
    widths(optimal)
        .into_iter()
        .filter(|&w| w != winner)
        .filter_map(|w| best_within(optimal, Some(w), sampler, budget))
        .min_by(|a, b| a.fid.total_cmp(&b.fid))
}

/// The smallest measured budget from which the larger model's best FID within budget stays
/// below the smaller model's (None when it never overtakes).
pub fn crossover(
    optimal: &[Setting],
    small: u32,
    large: u32,
    sampler: Option<&str>,
) -> Option<f64> {
    let mut found = None;
    for b in budgets(optimal).into_iter().rev() {
        let l = best_within(optimal, Some(large), sampler, b);
        let s = best_within(optimal, Some(small), sampler, b);
        match (l, s) {
            (Some(l), Some(s)) if l.fid < s.fid => found = Some(b),
            (Some(_), None) => found = Some(b),
            _ => break,
        }
    }
    found
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cell measured without intervals. Built through serde, so fields it leaves out take
    /// their defaults (None, no metrics, the base variant).
    pub(crate) fn cell(width: u32, sampler: &str, steps: u32, cfg: f64, fid: f64) -> Cell {
        serde_json::from_value(serde_json::json!({
            "width": width,
            "params": width as u64 * width as u64 * 100,
            "sampler": sampler,
            "steps": steps,
            "cfg": cfg,
            "seed": 0,
            "n_samples": 100,
            "fid": fid,
            "evaluations": steps as u64 * if cfg > 1.0 { 2 } else { 1 },
            "gflops_per_eval": (width * width) as f64 / 1000.0,
            "wall_seconds": 1.0,
        }))
        .expect("a cell")
    }

    /// A sweep shaped like the paper's: small models converge fast, large ones reach lower FID.
    pub(crate) fn paper_like() -> Vec<Cell> {
        let mut cells = Vec::new();
        for &(w, floor, speed) in &[(32u32, 20.0, 3.0), (64, 12.0, 6.0)] {
            for &s in &["ddim", "ddpm", "dpmpp-2m"] {
                let factor = match s {
                    "dpmpp-2m" => 0.6,
                    "ddim" => 1.0,
                    _ => 1.6,
                };
                for steps in [2u32, 4, 8, 16] {
                    for cfg in [1.0, 2.0, 4.0] {
                        let guidance_penalty = (cfg - 2.0f64).abs() * 0.5;
                        let fid = floor + factor * speed * 40.0 / steps as f64 + guidance_penalty;
                        cells.push(cell(w, s, steps, cfg, fid));
                    }
                }
            }
        }
        cells
    }

    #[test]
    fn optimal_guidance_is_the_fid_minimum() {
        let opt = optimal_cfg(&settings(&paper_like()));
        assert_eq!(opt.len(), 2 * 3 * 4);
        assert!(opt.iter().all(|s| s.cfg == 2.0));
    }

    #[test]
    fn seeds_are_averaged_with_an_interval() {
        let mut a = cell(32, "ddim", 4, 2.0, 10.0);
        let mut b = a.clone();
        b.seed = 1;
        b.fid = 12.0;
        a.seed = 0;
        let s = settings(&[a, b]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].fid, 11.0);
        let ci = s[0].fid_ci.unwrap();
        assert!(ci.low < 11.0 && ci.high > 11.0);
        assert_eq!(ci.method, CiMethod::SeedSpread);
    }

    /// `c` with a KID metric of `value` and, if given, an interval `half` either side.
    pub(crate) fn with_kid(mut c: Cell, value: f64, half: Option<f64>) -> Cell {
        let ci = half.map(|h| FidCi {
            low: value - h,
            high: value + h,
            method: CiMethod::Bootstrap,
            replicates: 100,
        });
        c.metrics.push(crate::cell::Metric {
            name: KID.into(),
            value,
            ci,
        });
        c
    }

    #[test]
    fn kid_is_averaged_over_seeds_like_fid() {
        let one = with_kid(cell(32, "ddim", 4, 2.0, 10.0), 0.002, Some(0.001));
        let s = settings(std::slice::from_ref(&one));
        assert_eq!(s[0].kid, Some(0.002));
        assert_eq!(s[0].kid_ci, one.metrics[0].ci, "one seed: its own interval");

        let mut other = with_kid(cell(32, "ddim", 4, 2.0, 12.0), 0.004, Some(0.001));
        other.seed = 1;
        let s = settings(&[one.clone(), other]);
        assert!((s[0].kid.unwrap() - 0.003).abs() < 1e-12);
        let ci = s[0].kid_ci.unwrap();
        assert_eq!(ci.method, CiMethod::SeedSpread);
        // Standard deviation 0.001 * sqrt(2) over 2 seeds: half-width 1.96e-3.
        assert!((ci.high - ci.low - 2.0 * 1.96e-3).abs() < 1e-12, "{ci:?}");

        // A seed without KID: no mean of the rest.
        let mut bare = cell(32, "ddim", 4, 2.0, 12.0);
        bare.seed = 1;
        let s = settings(&[one, bare]);
        assert_eq!((s[0].kid, s[0].kid_ci), (None, None));
    }

    #[test]
    fn the_runner_up_is_the_best_other_size_within_budget() {
        let opt = optimal_cfg(&settings(&paper_like()));
        let all = winners(&opt, None);
        assert!(all.iter().any(|w| w.runner_up.is_none()));
        assert!(all.iter().any(|w| w.runner_up.is_some()));
        for w in all {
            let Some(r) = &w.runner_up else {
                let fits = |x: &u32| best_within(&opt, Some(*x), None, w.budget).is_some();
                assert_eq!(widths(&opt).iter().filter(|x| fits(x)).count(), 1);
                continue;
            };
            assert_ne!(r.width, w.best.width);
            let scan = best_within(&opt, Some(r.width), None, w.budget).unwrap();
            assert_eq!(r, scan);
            let m = w.margin().unwrap();
            assert_eq!(m.value, r.fid - w.best.fid);
            assert!(m.value >= 0.0 && m.interval.is_none());
        }
    }

    #[test]
    fn budget_winners_and_crossover() {
        let opt = optimal_cfg(&settings(&paper_like()));
        // Cheapest budget: only the small model affords it.
        let w = winners(&opt, Some("ddim"));
        assert_eq!(w[0].best.width, 32);
        // The large model overtakes at some budget and keeps winning above it.
        let c = crossover(&opt, 32, 64, Some("ddim")).expect("overtakes");
        let before = best_within(&opt, None, Some("ddim"), c * 0.99).unwrap();
        let after = best_within(&opt, None, Some("ddim"), c).unwrap();
        assert_eq!(before.width, 32);
        assert_eq!(after.width, 64);
    }
}
