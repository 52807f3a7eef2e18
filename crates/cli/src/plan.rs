//! `ldmscale plan` and `ldmscale results`: answers from a results store.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ldmscale_study::Store;
use ldmscale_study::plan::{Budget, recommend};
use ldmscale_study::report::{ReportInputs, render};

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
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ldmscale plan`.
pub fn plan(args: &PlanArgs) -> Result<()> {
    if !args.store.exists() {
        bail!("{}: no such results store", args.store.display());
    }
    let cells = Store::open(&args.store)?.cells()?;
    let budget = match (args.budget_gflops, args.budget_ms) {
        (Some(g), _) if g > 0.0 => Budget::Gflops(g),
        (_, Some(ms)) if ms > 0.0 => Budget::Milliseconds(ms),
        _ => bail!("the budget must be positive"),
    };
    let rec = recommend(&cells, budget).map_err(anyhow::Error::msg)?;
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
        if let (Some(x), Some(y)) = (b.fid_ci, r.fid_ci) {
            println!(
                "{}",
                if x.overlaps(&y) {
                    "Their 95% intervals overlap: at the sweep's sample size the two are not told apart."
                } else {
                    "Their 95% intervals do not overlap."
                }
            );
        }
    }
    Ok(())
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

/// `ldmscale results ...`.
#[derive(Subcommand, Debug)]
pub enum ResultsCommand {
    /// Joins the stores of sweep shards (`ldmscale study --shard i/N`) into one.
    Merge {
        /// The store to write into (created if missing).
        #[arg(value_name = "OUT")]
        out: PathBuf,
        /// Shard stores to read.
        #[arg(value_name = "IN", required = true)]
        inputs: Vec<PathBuf>,
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

/// Runs `ldmscale results ...`.
pub fn results(command: &ResultsCommand) -> Result<()> {
    match command {
        ResultsCommand::Merge { out, inputs } => {
            let mut store = Store::open(out)?;
            for input in inputs {
                if !input.exists() {
                    bail!("{}: no such results store", input.display());
                }
                let n = store.merge_from(input)?;
                eprintln!("{}: {n} cells", input.display());
            }
            eprintln!("{}: {} cells in all", out.display(), store.cells()?.len());
            Ok(())
        }
        ResultsCommand::Report { store, out } => {
            let cells = Store::open(store)?.cells()?;
            if cells.is_empty() {
                bail!("{}: the store has no cells", store.display());
            }
            let inputs = ReportInputs {
                title: format!("results of {}", store.display()),
                fid_features: "as stored".into(),
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
