//! The paper's findings judged on a sweep, one function per claim (in `findings/claims.rs`).
//!
//! Every claim comes down to FID differences oriented so that a positive difference favours the
//! claim. A difference decides only when its 95% interval excludes 0: above 0 the claim holds,
//! below 0 it does not. It is inconclusive when the interval contains 0, and also when no
//! interval was measured: a point estimate alone cannot tell a difference from sampling noise.
//! A claim is not measured when the sweep lacks the cells it needs.

use serde::Serialize;

use std::sync::Arc;

use crate::analysis::{Setting, optimal_cfg, settings_paired};
use crate::cell::Cell;
use crate::pairing::Pairing;

mod claims;
#[cfg(test)]
mod tests;

pub use claims::*;

/// What a run says about one claim of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The deciding difference favours the claim beyond its interval.
    Holds,
    /// The deciding difference opposes the claim beyond its interval.
    DoesNotHold,
    /// The deciding difference lies inside its interval, or has none.
    Inconclusive,
    /// The sweep lacks the cells the claim needs.
    NotMeasured,
}

impl Verdict {
    /// "HOLDS", "DOES NOT HOLD", "INCONCLUSIVE", "NOT MEASURED".
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Holds => "HOLDS",
            Verdict::DoesNotHold => "DOES NOT HOLD",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::NotMeasured => "NOT MEASURED",
        }
    }

    fn flipped(self) -> Self {
        match self {
            Verdict::Holds => Verdict::DoesNotHold,
            Verdict::DoesNotHold => Verdict::Holds,
            other => other,
        }
    }
}

/// A closed interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

/// What the interval of a difference is: the range two marginal intervals allow, or the
/// paired bootstrap interval of the difference itself.
const GAP_INTERVAL: &str = "the range the 95% FID intervals allow";
const PAIRED_INTERVAL: &str = "the paired 95% bootstrap interval of the difference";

/// A deciding difference: positive favours the claim; with a 95% interval where one is known.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Difference {
    /// Point estimate.
    pub value: f64,
    /// Interval, where the inputs had one.
    pub interval: Option<Interval>,
    /// Whether the interval is the paired bootstrap's (same prompts, noise and reference
    /// rows on both sides), not the range of two marginal intervals.
    pub paired: bool,
}

impl Difference {
    /// `other.fid - favoured.fid`. Its interval is the paired bootstrap interval where both
    /// settings kept their features, else the range the two 95% intervals allow (which
    /// excludes 0 exactly when they are disjoint).
    pub fn fid_gap(favoured: &Setting, other: &Setting) -> Self {
        let paired = favoured.pairing.0.as_ref();
        if let Some(d) = paired.and_then(|p| p.difference(favoured, other)) {
            return Difference {
                value: d.value,
                interval: Some(Interval {
                    low: d.low,
                    high: d.high,
                }),
                paired: true,
            };
        }
        let interval = match (favoured.fid_ci, other.fid_ci) {
            (Some(f), Some(o)) => Some(Interval {
                low: o.low - f.high,
                high: o.high - f.low,
            }),
            _ => None,
        };
        Difference {
            value: other.fid - favoured.fid,
            interval,
            paired: false,
        }
    }

    /// A difference measured without an interval.
    pub fn point(value: f64) -> Self {
        Difference {
            value,
            interval: None,
            paired: false,
        }
    }

    /// The mean of differences; its interval is the mean of theirs (None if one lacks it).
    pub fn mean(diffs: &[Difference]) -> Option<Self> {
        let n = diffs.len() as f64;
        let avg = |f: fn(&Difference) -> Option<f64>| -> Option<f64> {
            diffs.iter().map(f).sum::<Option<f64>>().map(|s| s / n)
        };
        let value = avg(|d| Some(d.value)).filter(|_| n > 0.0)?;
        let low = avg(|d| d.interval.map(|i| i.low));
        let high = avg(|d| d.interval.map(|i| i.high));
        Some(Difference {
            value,
            interval: low.zip(high).map(|(low, high)| Interval { low, high }),
            paired: diffs.iter().all(|d| d.paired),
        })
    }

    /// The same difference read against the claim.
    pub fn negated(self) -> Self {
        Difference {
            paired: self.paired,
            value: -self.value,
            interval: self.interval.map(|i| Interval {
                low: -i.high,
                high: -i.low,
            }),
        }
    }

    /// The verdict this difference alone gives (see the module comment).
    pub fn verdict(&self) -> Verdict {
        match self.interval {
            Some(i) if i.low > 0.0 => Verdict::Holds,
            Some(i) if i.high < 0.0 => Verdict::DoesNotHold,
            _ => Verdict::Inconclusive,
        }
    }

    /// "margin for the claim 2.10 [0.40, 3.80] (... lies above 0)".
    pub fn text(&self) -> String {
        let Some(i) = self.interval else {
            return format!(
                "margin for the claim {:.2} (no 95% interval was measured: a point estimate does not decide)",
                self.value
            );
        };
        let reading = match self.verdict() {
            Verdict::Holds => "lies above 0",
            Verdict::DoesNotHold => "lies below 0",
            _ if self.paired => "contains 0",
            _ => "contains 0: the difference lies inside the intervals",
        };
        let kind = match self.paired {
            true => PAIRED_INTERVAL,
            false => GAP_INTERVAL,
        };
        format!(
            "margin for the claim {:.2} [{:.2}, {:.2}] ({kind} {reading})",
            self.value, i.low, i.high
        )
    }
}

/// One comparison behind a claim: what is compared, and the difference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The settings compared, in words.
    pub what: String,
    /// Their difference, oriented for the claim.
    pub difference: Difference,
}

/// A claim judged over several comparisons.
#[derive(Clone, Debug, PartialEq)]
pub struct Tally {
    /// The claim's verdict.
    pub verdict: Verdict,
    /// The comparison most favourable to the claim among those sharing its verdict.
    pub deciding: Option<Comparison>,
    /// Comparisons that hold.
    pub holding: usize,
    /// Comparisons that do not hold.
    pub failing: usize,
    /// All comparisons.
    pub total: usize,
}

/// "Somewhere": holds if one comparison holds, fails if all fail, else inconclusive.
pub fn any_holds(comparisons: Vec<Comparison>) -> Tally {
    let count = |v: Verdict| {
        comparisons
            .iter()
            .filter(|c| c.difference.verdict() == v)
            .count()
    };
    let (holding, failing, total) = (
        count(Verdict::Holds),
        count(Verdict::DoesNotHold),
        comparisons.len(),
    );
    let verdict = if total == 0 {
        Verdict::NotMeasured
    } else if holding > 0 {
        Verdict::Holds
    } else if failing == total {
        Verdict::DoesNotHold
    } else {
        Verdict::Inconclusive
    };
    let deciding = comparisons
        .into_iter()
        .filter(|c| c.difference.verdict() == verdict)
        .max_by(|a, b| a.difference.value.total_cmp(&b.difference.value));
    Tally {
        verdict,
        deciding,
        holding,
        failing,
        total,
    }
}

/// "Everywhere": holds if all comparisons hold, fails if one fails, else inconclusive; the
/// deciding comparison is the weakest for the claim.
pub fn all_hold(comparisons: Vec<Comparison>) -> Tally {
    let against = comparisons
        .into_iter()
        .map(|c| Comparison {
            difference: c.difference.negated(),
            ..c
        })
        .collect();
    let t = any_holds(against);
    Tally {
        verdict: t.verdict.flipped(),
        deciding: t.deciding.map(|c| Comparison {
            difference: c.difference.negated(),
            ..c
        }),
        holding: t.failing,
        failing: t.holding,
        total: t.total,
    }
}

/// A claim of the paper, in its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// Short stable name.
    pub id: &'static str,
    /// The claim as the paper words it.
    pub text: &'static str,
    /// Where the paper makes it.
    pub section: &'static str,
}

/// A claim with the verdict this run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// The claim.
    pub claim: Claim,
    /// The verdict.
    pub verdict: Verdict,
    /// The numbers behind the verdict, in words.
    pub evidence: String,
    /// The deciding difference, where one was measured.
    pub deciding: Option<Difference>,
}

impl Claim {
    /// Not measured, and why.
    pub fn not_measured(self, why: &str) -> Finding {
        Finding {
            claim: self,
            verdict: Verdict::NotMeasured,
            evidence: why.into(),
            deciding: None,
        }
    }

    /// The finding of a tally; `counted` names the comparisons ("budgets") when there are several.
    pub fn judged(self, tally: Tally, counted: &str) -> Finding {
        let Some(deciding) = tally.deciding else {
            return self.not_measured("no comparison measured");
        };
        let mut evidence = format!("{}: {}", deciding.what, deciding.difference.text());
        if tally.total > 1 {
            evidence.push_str(&format!(
                "; beyond the intervals, {} of {} {counted} for the claim and {} against it",
                tally.holding, tally.total, tally.failing
            ));
        }
        Finding {
            claim: self,
            verdict: tally.verdict,
            evidence,
            deciding: Some(deciding.difference),
        }
    }
}

impl Finding {
    /// The same finding with `detail` appended to its evidence.
    pub fn with_detail(mut self, detail: &str) -> Self {
        if !detail.is_empty() {
            self.evidence.push_str("; ");
            self.evidence.push_str(detail);
        }
        self
    }
}

/// How many findings a run decided (Holds or Does not hold) of those it measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionRate {
    /// Findings whose deciding difference lies outside its interval.
    pub decided: usize,
    /// Findings the run had the cells for.
    pub measured: usize,
}

impl DecisionRate {
    /// Counts `findings`.
    pub fn of(findings: &[Finding]) -> Self {
        let measured = findings
            .iter()
            .filter(|f| f.verdict != Verdict::NotMeasured);
        Self {
            measured: measured.clone().count(),
            decided: measured
                .filter(|f| matches!(f.verdict, Verdict::Holds | Verdict::DoesNotHold))
                .count(),
        }
    }

    /// "3 of 7 measured findings decided at 95% (the rest inconclusive at this sample size)".
    pub fn text(&self) -> String {
        format!(
            "{} of {} measured findings decided at 95% (the rest inconclusive at this sample size)",
            self.decided, self.measured
        )
    }
}

/// The paper's sampling-efficiency findings, judged on a sweep.
pub fn findings(cells: &[Cell]) -> Vec<Finding> {
    findings_paired(cells, None)
}

/// [`findings`] with paired intervals where `pairing` holds both sides' features.
pub fn findings_paired(cells: &[Cell], pairing: Option<Arc<Pairing>>) -> Vec<Finding> {
    let all = settings_paired(cells, pairing);
    let optimal = optimal_cfg(&all);
    vec![
        optimal_guidance_depends_on_model_size(&all),
        smaller_models_sample_more_efficiently(&optimal),
        larger_models_win_at_relaxed_budgets(&optimal),
        sampler_does_not_change_scaling_efficiency(&optimal),
        ddpm_is_worse_than_ddim_at_few_steps(&optimal),
        dpm_solver_outperforms_ddim(&optimal),
    ]
}
