//! `ldmscale study --dry-run`: the plan of a study with its estimated compute, assembled from
//! each stage's estimate, and which stored results a study directory would reuse. Nothing heavy
//! runs: models are counted from lazily built UNets, throughput from one timed forward.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use ldmscale_data::HrSource;
use ldmscale_model::UNet;
use ldmscale_pipeline::values;

use crate::config::StudyConfig;
use crate::context::{RunOptions, StudyContext};
use crate::error::StudyError;
use crate::stage::Estimate;
use crate::stages::{self, data, family, first_stage, text};

/// The plan of `config`; with `out`, also which of its stored results would be reused.
pub fn dry_run(
    config: &StudyConfig,
    out: Option<&Path>,
    device: &Device,
) -> Result<String, StudyError> {
    config.validate().map_err(StudyError::Config)?;
    let (latent_shape, _) = config.latent_layout();
    let (text_estimate, text_shape) = text::estimate(config);
    let (family_estimate, gflops, smallest) =
        family_estimate(config, latent_shape, text_shape, device);
    let estimates = [
        data::estimate(config),
        first_stage::estimate(config),
        text_estimate,
        stages::latents::estimate(config, text_shape, text::caption_gflops(config)),
        family_estimate,
        sweep_estimate(config, &gflops),
        super_res_estimate(config, &gflops),
        stages::distill::estimate(config, &gflops),
        stages::dreambooth::estimate(config, &gflops),
    ];
    let mut text = String::new();
    let _ = writeln!(
        text,
        "study {:?}: latents {:?}, text {:?}",
        config.name, latent_shape, text_shape
    );
    for e in &estimates {
        for line in &e.lines {
            let _ = writeln!(text, "{line}");
        }
    }
    let (train, sample): (f64, f64) = estimates
        .iter()
        .map(|e| (e.train_gflops, e.sample_gflops))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let speed = throughput(&smallest, latent_shape, text_shape, device);
    let hours = |g: f64| g / speed / 3600.0;
    let _ = writeln!(
        text,
        "\nestimated compute: training {train:.3e} GFLOPs, sweep {sample:.3e} GFLOPs; at {speed:.1} GFLOP/s measured here: {:.2} h training + {:.2} h sampling (evaluation and the first stage extra)",
        hours(train),
        hours(sample)
    );
    let problems: Vec<&String> = estimates.iter().flat_map(|e| &e.problems).collect();
    if problems.is_empty() {
        let _ = writeln!(text, "inputs: all present");
    } else {
        let _ = writeln!(
            text,
            "inputs missing, the study cannot run until they are provided:"
        );
        for p in problems {
            let _ = writeln!(text, "  - {p}");
        }
    }
    if let Some(out) = out.filter(|o| o.join(crate::context::MANIFEST).exists()) {
        let _ = write!(text, "{}", stored_status(config, out, device)?);
    }
    Ok(text)
}

/// Parameters, GFLOPs and training compute of every width; also each width's GFLOPs per
/// evaluation and the smallest model.
fn family_estimate(
    config: &StudyConfig,
    latent: [usize; 3],
    text: [usize; 2],
    device: &Device,
) -> (Estimate, Vec<f64>, UNet) {
    let mut e = Estimate::default();
    let mut gflops = Vec::new();
    e.lines.push(format!(
        "\n{:>7} {:>14} {:>12} {:>16}",
        "width", "params", "GFLOPs/eval", "train GFLOPs"
    ));
    let mut smallest = None;
    for &w in &config.widths {
        let unet_config = family::model_config(config, w).unet(latent[0], latent[1], text[1]);
        let unet = UNet::new(&unet_config, device);
        let g = unet.cost(latent[1], latent[2], text[0]).gflops();
        let train = 3.0 * g * (config.recipe.batch_size as u64 * config.recipe.steps) as f64;
        e.train_gflops += train;
        gflops.push(g);
        e.lines.push(format!(
            "{w:>7} {:>14} {g:>12.3} {train:>16.3e}",
            unet.num_params()
        ));
        smallest.get_or_insert(unet);
    }
    (e, gflops, smallest.expect("validated: at least one width"))
}

/// The sweep's cells and their sampling compute (`gflops`: per evaluation, per width).
fn sweep_estimate(config: &StudyConfig, gflops: &[f64]) -> Estimate {
    let s = &config.sweep;
    let cells = config.cells();
    let evaluations: f64 = cells
        .iter()
        .map(|c| c.steps as f64 * if c.cfg > 1.0 { 2.0 } else { 1.0 })
        .sum();
    let mut e = Estimate {
        sample_gflops: gflops
            .iter()
            .map(|g| s.samples_per_cell as f64 * evaluations * g)
            .sum(),
        ..Estimate::default()
    };
    e.lines.push(format!(
        "\n{} sweep cells per width ({} samplers x steps {:?} x guidance {:?} x {} seeds; DPM-Solver++ up to {} steps), {} samples each",
        cells.len(),
        s.samplers.len(),
        s.steps,
        s.cfg,
        s.seeds.len(),
        s.dpm_max_steps,
        s.samples_per_cell
    ));
    e
}

/// The super-resolution finetunes and their evaluation (the SR UNet's cost is the base's: only
/// `conv_in` widens); no lines without a `[super_res]` section.
fn super_res_estimate(config: &StudyConfig, gflops: &[f64]) -> Estimate {
    let Some(sr) = &config.super_res else {
        return Estimate::default();
    };
    let sweeps = sr.evaluated_steps().len() * sr.samplers.len();
    let evaluations: f64 = sr.sample_steps.iter().map(|&s| s as f64).sum::<f64>() * sweeps as f64;
    let per_width_train = 3.0 * (sr.batch_size as u64 * sr.steps) as f64;
    let mut e = Estimate {
        train_gflops: gflops.iter().map(|g| per_width_train * g).sum(),
        sample_gflops: gflops
            .iter()
            .map(|g| sr.eval_pairs as f64 * evaluations * g)
            .sum(),
        ..Estimate::default()
    };
    e.lines.push(format!(
        "
super-resolution: every width finetuned {} steps of batch {} on {} pairs from {} ({} degradation); snapshots {:?} x {} samplers x steps {:?} on {} frozen evaluation pairs, no guidance",
        sr.steps,
        sr.batch_size,
        sr.train_pairs,
        sr.hr_source,
        format!("{:?}", sr.degradation).to_lowercase(),
        sr.evaluated_steps(),
        sr.samplers.len(),
        sr.sample_steps,
        sr.eval_pairs
    ));
    if sr.hr_source != HrSource::Study
        && let Err(err) = sr.hr_source.files()
    {
        e.problems.push(format!(
            "super_res.hr_source = \"{}\": {err} (the HR images are read from there)",
            sr.hr_source
        ));
    }
    if let Some(trunk) = sr
        .lpips_trunk
        .as_deref()
        .filter(|t| !Path::new(t).is_file())
    {
        e.problems.push(format!(
            "super_res.lpips_trunk = {trunk:?}: no such file (make it with tools/convert_lpips_trunk.py)"
        ));
    }
    e
}

/// GFLOP/s of one timed forward of `unet` (batch 8) on this machine.
fn throughput(unet: &UNet, latent: [usize; 3], text: [usize; 2], device: &Device) -> f64 {
    let batch = 8;
    let side = latent[1].min(64);
    let x = Tensor::<4>::zeros([batch, latent[0], side, side], device);
    let ctx = Tensor::<3>::zeros([batch, text[0], text[1]], device);
    let t = vec![500.0; batch];
    let _ = unet.forward(x.clone(), &t, ctx.clone());
    let t0 = Instant::now();
    let _ = values(unet.forward(x, &t, ctx));
    unet.cost(side, side, text[0]).gflops() * batch as f64 / t0.elapsed().as_secs_f64()
}

/// Which stages of the study in `out` are stored for this config.
fn stored_status(config: &StudyConfig, out: &Path, device: &Device) -> Result<String, StudyError> {
    let cx = StudyContext::open(config, out, device.clone(), &RunOptions::default())?;
    let mut text = format!("\nstored in {}:\n", out.display());
    for (name, fingerprint) in stages::fingerprints(config) {
        let state = match cx.recorded(name) {
            Some(f) if f == fingerprint => "reused",
            Some(_) => "made for another config: recomputed",
            None => "not yet run",
        };
        let _ = writeln!(text, "  {name:<15} {state}");
    }
    Ok(text)
}
