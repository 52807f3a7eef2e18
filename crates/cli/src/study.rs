//! `ldmscale study`: the paper's sampling-efficiency analysis end to end.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ldmscale_study::config::StudyConfig;
use ldmscale_study::pipeline;

/// Arguments of `ldmscale study`.
#[derive(Args, Debug)]
pub struct StudyArgs {
    /// Built-in preset: tiny (CI, minutes, shapes), quick (a 2-core CPU, under 20 min;
    /// Fashion-MNIST when tools/fetch-assets.sh fetched it, else shapes), full (hours), paper
    /// (the paper's setup: needs COCO, the SD VAE, a CLIP text encoder and GPUs).
    #[arg(long, default_value = "quick", conflicts_with = "config")]
    pub preset: String,
    /// A study config (TOML) instead of a preset; `--dry-run` on a preset shows its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output directory (default: study-<name>). A killed study resumes here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the plan and its estimated compute, then stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Measure only sweep shard i of N (e.g. 0/4); merge the stores with `ldmscale results merge`.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<String>,
}

/// Runs the command.
pub fn run(args: &StudyArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            StudyConfig::from_toml(&text, &path.display().to_string())
                .map_err(anyhow::Error::msg)?
        }
        None => StudyConfig::preset(&args.preset).map_err(anyhow::Error::msg)?,
    };
    if args.dry_run {
        print!(
            "{}",
            pipeline::dry_run(&config).map_err(anyhow::Error::msg)?
        );
        println!("\n# the config, as TOML:\n{}", config.to_toml());
        return Ok(());
    }
    let shard = match &args.shard {
        None => None,
        Some(text) => {
            let (i, n) = text
                .split_once('/')
                .context("--shard: expected i/N, e.g. 0/4")?;
            let (i, n): (usize, usize) = (i.parse()?, n.parse()?);
            if n == 0 || i >= n {
                bail!("--shard {text}: need 0 <= i < N");
            }
            Some((i, n))
        }
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("study-{}", config.name)));
    let summary = pipeline::run(&config, &out, shard).map_err(anyhow::Error::msg)?;
    println!(
        "{} cells in {:.0} s; report: {}",
        summary.cells,
        summary.seconds,
        summary.report.display()
    );
    Ok(())
}
