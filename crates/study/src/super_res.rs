//! Super-resolution's analysis: its metrics' names, the findings of Secs. 3.2 and 3.5 judged on
//! the SR cells, and Figs. 4, 5 and 12.

use std::fmt::Write as _;

use ldmscale_data::degrade::FloatImage;
use ldmscale_data::image::Image;

use std::sync::Arc;

use crate::analysis::{Setting, settings, settings_paired, widths};
use crate::cell::{Cell, Metric, Variant};
use crate::findings::{
    Claim, Comparison, Difference, Finding, all_hold, largest_wins_at_largest_budget,
    smaller_wins_at_some_budget,
};
use crate::pairing::Pairing;
use crate::plot::{self, Interval, Series};
use crate::stages::sr_data::EvalSet;

/// PSNR in dB (BasicSR, RGB, no border cut), mean over images.
pub const PSNR: &str = "psnr";
/// SSIM (BasicSR), mean over images.
pub const SSIM: &str = "ssim";
/// LPIPS (AlexNet, v0.1 heads), mean over images.
pub const LPIPS: &str = "lpips";
/// 1 - cosine of the in-domain CLIP's image embeddings of SR and HR, mean over images: the
/// perceptual distance of a study without LPIPS weights (never reported as LPIPS).
pub const IN_DOMAIN_PERCEPTUAL: &str = "in_domain_perceptual";
/// PSNR of each HR evaluation image against another one: what ignoring the LR image scores.
pub const UNRELATED_PSNR: &str = "psnr_unrelated";
/// Finetune compute of the model measured, normalised cost x iterations (Fig. 4's x axis).
pub const FINETUNE_COST: &str = "finetune_cost";

/// Sec. 3.2, Fig. 4.
pub const DOWNSTREAM_SCALES_WITH_PRETRAINING: Claim = Claim {
    id: "sr-scales-with-pretraining",
    text: "Downstream performance scales with pretraining: larger pretrained models reach better super-resolution FID, and smaller models cannot close the gap with more finetuning",
    section: "Sec. 3.2, Fig. 4",
};

/// Sec. 3.5, Fig. 12.
pub const SR_SMALLER_MODELS_EFFICIENT_AT_FEW_STEPS: Claim = Claim {
    id: "sr-smaller-models-efficient-at-few-steps",
    text: "On super-resolution, smaller models sample more efficiently below about 20 sampling steps",
    section: "Sec. 3.5, Fig. 12",
};

/// Sec. 3.5, Fig. 12.
pub const SR_LARGER_MODELS_WIN_BEYOND: Claim = Claim {
    id: "sr-larger-models-win-beyond",
    text: "On super-resolution, larger models are more efficient when more sampling steps are afforded",
    section: "Sec. 3.5, Fig. 12",
};

/// The steps "below about 20" of Sec. 3.5.
const FEW_STEPS: u32 = 20;

/// What the super-resolution stage measured.
#[derive(Clone, Debug, Default)]
pub struct SrResults {
    /// Its cells (variant `super-res@N` per finetune snapshot).
    pub cells: Vec<Cell>,
    /// Fig. 5: LR, every width's SR and HR on the same crops, as PNG.
    pub fig5: Vec<u8>,
    /// Evaluation pairs.
    pub eval_pairs: usize,
    /// SHA-256 of the frozen evaluation set.
    pub eval_hash: String,
    /// The perceptual metric's name ([`LPIPS`] or [`IN_DOMAIN_PERCEPTUAL`]).
    pub perceptual: &'static str,
    /// The bicubic x4 upsampling of the LR images measured like a cell ("fid", PSNR, SSIM,
    /// the perceptual metric): the baseline finetuning has to beat.
    pub baseline: Vec<Metric>,
    /// The cells' kept features against the HR set's, for paired comparisons.
    pub pairing: Option<Arc<Pairing>>,
}

impl SrResults {
    /// The SR cells among `cells`, as a store read back holds them (no Fig. 5, no set hash);
    /// `None` when there are none.
    pub fn from_cells(cells: Vec<Cell>, pairing: Option<Arc<Pairing>>) -> Option<Self> {
        let cells: Vec<Cell> = cells
            .into_iter()
            .filter(|c| finetune_steps(c).is_some())
            .collect();
        let first = cells.first()?;
        let lpips = first.metrics.iter().any(|m| m.name == LPIPS);
        Some(SrResults {
            eval_pairs: first.n_samples as usize,
            eval_hash: "(not recorded in the store)".into(),
            perceptual: if lpips { LPIPS } else { IN_DOMAIN_PERCEPTUAL },
            fig5: Vec::new(),
            baseline: Vec::new(),
            pairing,
            cells,
        })
    }
}

fn finetune_steps(c: &Cell) -> Option<u64> {
    match c.variant {
        Variant::SuperRes { finetune_steps } => Some(finetune_steps),
        _ => None,
    }
}

/// The finetune steps measured, ascending.
fn snapshots(cells: &[Cell]) -> Vec<u64> {
    let mut steps: Vec<u64> = cells.iter().filter_map(finetune_steps).collect();
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// The settings of the models finetuned for `step` steps.
fn at_snapshot(cells: &[Cell], step: u64, pairing: &Option<Arc<Pairing>>) -> Vec<Setting> {
    let own: Vec<Cell> = cells
        .iter()
        .filter(|c| finetune_steps(c) == Some(step))
        .cloned()
        .collect();
    settings_paired(&own, pairing.clone())
}

/// The sampler and step count Fig. 4 and Sec. 3.2 compare at: the first sampler's most steps.
fn reference_point(settings: &[Setting]) -> Option<(String, u32)> {
    let first = settings.first()?;
    let steps = settings
        .iter()
        .filter(|s| s.sampler == first.sampler)
        .map(|s| s.steps)
        .max()?;
    Some((first.sampler.clone(), steps))
}

fn find<'a>(settings: &'a [Setting], width: u32, at: &(String, u32)) -> Option<&'a Setting> {
    settings
        .iter()
        .find(|s| s.width == width && s.sampler == at.0 && s.steps == at.1)
}

/// Sec. 3.2's and 3.5's findings on the SR cells, paired where `pairing` holds both sides.
pub fn findings(cells: &[Cell], pairing: &Option<Arc<Pairing>>) -> Vec<Finding> {
    let steps = snapshots(cells);
    let Some(&last) = steps.last() else {
        let why = "the study has no super-resolution cells";
        return vec![
            DOWNSTREAM_SCALES_WITH_PRETRAINING.not_measured(why),
            SR_SMALLER_MODELS_EFFICIENT_AT_FEW_STEPS.not_measured(why),
            SR_LARGER_MODELS_WIN_BEYOND.not_measured(why),
        ];
    };
    let finals = at_snapshot(cells, last, pairing);
    let few: Vec<Setting> = finals
        .iter()
        .filter(|s| s.steps <= FEW_STEPS)
        .cloned()
        .collect();
    vec![
        scales_with_pretraining(cells, &steps, pairing),
        smaller_wins_at_some_budget(SR_SMALLER_MODELS_EFFICIENT_AT_FEW_STEPS, &few),
        largest_wins_at_largest_budget(SR_LARGER_MODELS_WIN_BEYOND, &finals),
    ]
}

/// Rule: the largest width must beat the smallest beyond the intervals both after the whole
/// finetune and when only its first snapshot meets the smallest's last (more finetuning does
/// not close the gap); does not hold if either comparison goes the other way.
fn scales_with_pretraining(
    cells: &[Cell],
    steps: &[u64],
    pairing: &Option<Arc<Pairing>>,
) -> Finding {
    let claim = DOWNSTREAM_SCALES_WITH_PRETRAINING;
    let (first, last) = (steps[0], *steps.last().expect("non-empty"));
    let (early, finals) = (
        at_snapshot(cells, first, pairing),
        at_snapshot(cells, last, pairing),
    );
    let ws = widths(&finals);
    let (Some(&small), Some(&large), Some(at)) = (ws.first(), ws.last(), reference_point(&finals))
    else {
        return claim.not_measured("no super-resolution cells");
    };
    if small == large {
        return claim.not_measured("fewer than two model sizes finetuned");
    }
    let pair = |l: Option<&Setting>, s: Option<&Setting>, what: String| {
        l.zip(s).map(|(l, s)| Comparison {
            what: format!(
                "{what}: {large} filters FID {:.2} against {small} filters FID {:.2} ({} x{})",
                l.fid, s.fid, at.0, at.1
            ),
            difference: Difference::fid_gap(l, s),
        })
    };
    let comparisons: Vec<Comparison> = [
        pair(
            find(&finals, large, &at),
            find(&finals, small, &at),
            format!("after {last} finetune steps each"),
        ),
        pair(
            find(&early, large, &at),
            find(&finals, small, &at),
            format!("the larger after {first} steps, the smaller after {last}"),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    claim.judged(all_hold(comparisons), "comparisons")
}

/// `(x, FID)` points and intervals of one width at `at` across snapshots (x: finetune cost).
fn finetune_curve(cells: &[Cell], width: u32, at: &(String, u32), metric: &str) -> Curve {
    let mut points = Vec::new();
    let mut intervals = Vec::new();
    for c in cells {
        let matches = c.width == width && c.sampler.as_str() == at.0 && c.steps == at.1;
        let cost = c.metrics.iter().find(|m| m.name == FINETUNE_COST);
        let (Some(cost), true) = (cost, matches && finetune_steps(c).is_some()) else {
            continue;
        };
        let (value, ci) = if metric == "fid" {
            (c.fid, c.fid_ci)
        } else {
            match c.metrics.iter().find(|m| m.name == metric) {
                Some(m) => (m.value, m.ci),
                None => continue,
            }
        };
        points.push((cost.value, value));
        if let Some(ci) = ci {
            intervals.push((cost.value, ci.low, ci.high));
        }
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    (
        Series {
            label: format!("{width} filters"),
            points,
        },
        intervals,
    )
}

type Curve = (Series, Vec<Interval>);

/// Fig. 4: a metric against finetune compute, one line per width.
fn fig4(cells: &[Cell], metric: &str, label: &str) -> Result<String, String> {
    let all = settings(cells);
    let Some(at) = reference_point(&all) else {
        return Ok(String::new());
    };
    let (series, intervals): (Vec<Series>, Vec<Vec<Interval>>) = widths(&all)
        .into_iter()
        .map(|w| finetune_curve(cells, w, &at, metric))
        .filter(|(s, _)| !s.points.is_empty())
        .unzip();
    if series.is_empty() {
        return Ok(String::new());
    }
    plot::line_chart_with_intervals(
        &format!(
            "SR {label} vs finetune compute ({} x{}, 95% CI)",
            at.0, at.1
        ),
        "finetune compute: normalised cost x iterations (log)",
        label,
        &series,
        &intervals,
        true,
    )
}

/// Fig. 12: SR FID against sampling cost after the whole finetune, one line per width.
fn fig12(cells: &[Cell]) -> Result<String, String> {
    let Some(&last) = snapshots(cells).last() else {
        return Ok(String::new());
    };
    let finals = at_snapshot(cells, last, &None);
    let Some((sampler, _)) = reference_point(&finals) else {
        return Ok(String::new());
    };
    plot::metric_vs_cost(
        &finals,
        &sampler,
        |s| Some((s.fid, s.fid_ci)),
        &format!("SR FID vs sampling cost, {sampler}, no guidance (95% CI)"),
        (
            "sampling cost: GFLOPs per image, one evaluation per step (log)",
            "FID",
        ),
    )
}

/// Fig. 5 as PNG: a column per evaluation crop; rows LR (pixels enlarged x4), each width's
/// final model (`finals`: width, `[n, 3, res, res]` values in [-1, 1]) and HR.
pub fn fig5_png(
    eval: &EvalSet,
    finals: &[(usize, Vec<f32>)],
    res: usize,
) -> Result<Vec<u8>, String> {
    let per = 3 * res * res;
    let n = finals
        .iter()
        .map(|(_, v)| v.len() / per)
        .chain([eval.hr.len()])
        .min()
        .unwrap_or(0);
    let mut rows: Vec<f32> = Vec::new();
    for lr in eval.lr.iter().take(n) {
        rows.extend(enlarged_chw(lr, res));
    }
    for (_, images) in finals {
        rows.extend_from_slice(&images[..n * per]);
    }
    for hr in eval.hr.iter().take(n) {
        rows.extend(hr.to_image().to_chw_f32());
    }
    let count = rows.len() / per;
    let scale = (64 / res).max(1);
    let grid = Image::grid_from_nchw(&rows, count, res, n.max(1), scale, 2)
        .ok_or("Fig. 5: no images to show")?;
    Ok(grid.to_png())
}

/// `image` enlarged to `res x res` by repeating pixels, as `3 x res x res` values in [-1, 1].
fn enlarged_chw(image: &FloatImage, res: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * res * res);
    for c in 0..3 {
        for y in 0..res {
            for x in 0..res {
                let v = image.get(x * image.width / res, y * image.height / res, c);
                out.push(v.clamp(0.0, 1.0) * 2.0 - 1.0);
            }
        }
    }
    out
}

/// Whether finetuning taught the models super-resolution: each width's best PSNR after the
/// whole finetune against the bicubic x4 baseline's (a model that ignores the LR image scores
/// like an unrelated sample, far below it).
pub fn learning_check(sr: &SrResults) -> Option<String> {
    let bicubic = sr.baseline.iter().find(|m| m.name == PSNR)?.value;
    let last = *snapshots(&sr.cells).last()?;
    let mut per_width = Vec::new();
    for w in widths(&at_snapshot(&sr.cells, last, &None)) {
        let best = sr
            .cells
            .iter()
            .filter(|c| c.width == w && finetune_steps(c) == Some(last))
            .filter_map(|c| c.metrics.iter().find(|m| m.name == PSNR))
            .map(|m| m.value)
            .fold(f64::NEG_INFINITY, f64::max);
        per_width.push((w, best));
    }
    let beating = per_width.iter().filter(|(_, p)| *p > bicubic).count();
    let floor = sr.baseline.iter().find(|m| m.name == UNRELATED_PSNR);
    // Closer to unrelated images than to bicubic: the LR image is not read.
    let ignoring = |p: f64| floor.is_some_and(|f| p < f.value + 0.25 * (bicubic - f.value));
    let floor_text = floor
        .map(|f| format!(", an unrelated HR image {:.2} dB", f.value))
        .unwrap_or_default();
    let list: Vec<String> = per_width
        .iter()
        .map(|(w, p)| format!("{w} filters {p:.2} dB"))
        .collect();
    let note = if per_width.iter().all(|(_, p)| ignoring(*p)) {
        "; every model scores closer to unrelated images than to bicubic: they do not read the LR image, so the findings below measure generation without it"
    } else {
        ""
    };
    Some(format!(
        "{beating} of {} widths beat the bicubic x4 baseline's PSNR ({bicubic:.2} dB{floor_text}) after {last} finetune steps (best over samplers and steps: {}){}{note}",
        per_width.len(),
        list.join(", "),
        fid_against_bicubic(sr, last).unwrap_or_default(),
    ))
}

/// "; in FID (point estimates) 3 of 4 widths beat bicubic's 8.28": diffusion SR is judged on
/// FID, where it can win while losing PSNR to a blurry baseline.
fn fid_against_bicubic(sr: &SrResults, last: u64) -> Option<String> {
    let bicubic = sr.baseline.iter().find(|m| m.name == "fid")?.value;
    let finals: Vec<&Cell> = sr
        .cells
        .iter()
        .filter(|c| finetune_steps(c) == Some(last))
        .collect();
    let mut ws: Vec<u32> = finals.iter().map(|c| c.width).collect();
    ws.sort_unstable();
    ws.dedup();
    let best = |w: u32| {
        finals
            .iter()
            .filter(|c| c.width == w)
            .map(|c| c.fid)
            .fold(f64::INFINITY, f64::min)
    };
    let beating = ws.iter().filter(|&&w| best(w) < bicubic).count();
    Some(format!(
        "; in FID (point estimates) {beating} of {} widths beat bicubic's {bicubic:.2}",
        ws.len()
    ))
}

/// The report's super-resolution section (HTML).
pub fn html(sr: &SrResults, base64: impl Fn(&[u8]) -> String) -> Result<String, String> {
    let mut h = String::new();
    let metric = perceptual_label(sr.perceptual);
    let _ = write!(
        h,
        "<h2>Super-resolution (Secs. 3.2, 3.5)</h2><p>Every width finetuned for x4 super-resolution (RealESRGAN degradation) from its pretrained weights with one recipe; evaluated on a frozen set of {} crops (SHA-256 {}&hellip;) without guidance. FID against the HR crops with the study's FID features; PSNR and SSIM as BasicSR computes them (RGB, no border cut); {metric}.</p><div class=\"plots\">",
        sr.eval_pairs,
        &sr.eval_hash[..sr.eval_hash.len().min(12)]
    );
    if let Some(check) = learning_check(sr) {
        let _ = write!(h, "<p><b>Learning check:</b> {}.</p>", check);
    }
    h.push_str(&fig4(&sr.cells, "fid", "FID")?);
    let short = match sr.perceptual {
        LPIPS => "LPIPS",
        _ => "in-domain perceptual distance",
    };
    h.push_str(&fig4(&sr.cells, sr.perceptual, short)?);
    h.push_str(&fig12(&sr.cells)?);
    h.push_str("</div>");
    if !sr.fig5.is_empty() {
        let _ = write!(
            h,
            "<h3>LR, every width, HR (Fig. 5)</h3><p><small>Rows: the LR crop (pixels enlarged), each width from the smallest after the whole finetune, the HR crop.</small></p><div class=\"grid\"><img src=\"data:image/png;base64,{}\" alt=\"Fig. 5\"></div>",
            base64(&sr.fig5)
        );
    }
    h.push_str(&table_html(sr));
    Ok(h)
}

fn perceptual_label(name: &str) -> String {
    match name {
        LPIPS => "LPIPS (AlexNet, v0.1 heads)".into(),
        _ => "in-domain perceptual distance (1 - cosine of the in-domain CLIP's image embeddings; not LPIPS)".into(),
    }
}

fn metric_text(metrics: &[Metric], name: &str) -> String {
    match metrics.iter().find(|m| m.name == name) {
        Some(m) => match m.ci {
            Some(ci) => format!(
                "{:.3} <small>[{:.3}, {:.3}]</small>",
                m.value, ci.low, ci.high
            ),
            None => format!("{:.3}", m.value),
        },
        None => "-".into(),
    }
}

fn table_html(sr: &SrResults) -> String {
    let mut cells: Vec<&Cell> = sr.cells.iter().collect();
    cells.sort_by_key(|c| (c.width, finetune_steps(c), c.sampler.as_str(), c.steps));
    let mut h = format!(
        "<table><tr><th>model</th><th>finetune steps</th><th>finetune cost</th><th>sampler</th><th>steps</th><th>FID [95% CI]</th><th>PSNR</th><th>SSIM</th><th>{}</th><th>GFLOPs/img</th></tr>",
        if sr.perceptual == LPIPS {
            "LPIPS"
        } else {
            "in-domain perceptual"
        }
    );
    if !sr.baseline.is_empty() {
        let b = &sr.baseline;
        let _ = write!(
            h,
            "<tr><td>bicubic x4 (the LR)</td><td>-</td><td>-</td><td>-</td><td>-</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>0</td></tr>",
            metric_text(b, "fid"),
            metric_text(b, PSNR),
            metric_text(b, SSIM),
            metric_text(b, sr.perceptual)
        );
    }
    for c in cells {
        let _ = write!(
            h,
            "<tr><td>{} filters</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr>",
            c.width,
            finetune_steps(c).unwrap_or(0),
            metric_text(&c.metrics, FINETUNE_COST),
            c.sampler,
            c.steps,
            c.fid,
            c.fid_ci
                .map(|ci| format!(" <small>{}</small>", ci.text()))
                .unwrap_or_default(),
            metric_text(&c.metrics, PSNR),
            metric_text(&c.metrics, SSIM),
            metric_text(&c.metrics, sr.perceptual),
            c.sampling_gflops()
        );
    }
    h.push_str("</table>");
    h
}

/// The report's super-resolution section (Markdown).
pub fn markdown(sr: &SrResults) -> String {
    let mut md = format!(
        "\n## Super-resolution\n\n{} frozen evaluation crops, no guidance; perceptual metric: {}.\n\n",
        sr.eval_pairs,
        perceptual_label(sr.perceptual)
    );
    if let Some(check) = learning_check(sr) {
        let _ = writeln!(md, "Learning check: {check}.\n");
    }
    md.push_str("| width | finetune steps | sampler | steps | FID | PSNR | SSIM | perceptual |\n|---:|---:|---|---:|---:|---:|---:|---:|\n");
    let value = |c: &Cell, name: &str| {
        c.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| format!("{:.3}", m.value))
            .unwrap_or_else(|| "-".into())
    };
    let baseline = |name: &str| {
        sr.baseline
            .iter()
            .find(|m| m.name == name)
            .map(|m| format!("{:.3}", m.value))
            .unwrap_or_else(|| "-".into())
    };
    if !sr.baseline.is_empty() {
        let _ = writeln!(
            md,
            "| bicubic x4 (the LR) | - | - | - | {} | {} | {} | {} |",
            baseline("fid"),
            baseline(PSNR),
            baseline(SSIM),
            baseline(sr.perceptual)
        );
    }
    for c in &sr.cells {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} |",
            c.width,
            finetune_steps(c).unwrap_or(0),
            c.sampler,
            c.steps,
            c.fid,
            value(c, PSNR),
            value(c, SSIM),
            value(c, sr.perceptual)
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::{CiMethod, FidCi};
    use crate::findings::Verdict;
    use ldmscale_diffusion::SamplerId;

    /// An SR cell of `width` after `finetune` steps at `steps` DDIM steps, FID `fid` +- 0.5.
    fn cell(width: u32, finetune: u64, steps: u32, fid: f64) -> Cell {
        Cell {
            variant: Variant::SuperRes {
                finetune_steps: finetune,
            },
            width,
            params: width as u64 * 1000,
            sampler: SamplerId::Ddim,
            steps,
            cfg: 1.0,
            seed: 0,
            n_samples: 64,
            fid,
            fid_ci: Some(FidCi {
                low: fid - 0.5,
                high: fid + 0.5,
                method: CiMethod::Bootstrap,
                replicates: 100,
            }),
            in_domain_clip: None,
            metrics: vec![Metric {
                name: FINETUNE_COST.into(),
                value: finetune as f64 * width as f64 / 320.0,
                ci: None,
            }],
            evaluations: steps as u64,
            gflops_per_eval: width as f64,
            wall_seconds: 1.0,
        }
    }

    /// Both widths at snapshots 50 and 100 and steps 4, 40; FIDs from `fid(width, finetune,
    /// steps)`.
    fn grid(fid: impl Fn(u32, u64, u32) -> f64) -> Vec<Cell> {
        let mut cells = Vec::new();
        for width in [8, 32] {
            for finetune in [50, 100] {
                for steps in [4, 40] {
                    cells.push(cell(width, finetune, steps, fid(width, finetune, steps)));
                }
            }
        }
        cells
    }

    fn verdict(cells: &[Cell], id: &str) -> Verdict {
        let f = findings(cells, &None);
        f.iter().find(|f| f.claim.id == id).unwrap().verdict
    }

    #[test]
    fn the_larger_model_ahead_early_and_late_holds_the_pretraining_claim() {
        let id = DOWNSTREAM_SCALES_WITH_PRETRAINING.id;
        // 32 filters: 10 after 50 steps, 9 after 100; 8 filters: 14 and 13.
        let cells = grid(|w, ft, _| if w == 32 { 10.0 } else { 14.0 } - ft as f64 / 50.0);
        assert_eq!(verdict(&cells, id), Verdict::Holds);
        // The smaller one catches up with more finetuning: its 100-step model beats the
        // larger's 50-step one beyond the intervals.
        let cells = grid(|w, ft, _| match (w, ft) {
            (32, 50) => 12.0,
            (32, _) => 8.0,
            (_, 50) => 14.0,
            _ => 10.0,
        });
        assert_eq!(verdict(&cells, id), Verdict::DoesNotHold);
        // Within the intervals: inconclusive.
        let cells = grid(|w, _, _| if w == 32 { 10.0 } else { 10.4 });
        assert_eq!(verdict(&cells, id), Verdict::Inconclusive);
    }

    #[test]
    fn few_step_efficiency_is_judged_below_twenty_steps_and_the_top_budget_beyond() {
        // The 8-filter model wins at 4 steps (cheaper and better), the 32 at 40 steps.
        let cells = grid(|w, _, steps| match (w, steps) {
            (8, 4) => 10.0,
            (32, 4) => 14.0,
            (8, _) => 9.0,
            _ => 6.0,
        });
        assert_eq!(
            verdict(&cells, SR_SMALLER_MODELS_EFFICIENT_AT_FEW_STEPS.id),
            Verdict::Holds
        );
        assert_eq!(
            verdict(&cells, SR_LARGER_MODELS_WIN_BEYOND.id),
            Verdict::Holds
        );
        assert!(
            findings(&[], &None)
                .iter()
                .all(|f| f.verdict == Verdict::NotMeasured)
        );
    }

    #[test]
    fn figures_and_tables_render_every_width_and_the_baseline() {
        let mut cells = grid(|w, ft, steps| w as f64 / 8.0 + ft as f64 / 100.0 + steps as f64);
        for c in &mut cells {
            c.metrics.push(Metric {
                name: IN_DOMAIN_PERCEPTUAL.into(),
                value: 0.5,
                ci: None,
            });
        }
        let sr = SrResults {
            eval_pairs: 64,
            eval_hash: "ab".repeat(32),
            perceptual: IN_DOMAIN_PERCEPTUAL,
            baseline: vec![Metric {
                name: PSNR.into(),
                value: 21.5,
                ci: None,
            }],
            ..SrResults::from_cells(cells, None).unwrap()
        };
        let html = html(&sr, |_| String::new()).unwrap();
        assert!(html.contains("SR FID vs finetune compute") && html.contains("vs sampling cost"));
        assert!(html.contains("SR in-domain perceptual distance vs finetune compute"));
        assert!(html.contains("8 filters") && html.contains("32 filters"));
        assert!(html.contains("bicubic x4") && html.contains("21.500"));
        assert!(html.contains("not LPIPS"));
        assert!(markdown(&sr).contains("| bicubic x4 (the LR) | - | - | - | - | 21.500 |"));
        // No PSNR was measured on the cells: no width beats the baseline.
        assert!(
            learning_check(&sr)
                .unwrap()
                .starts_with("0 of 2 widths beat")
        );
        let mut sr = sr;
        sr.baseline.push(Metric {
            name: UNRELATED_PSNR.into(),
            value: 8.0,
            ci: None,
        });
        let psnr = |c: &mut Cell, value: f64| {
            c.metrics.retain(|m| m.name != PSNR);
            c.metrics.push(Metric {
                name: PSNR.into(),
                value,
                ci: None,
            })
        };
        sr.cells.iter_mut().for_each(|c| psnr(c, 9.0));
        assert!(
            learning_check(&sr)
                .unwrap()
                .contains("do not read the LR image")
        );
        sr.cells.iter_mut().for_each(|c| psnr(c, 25.0));
        let check = learning_check(&sr).unwrap();
        assert!(check.starts_with("2 of 2 widths beat") && !check.contains("do not read"));
        // The FID comparison: after 100 steps the best FIDs are 6 (8 filters) and 9 (32).
        sr.baseline.push(Metric {
            name: "fid".into(),
            value: 7.0,
            ci: None,
        });
        let check = learning_check(&sr).unwrap();
        assert!(
            check.contains("in FID (point estimates) 1 of 2 widths beat bicubic's 7.00"),
            "{check}"
        );
    }
}
