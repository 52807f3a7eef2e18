//! `ldmscale zoo`: the paper's model family, counted from the models the toolkit builds.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use ldmscale_model::UNetConfig;
use ldmscale_model::unet::config::MAX_SAMPLE_SIZE;
use ldmscale_model::zoo::{REFERENCE_WIDTH, ZooRow, family};

/// The most text tokens `--context` takes (CLIP uses 77; long-context encoders a few hundred).
const MAX_CONTEXT: usize = 1 << 16;

/// Output formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// An aligned table for reading.
    Table,
    /// A JSON array, one object per width.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Arguments of `ldmscale zoo`.
#[derive(Args, Debug)]
pub struct ZooArgs {
    /// Latent side length (64 = 512x512 images through an f=8 autoencoder, the paper's setting).
    #[arg(long, default_value_t = 64)]
    pub latent: usize,
    /// Text tokens the cross-attention reads (77 for CLIP-style encoders).
    #[arg(long, default_value_t = 77)]
    pub context: usize,
    /// Base widths (filters) to list; default: the paper's Table 1.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,96,128,160,192,224,256,288,320,512,768"
    )]
    pub widths: Vec<usize>,
    /// How to print the rows.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Runs the command, printing to stdout.
pub fn run(args: &ZooArgs) -> Result<()> {
    check_args(args)?;
    let rows = family(&args.widths, args.latent, args.context, &Device::flex());
    let text = match args.format {
        Format::Table => table(&rows, args),
        Format::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Format::Csv => csv(&rows),
    };
    print!("{text}");
    Ok(())
}

/// Sizes checked before any model is built (a width beyond the config's limits would panic).
fn check_args(args: &ZooArgs) -> Result<()> {
    if !(1..=MAX_SAMPLE_SIZE).contains(&args.latent) {
        bail!("--latent {}: expected 1..={MAX_SAMPLE_SIZE}", args.latent);
    }
    if !(1..=MAX_CONTEXT).contains(&args.context) {
        bail!("--context {}: expected 1..={MAX_CONTEXT}", args.context);
    }
    for &w in &args.widths {
        if w == 0 || w % 32 != 0 {
            bail!(
                "--widths: {w} is not a positive multiple of 32 (the family uses 32 GroupNorm groups)"
            );
        }
        if let Err(e) = UNetConfig::paper(w).validate() {
            bail!("--widths: {w} is too wide for the family's config: {e}");
        }
    }
    Ok(())
}

fn human(params: usize) -> String {
    let p = params as f64;
    if p >= 1e9 {
        format!("{:.2}B", p / 1e9)
    } else {
        format!("{:.0}M", p / 1e6)
    }
}

fn table(rows: &[ZooRow], args: &ZooArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "UNet family of Mei et al. (Table 1), counted from the built models: latent {0}x{0}, {1} text tokens, batch 1, no CFG.",
        args.latent, args.context
    );
    let _ = writeln!(
        out,
        "GFLOPs: 2 per multiply-add (zero-padding taps not counted) + elementwise ops; normalised cost = GFLOPs / GFLOPs({REFERENCE_WIDTH})."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>7} {:>14} {:>7} {:>10} {:>6} | {:>7} {:>9} {:>6} {:>8}",
        "filters", "params", "", "GFLOPs", "cost", "paper", "GFLOPS", "cost", "GF diff"
    );
    for r in rows {
        let (pp, pg, pc, diff) = match r.paper {
            Some(p) => (
                p.params.to_string(),
                format!("{:.1}", p.gflops),
                format!("{:.2}", p.normalized_cost),
                r.gflops_vs_paper
                    .map(|d| format!("{:+.2}%", 100.0 * d))
                    .unwrap_or_default(),
            ),
            None => ("-".into(), "-".into(), "-".into(), String::new()),
        };
        let _ = writeln!(
            out,
            "{:>7} {:>14} {:>7} {:>10.1} {:>6.2} | {:>7} {:>9} {:>6} {:>8}{}",
            r.width,
            r.params,
            human(r.params),
            r.gflops,
            r.normalized_cost,
            pp,
            pg,
            pc,
            diff,
            if r.note.is_some() { "  *" } else { "" }
        );
    }
    for r in rows {
        if let Some(note) = &r.note {
            let _ = writeln!(out, "\n* {} filters: {note}", r.width);
        }
    }
    out
}

fn csv(rows: &[ZooRow]) -> String {
    let mut out = String::from(
        "filters,params,gflops,normalized_cost,paper_params,paper_gflops,paper_normalized_cost,gflops_vs_paper,note\n",
    );
    for r in rows {
        let paper = r.paper;
        let _ = writeln!(
            out,
            "{},{},{:.3},{:.4},{},{},{},{},{}",
            r.width,
            r.params,
            r.gflops,
            r.normalized_cost,
            paper.map(|p| p.params.to_string()).unwrap_or_default(),
            paper.map(|p| p.gflops.to_string()).unwrap_or_default(),
            paper
                .map(|p| p.normalized_cost.to_string())
                .unwrap_or_default(),
            r.gflops_vs_paper
                .map(|d| format!("{d:.5}"))
                .unwrap_or_default(),
            r.note
                .as_deref()
                .map(|n| format!("\"{}\"", n.replace('"', "'")))
                .unwrap_or_default(),
        );
    }
    out
}
