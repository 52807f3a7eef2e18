//! Guided distillation's analysis (App. C): per width and student (s16, s8), the student at
//! its optimal guidance against the undistilled model at the same steps at its optimal
//! guidance, the gain a paired FID difference; and the paper's observation that the gains were
//! inconsistent across sizes, judged on those intervals.
//!
//! Cost convention: a guided student takes 1 evaluation per step (guidance is an embedding),
//! the undistilled model 2 with guidance (w > 1); the table lists both.

use std::fmt::Write as _;

use ldmscale_diffusion::SamplerId;

use super::{DistillResults, esc, fid_text};
use crate::analysis::{Setting, optimal_cfg, settings_paired};
use crate::cell::{Cell, Variant};
use crate::findings::{Claim, Difference, Finding, Verdict};

/// App. C.
pub const GUIDED_GAINS_INCONSISTENT: Claim = Claim {
    id: "guided-distillation-gains-inconsistent-across-sizes",
    text: "Guided distillation's gains over the undistilled model at the same steps are inconsistent across model sizes",
    section: "App. C",
};

/// One width's student against its undistilled model at the student's steps.
#[derive(Clone, Debug)]
pub struct GuidedRow {
    /// The student at its optimal guidance.
    pub student: Setting,
    /// The undistilled model at the same steps, at its optimal guidance.
    pub undistilled: Setting,
    /// `FID(undistilled) - FID(student)`: positive where distillation gained.
    pub gain: Difference,
}

/// The guided students and the undistilled base cells at their steps (DDIM, the stage's
/// default teacher sampler), among a store's cells.
pub fn from_cells(cells: &[Cell]) -> (Vec<Cell>, Vec<Cell>) {
    let guided: Vec<Cell> = cells
        .iter()
        .filter(|c| matches!(c.variant, Variant::Guided { .. }))
        .cloned()
        .collect();
    let at_student = |c: &&Cell| {
        guided
            .iter()
            .any(|g| g.width == c.width && g.steps == c.steps)
    };
    let teachers = cells
        .iter()
        .filter(|c| c.variant == Variant::Base && c.sampler == SamplerId::Ddim)
        .filter(at_student)
        .cloned()
        .collect();
    (guided, teachers)
}

/// One row per (student steps, width) measured on both sides, fewest steps last.
pub fn rows(r: &DistillResults) -> Vec<GuidedRow> {
    let students = optimal_cfg(&settings_paired(&r.guided, r.pairing.clone()));
    let teachers = optimal_cfg(&settings_paired(&r.guided_teachers, r.pairing.clone()));
    let mut rows: Vec<GuidedRow> = students
        .into_iter()
        .filter_map(|student| {
            let undistilled = teachers
                .iter()
                .find(|t| t.width == student.width && t.steps == student.steps)?
                .clone();
            let gain = Difference::fid_gap(&student, &undistilled);
            Some(GuidedRow {
                student,
                undistilled,
                gain,
            })
        })
        .collect();
    rows.sort_by_key(|row| (std::cmp::Reverse(row.student.steps), row.student.width));
    rows
}

/// Rule: the gains are inconsistent (Holds) when, at some student's steps, one width gained
/// and another lost, each beyond its paired interval; consistent (Does not hold) when at every
/// student's steps measured on two or more widths all gains lie on one side of 0 beyond their
/// intervals; otherwise Inconclusive.
pub fn finding(r: &DistillResults) -> Finding {
    judge(&rows(r))
}

fn judge(rows: &[GuidedRow]) -> Finding {
    let claim = GUIDED_GAINS_INCONSISTENT;
    let groups = by_steps(rows);
    if groups.is_empty() {
        return claim
            .not_measured("no guided student measured on two widths beside its undistilled model");
    }
    let evidence = evidence(rows);
    let opposed = groups.iter().find_map(|g| opposing(g));
    let (verdict, deciding) = match opposed {
        Some(d) => (Verdict::Holds, Some(d)),
        None if groups.iter().all(|g| one_sided(g)) => (Verdict::DoesNotHold, weakest(&groups)),
        None => (Verdict::Inconclusive, undecided(&groups)),
    };
    Finding {
        claim,
        verdict,
        evidence,
        deciding,
    }
}

/// The rows of each student's steps measured on two or more widths.
fn by_steps(rows: &[GuidedRow]) -> Vec<Vec<&GuidedRow>> {
    let mut steps: Vec<u32> = rows.iter().map(|r| r.student.steps).collect();
    steps.dedup();
    steps
        .into_iter()
        .map(|s| {
            rows.iter()
                .filter(|r| r.student.steps == s)
                .collect::<Vec<_>>()
        })
        .filter(|g| g.len() >= 2)
        .collect()
}

/// A decided gain and a decided loss among one student's widths: the weaker of the two,
/// read for the claim (positive: inconsistent).
fn opposing(group: &[&GuidedRow]) -> Option<Difference> {
    let decided = |v: Verdict| {
        group
            .iter()
            .map(|r| r.gain)
            .filter(|d| d.verdict() == v)
            .min_by(|a, b| a.value.abs().total_cmp(&b.value.abs()))
    };
    let gain = decided(Verdict::Holds)?;
    let loss = decided(Verdict::DoesNotHold)?.negated();
    Some(if gain.value <= loss.value { gain } else { loss })
}

/// Every gain of one student decided, all on one side of 0.
fn one_sided(group: &[&GuidedRow]) -> bool {
    let verdicts: Vec<Verdict> = group.iter().map(|r| r.gain.verdict()).collect();
    verdicts.iter().all(|&v| v == Verdict::Holds)
        || verdicts.iter().all(|&v| v == Verdict::DoesNotHold)
}

/// The consistent gain nearest 0, read against the claim (negative: consistent).
fn weakest(groups: &[Vec<&GuidedRow>]) -> Option<Difference> {
    let nearest = groups
        .iter()
        .flatten()
        .map(|r| r.gain)
        .min_by(|a, b| a.value.abs().total_cmp(&b.value.abs()))?;
    Some(if nearest.value > 0.0 {
        nearest.negated()
    } else {
        nearest
    })
}

/// A gain whose interval contains 0 (or has none).
fn undecided(groups: &[Vec<&GuidedRow>]) -> Option<Difference> {
    let gains = groups.iter().flatten().map(|r| r.gain);
    gains
        .into_iter()
        .find(|d| d.verdict() == Verdict::Inconclusive)
}

fn evidence(rows: &[GuidedRow]) -> String {
    let parts: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "s{} of {} filters gains {}",
                r.student.steps,
                r.student.width,
                r.gain.text().replace("margin for the claim ", "")
            )
        })
        .collect();
    format!(
        "gain = FID(undistilled, same steps) - FID(student): {}",
        parts.join("; ")
    )
}

/// The App. C table and finding in HTML; empty without guided students.
pub fn html(r: &DistillResults) -> String {
    let rows = rows(r);
    if rows.is_empty() {
        return String::new();
    }
    let mut h = String::from(
        "<h3>Guided distillation (App. C)</h3><p>Stage 1 (a w-conditioned student of the teacher's guided output) and progressive rounds halving its steps; each student at its optimal guidance against the undistilled model at the same steps (DDIM, optimal guidance). Students take 1 evaluation per step (guidance is an embedding), the undistilled model 2 with guidance. Gain: FID(undistilled) - FID(student), positive where distillation helped.</p><table><tr><th>width</th><th>steps</th><th>undistilled FID [95% CI] (CFG, evaluations/img)</th><th>student FID [95% CI] (CFG, evaluations/img)</th><th>gain [95% CI]</th></tr>",
    );
    for row in &rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>s{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            row.student.width,
            row.student.steps,
            side(r, &row.undistilled),
            side(r, &row.student),
            esc(&gain_text(&row.gain))
        );
    }
    let f = judge(&rows);
    let _ = write!(
        h,
        "</table><p><b>{}</b> {}: {}</p>",
        f.verdict.label(),
        esc(f.claim.text),
        esc(&f.evidence)
    );
    h
}

/// The Markdown summary's App. C table; empty without guided students.
pub fn markdown(r: &DistillResults) -> String {
    let rows = rows(r);
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### Guided distillation (App. C)\n\nStudents 1 evaluation per step, undistilled DDIM 2 with guidance; gain = FID(undistilled) - FID(student).\n\n| width | steps | undistilled FID [95% CI] (CFG, evals) | student FID [95% CI] (CFG, evals) | gain [95% CI] |\n|---:|---|---|---|---|\n",
    );
    for row in &rows {
        let _ = writeln!(
            md,
            "| {} | s{} | {} | {} | {} |",
            row.student.width,
            row.student.steps,
            side(r, &row.undistilled),
            side(r, &row.student),
            gain_text(&row.gain)
        );
    }
    let f = judge(&rows);
    let _ = writeln!(md, "\n{}: {}", f.verdict.label(), f.claim.text);
    md
}

/// "FID [CI] (CFG c, e evaluations)".
fn side(r: &DistillResults, s: &Setting) -> String {
    let evaluations = s
        .keys
        .first()
        .and_then(|k| {
            r.guided
                .iter()
                .chain(&r.guided_teachers)
                .find(|c| &c.key() == k)
        })
        .map_or("-".into(), |c| c.evaluations.to_string());
    format!("{} (CFG {}, {evaluations})", fid_text(s), s.cfg)
}

fn gain_text(d: &Difference) -> String {
    let kind = if d.paired {
        "paired"
    } else {
        "from the marginal intervals"
    };
    match d.interval {
        Some(i) => format!("{:.3} [{:.3}, {:.3}] ({kind})", d.value, i.low, i.high),
        None => format!("{:.3} (no interval)", d.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::cell;
    use crate::bootstrap::{CiMethod, FidCi};

    /// A cell at `steps` with a FID interval of +- 0.5.
    fn measured(variant: Variant, (width, sampler, steps): (u32, &str, u32), fid: f64) -> Cell {
        let mut c = cell(width, sampler, steps, 3.0, fid);
        c.variant = variant;
        c.evaluations = if sampler == "guided-ddim" {
            steps
        } else {
            2 * steps
        } as u64;
        c.fid_ci = Some(FidCi {
            low: fid - 0.5,
            high: fid + 0.5,
            method: CiMethod::Bootstrap,
            replicates: 100,
        });
        c
    }

    /// Widths 8 and 16; `fids[i]` = (undistilled, s16, s8) of width i.
    fn results(fids: [(f64, f64, f64); 2]) -> DistillResults {
        let mut r = DistillResults::default();
        for (w, (teacher, s16, s8)) in [8, 16].into_iter().zip(fids) {
            let student = Variant::Guided { steps: 10 };
            for steps in [16, 8] {
                r.guided_teachers
                    .push(measured(Variant::Base, (w, "ddim", steps), teacher));
            }
            r.guided
                .push(measured(student, (w, "guided-ddim", 16), s16));
            r.guided.push(measured(student, (w, "guided-ddim", 8), s8));
        }
        r
    }

    #[test]
    fn gains_of_opposite_sign_beyond_their_intervals_are_inconsistent() {
        // s8 gains 3 at width 8 and loses 3 at width 16: inconsistent.
        let f = finding(&results([(10.0, 10.2, 7.0), (10.0, 9.9, 13.0)]));
        assert_eq!(f.verdict, Verdict::Holds, "{}", f.evidence);
        assert!(
            f.evidence.contains("s8 of 16 filters gains -3.00"),
            "{}",
            f.evidence
        );
        assert_eq!(f.deciding.map(|d| d.verdict()), Some(Verdict::Holds));
    }

    #[test]
    fn gains_on_one_side_everywhere_are_consistent() {
        let f = finding(&results([(10.0, 7.0, 8.0), (10.0, 6.0, 7.5)]));
        assert_eq!(f.verdict, Verdict::DoesNotHold, "{}", f.evidence);
        assert_eq!(f.deciding.map(|d| d.verdict()), Some(Verdict::DoesNotHold));
        let losses = finding(&results([(5.0, 7.0, 8.0), (5.0, 6.5, 7.5)]));
        assert_eq!(losses.verdict, Verdict::DoesNotHold);
    }

    #[test]
    fn overlapping_intervals_decide_nothing() {
        // Width 8's s16 and s8 gains lie inside their intervals (|gain| < 1).
        let f = finding(&results([(10.0, 9.6, 10.4), (10.0, 6.0, 13.0)]));
        assert_eq!(f.verdict, Verdict::Inconclusive, "{}", f.evidence);
        assert_eq!(f.deciding.map(|d| d.verdict()), Some(Verdict::Inconclusive));
    }

    #[test]
    fn one_width_or_no_undistilled_side_is_not_measured() {
        let mut r = results([(10.0, 7.0, 8.0), (10.0, 6.0, 7.5)]);
        r.guided.retain(|c| c.width == 8);
        assert_eq!(finding(&r).verdict, Verdict::NotMeasured);
        r.guided_teachers.clear();
        assert!(rows(&r).is_empty() && html(&r).is_empty() && markdown(&r).is_empty());
    }

    #[test]
    fn the_table_lists_each_width_and_student_with_its_evaluations() {
        let r = results([(10.0, 10.2, 7.0), (10.0, 9.9, 13.0)]);
        let md = markdown(&r);
        assert!(md.contains("| 8 | s16 | 10.000 [9.500, 10.500] (CFG 3, 32) | 10.200 [9.700, 10.700] (CFG 3, 16) |"), "{md}");
        assert!(md.contains("HOLDS"), "{md}");
        let mut stored = r.cells();
        stored.push(measured(Variant::Base, (8, "ddim", 4), 9.0));
        let (guided, teachers) = from_cells(&stored);
        assert_eq!((guided.len(), teachers.len()), (4, 4));
    }
}
