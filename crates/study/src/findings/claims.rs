//! One function per claim of the paper; each returns its [`Finding`].

use super::{Claim, Comparison, Difference, Finding, all_hold, any_holds};
use crate::analysis::{Setting, best_within, budgets, optimal_cfg, samplers, widths};

/// Sec. 3.3.1, Fig. 8.
pub const OPTIMAL_GUIDANCE_DEPENDS_ON_MODEL_SIZE: Claim = Claim {
    id: "optimal-guidance-depends-on-model-size",
    text: "CFG rate as a sampling parameter yields inconsistent results across different model sizes: the optimal CFG rate is determined for each model size and sampling steps",
    section: "Sec. 3.3.1, Fig. 8",
};

/// Sec. 1.1 and 3.3.2, Fig. 9.
pub const SMALLER_MODELS_SAMPLE_MORE_EFFICIENTLY: Claim = Claim {
    id: "smaller-models-sample-more-efficiently",
    text: "Smaller models sample more efficiently: smaller models frequently outperform larger models across a range of sampling cost in terms of FID",
    section: "Sec. 3.3.2, Fig. 9",
};

/// Sec. 1.1 and 3.3.2, Fig. 9.
pub const LARGER_MODELS_WIN_AT_RELAXED_BUDGETS: Claim = Claim {
    id: "larger-models-win-at-relaxed-budgets",
    text: "Larger models surpass smaller ones when computational constraints are relaxed",
    section: "Sec. 1.1, Sec. 3.3.2, Fig. 9",
};

/// Sec. 3.4, Fig. 11.
pub const SAMPLER_DOES_NOT_CHANGE_SCALING_EFFICIENCY: Claim = Claim {
    id: "sampler-does-not-change-scaling-efficiency",
    text: "Sampler does not change the scaling efficiency: smaller models tend to achieve better performance than larger models under the same sampling cost with DDIM, DDPM and DPM-Solver++ alike",
    section: "Sec. 3.4, Fig. 11",
};

/// Sec. 3.4, Fig. 11.
pub const DDPM_IS_WORSE_THAN_DDIM_AT_FEW_STEPS: Claim = Claim {
    id: "ddpm-worse-than-ddim-at-few-steps",
    text: "The DDPM sampler typically produces lower-quality results than DDIM with fewer sampling steps",
    section: "Sec. 3.4, Fig. 11",
};

/// Sec. 3.4, Fig. 11.
pub const DPM_SOLVER_OUTPERFORMS_DDIM: Claim = Claim {
    id: "dpm-solver-outperforms-ddim",
    text: "The DPM-Solver++ sampler generally outperforms DDIM in image quality",
    section: "Sec. 3.4, Fig. 11",
};

/// Sec. 1.1 and 3.1, Fig. 3.
pub const TRAINING_COMPUTE_SCALES_PERFORMANCE: Claim = Claim {
    id: "training-compute-scales-performance",
    text: "Pretraining performance scales with training compute",
    section: "Sec. 3.1, Fig. 3",
};

/// Budgets within floating-point noise of a cost count as affording it.
fn affords(s: &Setting, budget: f64) -> bool {
    s.cost_gflops <= budget * (1.0 + 1e-9)
}

fn by_fid(a: &&Setting, b: &&Setting) -> std::cmp::Ordering {
    a.fid.total_cmp(&b.fid)
}

/// "FID 12.34 [10.10, 14.20]": an FID with its interval where measured.
fn fid_text(s: &Setting) -> String {
    match s.fid_ci {
        Some(ci) => format!("FID {:.2} {}", s.fid, ci.text()),
        None => format!("FID {:.2}", s.fid),
    }
}

/// Rule: holds at some (sampler, steps) where two model sizes have different optimal rates and
/// each one's optimum beats the other's rate beyond the intervals; does not hold when every pair
/// shares an optimum that beats every other rate beyond the intervals (Fig. 8).
pub fn optimal_guidance_depends_on_model_size(all: &[Setting]) -> Finding {
    let claim = OPTIMAL_GUIDANCE_DEPENDS_ON_MODEL_SIZE;
    let optimal = optimal_cfg(all);
    let mut comparisons = Vec::new();
    for a in &optimal {
        for b in &optimal {
            if a.sampler == b.sampler && a.steps == b.steps && a.width < b.width {
                comparisons.extend(guidance_comparison(all, a, b));
            }
        }
    }
    if comparisons.is_empty() {
        return claim.not_measured(
            "no sampler and step count measured for two model sizes at two or more guidance rates",
        );
    }
    claim.judged(
        any_holds(comparisons),
        "pairs of model sizes at one sampler and step count",
    )
}

/// Whether models `a` and `b` (their optima at one sampler and step count) prefer different rates.
fn guidance_comparison(all: &[Setting], a: &Setting, b: &Setting) -> Option<Comparison> {
    let same_cell = |s: &Setting, o: &Setting| {
        s.width == o.width && s.sampler == o.sampler && s.steps == o.steps
    };
    // Each optimum against another rate of the same model.
    let pin = |best: &Setting, rate: &Setting| Comparison {
        what: format!(
            "the {}-filter model at CFG {:.1} ({}) against CFG {:.1} ({})",
            best.width,
            best.cfg,
            fid_text(best),
            rate.cfg,
            fid_text(rate)
        ),
        difference: Difference::fid_gap(best, rate),
    };
    let head = format!("{} at {} steps", a.sampler, a.steps);
    if a.cfg != b.cfg {
        let rate_of =
            |m: &Setting, o: &Setting| all.iter().find(|s| same_cell(s, m) && s.cfg == o.cfg);
        let pins = vec![pin(a, rate_of(a, b)?), pin(b, rate_of(b, a)?)];
        let weakest = all_hold(pins).deciding?;
        return Some(Comparison {
            what: format!(
                "{head}: the {}-filter model is best at CFG {:.1}, the {}-filter model at {:.1}; weaker side: {}",
                a.width, a.cfg, b.width, b.cfg, weakest.what
            ),
            difference: weakest.difference,
        });
    }
    // A shared optimum opposes the claim as far as it beats every other rate for both models.
    let pins: Vec<Comparison> = all
        .iter()
        .filter(|s| (same_cell(s, a) || same_cell(s, b)) && s.cfg != a.cfg)
        .map(|s| pin(if s.width == a.width { a } else { b }, s))
        .collect();
    let weakest = all_hold(pins).deciding?;
    Some(Comparison {
        what: format!(
            "{head}: the {}- and {}-filter models are both best at CFG {:.1}; weakest: {}",
            a.width, b.width, a.cfg, weakest.what
        ),
        difference: weakest.difference.negated(),
    })
}

/// At every budget affording two model sizes: the best smaller model against the largest
/// affordable one (positive: the smaller wins).
fn smaller_against_largest(optimal: &[Setting]) -> Vec<Comparison> {
    budgets(optimal)
        .into_iter()
        .filter_map(|budget| {
            let affordable: Vec<&Setting> =
                optimal.iter().filter(|s| affords(s, budget)).collect();
            let largest = affordable.iter().map(|s| s.width).max()?;
            let large = best_within(optimal, Some(largest), None, budget)?;
            let small = affordable
                .iter()
                .copied()
                .filter(|s| s.width < largest)
                .min_by(by_fid)?;
            Some(Comparison {
                what: format!(
                    "at {budget:.3} GFLOPs per image the {}-filter model ({}) against the {}-filter model ({})",
                    small.width,
                    fid_text(small),
                    large.width,
                    fid_text(large)
                ),
                difference: Difference::fid_gap(small, large),
            })
        })
        .collect()
}

/// Rule: holds if at some budget a smaller model beats the largest affordable one beyond the
/// intervals; does not hold if the largest affordable model wins beyond them at every budget.
pub fn smaller_models_sample_more_efficiently(optimal: &[Setting]) -> Finding {
    smaller_wins_at_some_budget(SMALLER_MODELS_SAMPLE_MORE_EFFICIENTLY, optimal)
}

/// [`smaller_models_sample_more_efficiently`]'s rule judging `claim` (a downstream task's).
pub fn smaller_wins_at_some_budget(claim: Claim, optimal: &[Setting]) -> Finding {
    if widths(optimal).len() < 2 {
        return claim.not_measured("fewer than two model sizes in the sweep");
    }
    let comparisons = smaller_against_largest(optimal);
    if comparisons.is_empty() {
        return claim.not_measured("no measured budget affords two model sizes");
    }
    claim.judged(any_holds(comparisons), "budgets")
}

/// Rule: at the largest budget, the largest model's best FID against the best of every other
/// model; decided by that one difference.
pub fn larger_models_win_at_relaxed_budgets(optimal: &[Setting]) -> Finding {
    largest_wins_at_largest_budget(LARGER_MODELS_WIN_AT_RELAXED_BUDGETS, optimal)
}

/// [`larger_models_win_at_relaxed_budgets`]'s rule judging `claim` (a downstream task's).
pub fn largest_wins_at_largest_budget(claim: Claim, optimal: &[Setting]) -> Finding {
    let (Some(&largest), Some(&top)) = (widths(optimal).last(), budgets(optimal).last()) else {
        return claim.not_measured("no cells");
    };
    let large = best_within(optimal, Some(largest), None, top);
    let other = optimal.iter().filter(|s| s.width != largest).min_by(by_fid);
    let (Some(large), Some(other)) = (large, other) else {
        return claim.not_measured("fewer than two model sizes in the sweep");
    };
    let comparison = Comparison {
        what: format!(
            "at the largest budget ({top:.3} GFLOPs per image) the {}-filter model ({}) against the best other, the {}-filter model ({})",
            large.width,
            fid_text(large),
            other.width,
            fid_text(other)
        ),
        difference: Difference::fid_gap(large, other),
    };
    claim.judged(any_holds(vec![comparison]), "")
}

/// Rule: the small-model rule of [`smaller_models_sample_more_efficiently`] for every sampler:
/// holds if it holds for all, does not hold if it fails for one.
pub fn sampler_does_not_change_scaling_efficiency(optimal: &[Setting]) -> Finding {
    let claim = SAMPLER_DOES_NOT_CHANGE_SCALING_EFFICIENCY;
    let mut per_sampler = Vec::new();
    let mut summary = Vec::new();
    for name in samplers(optimal) {
        let own: Vec<Setting> = optimal
            .iter()
            .filter(|s| s.sampler == name)
            .cloned()
            .collect();
        let tally = any_holds(smaller_against_largest(&own));
        summary.push(format!("{name}: {}", tally.verdict.label().to_lowercase()));
        if let Some(c) = tally.deciding {
            per_sampler.push(Comparison {
                what: format!("{name} {}", c.what),
                difference: c.difference,
            });
        }
    }
    if per_sampler.len() < 2 {
        return claim
            .not_measured("fewer than two samplers with a budget affording two model sizes");
    }
    claim
        .judged(all_hold(per_sampler), "samplers")
        .with_detail(&format!("per sampler: {}", summary.join(", ")))
}

/// Rule: at the fewest steps (<= 20) where the two samplers can differ, the mean over model sizes
/// of the FID gap between them (DDIM against DDPM).
pub fn ddpm_is_worse_than_ddim_at_few_steps(optimal: &[Setting]) -> Finding {
    sampler_ordering(
        optimal,
        DDPM_IS_WORSE_THAN_DDIM_AT_FEW_STEPS,
        "ddim",
        "ddpm",
    )
}

/// Rule: as [`ddpm_is_worse_than_ddim_at_few_steps`], DPM-Solver++ (2M, else 3M) against DDIM.
pub fn dpm_solver_outperforms_ddim(optimal: &[Setting]) -> Finding {
    let names = samplers(optimal);
    let dpm = ["dpmpp-2m", "dpmpp-3m"]
        .into_iter()
        .find(|d| names.iter().any(|n| n == d))
        .unwrap_or("dpmpp-2m");
    sampler_ordering(optimal, DPM_SOLVER_OUTPERFORMS_DDIM, dpm, "ddim")
}

/// The claim that `better` beats `worse`, judged on the mean FID gap over model sizes.
fn sampler_ordering(optimal: &[Setting], claim: Claim, better: &str, worse: &str) -> Finding {
    let at = |name: &str, w: u32, n: u32| {
        optimal
            .iter()
            .find(|s| s.sampler == name && s.width == w && s.steps == n)
    };
    let pairs = |n: u32| -> Vec<(&Setting, &Setting)> {
        widths(optimal)
            .into_iter()
            .filter_map(|w| Some((at(better, w, n)?, at(worse, w, n)?)))
            .collect()
    };
    let mut steps: Vec<u32> = optimal
        .iter()
        .map(|s| s.steps)
        .filter(|&n| n <= 20)
        .collect();
    steps.sort();
    steps.dedup();
    steps.retain(|&n| !pairs(n).is_empty());
    // One step of DDIM, DDPM (its last step adds no noise) and DPM-Solver++ (first order) is
    // the same update: the fewest steps where they can differ test the claim.
    let Some(n) = steps
        .iter()
        .copied()
        .find(|&n| n >= 2)
        .or(steps.first().copied())
    else {
        return claim.not_measured(&format!(
            "no step count <= 20 measured with both {better} and {worse}"
        ));
    };
    let pairs = pairs(n);
    let gaps: Vec<Difference> = pairs
        .iter()
        .map(|(b, w)| Difference::fid_gap(b, w))
        .collect();
    let per_model: Vec<String> = pairs
        .iter()
        .map(|(b, w)| {
            let (fb, fw) = (fid_text(b), fid_text(w));
            format!("{} filters: {better} {fb}, {worse} {fw}", b.width)
        })
        .collect();
    let comparison = Comparison {
        what: format!(
            "at {n} steps, {worse}'s optimal-guidance FID minus {better}'s, mean over {} model sizes ({})",
            pairs.len(),
            per_model.join("; ")
        ),
        difference: Difference::mean(&gaps).expect("pairs"),
    };
    claim.judged(any_holds(vec![comparison]), "")
}

/// Rule: every width's FID falls from its first to its last evaluation during training, and
/// the largest width ends best. Training-time FIDs carry no interval, so a measured curve is
/// inconclusive until they do.
pub fn training_compute_scales_performance(curves: &[(u32, Vec<(f64, f64)>)]) -> Finding {
    let claim = TRAINING_COMPUTE_SCALES_PERFORMANCE;
    // (width, first point, last point) of every curve with two points or more.
    type FirstLast = (u32, (f64, f64), (f64, f64));
    let usable: Vec<FirstLast> = curves
        .iter()
        .filter(|(_, c)| c.len() >= 2)
        .map(|(w, c)| (*w, c[0], *c.last().expect("two points")))
        .collect();
    if usable.is_empty() {
        return claim.not_measured("no FID was measured during training (recipe.eval_every = 0)");
    }
    let mut comparisons: Vec<Comparison> = usable
        .iter()
        .map(|&(w, first, last)| Comparison {
            what: format!(
                "{w} filters: FID {:.2} -> {:.2} over {:.3} normalised cost x iterations",
                first.1, last.1, last.0
            ),
            difference: Difference::point(first.1 - last.1),
        })
        .collect();
    let (largest, _, large_end) = *usable.iter().max_by_key(|(w, _, _)| *w).expect("usable");
    if let Some(&(other, _, other_end)) = usable
        .iter()
        .filter(|(w, _, _)| *w != largest)
        .min_by(|a, b| a.2.1.total_cmp(&b.2.1))
    {
        comparisons.push(Comparison {
            what: format!(
                "final FID of the largest ({largest} filters) {:.2} against the best other ({other} filters) {:.2}",
                large_end.1, other_end.1
            ),
            difference: Difference::point(other_end.1 - large_end.1),
        });
    }
    let falls = comparisons
        .iter()
        .filter(|c| c.difference.value > 0.0)
        .count();
    let listed: Vec<String> = comparisons.iter().map(|c| c.what.clone()).collect();
    let detail = format!(
        "point estimates favour the claim in {falls} of {} ({})",
        comparisons.len(),
        listed.join("; ")
    );
    claim
        .judged(all_hold(comparisons), "comparisons")
        .with_detail(&detail)
}
