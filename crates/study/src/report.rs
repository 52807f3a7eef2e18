//! The study's report: one self-contained HTML page (inline SVG plots, tables, sample grids as
//! inline PNG) and a Markdown summary, both stating each finding of the paper with the verdict
//! this run measured.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::analysis::{
    BudgetWinner, Setting, crossover, optimal_cfg, samplers, settings, settings_paired, widths,
    winners,
};
use crate::bootstrap::CiMethod;
use crate::cell::Cell;
use crate::findings::{
    Difference, Finding, Verdict, findings_paired, training_compute_scales_performance,
};
use crate::grid::EqualCostGrid;
use crate::pairing::Pairing;
use crate::plot;
use crate::super_res::SrResults;

/// Extra material the pipeline provides beside the cells.
#[derive(Clone, Debug, Default)]
pub struct ReportInputs {
    /// Title line, e.g. "quick preset on shapes, 4 widths".
    pub title: String,
    /// Free-form facts about the run (dataset, encoders, hardware, wall time), in order.
    pub facts: Vec<(String, String)>,
    /// Training curves: (width, [(normalised cost x iterations, FID)]) for Fig. 3.
    pub training_curves: Vec<(u32, Vec<(f64, f64)>)>,
    /// Sample grids as (caption, PNG bytes), e.g. widths at equal cost (Fig. 10).
    pub grids: Vec<(String, Vec<u8>)>,
    /// What the FID was computed on (e.g. "Inception pool3, pytorch-fid mode").
    pub fid_features: String,
    /// Sample grids of every width at equal sampling cost (Fig. 10).
    pub equal_cost: Vec<EqualCostGrid>,
    /// The sweep's kept features, for paired comparisons in the findings.
    pub pairing: Option<Arc<Pairing>>,
    /// The super-resolution stage's results (Secs. 3.2, 3.5), when the study has one.
    pub super_res: Option<SrResults>,
    /// The distillation stage's results (Sec. 3.6), when the study has one.
    pub distill: Option<crate::distill::DistillResults>,
    /// The DreamBooth stage's results (Sec. 3.2, Fig. 6), when the study has one.
    pub dreambooth: Option<crate::dreambooth::results::DreamBoothResults>,
}

/// `s` with the characters HTML gives meaning to escaped (every report section's text).
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Holds => "holds",
        Verdict::DoesNotHold => "fails",
        Verdict::Inconclusive => "inconclusive",
        Verdict::NotMeasured => "unmeasured",
    }
}

/// A finding as a box: verdict, the claim with its section, the evidence.
fn finding_html(f: &Finding) -> String {
    format!(
        "<div class=\"finding {}\"><span class=\"verdict\">{}</span> &mdash; {} ({})<br><small>{}</small></div>",
        verdict_class(f.verdict),
        f.verdict.label(),
        esc(f.claim.text),
        esc(f.claim.section),
        esc(&f.evidence)
    )
}

/// KID x 10^3 with its interval: "1.23 [0.80, 1.70]", or "-" where not measured.
fn kid_text(s: &Setting) -> String {
    let Some(kid) = s.kid else {
        return "-".into();
    };
    match s.kid_ci {
        Some(ci) => format!(
            "{:.2} [{:.2}, {:.2}]",
            kid * 1e3,
            ci.low * 1e3,
            ci.high * 1e3
        ),
        None => format!("{:.2}", kid * 1e3),
    }
}

/// The margin of a budget row's winner: "+0.35 [0.10, 0.60] over 16 filters (paired)", with
/// "from 2.048 GFLOPs" where it is measured at a later budget of the row than its first.
fn margin_text(row: &BudgetRow) -> String {
    let (Some(d), Some((compared, other))) = (row.margin, row.compared_pair()) else {
        return "no other size fits".into();
    };
    let mut over = format!("over {} filters", other.width);
    if compared.budget != row.winner.budget {
        over.push_str(&format!(" from {:.3} GFLOPs", compared.budget));
    }
    let Some(i) = d.interval else {
        return format!("{:+.2} {over} (no interval)", d.value);
    };
    let kind = if d.paired { "paired" } else { "interval range" };
    format!(
        "{:+.2} [{:.2}, {:.2}] {over} ({kind})",
        d.value, i.low, i.high
    )
}

/// Whether the row's winner is decided: "yes", "no" (the interval contains 0 or is missing),
/// or "-" when it is the only size within every budget of the row.
fn decided_text(row: &BudgetRow) -> &'static str {
    match row.margin.map(|d| d.verdict()) {
        None => "-",
        Some(Verdict::Holds) => "yes",
        Some(_) => "no",
    }
}

/// The decided column: "yes at 64 samples", "no at 32 samples" (per seed, the fewer of the two
/// sides; adaptive sampling raises it for undecided rows), or "-".
fn decided_column(row: &BudgetRow) -> String {
    let text = decided_text(row);
    match (row.compared_pair(), text) {
        (Some((compared, other)), "yes" | "no") => {
            let samples = compared.best.samples.min(other.samples);
            format!("{text} at {samples} samples")
        }
        _ => text.into(),
    }
}

fn setting_row(s: &Setting) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.2}{}</td><td>{}</td><td>{:.3}</td><td>{:.1}</td></tr>",
        s.width,
        s.params,
        esc(&s.sampler),
        s.steps,
        s.cfg,
        s.fid,
        s.fid_ci
            .map(|ci| format!(" <small>{}</small>", ci.text()))
            .unwrap_or_default(),
        kid_text(s),
        s.cost_gflops,
        s.ms_per_image
    )
}

/// A row of the budget table: the winner from its budget on, and its margin over the
/// runner-up at the row's first budget where another size fits.
struct BudgetRow {
    winner: BudgetWinner,
    /// The winner at the row's first budget where another size fits (None where none does).
    compared: Option<BudgetWinner>,
    margin: Option<Difference>,
}

impl BudgetRow {
    /// The winner the margin is measured at and its runner-up, where another size fits.
    fn compared_pair(&self) -> Option<(&BudgetWinner, &Setting)> {
        let compared = self.compared.as_ref()?;
        Some((compared, compared.runner_up.as_ref()?))
    }
}

/// The budget winners, keeping only budgets where the winning setting changes; margins are
/// bootstrapped for the kept rows only (each is a paired bootstrap). A row whose first budget
/// fits no other size is compared at its first budget where one does: a small model that keeps
/// winning once a larger one fits says so with a margin, not "no other size fits".
fn winner_changes(optimal: &[Setting]) -> Vec<BudgetRow> {
    let mut spans: Vec<Vec<BudgetWinner>> = Vec::new();
    for w in winners(optimal, None) {
        match spans.last_mut() {
            Some(span) if span[0].best == w.best => span.push(w),
            _ => spans.push(vec![w]),
        }
    }
    spans
        .into_iter()
        .map(|span| {
            let compared = span.iter().find(|w| w.runner_up.is_some()).cloned();
            BudgetRow {
                margin: compared.as_ref().and_then(BudgetWinner::margin),
                compared,
                winner: span.into_iter().next().expect("a span holds a winner"),
            }
        })
        .collect()
}

/// What the budget table's KID and margin columns are.
const BUDGET_NOTE: &str = "KID x 10^3: the unbiased kernel inception distance (cubic kernel) of the same samples, times 1000, with its 95% bootstrap interval. Margin: FID of the runner-up (the best other model size within the row's first budget, or where no other size fits there, within the row's first budget where one does, named) minus the winner's, with its 95% interval: paired bootstrap where both kept their features (same prompts, noise and reference rows resampled together), else the range the two FID intervals allow. A winner is decided only when that interval lies above 0.";

/// What the intervals in the tables and plots are.
fn interval_note(cells: &[Cell], paired: bool) -> String {
    let boot: Vec<u32> = cells
        .iter()
        .filter_map(|c| c.fid_ci)
        .filter(|ci| ci.method == CiMethod::Bootstrap)
        .map(|ci| ci.replicates)
        .collect();
    let seeds = settings(cells).iter().any(|s| s.seeds > 1);
    let mut parts = Vec::new();
    if let (Some(lo), Some(hi)) = (boot.iter().min(), boot.iter().max()) {
        parts.push(format!(
            "Error bars and bracketed intervals: 95% bootstrap intervals of each cell's FID ({} replicates; generated and reference features resampled with replacement; the percentile interval re-centred on the full-sample FID, since resamples with repeated rows bias FID upward). They are conservative: wider than the spread of FID over fresh samples of the same size.",
            if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }
        ));
    }
    if seeds {
        parts.push("Settings measured with several seeds show the mean FID with mean +- 1.96 standard errors over seeds.".into());
    }
    if parts.is_empty() {
        parts.push("No FID intervals were measured (sweep.bootstrap = 0).".into());
    }
    if paired {
        parts.push("The findings' differences between two settings are paired: each bootstrap replicate draws one set of prompt indices (shared by both settings, which sample prompt i from the same initial noise) and one set of reference rows, so the interval is that of the difference itself, usually far narrower than the range two overlapping intervals allow.".into());
    }
    parts.join(" ")
}

/// One equal-cost grid: the PNG with a label per row (width, steps, guidance, FID).
fn equal_cost_html(g: &EqualCostGrid) -> String {
    let mut h = format!(
        "<h2>Samples at equal sampling cost (Fig. 10): {} normalised cost x steps</h2><p>Every row spends the same sampling compute per image: {}, the same prompts and initial noise, each width at its own optimal guidance; FID of the row's {} images against the reference set.</p><div class=\"eqgrid\"><div class=\"labels\" style=\"gap: {}px\">",
        g.budget,
        esc(&g.sampler),
        g.rows.first().map(|r| r.samples).unwrap_or(0),
        g.gap_px
    );
    for r in &g.rows {
        let _ = write!(
            h,
            "<div class=\"label\" style=\"height: {}px\"><span><b>{} filters</b>, {} steps</span><span>CFG {:.1}, FID {:.2}</span><small>{}{:.3} GFLOPs/img</small></div>",
            g.tile_px,
            r.width,
            r.steps,
            r.cfg,
            r.fid,
            r.fid_ci
                .map(|ci| format!("95% CI {}, ", ci.text()))
                .unwrap_or_default(),
            r.cost_gflops
        );
    }
    let _ = write!(
        h,
        "</div><img src=\"data:image/png;base64,{}\" alt=\"samples at {} normalised cost x steps\"></div>",
        base64(&g.png),
        g.budget
    );
    h
}

/// Renders the HTML page and the Markdown summary.
pub fn render(cells: &[Cell], inputs: &ReportInputs) -> Result<(String, String), String> {
    let analysed = Analysed::of(cells, inputs);
    Ok((
        html(cells, inputs, &analysed)?,
        markdown(cells, inputs, &analysed),
    ))
}

/// What the report shows of the cells.
struct Analysed {
    /// Every (width, sampler, steps, guidance) setting.
    all: Vec<Setting>,
    /// The best guidance of each (width, sampler, steps).
    optimal: Vec<Setting>,
    /// The paper's findings, the training one last.
    found: Vec<Finding>,
    /// Widths and samplers measured.
    models: Vec<u32>,
    sampler_names: Vec<String>,
    /// The best setting from each budget on, a row per change of the winner.
    changes: Vec<BudgetRow>,
    /// The frontier's scaling law, validated by leaving widths out.
    scaling: crate::scaling_law::ScalingAnalysis,
    /// How well the FID features separate, where the sweep kept them.
    separation: Option<crate::separation::Separation>,
}

impl Analysed {
    fn of(cells: &[Cell], inputs: &ReportInputs) -> Self {
        let all = settings_paired(cells, inputs.pairing.clone());
        let optimal = optimal_cfg(&all);
        let mut found = findings_paired(cells, inputs.pairing.clone());
        found.push(training_compute_scales_performance(&inputs.training_curves));
        if let Some(sr) = &inputs.super_res {
            found.extend(crate::super_res::findings(&sr.cells, &sr.pairing));
        }
        if let Some(d) = &inputs.distill {
            found.extend(crate::distill::findings(d));
        }
        if let Some(d) = &inputs.dreambooth {
            found.extend(crate::dreambooth::results::findings(&d.cells, &d.paired));
        }
        Analysed {
            models: widths(&optimal),
            sampler_names: samplers(&optimal),
            changes: winner_changes(&optimal),
            scaling: crate::scaling_law::ScalingAnalysis::of(cells),
            separation: inputs
                .pairing
                .as_ref()
                .and_then(|p| crate::separation::analyse(p, &optimal).ok()),
            all,
            optimal,
            found,
        }
    }
}

fn html(cells: &[Cell], inputs: &ReportInputs, a: &Analysed) -> Result<String, String> {
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>ldmscale study: {title}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.7em; margin-bottom: .2em; }} h2 {{ margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ddd; padding: 4px 10px; text-align: right; }}
th {{ background: #f5f5f5; }} td:first-child, th:first-child {{ text-align: left; }}
.finding {{ border-left: 5px solid #999; padding: .4em 1em; margin: 1em 0; background: #fafafa; }}
.holds {{ border-color: #2a9d3c; }} .fails {{ border-color: #d33; }} .inconclusive {{ border-color: #e0a800; }} .unmeasured {{ border-color: #aaa; }}
.verdict {{ font-weight: bold; text-transform: uppercase; font-size: .85em; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 12px; }} .plots svg {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
.grid img {{ image-rendering: pixelated; max-width: 100%; border: 1px solid #eee; }}
.eqgrid {{ display: flex; gap: 12px; align-items: flex-start; }} .eqgrid img {{ image-rendering: pixelated; flex: none; }}
.eqgrid .labels {{ display: flex; flex-direction: column; flex: none; width: 230px; }}
.eqgrid .label {{ display: flex; flex-direction: column; justify-content: center; text-align: right; font-size: 13px; line-height: 1.3; overflow: hidden; }}
small {{ color: #666; }} tr.undecided td {{ background: #fff6dd; }}
.wide {{ overflow-x: auto; }} .wide td {{ white-space: nowrap; }} td.text {{ text-align: left; }}
</style></head><body>
<h1>Bigger is not always better &mdash; measured</h1>
<p>{title}</p>"#,
        title = esc(&inputs.title)
    );
    html.push_str("<table>");
    for (k, v) in &inputs.facts {
        let _ = write!(html, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    let _ = write!(
        html,
        "<tr><th>cells measured</th><td>{}</td></tr><tr><th>FID features</th><td>{}</td></tr></table>",
        cells.len(),
        esc(&inputs.fid_features)
    );

    html.push_str("<h2>The paper's findings on this run</h2>");
    let rate = crate::findings::DecisionRate::of(&a.found);
    let _ = write!(html, "<p><strong>{}.</strong></p>", esc(&rate.text()));
    for f in &a.found {
        html.push_str(&finding_html(f));
    }
    html.push_str(&budget_html(a));
    if let Some(s) = &a.separation {
        html.push_str(&crate::separation::html(s));
    }
    html.push_str(&plots_html(cells, inputs, a)?);
    html.push_str(&crate::scaling_law::html(&a.scaling)?);
    for g in &inputs.equal_cost {
        html.push_str(&equal_cost_html(g));
    }
    for (caption, png) in &inputs.grids {
        let _ = write!(
            html,
            "<h2>{}</h2><div class=\"grid\"><img src=\"data:image/png;base64,{}\" alt=\"{}\"></div>",
            esc(caption),
            base64(png),
            esc(caption)
        );
    }
    if let Some(sr) = &inputs.super_res {
        html.push_str(&crate::super_res::html(sr, base64)?);
    }
    if let Some(d) = &inputs.distill {
        html.push_str(&crate::distill::html(d)?);
    }
    if let Some(d) = &inputs.dreambooth {
        html.push_str(&crate::dreambooth::results::html(d, base64)?);
    }
    html.push_str("<h2>Optimal guidance per model and steps</h2><table><tr><th>model</th><th>params</th><th>sampler</th><th>steps</th><th>best CFG</th><th>FID [95% CI]</th><th>KID x10&sup3; [95% CI]</th><th>GFLOPs/img</th><th>ms/img</th></tr>");
    for s in &a.optimal {
        html.push_str(&setting_row(s));
    }
    html.push_str("</table><p><small>Made by ldmscale. Sampling cost counts every denoiser evaluation (guidance doubles them) at the GFLOPs of one forward.</small></p></body></html>\n");

    Ok(html)
}

/// The best model per budget and the crossovers.
fn budget_html(a: &Analysed) -> String {
    let mut html = String::new();
    html.push_str("<h2>Which model for which budget</h2><p>Best setting (optimal guidance) from each sampling budget on, all samplers; a row per change of the winner.</p><table><tr><th>from GFLOPs</th><th>model</th><th>sampler</th><th>steps</th><th>CFG</th><th>FID [95% CI]</th><th>KID x10&sup3; [95% CI]</th><th>margin over the runner-up (95% CI)</th><th>decided</th></tr>");
    for row in &a.changes {
        html.push_str(&budget_row_html(row));
    }
    let _ = write!(html, "</table><p><small>{}</small></p>", esc(BUDGET_NOTE));
    if a.models.len() >= 2 {
        html.push_str("<p>Crossover budgets (GFLOPs per image from which the larger model stays ahead):</p><table><tr><th>smaller</th><th>larger</th>");
        for s in &a.sampler_names {
            let _ = write!(html, "<th>{}</th>", esc(s));
        }
        html.push_str("</tr>");
        for pair in a.models.windows(2) {
            let _ = write!(html, "<tr><td>{}</td><td>{}</td>", pair[0], pair[1]);
            for s in &a.sampler_names {
                let c = crossover(&a.optimal, pair[0], pair[1], Some(s));
                let _ = write!(
                    html,
                    "<td>{}</td>",
                    c.map(|c| format!("{c:.3}"))
                        .unwrap_or_else(|| "never".into())
                );
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
    }

    html
}

/// One budget row; an undecided winner's row is marked.
fn budget_row_html(row: &BudgetRow) -> String {
    let b = &row.winner.best;
    let class = match decided_text(row) {
        "no" => " class=\"undecided\"",
        _ => "",
    };
    format!(
        "<tr{class}><td>{:.3}</td><td>{} filters</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.2}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        row.winner.budget,
        b.width,
        esc(&b.sampler),
        b.steps,
        b.cfg,
        b.fid,
        b.fid_ci
            .map(|ci| format!(" <small>{}</small>", ci.text()))
            .unwrap_or_default(),
        kid_text(b),
        esc(&margin_text(row)),
        decided_column(row)
    )
}

/// KID against sampling cost beside Figs. 9, 11, for the samplers whose cells measured KID.
fn kid_plots_html(a: &Analysed) -> Result<String, String> {
    let measured = |s: &String| a.optimal.iter().any(|x| &x.sampler == s && x.kid.is_some());
    let with_kid: Vec<&String> = a.sampler_names.iter().filter(|s| measured(s)).collect();
    if with_kid.is_empty() {
        return Ok(String::new());
    }
    let mut html = String::from(
        "<h2>KID against sampling cost</h2><p><small>KID x 10^3 of the same samples at each setting's FID-optimal guidance, with 95% bootstrap intervals; unlike FID it is unbiased at small sample sizes.</small></p><div class=\"plots\">",
    );
    for s in with_kid {
        html.push_str(&plot::kid_vs_cost(&a.optimal, s)?);
    }
    html.push_str("</div>");
    Ok(html)
}

/// Figs. 9, 11, 8 and 3.
fn plots_html(cells: &[Cell], inputs: &ReportInputs, a: &Analysed) -> Result<String, String> {
    let mut html = String::new();
    let _ = write!(
        html,
        "<h2>FID against sampling cost (Figs. 9, 11)</h2><p><small>{}</small></p><div class=\"plots\">",
        esc(&interval_note(cells, inputs.pairing.is_some()))
    );
    for s in &a.sampler_names {
        html.push_str(&plot::fid_vs_cost(&a.optimal, s)?);
    }
    html.push_str("</div>");
    html.push_str(&kid_plots_html(a)?);
    html.push_str("<h2>FID against guidance (Fig. 8)</h2><div class=\"plots\">");
    for s in &a.sampler_names {
        let mut steps: Vec<u32> = a
            .all
            .iter()
            .filter(|x| &x.sampler == s)
            .map(|x| x.steps)
            .collect();
        steps.sort();
        steps.dedup();
        for st in [steps.first(), steps.last()]
            .into_iter()
            .flatten()
            .collect::<std::collections::BTreeSet<_>>()
        {
            html.push_str(&plot::fid_vs_cfg(&a.all, s, *st)?);
        }
    }
    html.push_str("</div>");
    if !inputs.training_curves.is_empty() {
        let series: Vec<plot::Series> = inputs
            .training_curves
            .iter()
            .map(|(w, pts)| plot::Series {
                label: format!("{w} filters"),
                points: pts.clone(),
            })
            .collect();
        html.push_str("<h2>FID against training compute (Fig. 3)</h2><div class=\"plots\">");
        html.push_str(&plot::line_chart(
            "FID vs training compute",
            "normalised cost x iterations (log)",
            "FID",
            &series,
            true,
        )?);
        html.push_str("</div>");
    }
    Ok(html)
}

/// The budget table in Markdown, with its note.
fn budget_markdown(a: &Analysed) -> String {
    let mut md = String::from(
        "\n## Best setting per budget\n\n| from GFLOPs | model | sampler | steps | CFG | FID | 95% CI | KID x10^3 [95% CI] | margin over the runner-up (95% CI) | decided |\n|---:|---:|---|---:|---:|---:|---|---|---|---|\n",
    );
    for row in &a.changes {
        let b = &row.winner.best;
        let _ = writeln!(
            md,
            "| {:.3} | {} | {} | {} | {:.1} | {:.2} | {} | {} | {} | {} |",
            row.winner.budget,
            b.width,
            b.sampler,
            b.steps,
            b.cfg,
            b.fid,
            b.fid_ci.map(|ci| ci.text()).unwrap_or_else(|| "-".into()),
            kid_text(b),
            margin_text(row),
            decided_column(row)
        );
    }
    let _ = writeln!(md, "\n{BUDGET_NOTE}");
    md
}

fn markdown(cells: &[Cell], inputs: &ReportInputs, a: &Analysed) -> String {
    let mut md = format!("# ldmscale study: {}\n\n", inputs.title);
    for (k, v) in &inputs.facts {
        let _ = writeln!(md, "- **{k}**: {v}");
    }
    let _ = writeln!(
        md,
        "- **cells measured**: {}\n- **FID features**: {}\n\n## Findings\n",
        cells.len(),
        inputs.fid_features
    );
    let _ = writeln!(
        md,
        "{}.\n",
        crate::findings::DecisionRate::of(&a.found).text()
    );
    for f in &a.found {
        let _ = writeln!(
            md,
            "- **{}** — {} ({})  \n  {}",
            f.verdict.label(),
            f.claim.text,
            f.claim.section,
            f.evidence
        );
    }
    md.push_str(&budget_markdown(a));
    if let Some(s) = &a.separation {
        md.push_str(&crate::separation::markdown(s));
    }
    md.push_str(&crate::scaling_law::markdown(&a.scaling));
    for g in &inputs.equal_cost {
        let _ = writeln!(
            md,
            "\n## Samples at equal cost: {} normalised cost x steps ({})\n\n| width | steps | CFG | FID | 95% CI | GFLOPs/img |\n|---:|---:|---:|---:|---|---:|",
            g.budget, g.sampler
        );
        for r in &g.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.2} | {} | {:.3} |",
                r.width,
                r.steps,
                r.cfg,
                r.fid,
                r.fid_ci.map(|ci| ci.text()).unwrap_or_else(|| "-".into()),
                r.cost_gflops
            );
        }
    }
    if let Some(sr) = &inputs.super_res {
        md.push_str(&crate::super_res::markdown(sr));
    }
    if let Some(d) = &inputs.distill {
        md.push_str(&crate::distill::markdown(d));
    }
    if let Some(d) = &inputs.dreambooth {
        md.push_str(&crate::dreambooth::results::markdown(d));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::{cell, paper_like, with_kid};

    /// A DDIM cell without guidance, its FID +- 0.5 by bootstrap.
    fn ddim_cell(width: u32, steps: u32, fid: f64) -> Cell {
        let mut c = cell(width, "ddim", steps, 1.0, fid);
        c.fid_ci = Some(crate::bootstrap::FidCi {
            low: fid - 0.5,
            high: fid + 0.5,
            method: CiMethod::Bootstrap,
            replicates: 100,
        });
        c
    }

    /// Two widths on one sampler, FID +- 0.5 and KID = FID / 1000 +- 0.0005: the budget rows
    /// are the 16-filter model alone, an undecided 32-filter winner (margin 0.2 +- 1) and a
    /// decided one (margin 3 +- 1).
    fn budget_cells() -> Vec<Cell> {
        let c = |width, steps, fid: f64| {
            with_kid(ddim_cell(width, steps, fid), fid / 1000.0, Some(0.0005))
        };
        // Cost: steps x width^2 / 1000 GFLOPs.
        vec![c(16, 2, 10.0), c(16, 8, 8.0), c(32, 2, 7.8), c(32, 4, 5.0)]
    }

    #[test]
    fn budget_table_shows_kid_and_the_winners_margin() {
        let (html, md) = render(&budget_cells(), &ReportInputs::default()).unwrap();
        let rows = [
            "| 0.512 | 16 | ddim | 2 | 1.0 | 10.00 | [9.50, 10.50] | 10.00 [9.50, 10.50] | no other size fits | - |",
            "| 2.048 | 32 | ddim | 2 | 1.0 | 7.80 | [7.30, 8.30] | 7.80 [7.30, 8.30] | +0.20 [-0.80, 1.20] over 16 filters (interval range) | no at 100 samples |",
            "| 4.096 | 32 | ddim | 4 | 1.0 | 5.00 | [4.50, 5.50] | 5.00 [4.50, 5.50] | +3.00 [2.00, 4.00] over 16 filters (interval range) | yes at 100 samples |",
        ];
        for row in rows {
            assert!(md.contains(row), "{row}\n{md}");
        }
        assert!(
            md.contains("| KID x10^3 [95% CI] | margin over the runner-up (95% CI) | decided |")
        );
        assert!(md.contains("decided only when that interval lies above 0"));
        // HTML: both tables carry KID; only the undecided row is marked.
        assert_eq!(html.matches("<th>KID x10&sup3; [95% CI]</th>").count(), 2);
        assert_eq!(html.matches("<tr class=\"undecided\">").count(), 1);
        assert!(html.contains(
            "<tr class=\"undecided\"><td>2.048</td><td>32 filters</td><td>ddim</td><td>2</td><td>1.0</td><td>7.80 <small>[7.30, 8.30]</small></td><td>7.80 [7.30, 8.30]</td><td>+0.20 [-0.80, 1.20] over 16 filters (interval range)</td><td>no at 100 samples</td></tr>"
        ), "{html}");
        assert!(
            html.contains("<td>5.00 [4.50, 5.50]</td><td>4.096</td>"),
            "optimal-guidance row"
        );
        assert!(html.contains("KID against sampling cost"));

        // Without KID the column says so and no KID chart is drawn.
        let (html, md) = render(&paper_like(), &ReportInputs::default()).unwrap();
        assert!(md.contains("| - | no other size fits | - |"), "{md}");
        assert!(
            md.contains("over 32 filters (no interval) | no at 100 samples |"),
            "{md}"
        );
        assert!(!html.contains("KID against sampling cost"));
    }

    /// A winner alone at its first budget keeps winning once another size fits: its margin is
    /// measured at that later budget, which the row names.
    #[test]
    fn a_lone_winner_is_compared_where_another_size_first_fits() {
        let c = ddim_cell;
        // Costs 0.512 (16 filters, 2 steps), 2.048 (16 x 8 and 32 x 2) and 4.096 (32 x 4).
        let cells = [c(16, 2, 5.0), c(16, 8, 8.0), c(32, 2, 9.0), c(32, 4, 7.0)];
        let (_, md) = render(&cells, &ReportInputs::default()).unwrap();
        let row = "| 0.512 | 16 | ddim | 2 | 1.0 | 5.00 | [4.50, 5.50] | - | +4.00 [3.00, 5.00] over 32 filters from 2.048 GFLOPs (interval range) | yes at 100 samples |";
        assert!(md.contains(row), "{row}\n{md}");
        assert!(!md.contains("| no other size fits |"), "{md}");
    }

    #[test]
    fn report_states_every_finding_and_plots() {
        let inputs = ReportInputs {
            title: "test <run>".into(),
            facts: vec![("dataset".into(), "shapes".into())],
            grids: vec![("grid".into(), vec![1, 2, 3, 4])],
            ..Default::default()
        };
        let (html, md) = render(&paper_like(), &inputs).unwrap();
        assert!(html.contains("No FID intervals were measured"));
        assert!(html.contains("test &lt;run&gt;"));
        // No intervals: every sweep claim is inconclusive; no training curve: not measured.
        assert_eq!(html.matches("class=\"finding inconclusive\"").count(), 6);
        assert!(html.contains("<span class=\"verdict\">NOT MEASURED</span>"));
        assert!(html.contains("(Sec. 3.3.2, Fig. 9)"));
        assert!(html.matches("<svg").count() >= 6);
        assert!(html.contains("data:image/png;base64,AQIDBA=="));
        assert!(md.contains("## Findings") && md.contains("INCONCLUSIVE** — Smaller models"));
        assert!(
            md.contains("NOT MEASURED** — Pretraining performance"),
            "{md}"
        );

        // Equal-cost grids: a label per row with width, steps, guidance and FID with its CI.
        let grid = EqualCostGrid {
            budget: 16.0,
            sampler: "ddim".into(),
            rows: vec![
                crate::grid::GridRow {
                    width: 8,
                    steps: 40,
                    cfg: 3.0,
                    cost_gflops: 1.5,
                    normalised: 16.0,
                    fid: 12.5,
                    fid_ci: Some(crate::bootstrap::FidCi {
                        low: 10.0,
                        high: 15.25,
                        method: CiMethod::Bootstrap,
                        replicates: 100,
                    }),
                    samples: 32,
                },
                crate::grid::GridRow {
                    width: 32,
                    steps: 8,
                    cfg: 2.0,
                    cost_gflops: 1.5,
                    normalised: 16.0,
                    fid: 20.0,
                    fid_ci: None,
                    samples: 32,
                },
            ],
            tile_px: 64,
            gap_px: 4,
            png: vec![9, 9, 9],
        };
        let with_grid = ReportInputs {
            equal_cost: vec![grid],
            ..Default::default()
        };
        let mut cells = paper_like();
        for c in &mut cells {
            c.fid_ci = Some(crate::bootstrap::FidCi {
                low: c.fid - 1.0,
                high: c.fid + 1.0,
                method: CiMethod::Bootstrap,
                replicates: 100,
            });
        }
        let (html, md) = render(&cells, &with_grid).unwrap();
        assert!(html.contains("class=\"finding holds\""), "{html}");
        assert!(
            md.contains("HOLDS** — Smaller models sample more efficiently"),
            "{md}"
        );
        assert!(html.contains("Samples at equal sampling cost (Fig. 10): 16 normalised"));
        assert!(html.contains(
            "<b>8 filters</b>, 40 steps</span><span>CFG 3.0, FID 12.50</span><small>95% CI [10.00, 15.25], 1.500 GFLOPs/img"
        ));
        assert!(html.contains(
            "<b>32 filters</b>, 8 steps</span><span>CFG 2.0, FID 20.00</span><small>1.500 GFLOPs/img"
        ));
        assert!(html.contains("data:image/png;base64,CQkJ"));
        assert!(html.contains("95% bootstrap intervals of each cell's FID (100 replicates"));
        assert!(
            md.contains("| 8 | 40 | 3.0 | 12.50 | [10.00, 15.25] | 1.500 |"),
            "{md}"
        );
        assert!(md.contains("95% CI |"));

        let curves = ReportInputs {
            training_curves: vec![
                (16, vec![(0.1, 20.0), (0.2, 15.0)]),
                (32, vec![(0.3, 18.0), (0.6, 12.0)]),
            ],
            ..Default::default()
        };
        let (html, md) = render(&paper_like(), &curves).unwrap();
        // Training-time FIDs carry no interval.
        assert!(
            md.contains("INCONCLUSIVE** — Pretraining performance"),
            "{md}"
        );
        assert!(md.contains("16 filters: FID 20.00 -> 15.00"), "{md}");
        assert!(html.contains("FID against training compute"));
        let worse = ReportInputs {
            training_curves: vec![(16, vec![(0.1, 20.0), (0.2, 25.0)])],
            ..Default::default()
        };
        let (_, md) = render(&paper_like(), &worse).unwrap();
        assert!(
            md.contains("INCONCLUSIVE** — Pretraining performance"),
            "{md}"
        );
    }
}
