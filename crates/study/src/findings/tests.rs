//! Every verdict rule on synthetic cell tables: holds, does not hold, inconclusive because the
//! intervals overlap (or are missing), not measured.

use super::*;
use crate::analysis::settings;
use crate::analysis::tests::{cell, paper_like};
use crate::bootstrap::{CiMethod, FidCi};

/// The cells with a 95% interval of `half` either side of each FID.
fn with_half_width(cells: Vec<Cell>, half: f64) -> Vec<Cell> {
    cells
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
}

/// Narrow intervals: every difference in `paper_like` is resolved.
fn narrow(cells: Vec<Cell>) -> Vec<Cell> {
    with_half_width(cells, 0.01)
}

/// Wide intervals: no difference in `paper_like` is resolved.
fn wide(cells: Vec<Cell>) -> Vec<Cell> {
    with_half_width(cells, 1000.0)
}

fn shift_fid(cells: Vec<Cell>, by: impl Fn(&Cell) -> f64) -> Vec<Cell> {
    cells
        .into_iter()
        .map(|mut c| {
            c.fid += by(&c);
            c
        })
        .collect()
}

fn rename_sampler(cells: Vec<Cell>, rename: impl Fn(&str) -> &'static str) -> Vec<Cell> {
    cells
        .into_iter()
        .map(|mut c| {
            c.sampler = rename(c.sampler.as_str()).parse().expect("a sampler name");
            c
        })
        .collect()
}

fn optimal(cells: &[Cell]) -> Vec<Setting> {
    optimal_cfg(&settings(cells))
}

fn verdict_of(f: fn(&[Setting]) -> Finding, cells: &[Cell]) -> Verdict {
    let finding = f(&optimal(cells));
    assert!(!finding.evidence.is_empty(), "{finding:?}");
    finding.verdict
}

/// One setting with FID `fid` and, if given, an interval of `half` either side.
fn setting(fid: f64, half: Option<f64>) -> Setting {
    let mut c = cell(32, "ddim", 4, 2.0, fid);
    if let Some(h) = half {
        c = with_half_width(vec![c], h).remove(0);
    }
    settings(&[c]).remove(0)
}

fn compared(favoured: f64, other: f64, half: Option<f64>) -> Comparison {
    Comparison {
        what: format!("{favoured} against {other}"),
        difference: Difference::fid_gap(&setting(favoured, half), &setting(other, half)),
    }
}

#[test]
fn a_difference_decides_only_outside_its_interval() {
    let d = Difference::fid_gap(&setting(10.0, Some(1.0)), &setting(13.0, Some(1.0)));
    assert_eq!(d.value, 3.0);
    assert_eq!(
        d.interval,
        Some(Interval {
            low: 1.0,
            high: 5.0
        })
    );
    assert_eq!(d.verdict(), Verdict::Holds);
    assert_eq!(
        compared(13.0, 10.0, Some(1.0)).difference.verdict(),
        Verdict::DoesNotHold
    );
    // Overlapping (or touching) intervals: inconclusive.
    assert_eq!(
        compared(10.0, 11.0, Some(1.0)).difference.verdict(),
        Verdict::Inconclusive
    );
    assert_eq!(
        compared(10.0, 12.0, Some(1.0)).difference.verdict(),
        Verdict::Inconclusive
    );
    // No interval: a point estimate does not decide.
    let bare = compared(10.0, 50.0, None).difference;
    assert_eq!(bare.verdict(), Verdict::Inconclusive);
    assert!(bare.text().contains("no 95% interval"), "{}", bare.text());
    assert_eq!(d.negated().verdict(), Verdict::DoesNotHold);
}

#[test]
fn the_mean_of_differences_averages_their_intervals() {
    let a = Difference::fid_gap(&setting(10.0, Some(1.0)), &setting(13.0, Some(1.0)));
    let b = Difference::fid_gap(&setting(10.0, Some(1.0)), &setting(11.0, Some(1.0)));
    let m = Difference::mean(&[a, b]).unwrap();
    assert_eq!(m.value, 2.0);
    assert_eq!(
        m.interval,
        Some(Interval {
            low: 0.0,
            high: 4.0
        })
    );
    assert_eq!(
        Difference::mean(&[a, Difference::point(1.0)])
            .unwrap()
            .interval,
        None
    );
    assert_eq!(Difference::mean(&[]), None);
}

#[test]
fn somewhere_and_everywhere_combine_comparisons() {
    let holds = || compared(10.0, 20.0, Some(1.0));
    let strong = || compared(10.0, 30.0, Some(1.0));
    let fails = || compared(20.0, 10.0, Some(1.0));
    let unsure = || compared(10.0, 10.5, Some(1.0));

    let t = any_holds(vec![holds(), strong(), unsure()]);
    assert_eq!((t.verdict, t.holding, t.total), (Verdict::Holds, 2, 3));
    assert_eq!(t.deciding.unwrap().difference.value, 20.0, "the strongest");
    assert_eq!(
        any_holds(vec![fails(), unsure()]).verdict,
        Verdict::Inconclusive
    );
    assert_eq!(
        any_holds(vec![fails(), fails()]).verdict,
        Verdict::DoesNotHold
    );
    assert_eq!(any_holds(vec![]).verdict, Verdict::NotMeasured);

    let t = all_hold(vec![holds(), strong()]);
    assert_eq!(t.verdict, Verdict::Holds);
    assert_eq!(t.deciding.unwrap().difference.value, 10.0, "the weakest");
    let t = all_hold(vec![holds(), unsure()]);
    assert_eq!(t.verdict, Verdict::Inconclusive);
    assert_eq!(t.deciding.unwrap().difference.value, 0.5);
    let t = all_hold(vec![holds(), fails(), unsure()]);
    assert_eq!(
        (t.verdict, t.holding, t.failing),
        (Verdict::DoesNotHold, 1, 1)
    );
    assert_eq!(t.deciding.unwrap().difference.value, -10.0);
}

#[test]
fn smaller_models_sample_more_efficiently_rules() {
    let f = smaller_models_sample_more_efficiently;
    assert_eq!(verdict_of(f, &narrow(paper_like())), Verdict::Holds);
    let large_always_wins = shift_fid(paper_like(), |c| if c.width == 64 { -1000.0 } else { 0.0 });
    assert_eq!(
        verdict_of(f, &narrow(large_always_wins)),
        Verdict::DoesNotHold
    );
    assert_eq!(verdict_of(f, &wide(paper_like())), Verdict::Inconclusive);
    assert_eq!(verdict_of(f, &paper_like()), Verdict::Inconclusive);
    let one_size: Vec<Cell> = paper_like().into_iter().filter(|c| c.width == 32).collect();
    assert_eq!(verdict_of(f, &one_size), Verdict::NotMeasured);

    let finding = f(&optimal(&narrow(paper_like())));
    assert!(
        finding.evidence.contains("GFLOPs per image the 32-filter"),
        "{finding:?}"
    );
    assert!(
        finding
            .evidence
            .contains("3 of 4 budgets for the claim and 1 against it"),
        "{finding:?}"
    );
    assert!(finding.deciding.unwrap().value > 0.0);
    let unsure = f(&optimal(&wide(paper_like())));
    assert!(
        unsure.evidence.contains("lies inside the intervals"),
        "{unsure:?}"
    );
}

#[test]
fn larger_models_win_at_relaxed_budgets_rules() {
    let f = larger_models_win_at_relaxed_budgets;
    assert_eq!(verdict_of(f, &narrow(paper_like())), Verdict::Holds);
    let small_always_wins = shift_fid(paper_like(), |c| if c.width == 32 { -1000.0 } else { 0.0 });
    assert_eq!(
        verdict_of(f, &narrow(small_always_wins)),
        Verdict::DoesNotHold
    );
    assert_eq!(verdict_of(f, &wide(paper_like())), Verdict::Inconclusive);
    let one_size: Vec<Cell> = paper_like().into_iter().filter(|c| c.width == 64).collect();
    assert_eq!(verdict_of(f, &one_size), Verdict::NotMeasured);
    let finding = f(&optimal(&narrow(paper_like())));
    assert!(
        finding.evidence.contains("the 64-filter model"),
        "{finding:?}"
    );
}

#[test]
fn sampler_does_not_change_scaling_efficiency_rules() {
    let f = sampler_does_not_change_scaling_efficiency;
    assert_eq!(verdict_of(f, &narrow(paper_like())), Verdict::Holds);
    let ddpm_favours_large = shift_fid(paper_like(), |c| {
        if c.width == 64 && c.sampler.as_str() == "ddpm" {
            -1000.0
        } else {
            0.0
        }
    });
    let finding = f(&optimal(&narrow(ddpm_favours_large)));
    assert_eq!(finding.verdict, Verdict::DoesNotHold, "{finding:?}");
    assert!(finding.evidence.starts_with("ddpm at"), "{finding:?}");
    assert!(
        finding.evidence.contains("ddpm: does not hold"),
        "{finding:?}"
    );
    assert_eq!(verdict_of(f, &wide(paper_like())), Verdict::Inconclusive);
    let ddim_only: Vec<Cell> = paper_like()
        .into_iter()
        .filter(|c| c.sampler.as_str() == "ddim")
        .collect();
    assert_eq!(verdict_of(f, &ddim_only), Verdict::NotMeasured);
}

fn swap_ddim_and(other: &'static str) -> impl Fn(&str) -> &'static str {
    move |s: &str| match s {
        "ddim" => other,
        s if s == other => "ddim",
        "ddpm" => "ddpm",
        _ => "dpmpp-2m",
    }
}

#[test]
fn ddpm_is_worse_than_ddim_at_few_steps_rules() {
    let f = ddpm_is_worse_than_ddim_at_few_steps;
    assert_eq!(verdict_of(f, &narrow(paper_like())), Verdict::Holds);
    let swapped = rename_sampler(paper_like(), swap_ddim_and("ddpm"));
    assert_eq!(verdict_of(f, &narrow(swapped)), Verdict::DoesNotHold);
    assert_eq!(verdict_of(f, &wide(paper_like())), Verdict::Inconclusive);
    let no_ddpm: Vec<Cell> = paper_like()
        .into_iter()
        .filter(|c| c.sampler.as_str() != "ddpm")
        .collect();
    assert_eq!(verdict_of(f, &no_ddpm), Verdict::NotMeasured);
}

#[test]
fn sampler_ordering_is_judged_where_ddim_and_ddpm_can_differ() {
    // At one step DDIM and DDPM give the same samples; the claim is judged at 2 steps.
    let mut cells = paper_like();
    for w in [32, 64] {
        for (s, fid) in [("ddim", 300.0), ("ddpm", 300.0), ("dpmpp-2m", 300.0)] {
            cells.push(cell(w, s, 1, 2.0, fid));
        }
    }
    let finding = ddpm_is_worse_than_ddim_at_few_steps(&optimal(&narrow(cells.clone())));
    assert_eq!(finding.verdict, Verdict::Holds, "{finding:?}");
    assert!(finding.evidence.starts_with("at 2 steps"), "{finding:?}");
    // With only one step measured, one step it is, and equal FIDs are inconclusive.
    let one: Vec<Cell> = cells.into_iter().filter(|c| c.steps == 1).collect();
    let finding = ddpm_is_worse_than_ddim_at_few_steps(&optimal(&narrow(one)));
    assert!(finding.evidence.starts_with("at 1 steps"), "{finding:?}");
    assert_eq!(finding.verdict, Verdict::Inconclusive, "{finding:?}");
}

#[test]
fn dpm_solver_outperforms_ddim_rules() {
    let f = dpm_solver_outperforms_ddim;
    assert_eq!(verdict_of(f, &narrow(paper_like())), Verdict::Holds);
    let swapped = rename_sampler(paper_like(), swap_ddim_and("dpmpp-2m"));
    assert_eq!(verdict_of(f, &narrow(swapped)), Verdict::DoesNotHold);
    assert_eq!(verdict_of(f, &wide(paper_like())), Verdict::Inconclusive);
    let no_dpm: Vec<Cell> = paper_like()
        .into_iter()
        .filter(|c| c.sampler.as_str() != "dpmpp-2m")
        .collect();
    assert_eq!(verdict_of(f, &no_dpm), Verdict::NotMeasured);
    // DPM-Solver++ 3M stands in where 2M was not run.
    let third_order = rename_sampler(paper_like(), |s| {
        if s == "dpmpp-2m" {
            "dpmpp-3m"
        } else if s == "ddim" {
            "ddim"
        } else {
            "ddpm"
        }
    });
    let finding = f(&optimal(&narrow(third_order)));
    assert_eq!(finding.verdict, Verdict::Holds, "{finding:?}");
    assert!(finding.evidence.contains("minus dpmpp-3m's"), "{finding:?}");
}

#[test]
fn optimal_guidance_depends_on_model_size_rules() {
    let f = |cells: &[Cell]| optimal_guidance_depends_on_model_size(&settings(cells));
    // paper_like: every size is best at CFG 2, beyond the intervals.
    let shared = f(&narrow(paper_like()));
    assert_eq!(shared.verdict, Verdict::DoesNotHold, "{shared:?}");
    assert!(
        shared.evidence.contains("both best at CFG 2.0"),
        "{shared:?}"
    );
    // The larger model moves its optimum to CFG 4.
    let moved = shift_fid(paper_like(), |c| {
        let own = |centre: f64| (c.cfg - centre).abs() * 0.5;
        if c.width == 64 {
            own(4.0) - own(2.0)
        } else {
            0.0
        }
    });
    let finding = f(&narrow(moved.clone()));
    assert_eq!(finding.verdict, Verdict::Holds, "{finding:?}");
    assert!(
        finding.evidence.contains("the 64-filter model at 4.0"),
        "{finding:?}"
    );
    assert_eq!(f(&wide(moved)).verdict, Verdict::Inconclusive);
    let one_rate: Vec<Cell> = paper_like().into_iter().filter(|c| c.cfg == 2.0).collect();
    assert_eq!(f(&narrow(one_rate)).verdict, Verdict::NotMeasured);
}

#[test]
fn training_compute_scales_performance_rules() {
    let f = training_compute_scales_performance;
    let improving = vec![
        (16, vec![(0.1, 20.0), (0.2, 15.0)]),
        (32, vec![(0.3, 18.0), (0.6, 12.0)]),
    ];
    // Training-time FIDs have no interval: inconclusive, with the point estimates stated.
    let finding = f(&improving);
    assert_eq!(finding.verdict, Verdict::Inconclusive, "{finding:?}");
    assert!(finding.evidence.contains("in 3 of 3"), "{finding:?}");
    assert!(
        finding.evidence.contains("16 filters: FID 20.00 -> 15.00"),
        "{finding:?}"
    );
    let worsening = f(&[(16, vec![(0.1, 20.0), (0.2, 25.0)])]);
    assert_eq!(worsening.verdict, Verdict::Inconclusive);
    assert!(worsening.evidence.contains("in 0 of 1"), "{worsening:?}");
    assert_eq!(f(&[]).verdict, Verdict::NotMeasured);
    assert_eq!(f(&[(16, vec![(0.1, 20.0)])]).verdict, Verdict::NotMeasured);
}

#[test]
fn findings_lists_every_sweep_claim() {
    let found = findings(&narrow(paper_like()));
    let ids: Vec<&str> = found.iter().map(|f| f.claim.id).collect();
    assert_eq!(
        ids,
        [
            "optimal-guidance-depends-on-model-size",
            "smaller-models-sample-more-efficiently",
            "larger-models-win-at-relaxed-budgets",
            "sampler-does-not-change-scaling-efficiency",
            "ddpm-worse-than-ddim-at-few-steps",
            "dpm-solver-outperforms-ddim",
        ]
    );
    let verdicts: Vec<Verdict> = found.iter().map(|f| f.verdict).collect();
    use Verdict::*;
    assert_eq!(verdicts, [DoesNotHold, Holds, Holds, Holds, Holds, Holds]);
    assert!(findings(&[]).iter().all(|f| f.verdict == NotMeasured));
}

#[test]
fn the_decision_rate_counts_measured_findings_only() {
    let decided = DecisionRate::of(&findings(&narrow(paper_like())));
    let undecided = DecisionRate::of(&findings(&with_half_width(paper_like(), 50.0)));
    assert_eq!(decided.measured, undecided.measured);
    assert!(decided.measured > 0);
    assert_eq!(undecided.decided, 0, "{undecided:?}");
    assert!(decided.decided > 0, "{decided:?}");
    let none = DecisionRate::of(&findings(&[]));
    assert_eq!((none.decided, none.measured), (0, 0));
    assert!(decided.text().starts_with(&format!(
        "{} of {} measured",
        decided.decided, decided.measured
    )));
}
