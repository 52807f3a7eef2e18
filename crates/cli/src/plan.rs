//! `ldmscale plan` and `ldmscale results`: answers from a results store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ldmscale_study::cell::SUPER_RES;
use ldmscale_study::distill::DistillResults;
use ldmscale_study::dreambooth::results::DreamBoothResults;
use ldmscale_study::pairing::Pairing;
use ldmscale_study::plan::{Budget, Recommendation, recommend_paired};
use ldmscale_study::report::{ReportInputs, render};
use ldmscale_study::scaling_law::ScalingAnalysis;
use ldmscale_study::store::OnConflict;
use ldmscale_study::super_res::SrResults;
use ldmscale_study::{Cell, Store, Variant};

/// Arguments of `ldmscale plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Results store written by `ldmscale study` (results.sqlite).
    #[arg(long, value_name = "FILE")]
    pub store: PathBuf,
    /// Sampling budget in GFLOPs per image (guidance's doubled evaluations count).
    #[arg(
        long,
        conflicts_with = "budget_ms",
        required_unless_present = "budget_ms"
    )]
    pub budget_gflops: Option<f64>,
    /// Sampling budget in milliseconds per image, as measured on the machine that ran the sweep.
    #[arg(long)]
    pub budget_ms: Option<f64>,
    /// Ask the sweep's scaling law about this base width instead, typically one that was never
    /// trained: its parameters and cost per evaluation follow from the measured widths, its FID
    /// from the law fitted to their sampling frontiers (needs 3 measured widths; the answer is
    /// marked as extrapolated, with a 95% prediction interval and the law's held-out error).
    #[arg(long, value_name = "FILTERS", conflicts_with = "budget_ms")]
    pub width: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ldmscale plan`.
pub fn plan(args: &PlanArgs) -> Result<()> {
    let store = Store::open_read_only(&args.store)?;
    let cells = store.cells()?;
    let budget = match (args.budget_gflops, args.budget_ms) {
        (Some(g), _) if g > 0.0 => Budget::Gflops(g),
        (_, Some(ms)) if ms > 0.0 => Budget::Milliseconds(ms),
        _ => bail!("the budget must be positive"),
    };
    if let Some(width) = args.width {
        let Budget::Gflops(gflops) = budget else {
            bail!(
                "--width predicts from GFLOPs: give --budget-gflops (no timing model exists for an untrained width)"
            );
        };
        return predict_width(&cells, width, gflops, args.json);
    }
    let pairing = Pairing::from_store(&store, &cells)?;
    let rec = recommend_paired(&cells, budget, pairing).map_err(anyhow::Error::msg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(());
    }
    let b = &rec.best;
    println!(
        "Run the {}-filter model ({} parameters) with {} for {} steps at guidance {:.1}.",
        b.width, b.params, b.sampler, b.steps, b.cfg
    );
    println!(
        "Expected FID {:.2}{} at {:.3} GFLOPs ({:.1} ms on the sweep's machine) per image; {} measured settings fit the budget.",
        b.fid,
        interval_text(b),
        b.cost_gflops,
        b.ms_per_image,
        rec.candidates
    );
    if let Some(r) = &rec.runner_up {
        println!(
            "Best other size: {} filters with {} x{} at guidance {:.1}: FID {:.2}{}.",
            r.width,
            r.sampler,
            r.steps,
            r.cfg,
            r.fid,
            interval_text(r)
        );
        println!("{}", margin_text(&rec));
    }
    Ok(())
}

/// `plan --width`: the scaling law's answer for one width, extrapolated.
fn predict_width(cells: &[Cell], width: u32, budget_gflops: f64, json: bool) -> Result<()> {
    let analysis = ScalingAnalysis::of(cells);
    let p = analysis
        .predict_width(width, budget_gflops)
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    let q = &p.prediction;
    let source = match p.measured_width {
        true => "From the scaling law",
        false => "Extrapolated, not measured",
    };
    let plural = if p.evaluations == 1.0 { "" } else { "s" };
    println!(
        "{source}: the {width}-filter model (~{} parameters, {:.4} GFLOPs per evaluation) with {} evaluation{plural} per image is predicted to reach FID {:.2} (95% prediction interval {:.2}..{:.2}).",
        p.params, p.gflops_per_eval, p.evaluations, q.fid, q.low, q.high
    );
    if let Some(e) = p.held_out_error {
        println!(
            "The law predicted each measured width from the others within {:.1}% on average (leave-one-width-out).",
            100.0 * e
        );
    }
    if p.measured_width {
        println!(
            "This width was measured: `ldmscale plan` without --width answers from its cells."
        );
    }
    if p.beyond_measured_evaluations {
        println!(
            "The budget buys more evaluations than any measured setting used: extrapolated in sampling too."
        );
    }
    Ok(())
}

/// "Margin over it: FID 1.20 (95% CI 0.40..2.00, paired bootstrap): decided." or why not.
fn margin_text(rec: &Recommendation) -> String {
    let Some(m) = rec.margin else {
        return String::new();
    };
    let Some(i) = m.interval else {
        return format!(
            "Margin over it: FID {:.2}, no interval measured: not decided.",
            m.value
        );
    };
    let kind = match m.paired {
        true => "paired bootstrap",
        false => "the range the two intervals allow",
    };
    let reading = match rec.decided {
        true => "decided",
        false => {
            "not decided: the interval contains 0, so at the sweep's sample size the two are not told apart"
        }
    };
    format!(
        "Margin over it: FID {:.2} (95% CI {:.2}..{:.2}, {kind}): {reading}.",
        m.value, i.low, i.high
    )
}

/// " (95% CI 10.10..14.20, bootstrap of 100 replicates)", or "" when no interval was measured.
fn interval_text(s: &ldmscale_study::analysis::Setting) -> String {
    use ldmscale_study::bootstrap::CiMethod;
    match s.fid_ci {
        None => " (no interval measured)".into(),
        Some(ci) => format!(
            " (95% CI {:.2}..{:.2}, {})",
            ci.low,
            ci.high,
            match ci.method {
                CiMethod::Bootstrap => format!("bootstrap of {} replicates", ci.replicates),
                CiMethod::SeedSpread => format!("spread over {} seeds", ci.replicates),
                CiMethod::Unknown => "method not recorded".into(),
            }
        ),
    }
}

/// `--on-conflict` of `results merge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConflictChoice {
    /// Change nothing and say which cells differ.
    Refuse,
    /// Keep the output store's value.
    Keep,
    /// Take the input's value.
    Replace,
}

impl ConflictChoice {
    fn policy(self) -> OnConflict {
        match self {
            ConflictChoice::Refuse => OnConflict::Refuse,
            ConflictChoice::Keep => OnConflict::Keep,
            ConflictChoice::Replace => OnConflict::Replace,
        }
    }
}

/// `ldmscale results ...`.
#[derive(Subcommand, Debug)]
pub enum ResultsCommand {
    /// Joins the stores of sweep shards (`ldmscale study --shard i/N`) into one.
    Merge {
        /// The store to write into (created if missing).
        #[arg(value_name = "OUT")]
        out: PathBuf,
        /// Shard stores to read (never changed). Only stores of one study merge (the same
        /// data, first stage, text encoder and evaluator, and the same model of each width).
        #[arg(value_name = "IN", required = true)]
        inputs: Vec<PathBuf>,
        /// A cell both stores hold with different values: refuse the merge (nothing written),
        /// keep the output store's value, or replace it with the input's.
        #[arg(long, value_enum, default_value = "refuse")]
        on_conflict: ConflictChoice,
    },
    /// Writes the HTML report and Markdown summary of a store.
    Report {
        /// The store.
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// Output directory (report.html, report.md).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Merges `inputs` into `out` one by one; an input that is refused stops the merge there,
/// and the inputs before it stay merged (each merge is one transaction).
fn merge(out: &Path, inputs: &[PathBuf], on_conflict: OnConflict) -> Result<()> {
    let opened = inputs
        .iter()
        .map(|input| Store::open_read_only(input))
        .collect::<Result<Vec<_>, _>>()?;
    // Refusals before OUT is opened for writing (which would upgrade an older layout).
    if out.is_file() {
        let existing = Store::open_read_only(out)?;
        opened
            .iter()
            .try_for_each(|s| existing.check_mergeable(s))?;
    } else if let Some(first) = opened.first() {
        opened[1..]
            .iter()
            .try_for_each(|s| first.check_mergeable(s))?;
    }
    let mut store = Store::open(out)?;
    for input in inputs {
        let s = store.merge_from(input, on_conflict)?;
        let mut line = format!("{}: {} new cells", input.display(), s.added);
        if s.identical > 0 {
            line += &format!(", {} already here with equal values", s.identical);
        }
        if s.conflicting > 0 {
            line += &format!(
                ", {} with other values ({} replaced, {} kept)",
                s.conflicting,
                s.replaced,
                s.conflicting - s.replaced
            );
        }
        eprintln!("{line}");
    }
    eprintln!("{}: {} cells in all", out.display(), store.cells()?.len());
    Ok(())
}

/// The SR cells' kept features against their HR reference, where the store kept them.
fn sr_pairing(store: &Store, cells: &[Cell]) -> Result<Option<std::sync::Arc<Pairing>>> {
    Ok(match store.variant_reference_features(SUPER_RES)? {
        Some(reference) => Pairing::with_reference(store, reference, cells)?,
        None => None,
    })
}

/// The distilled students with their teachers and the undistilled frontier, paired against
/// the sweep's reference set; `None` when the store has no students.
fn distill_results(store: &Store, cells: &[Cell]) -> Result<Option<DistillResults>> {
    let Some(mut results) = DistillResults::from_cells(cells) else {
        return Ok(None);
    };
    results.pairing = Pairing::from_store(store, &results.cells())?;
    Ok(Some(results))
}

/// Runs `ldmscale results ...`.
pub fn results(command: &ResultsCommand) -> Result<()> {
    match command {
        ResultsCommand::Merge {
            out,
            inputs,
            on_conflict,
        } => merge(out, inputs, on_conflict.policy()),
        ResultsCommand::Report { store, out } => {
            let opened = Store::open_read_only(store)?;
            let stored = opened.cells()?;
            let distill = distill_results(&opened, &stored)?;
            let (cells, downstream): (Vec<Cell>, Vec<Cell>) =
                stored.into_iter().partition(|c| c.variant == Variant::Base);
            if cells.is_empty() {
                bail!("{}: the store has no cells", store.display());
            }
            let inputs = ReportInputs {
                title: format!("results of {}", store.display()),
                fid_features: "as stored".into(),
                pairing: Pairing::from_store(&opened, &cells)?,
                super_res: SrResults::from_cells(
                    downstream.clone(),
                    sr_pairing(&opened, &downstream)?,
                ),
                distill,
                dreambooth: DreamBoothResults::from_cells(&downstream),
                ..Default::default()
            };
            let (html, md) = render(&cells, &inputs).map_err(anyhow::Error::msg)?;
            std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
            ldmscale_model::weights::write_atomic(&out.join("report.html"), html.as_bytes())?;
            ldmscale_model::weights::write_atomic(&out.join("report.md"), md.as_bytes())?;
            eprintln!("wrote {}", out.join("report.html").display());
            Ok(())
        }
    }
}
