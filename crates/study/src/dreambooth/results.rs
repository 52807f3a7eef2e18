//! The DreamBooth section's results: pooled values to cell metrics, the finding "DreamBooth
//! quality scales with model size", and the report section (table, plots, Fig. 6).

use serde::{Deserialize, Serialize};

use super::measure::Pooled;
use super::metrics;
use crate::bootstrap::{FidCi, mean_interval};
use crate::cell::{Cell, Metric, Variant};
use crate::findings::{Claim, Difference, Finding, Interval, Verdict};
use crate::plot::{Series, line_chart_with_intervals};
use crate::report::esc;

/// A metric of the section: its store name, its label, whether higher is better, and what it
/// stands in for.
pub struct MetricInfo {
    /// Store name.
    pub name: &'static str,
    /// Column label.
    pub label: &'static str,
    /// Higher is better.
    pub higher_is_better: bool,
    /// What it is, in words.
    pub about: &'static str,
}

/// The section's metrics, in the order tables show them; the first decides the finding.
pub const METRICS: [MetricInfo; 8] = [
    MetricInfo {
        name: "db-subject-fidelity",
        label: "subject fidelity",
        higher_is_better: true,
        about: "P(subject) of the subject classifier (DINO stand-in)",
    },
    MetricInfo {
        name: "db-feature-cosine",
        label: "feature cosine",
        higher_is_better: true,
        about: "mean pairwise cosine to real renders, FID features (DINO-style)",
    },
    MetricInfo {
        name: "db-clip-i",
        label: "CLIP-I",
        higher_is_better: true,
        about: "mean pairwise cosine to real renders, in-domain CLIP (stand-in)",
    },
    MetricInfo {
        name: "db-clip-t",
        label: "CLIP-T",
        higher_is_better: true,
        about: "cosine with the prompt's class-noun twin, in-domain CLIP (stand-in)",
    },
    MetricInfo {
        name: "db-prompt-accuracy",
        label: "prompt accuracy",
        higher_is_better: true,
        about: "share of samples whose twin outranks 4 one-word edits",
    },
    MetricInfo {
        name: "db-pres",
        label: "PRES",
        higher_is_better: false,
        about: "P(subject) of class-prompt samples (prior collapse; stand-in)",
    },
    MetricInfo {
        name: "db-language-drift",
        label: "language drift",
        higher_is_better: false,
        about: "KID(class-prompt samples, real class images) minus the base model's",
    },
    MetricInfo {
        name: "db-div",
        label: "DIV",
        higher_is_better: true,
        about: "mean cosine distance among a prompt's samples, FID features (LPIPS stand-in)",
    },
];

/// The DreamBooth paper's own metrics, measured where `[dreambooth] dino` / `clip` name real
/// models (local transformers directories); shown beside the stand-ins.
pub const REFERENCE_METRICS: [MetricInfo; 3] = [
    MetricInfo {
        name: "db-dino",
        label: "DINO",
        higher_is_better: true,
        about: "mean cosine to real renders, DINO ViT class tokens ([dreambooth] dino)",
    },
    MetricInfo {
        name: "db-clip-i-real",
        label: "CLIP-I (CLIP)",
        higher_is_better: true,
        about: "mean cosine to real renders, CLIP image embeddings ([dreambooth] clip)",
    },
    MetricInfo {
        name: "db-clip-t-real",
        label: "CLIP-T (CLIP)",
        higher_is_better: true,
        about: "cosine with the class twin's CLIP text embedding ([dreambooth] clip)",
    },
];

/// The section's metrics the cells have: every stand-in, and the reference metrics measured.
fn shown_metrics(cells: &[Cell]) -> Vec<&'static MetricInfo> {
    let measured = |m: &&MetricInfo| cells.iter().any(|c| metric_of(c, m.name).is_some());
    METRICS
        .iter()
        .chain(REFERENCE_METRICS.iter().filter(measured))
        .collect()
}

/// Finetune compute of a cell: normalised cost x iterations, summed over its subjects.
pub const FINETUNE_COST: &str = "db-finetune-cost";
/// The lowest held-out accuracy of the cell's subject classifiers.
pub const CLASSIFIER_ACCURACY: &str = "db-classifier-accuracy";

/// The claim of Sec. 3.2 / Fig. 6.
pub const DREAMBOOTH_SCALES: Claim = Claim {
    id: "dreambooth-quality-scales-with-size",
    text: "DreamBooth quality scales with model size",
    section: "Sec. 3.2, Fig. 6",
};

/// The section's stored cells and its Fig. 6.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DreamBoothResults {
    /// One cell per (width, prior).
    pub cells: Vec<Cell>,
    /// Fig. 6 as PNG bytes (empty when not made).
    #[serde(skip)]
    pub fig6: Vec<u8>,
    /// Subjects finetuned.
    pub subjects: Vec<String>,
    /// The section's learning rate.
    pub learning_rate: f64,
    /// The deciding metric's paired gaps (largest minus smallest width), one per prior
    /// setting; empty where only the store was read (its cells keep no per-image values).
    #[serde(default)]
    pub paired: Vec<PairedGap>,
}

/// Subject fidelity of the largest minus the smallest width over the same images (same
/// subjects, prompts and noise on both sides), with the paired bootstrap's 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedGap {
    /// With prior preservation.
    pub prior: bool,
    /// The smallest and largest width.
    pub widths: (u32, u32),
    /// Images paired.
    pub images: usize,
    /// Mean per-image difference.
    pub value: f64,
    /// Its 95% interval.
    pub low: f64,
    /// See `low`.
    pub high: f64,
}

/// A width and its per-image values.
pub type WidthValues<'v> = (u32, &'v [f64]);

impl PairedGap {
    /// The gap of per-image values `large - small` (the same images in the same order);
    /// `None` when the sides differ in length or the bootstrap has too few images.
    pub fn of(
        prior: bool,
        (small, large): (WidthValues, WidthValues),
        replicates: usize,
        seed: u64,
    ) -> Option<Self> {
        if small.1.len() != large.1.len() {
            return None;
        }
        let gaps: Vec<f64> = large.1.iter().zip(small.1).map(|(l, s)| l - s).collect();
        let ci = mean_interval(&gaps, replicates, seed)?;
        Some(PairedGap {
            prior,
            widths: (small.0, large.0),
            images: gaps.len(),
            value: gaps.iter().sum::<f64>() / gaps.len() as f64,
            low: ci.low,
            high: ci.high,
        })
    }

    fn difference(&self) -> Difference {
        Difference {
            value: self.value,
            interval: Some(Interval {
                low: self.low,
                high: self.high,
            }),
            paired: true,
        }
    }
}

impl DreamBoothResults {
    /// The section from a store's cells alone (`results report`): its DreamBooth cells, by
    /// prior then width; the store records neither subjects, learning rate nor Fig. 6. `None`
    /// when there are no such cells.
    pub fn from_cells(cells: &[Cell]) -> Option<Self> {
        let mut mine: Vec<Cell> = cells
            .iter()
            .filter(|c| prior_of(c).is_some())
            .cloned()
            .collect();
        mine.sort_by_key(|c| (c.variant, c.width));
        (!mine.is_empty()).then(|| DreamBoothResults {
            cells: mine,
            ..Default::default()
        })
    }
}

/// The metrics of one (width, prior) from its pooled values; `replicates` bootstrap draws
/// seeded by `seed` give the intervals.
pub fn pooled_metrics(
    pooled: &Pooled,
    replicates: usize,
    seed: u64,
) -> Result<Vec<Metric>, String> {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let metric = |name: &str, v: &[f64]| Metric {
        name: name.into(),
        value: mean(v),
        ci: mean_interval(v, replicates, seed),
    };
    let (tuned, base, real) = &pooled.drift;
    let (drift, drift_ci) =
        metrics::language_drift(tuned, base, real, pooled.dim, replicates, seed)?;
    let per_image = [
        &pooled.subject_fidelity,
        &pooled.feature_cosine,
        &pooled.clip_i,
        &pooled.clip_t,
        &pooled.prompt_accuracy,
        &pooled.pres,
    ];
    let mut out: Vec<Metric> = METRICS[..6]
        .iter()
        .zip(per_image)
        .map(|(m, v)| metric(m.name, v))
        .collect();
    out.push(Metric {
        name: METRICS[6].name.into(),
        value: drift,
        ci: drift_ci,
    });
    out.push(metric(METRICS[7].name, &pooled.div));
    let reference = [&pooled.dino, &pooled.clip_i_real, &pooled.clip_t_real];
    for (info, values) in REFERENCE_METRICS.iter().zip(reference) {
        if !values.is_empty() {
            out.push(metric(info.name, values));
        }
    }
    out.push(Metric {
        name: FINETUNE_COST.into(),
        value: pooled.finetune_cost.iter().sum(),
        ci: None,
    });
    Ok(out)
}

fn metric_of<'c>(cell: &'c Cell, name: &str) -> Option<&'c Metric> {
    cell.metrics.iter().find(|m| m.name == name)
}

fn prior_of(cell: &Cell) -> Option<bool> {
    match cell.variant {
        Variant::DreamBooth { prior, .. } => Some(prior),
        _ => None,
    }
}

/// The cells of one prior setting, by width.
fn setting(cells: &[Cell], prior: bool) -> Vec<&Cell> {
    let mut out: Vec<&Cell> = cells
        .iter()
        .filter(|c| prior_of(c) == Some(prior))
        .collect();
    out.sort_by_key(|c| c.width);
    out
}

/// `largest - smallest` of metric `info` (sign flipped where lower is better, so positive
/// favours the larger model), with the range the two 95% intervals allow.
fn size_gap(small: &Cell, large: &Cell, info: &MetricInfo) -> Option<Difference> {
    let (s, l) = (metric_of(small, info.name)?, metric_of(large, info.name)?);
    let sign = if info.higher_is_better { 1.0 } else { -1.0 };
    let interval = match (s.ci, l.ci) {
        (Some(s), Some(l)) => {
            let (a, b) = (sign * (l.low - s.high), sign * (l.high - s.low));
            Some(Interval {
                low: a.min(b),
                high: a.max(b),
            })
        }
        _ => None,
    };
    Some(Difference {
        value: sign * (l.value - s.value),
        interval,
        paired: false,
    })
}

/// The finding: subject fidelity of the largest vs the smallest width, with and without the
/// prior, paired over the same images where `paired` has the setting's gap (else the range
/// of the two intervals). It holds (does not hold) only when it does in both settings;
/// otherwise inconclusive. The other metrics' gaps are the evidence beside it.
pub fn findings(cells: &[Cell], paired: &[PairedGap]) -> Vec<Finding> {
    let mut verdicts = Vec::new();
    let mut evidence = Vec::new();
    let mut deciding = None;
    for prior in [false, true] {
        let by_width = setting(cells, prior);
        let (Some(small), Some(large)) = (by_width.first(), by_width.last()) else {
            continue;
        };
        if small.width == large.width {
            continue;
        }
        let label = if prior { "with prior" } else { "without prior" };
        let pair = paired
            .iter()
            .find(|g| g.prior == prior && g.widths == (small.width, large.width));
        if let Some(g) = pair {
            evidence.push(format!(
                "{label}, subject fidelity paired over {} images (w{} - w{}): {:.3} [{:.3}, \
                 {:.3}]",
                g.images, large.width, small.width, g.value, g.low, g.high
            ));
        }
        for (i, info) in shown_metrics(cells).into_iter().enumerate() {
            let Some(d) = size_gap(small, large, info) else {
                continue;
            };
            if i == 0 {
                let d = pair.map_or(d, PairedGap::difference);
                verdicts.push(d.verdict());
                deciding.get_or_insert(d);
            }
            evidence.push(format!(
                "{label}, {} (w{} - w{}{}): {}",
                info.label,
                large.width,
                small.width,
                if info.higher_is_better {
                    ""
                } else {
                    ", lower is better: sign flipped"
                },
                // Difference::text words its interval for FID; these are other metrics'.
                d.text().replace("95% FID intervals", "95% intervals")
            ));
        }
    }
    if verdicts.is_empty() {
        return vec![DREAMBOOTH_SCALES.not_measured("fewer than two widths finetuned")];
    }
    let verdict = if verdicts.iter().all(|v| *v == verdicts[0]) {
        verdicts[0]
    } else {
        Verdict::Inconclusive
    };
    vec![Finding {
        claim: DREAMBOOTH_SCALES,
        verdict,
        evidence: format!(
            "deciding: subject fidelity, largest minus smallest width, in both prior settings; {}",
            evidence.join("; ")
        ),
        deciding,
    }]
}

fn value_text(m: Option<&Metric>) -> String {
    match m {
        Some(Metric {
            value, ci: Some(c), ..
        }) => {
            format!("{value:.3} [{:.3}, {:.3}]", c.low, c.high)
        }
        Some(m) => format!("{:.3}", m.value),
        None => "-".into(),
    }
}

/// The section's opening sentences: the recipe and which metrics are stand-ins.
fn intro(r: &DreamBoothResults) -> String {
    let recipe = match r.subjects.is_empty() {
        true => {
            "Subjects and learning rate: see the study's config (the store keeps neither)".into()
        }
        false => format!(
            "Subjects: {}; learning rate {} for every width",
            r.subjects.join(", "),
            r.learning_rate
        ),
    };
    let stand_ins = match shown_metrics(&r.cells).len() > METRICS.len() {
        true => "Every metric but DINO, CLIP-I (CLIP) and CLIP-T (CLIP) is an in-domain stand-in",
        false => "Every metric is an in-domain stand-in",
    };
    format!(
        "{recipe}. {stand_ins} (see the table below); values with 95% bootstrap intervals over \
         images."
    )
}

fn prior_text(c: &Cell) -> &'static str {
    match prior_of(c) == Some(true) {
        true => "yes",
        false => "no",
    }
}

/// The table's first columns, before one per metric.
const FIXED_COLUMNS: [&str; 4] = ["width", "params", "prior", "finetune cost"];

/// One table row: [`FIXED_COLUMNS`], then each metric of `shown` with its interval.
fn cell_row(c: &Cell, shown: &[&MetricInfo]) -> Vec<String> {
    let cost = metric_of(c, FINETUNE_COST).map_or(0.0, |m| m.value);
    let fixed = [
        c.width.to_string(),
        c.params.to_string(),
        prior_text(c).to_string(),
        format!("{cost:.3}"),
    ];
    let metrics = shown.iter().map(|m| value_text(metric_of(c, m.name)));
    fixed.into_iter().chain(metrics).collect()
}

/// The section as Markdown: the table of every metric per width and prior.
pub fn markdown(r: &DreamBoothResults) -> String {
    let shown = shown_metrics(&r.cells);
    let labels = FIXED_COLUMNS
        .into_iter()
        .chain(shown.iter().map(|m| m.label));
    let mut md = format!(
        "\n## DreamBooth (Sec. 3.2, Fig. 6)\n\n{}\n\n| {} |\n|{}\n",
        intro(r),
        labels.collect::<Vec<_>>().join(" | "),
        "---|".repeat(FIXED_COLUMNS.len() + shown.len())
    );
    for c in &r.cells {
        md.push_str(&format!("| {} |\n", cell_row(c, &shown).join(" | ")));
    }
    md.push_str("\n| metric | what it is |\n|---|---|\n");
    for m in &shown {
        md.push_str(&format!("| {} | {} |\n", m.label, m.about));
    }
    md
}

/// One chart per metric against `x` (params or finetune compute), one line per prior setting.
fn chart(
    r: &DreamBoothResults,
    info: &MetricInfo,
    x: fn(&Cell) -> f64,
    x_label: &str,
) -> Result<String, String> {
    let mut series = Vec::new();
    let mut intervals = Vec::new();
    for prior in [false, true] {
        let cells = setting(&r.cells, prior);
        let points: Vec<(f64, f64, Option<FidCi>)> = cells
            .iter()
            .filter_map(|c| metric_of(c, info.name).map(|m| (x(c), m.value, m.ci)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let label = if prior { "with prior" } else { "without prior" };
        series.push(Series {
            label: label.into(),
            points: points.iter().map(|p| (p.0, p.1)).collect(),
        });
        intervals.push(
            points
                .iter()
                .filter_map(|p| p.2.map(|c| (p.0, c.low, c.high)))
                .collect(),
        );
    }
    if series.is_empty() {
        return Ok(String::new()); // a metric no cell has (an older store): no chart
    }
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    // A log axis only where it spans a decade (else it shows no tick labels).
    let log_x = lo > 0.0 && hi / lo >= 10.0;
    line_chart_with_intervals(info.label, x_label, info.label, &series, &intervals, log_x)
}

/// The section as HTML: the table, Fig. 6 and each metric against width and compute.
pub fn html(r: &DreamBoothResults, base64: impl Fn(&[u8]) -> String) -> Result<String, String> {
    let mut html = String::from("<h2>DreamBooth (Sec. 3.2, Fig. 6)</h2>");
    html.push_str(&table_html(r));
    if !r.fig6.is_empty() {
        html.push_str(&format!(
            "<h3>Fig. 6</h3><p><small>Rows, top to bottom: the instance images of {}; {}. \
             One sample per evaluation prompt, the same noise in every row.</small></p>{}",
            esc(r.subjects.first().map_or("", String::as_str)),
            fig6_rows(&r.cells).join("; "),
            fig6_html(r, &base64(&r.fig6))
        ));
    }
    let params = |c: &Cell| c.params as f64;
    let cost = |c: &Cell| metric_of(c, FINETUNE_COST).map_or(0.0, |m| m.value);
    for info in shown_metrics(&r.cells) {
        html.push_str(&chart(r, info, params, "parameters")?);
        html.push_str(&chart(
            r,
            info,
            cost,
            "finetune compute (normalised cost x iterations)",
        )?);
    }
    Ok(html)
}

/// The metric table (a metric's meaning on its header's hover, and in the legend below).
fn table_html(r: &DreamBoothResults) -> String {
    let shown = shown_metrics(&r.cells);
    let mut html = format!("<p>{}</p><div class=\"wide\"><table><tr>", esc(&intro(r)));
    for label in FIXED_COLUMNS {
        html.push_str(&format!("<th>{label}</th>"));
    }
    for m in &shown {
        html.push_str(&format!(
            "<th title=\"{}\">{}</th>",
            esc(m.about),
            esc(m.label)
        ));
    }
    html.push_str("</tr>");
    for c in &r.cells {
        let row: String = (cell_row(c, &shown).iter())
            .map(|v| format!("<td>{}</td>", esc(v)))
            .collect();
        html.push_str(&format!("<tr>{row}</tr>"));
    }
    html.push_str("</table></div><table><tr><th>metric</th><th>what it is</th></tr>");
    for m in &shown {
        html.push_str(&format!(
            "<tr><td>{}</td><td class=\"text\">{}</td></tr>",
            esc(m.label),
            esc(m.about)
        ));
    }
    html + "</table>"
}

/// The white gap in pixels between Fig. 6's tiles and rows.
pub const FIG6_GAP: u32 = 2;

/// Fig. 6 with a label beside each row (rows are equally tall, `FIG6_GAP` apart); the bare
/// image when the PNG's height does not split into the rows.
fn fig6_html(r: &DreamBoothResults, png_base64: &str) -> String {
    let img = format!("<img src=\"data:image/png;base64,{png_base64}\" alt=\"Fig. 6\">");
    let mut labels = vec!["instance images".to_string()];
    labels.extend(fig6_rows(&r.cells));
    let rows = labels.len() as u32;
    let gaps = FIG6_GAP * (rows - 1);
    let tile = match png_height(&r.fig6) {
        Some(h) if h > gaps && (h - gaps).is_multiple_of(rows) => (h - gaps) / rows,
        _ => return format!("<div class=\"grid\">{img}</div>"),
    };
    let mut html =
        format!("<div class=\"eqgrid\"><div class=\"labels\" style=\"gap: {FIG6_GAP}px\">");
    for label in labels {
        html.push_str(&format!(
            "<div class=\"label\" style=\"height: {tile}px\"><span>{}</span></div>",
            esc(&label)
        ));
    }
    html + "</div>" + &img + "</div>"
}

/// The height a PNG's header gives.
fn png_height(png: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = png.get(20..24)?.try_into().ok()?;
    png.starts_with(b"\x89PNG")
        .then_some(u32::from_be_bytes(bytes))
}

/// The generated rows of Fig. 6 in the stage's order: each width, without then with the prior.
fn fig6_rows(cells: &[Cell]) -> Vec<String> {
    let mut widths: Vec<u32> = cells.iter().map(|c| c.width).collect();
    widths.sort_unstable();
    widths.dedup();
    let rows = widths.iter().flat_map(|w| {
        [
            format!("width {w} without the prior"),
            format!("width {w} with it"),
        ]
    });
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::CiMethod;
    use ldmscale_diffusion::SamplerId;

    /// A cell of `width` with subject fidelity `value` +- `half`.
    fn cell(width: u32, prior: bool, value: f64, half: f64) -> Cell {
        let ci = FidCi {
            low: value - half,
            high: value + half,
            method: CiMethod::Bootstrap,
            replicates: 100,
        };
        Cell {
            variant: Variant::DreamBooth {
                prior,
                finetune_steps: 10,
            },
            width,
            params: width as u64 * 1000,
            sampler: SamplerId::Ddim,
            steps: 8,
            cfg: 3.0,
            seed: 0,
            n_samples: 8,
            fid: 1.0,
            fid_ci: None,
            in_domain_clip: None,
            metrics: vec![
                Metric {
                    name: METRICS[0].name.into(),
                    value,
                    ci: Some(ci),
                },
                Metric {
                    name: FINETUNE_COST.into(),
                    value: width as f64,
                    ci: None,
                },
            ],
            evaluations: 16,
            gflops_per_eval: 0.1,
            wall_seconds: 1.0,
        }
    }

    fn verdict(cells: &[Cell]) -> Verdict {
        findings(cells, &[])[0].verdict
    }

    #[test]
    fn a_paired_gap_decides_where_the_marginal_intervals_overlap() {
        // Every image gains 0.1 from the larger width, while images differ widely: the
        // marginal intervals overlap, the paired one lies above zero.
        let small: Vec<f64> = (0..40).map(|i| (i % 10) as f64 / 10.0).collect();
        let large: Vec<f64> = small.iter().map(|v| v + 0.1).collect();
        let mut cells = Vec::new();
        let mut paired = Vec::new();
        for prior in [false, true] {
            cells.push(cell(8, prior, 0.45, 0.1));
            cells.push(cell(32, prior, 0.55, 0.1));
            let gap = PairedGap::of(prior, ((8, &small), (32, &large)), 200, 1).unwrap();
            assert!((gap.value - 0.1).abs() < 1e-12 && gap.low > 0.09, "{gap:?}");
            paired.push(gap);
        }
        assert_eq!(verdict(&cells), Verdict::Inconclusive);
        let found = &findings(&cells, &paired)[0];
        assert_eq!(found.verdict, Verdict::Holds);
        assert!(found.deciding.unwrap().paired);
        assert!(
            found.evidence.contains("paired over 40 images"),
            "{}",
            found.evidence
        );
        // Another pair of widths, or sides of different lengths, do not pair.
        let other = PairedGap::of(false, ((16, &small), (32, &large)), 200, 1).unwrap();
        assert_eq!(findings(&cells, &[other])[0].verdict, Verdict::Inconclusive);
        assert!(PairedGap::of(false, ((8, &small[1..]), (32, &large)), 200, 1).is_none());
    }

    #[test]
    fn the_finding_needs_both_prior_settings_to_decide_alike() {
        let both = |small: f64, large: f64, half: f64| {
            let mut v = Vec::new();
            for prior in [false, true] {
                v.push(cell(8, prior, small, half));
                v.push(cell(32, prior, large, half));
            }
            v
        };
        assert_eq!(verdict(&both(0.2, 0.8, 0.1)), Verdict::Holds);
        assert_eq!(verdict(&both(0.8, 0.2, 0.1)), Verdict::DoesNotHold);
        assert_eq!(verdict(&both(0.5, 0.6, 0.1)), Verdict::Inconclusive);
        // Decided without the prior, overlapping with it: inconclusive.
        let mut mixed = both(0.2, 0.8, 0.1);
        mixed[3] = cell(32, true, 0.25, 0.1);
        assert_eq!(verdict(&mixed), Verdict::Inconclusive);
        let one = [cell(8, false, 0.2, 0.1), cell(8, true, 0.2, 0.1)];
        assert_eq!(verdict(&one), Verdict::NotMeasured);
    }

    #[test]
    fn the_section_shows_the_table_the_rows_of_fig6_and_the_charts() {
        let r = DreamBoothResults {
            cells: vec![cell(8, false, 0.2, 0.1), cell(16, false, 0.3, 0.1)],
            fig6: vec![1, 2, 3],
            subjects: vec!["striped-circle".into()],
            learning_rate: 3e-4,
            paired: Vec::new(),
        };
        let md = markdown(&r);
        assert!(
            md.contains("| 16 | 16000 | no | 16.000 | 0.300 [0.200, 0.400] |"),
            "{md}"
        );
        let html = html(&r, |_| "PNG".into()).unwrap();
        let mut stored = r.cells.clone();
        stored.push(Cell {
            variant: Variant::Base,
            ..cell(8, false, 0.0, 0.0)
        });
        let from_store = DreamBoothResults::from_cells(&stored).unwrap();
        assert_eq!(from_store.cells, r.cells);
        assert!(markdown(&from_store).contains("the store keeps neither"));
        assert!(DreamBoothResults::from_cells(&stored[2..]).is_none());
        assert!(html.contains("width 8 without the prior; width 8 with it; width 16"));
        assert!(html.contains("base64,PNG"));
        // Two charts per metric the cells have (against parameters and against compute).
        assert_eq!(html.matches("<svg").count(), 2);

        // A real Fig. 6: a label beside each of its five rows (instances, two per width).
        let png = ldmscale_data::Image::filled(40, 5 * 64 + 4 * FIG6_GAP, [255; 3]).to_png();
        let labelled = super::html(&DreamBoothResults { fig6: png, ..r }, |_| "PNG".into());
        let labelled = labelled.unwrap();
        assert_eq!(labelled.matches("style=\"height: 64px\"").count(), 5);
        assert!(labelled.contains("<span>instance images</span>"));
        assert!(labelled.contains("<span>width 16 with it</span>"));
    }
}
