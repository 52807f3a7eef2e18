//! `ldmscale train` and `ldmscale train-family`: one recipe, any width, exact resume.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use ldmscale_data::Split;
use ldmscale_model::text::TextConditioner;
use ldmscale_model::vae::load_vae;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig};
use ldmscale_study::config::TextEncoderSpec;
use ldmscale_study::config::validate::MAX_RESOLUTION;
use ldmscale_study::stages::text::load_or_make;
use ldmscale_train::InMemory;
use ldmscale_train::parallel::{parse_devices, training_devices};

use crate::device::DeviceArgs;
use crate::launch::{LaunchArgs, Rank};
use ldmscale_train::TrainConfig;
use ldmscale_util::launch::Ranks;
use serde::Deserialize;

mod eval;
use eval::EvalConfig;
use ldmscale_train::evaluation::{EvalRecord, read_records};

/// Where the training pairs come from (`[data]` of a run file; `distill` reads it too).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataConfig {
    /// Dataset spec (shapes, fashion-mnist, folder:DIR, coco:JSON:DIR, ...).
    dataset: String,
    /// Image side in pixels.
    resolution: usize,
    /// Training examples to encode.
    examples: usize,
    /// First-stage autoencoder: a diffusers AutoencoderKL directory (e.g. from `train-vae`).
    first_stage: String,
    /// Frozen text encoder: tiny-random, minilm, dir:DIR or clip:DIR.
    text_encoder: String,
}

/// A run file: `[data]`, `[train]` (with `[train.model]`) and optionally `[eval]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    data: DataConfig,
    train: toml::Value,
    eval: Option<EvalConfig>,
}

/// Arguments shared by `train` and `train-family`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run file (TOML) with `[data]` (dataset, resolution, examples, first_stage, text_encoder),
    /// `[train]` (steps, batch_size, learning_rate, ..., eval_every, `[train.model]` family/width/
    /// heads/norm_groups) and, optionally, `[eval]` (prompts, sampler, steps, cfg, seed,
    /// fid_samples): what is measured every `train.eval_every` steps. Unknown keys are errors.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Output directory; a run there resumes from its newest checkpoint.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Overrides `train.steps` (a finished run can be extended).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Overrides `train.model.width` (`train` only).
    #[arg(long)]
    pub width: Option<usize>,
    /// Widths to train with the identical recipe, one directory each (`train-family` only).
    #[arg(long, value_delimiter = ',')]
    pub widths: Vec<usize>,
    /// Where the training steps run (data encoding and evaluation run there too, or on the
    /// first of `--devices`).
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Data parallelism: each micro-batch split across these devices, e.g. `cuda:0,cuda:1`
    /// (overrides `train.devices`; the first holds the weights and optimizer state).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// Who this process is, and the device it trains on (`--device cuda` is the rank's GPU).
fn rank_device(args: &TrainArgs) -> Result<(Device, Ranks, Option<usize>)> {
    crate::launch::resolve(&args.device.device, &args.launch)
}

fn load(args: &TrainArgs) -> Result<(DataConfig, TrainConfig, Option<EvalConfig>)> {
    // A device this build cannot use fails before any data is read.
    rank_device(args)?;
    let origin = args.config.display().to_string();
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("reading {origin}"))?;
    let run: RunFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let mut train_text = toml::to_string(&run.train)?;
    if let Some(steps) = args.steps {
        let mut v = run.train.clone();
        v.as_table_mut()
            .context("[train] must be a table")?
            .insert("steps".into(), toml::Value::Integer(steps as i64));
        train_text = toml::to_string(&v)?;
    }
    let mut config = TrainConfig::from_toml(&train_text, &format!("{origin} [train]"))?;
    if !args.devices.is_empty() {
        parse_devices(&args.devices, "--devices")?;
        config.devices = args.devices.clone();
    }
    let eval = match (run.eval, config.eval_every) {
        (Some(_), 0) => bail!(
            "{origin}: [eval] is given but train.eval_every = 0, so it would never run; set train.eval_every"
        ),
        (None, 0) => None,
        (eval, _) => Some(eval.unwrap_or_default()),
    };
    if let Some(e) = &eval {
        e.validate(&origin)?;
    }
    run.data.validate(&origin)?;
    Ok((run.data, config, eval))
}

impl DataConfig {
    /// Sizes checked before any data is made (a huge resolution would stall generating it).
    pub(crate) fn validate(&self, origin: &str) -> Result<()> {
        let (side, n) = (self.resolution, self.examples);
        if !(1..=MAX_RESOLUTION).contains(&side) {
            bail!("{origin} [data] resolution = {side}: expected 1 to {MAX_RESOLUTION}");
        }
        if n == 0 {
            bail!("{origin} [data] examples = 0: expected at least 1");
        }
        let bytes = side
            .checked_mul(side)
            .and_then(|px| px.checked_mul(3 * 4))
            .and_then(|b| b.checked_mul(n));
        if bytes.is_none_or(|b| b > MAX_DATA_BYTES) {
            bail!(
                "{origin} [data] examples = {n}: {n} images of {side}x{side} need more than {} GiB",
                MAX_DATA_BYTES >> 30
            );
        }
        Ok(())
    }
}

/// The most bytes of f32 images a run encodes in memory.
const MAX_DATA_BYTES: usize = 1 << 40;

fn run_one(
    data_config: &DataConfig,
    config: &TrainConfig,
    eval: Option<&EvalConfig>,
    shared: &Path,
    out: &Path,
    rank: &Rank,
    quiet: bool,
) -> Result<()> {
    // Data and evaluation live where the weights do, so the hook's model meets them there.
    let device = training_devices(config, &rank.device)?.remove(0);
    let Encoded {
        data,
        vae,
        vae_config,
        text,
    } = encode_data(data_config, shared, &device)?;
    // Rank 0 alone evaluates and writes (the others' hooks are never called).
    let evaluator = match eval.filter(|_| rank.writes()) {
        Some(e) => Some(eval::evaluator(
            e,
            &data_config.dataset,
            data_config.resolution,
            &vae,
            &vae_config,
            &text,
            out,
            &device,
        )?),
        None => None,
    };
    let mut hook = |unet: &ldmscale_model::UNet,
                    state: &ldmscale_train::TrainState|
     -> std::result::Result<(), String> {
        let Some(evaluator) = &evaluator else {
            return Ok(());
        };
        let record = evaluator
            .evaluate(unet, state)
            .map_err(|e| ldmscale_train::error::chain(&e))?;
        if !quiet {
            eprintln!("eval at step {}: {}", state.step, describe(&record));
        }
        Ok(())
    };
    let summary = rank.train(config, &data, out, !quiet, Some(&mut hook))?;
    if !rank.writes() {
        return Ok(());
    }
    write_loss_curve(out, config.model.width)?;
    if let Some(evaluator) = &evaluator {
        write_fid_curve(&evaluator.log, out, config.model.width)?;
    }
    println!(
        "width {}: step {} loss {:.4}; training compute {:.3e} GFLOPs = {:.2} normalised cost x iterations; {} steps in {:.1} s; models: {}",
        config.model.width,
        summary.state.step,
        summary.state.last_loss,
        summary.state.train_gflops,
        summary.state.normalized_cost_x_iterations,
        summary.steps_run,
        summary.seconds,
        summary
            .model_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// A run file's data encoded, with the models that encoded it.
pub(crate) struct Encoded {
    pub data: InMemory,
    pub vae: AutoencoderKL,
    pub vae_config: AutoencoderKLConfig,
    pub text: TextConditioner,
}

/// Loads `[data]`'s examples and encodes them on `device` (the text encoder made or loaded
/// under `shared/text_encoder`).
pub(crate) fn encode_data(
    data_config: &DataConfig,
    shared: &Path,
    device: &Device,
) -> Result<Encoded> {
    let (vae_config, vae) = load_vae(Path::new(&data_config.first_stage), device)?;
    let examples = ldmscale_data::load_captioned(
        &data_config.dataset,
        data_config.resolution,
        Split::Train,
        data_config.examples,
    )?;
    let spec: TextEncoderSpec = data_config
        .text_encoder
        .parse()
        .map_err(anyhow::Error::msg)?;
    let text = load_or_make(
        &spec,
        &shared.join("text_encoder"),
        &examples.captions,
        device,
    )?;
    let key = format!(
        "{}@{} vae:{}:{} text:{} n:{}",
        data_config.dataset,
        data_config.resolution,
        data_config.first_stage,
        vae_config.scaling_factor,
        data_config.text_encoder,
        examples.captions.len()
    );
    let data = InMemory::encode(
        &vae,
        &vae_config,
        &text,
        (&examples.images, &examples.captions),
        data_config.resolution,
        key,
        device,
    )?;
    Ok(Encoded {
        data,
        vae,
        vae_config,
        text,
    })
}

/// An evaluation in one line: the grid's path and the FID, where measured.
fn describe(record: &EvalRecord) -> String {
    let grid = record.grid.as_deref().unwrap_or("no grid");
    match record.fid {
        Some(fid) => format!("{grid}, FID {fid:.2}"),
        None => grid.to_string(),
    }
}

/// Plots `metrics.jsonl` as `loss.png` and `loss.svg` beside it.
fn write_loss_curve(run: &Path, width: usize) -> Result<()> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).context("metrics.jsonl")?;
    let points: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v["step"].as_f64()?, v["loss"].as_f64()?))
        })
        .collect();
    write_chart(run, "loss", "Training loss", "step", "loss", width, points)
}

/// Plots FID against training compute (Fig. 3 for one run) as `fid.png` and `fid.svg`, when
/// FID was measured.
fn write_fid_curve(log: &Path, run: &Path, width: usize) -> Result<()> {
    let points: Vec<(f64, f64)> = read_records(log)?
        .iter()
        .filter_map(|r| Some((r.normalized_cost_x_iterations, r.fid?)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    write_chart(
        run,
        "fid",
        "FID during training",
        "training compute (normalised cost x iterations)",
        "FID",
        width,
        points,
    )
}

/// Writes one line chart as `NAME.png` and `NAME.svg` in `run`.
fn write_chart(
    run: &Path,
    name: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    width: usize,
    points: Vec<(f64, f64)>,
) -> Result<()> {
    let series = [ldmscale_study::plot::Series {
        label: format!("{width} filters"),
        points,
    }];
    let chart = ldmscale_study::plot::LineChart {
        title,
        x_label,
        y_label,
        series: &series,
        intervals: &[],
        log_x: false,
    };
    let write = ldmscale_model::weights::write_atomic;
    write(
        &run.join(format!("{name}.png")),
        &chart.png().map_err(anyhow::Error::msg)?,
    )?;
    write(
        &run.join(format!("{name}.svg")),
        chart.svg().map_err(anyhow::Error::msg)?.as_bytes(),
    )?;
    Ok(())
}

/// `ldmscale train`.
pub fn run(args: &TrainArgs, quiet: bool) -> Result<()> {
    if !args.widths.is_empty() {
        bail!("--widths is for `ldmscale train-family`; `train` takes one --width");
    }
    crate::checks::output_dir(&args.out, "--out")?;
    let (data, mut config, eval) = load(args)?;
    if let Some(w) = args.width {
        config.model.width = w;
        config.validate()?;
    }
    let (device, ranks, gpu) = rank_device(args)?;
    let rank = Rank::join(ranks, device, gpu, config.batch_size)?;
    let _lock = rank.lock(&args.out, "ldmscale train")?;
    run_one(
        &data,
        &config,
        eval.as_ref(),
        &args.out,
        &args.out,
        &rank,
        quiet,
    )
}

/// `ldmscale train-family`.
pub fn family(args: &TrainArgs, quiet: bool) -> Result<()> {
    if args.width.is_some() {
        bail!("--width is for `ldmscale train`; `train-family` takes --widths");
    }
    crate::checks::output_dir(&args.out, "--out")?;
    let (data, config, eval) = load(args)?;
    if args.widths.is_empty() {
        bail!("--widths: name the widths to train, e.g. --widths 16,24,32,48");
    }
    if let Some(w) = (1..args.widths.len()).find_map(|i| {
        let w = args.widths[i];
        args.widths[..i].contains(&w).then_some(w)
    }) {
        bail!("--widths: {w} is named twice");
    }
    for &w in &args.widths {
        let mut c = config.clone();
        c.model.width = w;
        c.validate().with_context(|| format!("width {w}"))?;
    }
    let (device, ranks, gpu) = rank_device(args)?;
    let rank = Rank::join(ranks, device, gpu, config.batch_size)?;
    let _lock = rank.lock(&args.out, "ldmscale train-family")?;
    for &w in &args.widths {
        let mut c = config.clone();
        c.model.width = w;
        // Finished widths return at once (the run directory says so); others resume.
        run_one(
            &data,
            &c,
            eval.as_ref(),
            &args.out,
            &args.out.join(format!("w{w}")),
            &rank,
            quiet,
        )?;
    }
    Ok(())
}
