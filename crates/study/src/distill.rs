//! Distillation's analysis (Sec. 3.6, Fig. 13): the students against their teachers at the
//! same few steps, against the undistilled FID-vs-cost frontier at equal sampling cost, and
//! the findings judged on paired intervals.
//!
//! Cost convention: a cell's sampling cost is its own evaluations x GFLOPs per evaluation, so
//! an LCM student counts 1 evaluation per step (guidance is an embedding) and a CoDi student 2
//! (classifier-free guidance), as the undistilled models with guidance do. Guided distillation
//! (App. C) is in [`guided`].

pub mod guided;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use ldmscale_diffusion::SamplerId;

use crate::analysis::{Setting, best_within, budgets, optimal_cfg, settings_paired, widths};
use crate::cell::{Cell, Variant};
use crate::config::DistillMethod;
use crate::findings::{Claim, Comparison, Difference, Finding, Verdict, all_hold};
use crate::pairing::Pairing;
use crate::plot::{self, Interval, Series};
use crate::report::esc;

/// Distillation compute of a student, normalised cost x iterations (the paper's axis: the
/// same for both methods at equal steps).
pub const DISTILL_COST: &str = "distill_cost";
/// Distillation compute of a student in GFLOPs: every forward and backward of student,
/// teacher and target (CoDi's 9 passes per sample against LCM's 6).
pub const DISTILL_GFLOPS: &str = "distill_gflops";

/// Sec. 3.6, Fig. 13 right.
pub const DISTILLED_BEATS_UNDISTILLED: Claim = Claim {
    id: "distilled-beats-undistilled-at-equal-cost",
    text: "At equal sampling cost, a distilled model reaches a lower FID than the undistilled model of its size",
    section: "Sec. 3.6, Fig. 13",
};

/// Sec. 3.6, Fig. 13 left.
pub const DISTILLATION_KEEPS_SCALING_TRENDS: Claim = Claim {
    id: "distillation-keeps-scaling-trends",
    text: "Diffusion distillation does not change the scaling trends: at few sampling steps the larger and the smaller model are ordered the same way after distillation as before",
    section: "Sec. 3.6, Fig. 13",
};

/// What the distillation stage measured.
#[derive(Clone, Debug, Default)]
pub struct DistillResults {
    /// The students' cells (variants `lcm@N`, `codi@N`).
    pub students: Vec<Cell>,
    /// The teachers' base cells at the students' step count.
    pub teachers: Vec<Cell>,
    /// The sweep's grid cells: the undistilled models at every cost.
    pub sweep: Vec<Cell>,
    /// The guided-distilled students' cells (variant `guided@N`, at each student's steps).
    pub guided: Vec<Cell>,
    /// The undistilled models' base cells at the guided students' steps.
    pub guided_teachers: Vec<Cell>,
    /// All of them paired against the sweep's reference set.
    pub pairing: Option<Arc<Pairing>>,
    /// The students' (and teachers') sampling steps.
    pub sample_steps: u32,
}

fn method_of(c: &Cell) -> Option<DistillMethod> {
    match c.variant {
        Variant::Distilled { method, .. } => Some(method),
        _ => None,
    }
}

impl DistillResults {
    /// The distillation cells among a store's, without their pairing: the students, the DDIM
    /// base cells at their steps as teachers (the stage's default teacher sampler: a store does
    /// not record the stage's config) and every base cell as the undistilled side; `None`
    /// without students.
    pub fn from_cells(cells: &[Cell]) -> Option<Self> {
        let students: Vec<Cell> = cells
            .iter()
            .filter(|c| method_of(c).is_some())
            .cloned()
            .collect();
        let (guided, guided_teachers) = guided::from_cells(cells);
        if students.is_empty() && guided.is_empty() {
            return None;
        }
        let steps = students.first().map_or(4, |c| c.steps);
        let base: Vec<Cell> = cells
            .iter()
            .filter(|c| c.variant == Variant::Base)
            .cloned()
            .collect();
        let teachers = base
            .iter()
            .filter(|c| c.steps == steps && c.sampler == SamplerId::Ddim)
            .cloned()
            .collect();
        Some(DistillResults {
            students,
            teachers,
            guided,
            guided_teachers,
            sweep: base,
            pairing: None,
            sample_steps: steps,
        })
    }

    /// Every cell the results hold (for pairing).
    pub fn cells(&self) -> Vec<Cell> {
        [
            &self.students[..],
            &self.teachers[..],
            &self.guided[..],
            &self.guided_teachers[..],
            &self.sweep[..],
        ]
        .concat()
    }

    /// The methods measured, in report order.
    pub fn methods(&self) -> Vec<DistillMethod> {
        let found: BTreeSet<DistillMethod> = self.students.iter().filter_map(method_of).collect();
        found.into_iter().collect()
    }

    /// One method's students at their optimal guidance, one setting per width.
    pub fn students(&self, method: DistillMethod) -> Vec<Setting> {
        let own: Vec<Cell> = self
            .students
            .iter()
            .filter(|c| method_of(c) == Some(method))
            .cloned()
            .collect();
        optimal_cfg(&settings_paired(&own, self.pairing.clone()))
    }

    /// The teachers at the students' steps, at their optimal guidance.
    pub fn teachers(&self) -> Vec<Setting> {
        optimal_cfg(&settings_paired(&self.teachers, self.pairing.clone()))
    }

    /// Every undistilled setting measured (sweep and teachers, each cell once), at every
    /// guidance rate: the guidance optimal within a cost may not be the optimal one overall
    /// (it may cost twice the evaluations).
    pub fn undistilled(&self) -> Vec<Setting> {
        let mut seen = BTreeSet::new();
        let cells: Vec<Cell> = self
            .sweep
            .iter()
            .chain(&self.teachers)
            .filter(|c| seen.insert(c.key()))
            .cloned()
            .collect();
        settings_paired(&cells, self.pairing.clone())
    }
}

/// The findings of Sec. 3.6.
pub fn findings(r: &DistillResults) -> Vec<Finding> {
    let guided = guided::finding(r);
    if r.students.is_empty() {
        let why = "the study distilled no model";
        return vec![
            DISTILLED_BEATS_UNDISTILLED.not_measured(why),
            DISTILLATION_KEEPS_SCALING_TRENDS.not_measured(why),
            guided,
        ];
    }
    vec![beats_undistilled(r), keeps_scaling_trends(r), guided]
}

/// Rule: every student must beat the best undistilled setting of its width whose sampling
/// cost is at most its own, beyond the interval (paired where both kept their features).
fn beats_undistilled(r: &DistillResults) -> Finding {
    let undistilled = r.undistilled();
    let mut comparisons = Vec::new();
    for method in r.methods() {
        for s in r.students(method) {
            let Some(u) = best_within(&undistilled, Some(s.width), None, s.cost_gflops) else {
                continue;
            };
            comparisons.push(Comparison {
                what: format!(
                    "{method} student of {} filters ({} steps, CFG {}, {:.3} GFLOPs) vs its undistilled model within that cost ({} x{}, CFG {}, {:.3} GFLOPs)",
                    s.width, s.steps, s.cfg, s.cost_gflops, u.sampler, u.steps, u.cfg, u.cost_gflops
                ),
                difference: Difference::fid_gap(&s, u),
            });
        }
    }
    if comparisons.is_empty() {
        return DISTILLED_BEATS_UNDISTILLED
            .not_measured("no undistilled setting costs as little as a student");
    }
    DISTILLED_BEATS_UNDISTILLED.judged(all_hold(comparisons), "students")
}

/// `FID(smallest) - FID(largest)` among `settings` (positive: the larger model is better).
fn size_gap(settings: &[Setting]) -> Option<(Difference, u32, u32)> {
    let w = widths(settings);
    let (&small, &large) = (w.first()?, w.last()?);
    if small == large {
        return None;
    }
    let at = |width: u32| settings.iter().find(|s| s.width == width);
    Some((Difference::fid_gap(at(large)?, at(small)?), small, large))
}

/// Rule: the teachers' order of the smallest and largest distilled width at the students'
/// steps must be decided; the claim holds when every method's students keep that order beyond
/// their interval and fails when one reverses it.
fn keeps_scaling_trends(r: &DistillResults) -> Finding {
    let claim = DISTILLATION_KEEPS_SCALING_TRENDS;
    let Some((teacher, small, large)) = size_gap(&r.teachers()) else {
        return claim
            .not_measured("fewer than two widths distilled, or their teachers not measured");
    };
    let trend = format!(
        "undistilled {large} vs {small} filters at {} steps: {}",
        r.sample_steps,
        teacher.text()
    );
    let larger_better = match teacher.verdict() {
        Verdict::Holds => true,
        Verdict::DoesNotHold => false,
        _ => {
            return Finding {
                claim,
                verdict: Verdict::Inconclusive,
                evidence: format!("the undistilled trend is not decided: {trend}"),
                deciding: None,
            };
        }
    };
    let comparisons = r
        .methods()
        .into_iter()
        .filter_map(|m| {
            let (gap, ..) = size_gap(&r.students(m))?;
            let kept = if larger_better { gap } else { gap.negated() };
            let order = if larger_better { "larger" } else { "smaller" };
            Some(Comparison {
                what: format!(
                    "{m} students keep the {order} model ahead ({large} vs {small} filters)"
                ),
                difference: kept,
            })
        })
        .collect();
    claim
        .judged(all_hold(comparisons), "methods")
        .with_detail(&trend)
}

/// The cost convention every distillation plot uses, in words.
fn cost_convention(r: &DistillResults) -> String {
    let methods: Vec<&str> = r.methods().iter().map(|m| m.cost_convention()).collect();
    format!(
        "sampling cost = evaluations x GFLOPs per evaluation: {}; undistilled models 2 per step with guidance (w > 1)",
        methods.join("; ")
    )
}

/// One line per (label, settings) of FID against `x`, with error bars.
fn fid_series(
    lines: Vec<(String, Vec<Setting>)>,
    x: fn(&Setting) -> f64,
) -> (Vec<Series>, Vec<Vec<Interval>>) {
    lines
        .into_iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(label, mut settings)| {
            settings.sort_by(|a, b| x(a).total_cmp(&x(b)));
            let points = settings.iter().map(|s| (x(s), s.fid)).collect();
            let bars = settings
                .iter()
                .filter_map(|s| s.fid_ci.map(|c| (x(s), c.low, c.high)))
                .collect();
            (Series { label, points }, bars)
        })
        .unzip()
}

/// Fig. 13 left: FID at the students' steps against model width, teachers and students.
pub fn fig13_left(r: &DistillResults) -> Result<String, String> {
    let steps = r.sample_steps;
    let sampler = r.teachers.first().map_or("ddim", |c| c.sampler.as_str());
    let mut lines = vec![(format!("undistilled ({sampler})"), r.teachers())];
    for m in r.methods() {
        lines.push((format!("{m} student"), r.students(m)));
    }
    let (series, bars) = fid_series(lines, |s| s.width as f64);
    plot::line_chart_with_intervals(
        &format!("FID at {steps} steps, undistilled vs distilled (optimal guidance, 95% CI)"),
        "model width: base filters (equal steps; LCM 1, CoDi and CFG 2 evaluations per step)",
        "FID",
        &series,
        &bars,
        false,
    )
}

/// The undistilled frontier: the lowest FID of any model and sampler within each cost.
fn frontier(undistilled: &[Setting]) -> Vec<Setting> {
    budgets(undistilled)
        .into_iter()
        .filter_map(|b| {
            let best = best_within(undistilled, None, None, b)?;
            Some(Setting {
                cost_gflops: b,
                ..best.clone()
            })
        })
        .collect()
}

/// Fig. 13 right: the students against the undistilled optimal-FID-vs-cost frontier.
pub fn fig13_right(r: &DistillResults) -> Result<String, String> {
    let mut lines = vec![(
        "undistilled frontier (best of any width)".to_string(),
        frontier(&r.undistilled()),
    )];
    for m in r.methods() {
        lines.push((format!("{m} students (one point per width)"), r.students(m)));
    }
    let (series, bars) = fid_series(lines, |s| s.cost_gflops);
    plot::line_chart_with_intervals(
        "FID vs sampling cost: distilled vs the undistilled frontier (95% CI)",
        "sampling cost: GFLOPs per image (log); LCM 1, CoDi and CFG 2 evaluations per step",
        "FID",
        &series,
        &bars,
        true,
    )
}

/// The report's section.
pub fn html(r: &DistillResults) -> Result<String, String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<h2>Distillation (Sec. 3.6, Fig. 13)</h2><p>Every distilled width's final model distilled by each method with one recipe; students sampled at {} steps over the sweep's guidance grid with the sweep's prompts, noise and reference set (FIDs pair). Cost convention of both plots: {}.</p><div class=\"plots\">",
        r.sample_steps,
        esc(&cost_convention(r))
    );
    h.push_str(&fig13_left(r)?);
    h.push_str(&fig13_right(r)?);
    h.push_str("</div>");
    h.push_str(&table_html(r));
    h.push_str(&guided::html(r));
    Ok(h)
}

/// One row per model at its optimal guidance: (label, setting, distillation GFLOPs).
fn rows(r: &DistillResults) -> Vec<(String, Setting, Option<f64>)> {
    let mut rows: Vec<_> = r
        .teachers()
        .into_iter()
        .map(|s| ("undistilled".to_string(), s, None))
        .collect();
    for m in r.methods() {
        for s in r.students(m) {
            let cost = r
                .students
                .iter()
                .find(|c| method_of(c) == Some(m) && c.width == s.width)
                .and_then(|c| c.metrics.iter().find(|x| x.name == DISTILL_GFLOPS))
                .map(|x| x.value);
            rows.push((m.to_string(), s, cost));
        }
    }
    rows.sort_by_key(|(label, s, _)| (s.width, label.clone()));
    rows
}

/// Evaluations per image of a setting's cells (the cost convention made concrete).
fn evaluations(r: &DistillResults, s: &Setting) -> Option<u64> {
    let key = s.keys.first()?;
    let cell = r
        .students
        .iter()
        .chain(&r.teachers)
        .find(|c| &c.key() == key)?;
    Some(cell.evaluations)
}

fn fid_text(s: &Setting) -> String {
    match s.fid_ci {
        Some(ci) => format!("{:.3} [{:.3}, {:.3}]", s.fid, ci.low, ci.high),
        None => format!("{:.3}", s.fid),
    }
}

fn table_html(r: &DistillResults) -> String {
    let mut h = String::from(
        "<table><tr><th>width</th><th>model</th><th>sampler</th><th>steps</th><th>CFG</th><th>FID [95% CI]</th><th>evaluations/img</th><th>GFLOPs/img</th><th>distillation GFLOPs</th></tr>",
    );
    for (label, s, cost) in rows(r) {
        let evaluations = evaluations(r, &s).map_or("-".into(), |e| e.to_string());
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{label}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            s.width,
            s.sampler,
            s.steps,
            s.cfg,
            fid_text(&s),
            evaluations,
            s.cost_gflops,
            cost.map_or("-".into(), |c| format!("{c:.3e}"))
        );
    }
    h.push_str("</table>");
    h
}

/// The Markdown summary's section.
pub fn markdown(r: &DistillResults) -> String {
    let mut md = format!(
        "\n## Distillation\n\nStudents at {} steps, optimal guidance. {}.\n\n| width | model | sampler | CFG | FID [95% CI] | GFLOPs/img | distillation GFLOPs |\n|---:|---|---|---:|---|---:|---:|\n",
        r.sample_steps,
        cost_convention(r)
    );
    for (label, s, cost) in rows(r) {
        let _ = writeln!(
            md,
            "| {} | {label} | {} | {} | {} | {:.3} | {} |",
            s.width,
            s.sampler,
            s.cfg,
            fid_text(&s),
            s.cost_gflops,
            cost.map_or("-".into(), |c| format!("{c:.3e}"))
        );
    }
    md.push_str(&guided::markdown(r));
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::cell;
    use crate::bootstrap::{CiMethod, FidCi};

    /// A cell of `variant` with a FID interval of +- `half`.
    fn measured(variant: Variant, at: (u32, &str), cfg: f64, fid: f64, half: f64) -> Cell {
        let (width, sampler) = at;
        let mut c = cell(width, sampler, 4, cfg, fid);
        c.variant = variant;
        c.evaluations = if sampler == "lcm" || cfg <= 1.0 { 4 } else { 8 };
        c.fid_ci = Some(FidCi {
            low: fid - half,
            high: fid + half,
            method: CiMethod::Bootstrap,
            replicates: 100,
        });
        c
    }

    fn lcm() -> Variant {
        Variant::Distilled {
            method: DistillMethod::Lcm,
            steps: 10,
        }
    }

    /// Teachers 8 and 32 filters at 4 DDIM steps, students of LCM at `student_fids`.
    fn results(teacher_fids: [f64; 2], student_fids: [f64; 2], half: f64) -> DistillResults {
        let widths = [8, 32];
        let teachers = (0..2)
            .map(|i| {
                measured(
                    Variant::Base,
                    (widths[i], "ddim"),
                    1.0,
                    teacher_fids[i],
                    half,
                )
            })
            .collect();
        let students = (0..2)
            .map(|i| measured(lcm(), (widths[i], "lcm"), 3.0, student_fids[i], half))
            .collect();
        DistillResults {
            students,
            teachers,
            sample_steps: 4,
            ..DistillResults::default()
        }
    }

    fn verdicts(r: &DistillResults) -> (Verdict, Verdict) {
        let f = findings(r);
        (f[0].verdict, f[1].verdict)
    }

    #[test]
    fn the_scaling_trend_is_judged_against_the_teachers_decided_order() {
        // Larger teacher better beyond the intervals; students keep, reverse, or blur it.
        assert_eq!(
            verdicts(&results([10.0, 6.0], [9.0, 5.0], 0.5)).1,
            Verdict::Holds
        );
        assert_eq!(
            verdicts(&results([10.0, 6.0], [5.0, 9.0], 0.5)).1,
            Verdict::DoesNotHold
        );
        assert_eq!(
            verdicts(&results([10.0, 6.0], [7.0, 6.8], 0.5)).1,
            Verdict::Inconclusive
        );
        // Smaller teacher better: students that keep the smaller one ahead hold.
        assert_eq!(
            verdicts(&results([6.0, 10.0], [5.0, 9.0], 0.5)).1,
            Verdict::Holds
        );
        // Overlapping teachers decide nothing, whatever the students do.
        let blurred = results([8.0, 7.8], [5.0, 9.0], 0.5);
        let f = &findings(&blurred)[1];
        assert_eq!(f.verdict, Verdict::Inconclusive);
        assert!(f.evidence.contains("not decided"), "{}", f.evidence);
    }

    #[test]
    fn students_meet_undistilled_settings_within_their_own_cost() {
        // LCM students cost 4 evaluations; the guided teachers at CFG 3 cost 8 and are out of
        // reach, the unguided ones (4 evaluations) are compared.
        let mut r = results([10.0, 6.0], [9.0, 5.0], 0.3);
        assert_eq!(verdicts(&r).0, Verdict::Holds);
        r.teachers
            .extend([8, 32].map(|w| measured(Variant::Base, (w, "ddim"), 3.0, 1.0, 0.5)));
        assert_eq!(verdicts(&r).0, Verdict::Holds, "a costlier setting decided");
        r.teachers[0].fid = 7.0;
        r.teachers[0].fid_ci = r.students[0].fid_ci.map(|c| FidCi {
            low: 6.5,
            high: 7.5,
            ..c
        });
        assert_eq!(verdicts(&r).0, Verdict::DoesNotHold);
    }

    #[test]
    fn a_stores_cells_split_into_students_teachers_and_the_undistilled_side() {
        let r = results([10.0, 6.0], [9.0, 5.0], 0.5);
        let mut stored = r.cells();
        stored.push(cell(8, "ddim", 8, 1.0, 7.0));
        stored.push(cell(8, "dpmpp-2m", 4, 1.0, 7.0));
        let back = DistillResults::from_cells(&stored).unwrap();
        assert_eq!((back.students.len(), back.teachers.len()), (2, 2));
        assert_eq!((back.sweep.len(), back.sample_steps), (4, 4));
        assert!(
            back.teachers
                .iter()
                .all(|c| c.sampler == SamplerId::Ddim && c.steps == 4)
        );
        assert!(DistillResults::from_cells(&back.sweep).is_none());
    }

    #[test]
    fn no_students_measure_nothing() {
        let r = DistillResults::default();
        assert_eq!(verdicts(&r), (Verdict::NotMeasured, Verdict::NotMeasured));
        assert!(markdown(&results([10.0, 6.0], [9.0, 5.0], 0.5)).contains("| 8 | lcm | lcm |"));
    }
}
