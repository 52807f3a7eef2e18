//! The scaling law of a sweep as the report and the planner use it: fitted once, validated by
//! leaving widths out, and asked about widths that were never trained.

use std::fmt::Write;

use serde::Serialize;

use super::{
    FrontierPoint, HeldOutWidth, Prediction, ScalingLaw, WidthCosts, frontier, leave_one_width_out,
};
use crate::cell::Cell;
use crate::plot;
use crate::report::esc;

/// Bootstrap refits behind the prediction intervals of the law fitted to every width.
const REPLICATES: usize = 200;
/// Refits per leave-one-width-out fit (one fit per width).
const HELD_OUT_REPLICATES: usize = 100;
/// The refits' seed: fixed, so a report and a plan of one store agree.
const SEED: u64 = 0x5CA1_1A57;

/// A sweep's frontier, its law and the law's held-out check.
pub struct ScalingAnalysis {
    /// The frontier points of every base width.
    pub points: Vec<FrontierPoint>,
    /// The law fitted to all of them, or why there is none.
    pub law: Result<ScalingLaw, String>,
    /// Each width predicted by a fit without it, or why that was not possible.
    pub held_out: Result<Vec<HeldOutWidth>, String>,
}

impl ScalingAnalysis {
    /// Fits and validates the law of `cells` (base variant only).
    pub fn of(cells: &[Cell]) -> Self {
        let points = frontier(cells);
        Self {
            law: ScalingLaw::new(&points, REPLICATES, SEED),
            held_out: leave_one_width_out(&points, HELD_OUT_REPLICATES, SEED),
            points,
        }
    }

    /// Mean held-out relative error over every point, and (covered, points).
    pub fn held_out_summary(&self) -> Option<(f64, usize, usize)> {
        let held = self.held_out.as_ref().ok()?;
        let n: usize = held.iter().map(|h| h.predictions.len()).sum();
        let error: f64 = held
            .iter()
            .flat_map(|h| &h.predictions)
            .map(|(p, q)| (q.fid - p.fid).abs() / p.fid)
            .sum();
        let covered = held.iter().map(|h| h.covered).sum();
        (n > 0).then(|| (error / n as f64, covered, n))
    }

    /// The law's answer for width `width` (trained or not) under `budget_gflops` per image.
    pub fn predict_width(&self, width: u32, budget_gflops: f64) -> Result<WidthPrediction, String> {
        let law = self
            .law
            .as_ref()
            .map_err(|e| format!("no scaling law: {e}"))?;
        let costs = WidthCosts::fit(&self.points)?;
        let gflops_per_eval = costs.gflops_per_eval(width);
        if gflops_per_eval.is_nan() || gflops_per_eval <= 0.0 {
            return Err(format!(
                "width {width}: the fitted cost per evaluation is not positive"
            ));
        }
        let evaluations = (budget_gflops / gflops_per_eval).floor();
        if evaluations < 1.0 {
            return Err(format!(
                "width {width} costs {gflops_per_eval:.4} GFLOPs per evaluation: the budget of {budget_gflops} GFLOPs buys not one"
            ));
        }
        let params = costs.params(width);
        let max_measured = self
            .points
            .iter()
            .map(|p| p.evaluations)
            .fold(0.0, f64::max);
        Ok(WidthPrediction {
            width,
            params,
            gflops_per_eval,
            evaluations,
            prediction: law.predict(params, evaluations),
            measured_width: self.points.iter().any(|p| p.width == width),
            beyond_measured_evaluations: evaluations > max_measured,
            held_out_error: self.held_out_summary().map(|s| s.0),
        })
    }
}

/// The law's prediction for one width under a budget.
#[derive(Clone, Debug, Serialize)]
pub struct WidthPrediction {
    /// Base width asked about.
    pub width: u32,
    /// Its parameters (fitted from the measured widths' counts).
    pub params: u64,
    /// GFLOPs of one evaluation (likewise).
    pub gflops_per_eval: f64,
    /// Evaluations per image the budget buys.
    pub evaluations: f64,
    /// Predicted FID with its 95% prediction interval.
    pub prediction: Prediction,
    /// Whether the width was measured (the sweep's own cells answer better).
    pub measured_width: bool,
    /// Whether the budget buys more evaluations than any measured setting used.
    pub beyond_measured_evaluations: bool,
    /// Mean leave-one-width-out relative error of the law, where it could be checked.
    pub held_out_error: Option<f64>,
}

/// The report's section.
pub fn html(a: &ScalingAnalysis) -> Result<String, String> {
    let mut html = String::from("<h2>Scaling law of the sampling frontier</h2>");
    let law = match &a.law {
        Ok(law) => law,
        Err(why) => {
            let _ = write!(html, "<p>Not fitted: {}.</p>", esc(why));
            return Ok(html);
        }
    };
    let _ = write!(
        html,
        "<p>Each width's best FID at each number of denoiser evaluations per image (over samplers, steps and guidance; cheaper points it does not beat dropped), fitted by relative least squares:</p><p><code>{}</code></p><p><small>{} frontier points of widths {:?}; RMS relative error {:.1}%. Intervals: residual bootstrap of {} refits.</small></p>",
        esc(&law.fit.law.formula()),
        law.fit.points,
        law.fit.widths,
        100.0 * law.fit.rms_relative_error,
        REPLICATES
    );
    match &a.held_out {
        Err(why) => {
            let _ = write!(html, "<p>Not validated: {}.</p>", esc(why));
        }
        Ok(held) => {
            html.push_str(&held_out_table(held, a));
            html.push_str("<div class=\"plots\">");
            html.push_str(&held_out_plot(held)?);
            html.push_str("</div>");
        }
    }
    html.push_str("<p><small><code>ldmscale plan --store results.sqlite --budget-gflops G --width W</code> asks the law about a width that was not trained; its answer is marked as extrapolated.</small></p>");
    Ok(html)
}

fn held_out_table(held: &[HeldOutWidth], a: &ScalingAnalysis) -> String {
    let mut html = String::from(
        "<p>Leaving each width out, the law fitted to the others predicts its frontier:</p><table><tr><th>width left out</th><th>params</th><th>frontier points</th><th>mean |predicted - measured| / measured</th><th>measured inside the 95% prediction interval</th></tr>",
    );
    for h in held {
        let params = h.predictions.first().map_or(0, |(p, _)| p.params);
        let _ = write!(
            html,
            "<tr><td>{} filters</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{} of {}</td></tr>",
            h.width,
            params,
            h.predictions.len(),
            100.0 * h.mean_abs_relative_error,
            h.covered,
            h.predictions.len()
        );
    }
    html.push_str("</table>");
    if let Some((error, covered, n)) = a.held_out_summary() {
        let _ = write!(
            html,
            "<p>Over all {n} held-out points: mean error {:.1}%, {covered} inside their intervals ({:.0}%; 95% nominal). The outermost widths are extrapolations in size, the hardest case.</p>",
            100.0 * error,
            100.0 * covered as f64 / n as f64
        );
    }
    html
}

/// Each width's measured frontier against sampling cost, over the band a fit without it
/// predicted.
fn held_out_plot(held: &[HeldOutWidth]) -> Result<String, String> {
    let series: Vec<plot::Series> = held
        .iter()
        .map(|h| plot::Series {
            label: format!("{} filters", h.width),
            points: h
                .predictions
                .iter()
                .map(|(p, _)| (p.cost_gflops(), p.fid))
                .collect(),
        })
        .collect();
    let bands: Vec<Vec<plot::Interval>> = held
        .iter()
        .map(|h| {
            h.predictions
                .iter()
                .map(|(p, q)| (p.cost_gflops(), q.low, q.high))
                .collect()
        })
        .collect();
    plot::line_chart_with_intervals(
        "Measured frontier (lines) vs the band predicted without that width",
        "sampling cost: GFLOPs per image (log)",
        "best FID",
        &series,
        &bands,
        true,
    )
}

/// The Markdown summary's lines.
pub fn markdown(a: &ScalingAnalysis) -> String {
    let mut md = String::from("\n## Scaling law of the sampling frontier\n\n");
    match &a.law {
        Err(why) => {
            let _ = writeln!(md, "Not fitted: {why}.");
        }
        Ok(law) => {
            let _ = writeln!(
                md,
                "`{}` ({} points, RMS relative error {:.1}%).",
                law.fit.law.formula(),
                law.fit.points,
                100.0 * law.fit.rms_relative_error
            );
            match a.held_out_summary() {
                Some((error, covered, n)) => {
                    let _ = writeln!(
                        md,
                        "\nLeave-one-width-out: mean error {:.1}% over {n} points, {covered} inside their 95% prediction intervals.",
                        100.0 * error
                    );
                }
                None => {
                    if let Err(why) = &a.held_out {
                        let _ = writeln!(md, "\nNot validated: {why}.");
                    }
                }
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::cell;

    /// A sweep whose widths follow a law: FID = 2 + 3 n^-0.7 + 40 n^0.3 e^-1.2 with the
    /// analysis helpers' parameter counts (width² x 100).
    fn lawful_cells() -> Vec<Cell> {
        let law = super::super::tests::TRUE_LAW;
        let mut cells = Vec::new();
        for w in [40u32, 60, 80, 100] {
            for steps in [1u32, 2, 4, 8, 16] {
                let c = cell(w, "ddim", steps, 1.0, 0.0);
                let fid = law.fid(c.params, c.evaluations as f64);
                cells.push(Cell { fid, ..c });
            }
        }
        cells
    }

    #[test]
    fn the_report_section_and_an_untrained_width() {
        let a = ScalingAnalysis::of(&lawful_cells());
        let law = a.law.as_ref().unwrap();
        assert!(law.fit.rms_relative_error < 1e-4, "{:?}", law.fit);
        let (error, _, n) = a.held_out_summary().unwrap();
        assert_eq!(n, 20);
        assert!(error < 0.02, "held-out error {error}");
        let html = html(&a).unwrap();
        assert!(
            html.contains("<svg") && html.contains("width left out"),
            "{html}"
        );
        assert!(markdown(&a).contains("Leave-one-width-out"));

        // Width 70 was not trained: its params and cost (4.9 GFLOPs per evaluation) come from
        // the quadratic, its FID from the law.
        let p = a.predict_width(70, 39.25).unwrap();
        assert_eq!(
            (p.params, p.evaluations, p.measured_width),
            (490_000, 8.0, false)
        );
        let truth = super::super::tests::TRUE_LAW.fid(490_000, 8.0);
        assert!(
            (p.prediction.fid - truth).abs() < 1e-3 * truth,
            "{p:?} vs {truth}"
        );
        assert!(p.prediction.low <= p.prediction.fid && p.prediction.fid <= p.prediction.high);
        assert!(!p.beyond_measured_evaluations);
        assert!(
            a.predict_width(70, 1e-6)
                .unwrap_err()
                .contains("buys not one")
        );
    }

    #[test]
    fn two_widths_say_why_there_is_no_law() {
        let cells: Vec<Cell> = lawful_cells()
            .into_iter()
            .filter(|c| c.width <= 60)
            .collect();
        let a = ScalingAnalysis::of(&cells);
        assert!(
            html(&a)
                .unwrap()
                .contains("Not fitted: a scaling-law fit needs at least 3 widths")
        );
        assert!(
            a.predict_width(50, 10.0)
                .unwrap_err()
                .contains("no scaling law")
        );
    }
}
