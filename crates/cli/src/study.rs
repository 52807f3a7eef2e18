//! `ldmscale study`: the paper's sampling-efficiency analysis end to end.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ldmscale_study::config::StudyConfig;
use ldmscale_study::context::STAGES;
use ldmscale_study::{RunOptions, pipeline};

use crate::device::DeviceArgs;
use crate::slurm::{StudyCall, SubmitArgs};
use ldmscale_util::launch::{Env, array_shard};

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
    /// Output directory (default: study-<name>). A killed study resumes here; a changed config
    /// recomputes only the stages the change reaches (the others' results are reused).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the plan, its estimated compute and which stored results would be reused, then stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Measure only sweep shard i of N (e.g. 0/4); merge the stores with `ldmscale results merge`.
    /// With `--only family` (last), train only widths j with j mod N = i instead.
    /// `auto`: the shard of this job-array task (SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT, else
    /// RANK/WORLD_SIZE); `auto/N` in a Kubernetes Indexed Job of N completions
    /// (JOB_COMPLETION_INDEX).
    #[arg(long, value_name = "i/N|auto", allow_hyphen_values = true)]
    pub shard: Option<String>,
    /// Compute only these stages (comma-separated): data, first-stage, text-encoder, latents,
    /// evaluator, sr-data, family, sweep, adaptive, grids, learning-check, super-res, distill,
    /// dreambooth, report. Earlier stages they use must be stored; the run stops after the
    /// last one named. With --shard, a last stage that trains per width (family, super-res,
    /// distill, dreambooth) trains only the shard's widths, and a last stage `latents` encodes
    /// only range i of the latent cache's N (the next run without --shard joins them).
    #[arg(long, value_name = "STAGE[,STAGE]", value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub submit: SubmitArgs,
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
    let device = args.device.device()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("study-{}", config.name)));
    // Checked before the dry run too, so that it does not pass what the run refuses.
    let options = RunOptions {
        shard: parse_shard(args.shard.as_deref(), &ldmscale_util::launch::process_env())?,
        only: check_only(args.only.as_deref())?,
    };
    crate::checks::output_dir(&out, "--out")?;
    if args.submit.submit.is_some() {
        if args.only.is_some() || args.shard.is_some() {
            bail!("--submit: the jobs choose their own --only and --shard; drop those flags");
        }
        let call = StudyCall {
            config_toml: config.to_toml(),
            widths: &config.widths,
            width_arrays: ldmscale_study::stages::width_arrays(&config),
            super_res: config.super_res.is_some(),
            out: &out,
            device: &args.device.device,
        };
        return crate::slurm::submit(&args.submit, &call, args.dry_run);
    }
    if args.dry_run {
        print!("{}", pipeline::dry_run(&config, Some(&out), &device)?);
        println!("\n# the config, as TOML:\n{}", config.to_toml());
        return Ok(());
    }
    let summary = pipeline::run(&config, &out, &device, &options)?;
    match &summary.report {
        Some(report) => println!(
            "{} cells in {:.0} s; report: {}",
            summary.cells,
            summary.seconds,
            report.display()
        ),
        None => println!(
            "stages {} done in {:.0} s",
            args.only
                .iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            summary.seconds
        ),
    }
    Ok(())
}

/// `--only`, each name one of the study's stages.
fn check_only(names: Option<&[String]>) -> Result<Option<Vec<String>>> {
    let Some(names) = names else { return Ok(None) };
    for name in names {
        if !STAGES.contains(&name.as_str()) {
            bail!(
                "--only {:?}: no such stage {name:?}; expected one of {}",
                names.join(","),
                STAGES.join(", ")
            );
        }
    }
    Ok(Some(names.to_vec()))
}

fn parse_shard(text: Option<&str>, env: &Env) -> Result<Option<(usize, usize)>> {
    let Some(text) = text else { return Ok(None) };
    if let Some(rest) = text.trim().strip_prefix("auto") {
        let count = match rest.strip_prefix('/') {
            None if rest.is_empty() => None,
            Some(n) => Some(
                n.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| {
                        format!("--shard {text}: expected auto/N with N the whole number of tasks")
                    })?,
            ),
            None => bail!("--shard {text}: expected i/N, auto or auto/N"),
        };
        let shard = array_shard(env, count).map_err(|e| match e.name.starts_with("--shard") {
            true => anyhow::anyhow!("--shard {text}: {}", e.problem),
            false => anyhow::anyhow!("--shard {text}: {e}"),
        })?;
        return Ok(Some(shard));
    }
    let parsed = text.split_once('/').and_then(|(i, n)| {
        Some((
            i.trim().parse::<usize>().ok()?,
            n.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((i, n)) if i < n => Ok(Some((i, n))),
        _ => bail!("--shard {text}: expected i/N with whole numbers 0 <= i < N, e.g. 0/4"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_shard;
    use ldmscale_util::launch::Env;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn auto_shards_come_from_the_job_array() {
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(parse_shard(Some("auto"), &slurm).unwrap(), Some((2, 3)));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(parse_shard(Some("auto/4"), &k8s).unwrap(), Some((1, 4)));
        for (bad, says) in [
            ("auto", "not inside a job array"),
            ("auto/0", "expected auto/N"),
            ("autox", "expected i/N, auto or auto/N"),
        ] {
            let err = format!("{:#}", parse_shard(Some(bad), &Env::new()).unwrap_err());
            assert!(
                err.contains(&format!("--shard {bad}")) && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn shards_parse_or_say_what_is_expected() {
        let none = Env::new();
        assert_eq!(parse_shard(Some("1/4"), &none).unwrap(), Some((1, 4)));
        assert_eq!(parse_shard(None, &none).unwrap(), None);
        for bad in ["1/-1", "4/4", "0/0", "a/2", "1", "-1/2", "1/2/3"] {
            let err = parse_shard(Some(bad), &none).unwrap_err().to_string();
            assert!(
                err.contains(&format!("--shard {bad}")) && err.contains("0 <= i < N"),
                "{err}"
            );
        }
    }
}
