//! The paper's analysis of a sweep: optimal guidance per model and step count (Fig. 8), FID
//! against sampling cost at the optimal guidance (Figs. 9, 11), the best model under a budget and
//! the costs where a larger model overtakes a smaller one.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bootstrap::{CiMethod, FidCi};
use crate::cell::Cell;

/// A (model, sampler, steps, guidance) setting with its FID averaged over seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// Sampling GFLOPs per image.
    pub cost_gflops: f64,
    /// Wall milliseconds per image.
    pub ms_per_image: f64,
    /// Seeds averaged.
    pub seeds: usize,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Averages cells over seeds.
pub fn settings(cells: &[Cell]) -> Vec<Setting> {
    let mut groups: BTreeMap<(u32, String, u32, i64), Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        let k = c.key();
        groups
            .entry((k.width, k.sampler, k.steps, k.cfg_milli))
            .or_default()
            .push(c);
    }
    groups
        .into_values()
        .map(|g| {
            let first = g[0];
            let fid = mean(g.iter().map(|c| c.fid)).expect("non-empty");
            let fid_ci = if g.len() == 1 {
                first.fid_ci
            } else {
                let sd = (g.iter().map(|c| (c.fid - fid).powi(2)).sum::<f64>()
                    / (g.len() - 1) as f64)
                    .sqrt();
                let half = 1.96 * sd / (g.len() as f64).sqrt();
                Some(FidCi {
                    low: fid - half,
                    high: fid + half,
                    method: CiMethod::SeedSpread,
                    replicates: g.len() as u32,
                })
            };
            Setting {
                width: first.width,
                params: first.params,
                sampler: first.sampler.clone(),
                steps: first.steps,
                cfg: first.cfg,
                fid,
                fid_ci,
                clip: mean(g.iter().filter_map(|c| c.clip.or(c.in_domain_clip))),
                cost_gflops: first.sampling_gflops(),
                ms_per_image: mean(g.iter().map(|c| c.ms_per_image())).expect("non-empty"),
                seeds: g.len(),
            }
        })
        .collect()
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
}

/// The best setting at every measured budget.
pub fn winners(optimal: &[Setting], sampler: Option<&str>) -> Vec<BudgetWinner> {
    budgets(optimal)
        .into_iter()
        .filter_map(|b| {
            best_within(optimal, None, sampler, b).map(|s| BudgetWinner {
                budget: b,
                best: s.clone(),
            })
        })
        .collect()
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

/// A finding of the paper with the verdict this run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// The paper's claim.
    pub claim: String,
    /// "holds", "does not hold" or "not measured".
    pub verdict: String,
    /// The numbers behind the verdict.
    pub evidence: String,
}

fn verdict(holds: bool) -> String {
    if holds { "holds" } else { "does not hold" }.to_string()
}

fn not_measured(claim: &str, why: &str) -> Finding {
    Finding {
        claim: claim.into(),
        verdict: "not measured".into(),
        evidence: why.into(),
    }
}

/// "12.34 [10.10, 14.20]": an FID with its interval where measured.
fn fid_text(s: &Setting) -> String {
    match s.fid_ci {
        Some(ci) => format!("{:.2} {}", s.fid, ci.text()),
        None => format!("{:.2}", s.fid),
    }
}

/// Whether the FID difference between two settings is resolved by their 95% intervals
/// (None: an interval is missing).
fn separated(a: &Setting, b: &Setting) -> Option<bool> {
    Some(!a.fid_ci?.overlaps(&b.fid_ci?))
}

/// What the intervals say about the difference between `a` and `b`.
fn ci_note(a: &Setting, b: &Setting) -> String {
    match separated(a, b) {
        Some(true) => "; their 95% intervals do not overlap".into(),
        Some(false) => {
            "; their 95% intervals overlap: the difference lies inside the CIs, so this sample size does not resolve it".into()
        }
        None => "; no FID intervals were measured".into(),
    }
}

/// A budget at which a model smaller than the largest affordable one has the best FID: (budget,
/// the winner, the largest affordable model's best). Budgets where the intervals separate the
/// two are preferred.
fn small_wins_somewhere(
    optimal: &[Setting],
    sampler: Option<&str>,
) -> Option<(f64, Setting, Setting)> {
    let mut found: Option<(f64, Setting, Setting)> = None;
    for w in winners(optimal, sampler) {
        // The largest model affordable at this budget, and its best FID there.
        let Some(affordable) = widths(optimal)
            .into_iter()
            .filter(|&m| best_within(optimal, Some(m), sampler, w.budget).is_some())
            .max()
        else {
            continue;
        };
        if w.best.width < affordable {
            let Some(big) = best_within(optimal, Some(affordable), sampler, w.budget) else {
                continue;
            };
            let resolved = separated(&w.best, big) == Some(true);
            let better = match &found {
                None => true,
                Some((_, a, b)) => resolved && separated(a, b) != Some(true),
            };
            if better {
                found = Some((w.budget, w.best.clone(), big.clone()));
            }
        }
    }
    found
}

/// The paper's sampling-efficiency findings, judged on this sweep.
pub fn findings(cells: &[Cell]) -> Vec<Finding> {
    let optimal = optimal_cfg(&settings(cells));
    let models = widths(&optimal);
    let mut out = Vec::new();
    let claim = "Smaller models sample more efficiently: under a given sampling budget a smaller model often reaches a better FID than a larger one (Sec. 3.3)";
    if models.len() < 2 {
        out.push(not_measured(
            claim,
            "fewer than two model sizes in the sweep",
        ));
        return out;
    }
    out.push(match small_wins_somewhere(&optimal, None) {
        Some((budget, small, large)) => Finding {
            claim: claim.into(),
            verdict: verdict(true),
            evidence: format!(
                "at {budget:.2} GFLOPs per image the {}-filter model reaches FID {} while the {}-filter model, also affordable, reaches {}{}",
                small.width,
                fid_text(&small),
                large.width,
                fid_text(&large),
                ci_note(&small, &large)
            ),
        },
        None => Finding {
            claim: claim.into(),
            verdict: verdict(false),
            evidence: "at every measured budget the largest affordable model had the best FID".into(),
        },
    });

    let claim = "Larger models win when the sampling budget is relaxed (Sec. 3.3.2)";
    let top = budgets(&optimal).last().copied().expect("cells");
    let best = best_within(&optimal, None, None, top).expect("cells");
    let largest = *models.last().expect("models");
    let at_largest = best_within(&optimal, Some(largest), None, top);
    // The comparison behind the verdict: the winner against the largest model, or (when the
    // largest wins) against the best other size.
    let other = if best.width == largest {
        optimal
            .iter()
            .filter(|s| s.width != largest && s.cost_gflops <= top * (1.0 + 1e-9))
            .min_by(|a, b| a.fid.total_cmp(&b.fid))
    } else {
        at_largest
    };
    out.push(Finding {
        claim: claim.into(),
        verdict: verdict(best.width == largest),
        evidence: format!(
            "at the largest budget ({top:.2} GFLOPs) the best FID {} comes from the {}-filter model ({}{})",
            fid_text(best),
            best.width,
            other
                .map(|o| format!("best of the {}-filter model: {}", o.width, fid_text(o)))
                .unwrap_or_else(|| "no other model measured".into()),
            other.map(|o| ci_note(best, o)).unwrap_or_default()
        ),
    });

    let claim = "The sampler does not change the scaling efficiency: the small-model advantage holds for DDIM, DDPM and DPM-Solver++ alike (Sec. 3.4)";
    let per_sampler: Vec<(String, bool)> = samplers(&optimal)
        .into_iter()
        .map(|s| {
            let holds = small_wins_somewhere(&optimal, Some(&s)).is_some();
            (s, holds)
        })
        .collect();
    if per_sampler.len() < 2 {
        out.push(not_measured(claim, "fewer than two samplers in the sweep"));
    } else {
        out.push(Finding {
            claim: claim.into(),
            verdict: verdict(per_sampler.iter().all(|(_, h)| *h)),
            evidence: per_sampler
                .iter()
                .map(|(s, h)| {
                    format!(
                        "{s}: {}",
                        if *h {
                            "a smaller model wins some budget"
                        } else {
                            "the largest affordable model always wins"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        });
    }

    let claim = "DPM-Solver++ beats DDIM, and DDIM beats DDPM, at few sampling steps (Sec. 3.4)";
    let at = |sampler: &str, steps: u32| -> Option<f64> {
        let v: Vec<f64> = optimal
            .iter()
            .filter(|s| s.sampler == sampler && s.steps == steps)
            .map(|s| s.fid)
            .collect();
        mean(v.into_iter())
    };
    let common: Vec<u32> = {
        let mut st: Vec<u32> = optimal
            .iter()
            .filter(|s| s.steps <= 20)
            .map(|s| s.steps)
            .collect();
        st.sort();
        st.dedup();
        st.into_iter()
            .filter(|&n| {
                at("ddim", n).is_some() && at("ddpm", n).is_some() && at("dpmpp-2m", n).is_some()
            })
            .collect()
    };
    if common.is_empty() {
        out.push(not_measured(
            claim,
            "no step count <= 20 measured with ddim, ddpm and dpmpp-2m",
        ));
    } else {
        // At one step DDIM (eta 0) and DDPM are the same update (the last step adds no noise),
        // so the fewest steps at which they can differ is the one that tests the claim.
        let n = common
            .iter()
            .copied()
            .find(|&n| n >= 2)
            .unwrap_or(common[0]);
        let (d, p, m) = (
            at("ddim", n).unwrap(),
            at("ddpm", n).unwrap(),
            at("dpmpp-2m", n).unwrap(),
        );
        let half_widths: Vec<f64> = optimal
            .iter()
            .filter(|s| s.steps == n && ["ddim", "ddpm", "dpmpp-2m"].contains(&s.sampler.as_str()))
            .filter_map(|s| s.fid_ci.map(|ci| 0.5 * (ci.high - ci.low)))
            .collect();
        let noise = match mean(half_widths.iter().copied()) {
            Some(h) if (m - d).abs().min((d - p).abs()) < h => format!(
                "; the smallest gap ({:.2}) lies inside the mean 95% half-width of the cells behind these means ({h:.2})",
                (m - d).abs().min((d - p).abs())
            ),
            Some(h) => format!(
                "; both gaps exceed the mean 95% half-width of the cells behind these means ({h:.2})"
            ),
            None => "; no FID intervals were measured".into(),
        };
        out.push(Finding {
            claim: claim.into(),
            verdict: verdict(m < d && d < p),
            evidence: format!("mean optimal-guidance FID over models at {n} steps: DPM-Solver++ {m:.2}, DDIM {d:.2}, DDPM {p:.2}{noise}"),
        });
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cell(width: u32, sampler: &str, steps: u32, cfg: f64, fid: f64) -> Cell {
        let per_eval = (width * width) as f64 / 1000.0;
        Cell {
            width,
            params: (width * width * 100) as u64,
            sampler: sampler.into(),
            steps,
            cfg,
            seed: 0,
            n_samples: 100,
            fid,
            fid_ci: None,
            clip: None,
            in_domain_clip: None,
            cmmd: None,
            evaluations: steps as u64 * if cfg > 1.0 { 2 } else { 1 },
            gflops_per_eval: per_eval,
            wall_seconds: 1.0,
        }
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

    #[test]
    fn findings_on_a_paper_like_sweep() {
        let f = findings(&paper_like());
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].verdict, "holds", "{:?}", f[0]);
        assert_eq!(f[1].verdict, "holds", "{:?}", f[1]);
        assert_eq!(f[2].verdict, "holds", "{:?}", f[2]);
        assert_eq!(f[3].verdict, "holds", "{:?}", f[3]);
        // A sweep where the large model always wins flips the first verdict.
        let flipped: Vec<Cell> = paper_like()
            .into_iter()
            .map(|mut c| {
                if c.width == 64 {
                    c.fid -= 100.0;
                }
                c
            })
            .collect();
        assert_eq!(findings(&flipped)[0].verdict, "does not hold");
    }

    #[test]
    fn sampler_ordering_is_judged_where_ddim_and_ddpm_can_differ() {
        // At one step DDIM and DDPM give the same samples; the claim is judged at 2 steps.
        let mut cells = paper_like();
        for w in [32, 64] {
            for (s, fid) in [("ddim", 300.0), ("ddpm", 300.0), ("dpmpp-2m", 200.0)] {
                cells.push(cell(w, s, 1, 2.0, fid));
            }
        }
        let f = &findings(&cells)[3];
        assert_eq!(f.verdict, "holds", "{f:?}");
        assert!(f.evidence.contains("at 2 steps"), "{f:?}");
        // With only one step measured, one step it is (and equal FIDs do not hold).
        let one: Vec<Cell> = cells.into_iter().filter(|c| c.steps == 1).collect();
        let f = &findings(&one)[3];
        assert!(f.evidence.contains("at 1 steps"), "{f:?}");
        assert_eq!(f.verdict, "does not hold", "{f:?}");
    }

    #[test]
    fn evidence_says_whether_the_intervals_resolve_the_difference() {
        let with_ci = |half: f64| -> Vec<Cell> {
            paper_like()
                .into_iter()
                .map(|mut c| {
                    c.fid_ci = Some(FidCi {
                        low: c.fid - half,
                        high: c.fid + half,
                        method: CiMethod::Bootstrap,
                        replicates: 100,
                    });
                    c
                })
                .collect()
        };
        let narrow = findings(&with_ci(0.01));
        assert!(
            narrow[0].evidence.contains("do not overlap"),
            "{:?}",
            narrow[0]
        );
        assert!(
            narrow[0].evidence.contains('['),
            "intervals printed: {:?}",
            narrow[0]
        );
        assert!(narrow[3].evidence.contains("exceed"), "{:?}", narrow[3]);
        let wide = findings(&with_ci(1000.0));
        assert_eq!(wide[0].verdict, "holds");
        assert!(wide[0].evidence.contains("inside the CIs"), "{:?}", wide[0]);
        assert!(wide[1].evidence.contains("inside the CIs"), "{:?}", wide[1]);
        assert!(wide[3].evidence.contains("lies inside"), "{:?}", wide[3]);
        assert!(
            findings(&paper_like())[0]
                .evidence
                .contains("no FID intervals")
        );
    }
}
