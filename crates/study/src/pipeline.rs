//! `ldmscale study`: data -> first stage -> text encoder -> latent cache -> evaluator ->
//! family -> sweep -> grids -> learning check -> report. Each stage's result is stored under
//! the output directory with the fingerprint of what it depends on, so a killed study resumes
//! where it stopped and a changed config recomputes only the stages the change reaches.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_data::Split;
use ldmscale_diffusion::{SamplerId, SamplerKind};
use ldmscale_model::text::{TextConditioner, TextEncoder};
use ldmscale_model::weights::write_atomic;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNet};
use ldmscale_pipeline::{LatentDiffusion, SamplingSpec, encode_images, encode_text};
use ldmscale_train::TrainingData;

pub use ldmscale_data::Captioned;

use crate::config::StudyConfig;
use crate::context::{RunOptions, StudyContext};
use crate::error::StudyError;
use crate::stages::data::Data;
use crate::stages::evaluator::EvaluatorStage;
use crate::stages::family::FamilyStage;
use crate::stages::first_stage::FirstStageStage;
use crate::stages::grids::{DdimProbe, GridsStage};
use crate::stages::latents::LatentsStage;
use crate::stages::learning_check::LearningCheckStage;
use crate::stages::report::ReportStage;
use crate::stages::sweep::SweepStage;
use crate::stages::text::TextStage;
use crate::stages::{self};

/// What a study run did.
#[derive(Debug)]
pub struct Summary {
    /// Cells of the config's grid stored (0 when `--only` stopped before the sweep).
    pub cells: usize,
    /// The HTML report (none when `--only` stopped before it).
    pub report: Option<PathBuf>,
    /// Wall seconds.
    pub seconds: f64,
}

/// The file recording the config of the latest run in a study directory.
pub const CONFIG_FILE: &str = "study.toml";

/// Runs (or resumes) the study in `out` on `device`.
pub fn run(
    config: &StudyConfig,
    out: &Path,
    device: &Device,
    options: &RunOptions,
) -> Result<Summary, StudyError> {
    config.validate().map_err(StudyError::Config)?;
    std::fs::create_dir_all(out).map_err(StudyError::io(out))?;
    let cx = StudyContext::open(config, out, device.clone(), options)?;
    let config_path = out.join(CONFIG_FILE);
    if !out.join(crate::context::MANIFEST).exists()
        && let Ok(text) = std::fs::read_to_string(&config_path)
    {
        let saved = StudyConfig::from_toml(&text, &config_path.display().to_string())
            .map_err(StudyError::Config)?;
        stages::adopt_legacy(&cx, &saved)?;
    }
    write_atomic(&config_path, config.to_toml().as_bytes())?;
    let mut summary = Summary {
        cells: 0,
        report: None,
        seconds: 0.0,
    };
    match run_stages(&cx, &mut summary) {
        Ok(()) | Err(StudyError::OnlyDone) => {}
        Err(e) => return Err(e),
    }
    summary.seconds = cx.started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The stages in order, each result feeding the next.
fn run_stages(cx: &StudyContext, summary: &mut Summary) -> Result<(), StudyError> {
    let data = cx.ensure(&Data)?;
    let first = cx.ensure(&FirstStageStage { data: &data })?;
    let text = cx.ensure(&TextStage { data: &data })?;
    let latents = cx.ensure(&LatentsStage {
        data: &data,
        first: &first,
        text: &text,
    })?;
    let evaluator = cx.ensure(&EvaluatorStage {
        data: &data,
        latents: &latents,
    })?;
    let family = cx.ensure(&FamilyStage {
        latents: &latents,
        evaluator: &evaluator,
        first: &first,
    })?;
    let cells = cx.ensure(&SweepStage {
        family: &family,
        latents: &latents,
        evaluator: &evaluator,
        first: &first,
    })?;
    summary.cells = cells.len();
    let probe = || DdimProbe {
        first: &first,
        latents: &latents,
        evaluator: &evaluator,
    };
    let grids = cx.ensure(&GridsStage {
        family: &family,
        cells: &cells,
        probe: probe(),
    })?;
    let learning = cx.ensure(&LearningCheckStage {
        family: &family,
        cells: &cells,
        probe: probe(),
    })?;
    let report = ReportStage {
        data: &data,
        first: &first,
        text: &text,
        evaluator: &evaluator,
        family: &family,
        cells: &cells,
        grids: &grids,
        learning: &learning,
    };
    summary.report = Some(cx.ensure(&report)?);
    Ok(())
}

pub use crate::dry_run::dry_run;

// What `ldmscale train` shares with the study: in-memory data, the text encoder, sampling.

/// The first `count` usable examples of `split` of `dataset` at `resolution` (centre crop).
pub fn load_images(
    dataset: &str,
    resolution: usize,
    split: Split,
    count: usize,
) -> Result<Captioned, String> {
    ldmscale_data::load_captioned(dataset, resolution, split, count).map_err(|e| e.to_string())
}

/// The frozen text encoder `kind` ("tiny-random", "minilm", "dir:DIR", "clip:DIR"), loaded
/// from `dir` when a previous run saved it there, else made and saved to `dir`.
pub fn text_encoder(
    kind: &str,
    dir: &Path,
    captions: &[String],
    device: &Device,
) -> Result<TextConditioner, String> {
    if let Ok(t) = TextConditioner::load(dir, None, device) {
        return Ok(t);
    }
    let spec = kind.parse()?;
    let t = stages::text::make(&spec, captions, device).map_err(|e| e.to_string())?;
    t.save(dir).map_err(|e| e.to_string())?;
    Ok(t)
}

/// Encoded examples held in memory for training.
pub struct Encoded {
    latents: Vec<f32>,
    latent_shape: [usize; 3],
    states: Vec<f32>,
    context_shape: [usize; 2],
    null: Vec<f32>,
    key: String,
}

impl TrainingData for Encoded {
    fn len(&self) -> usize {
        self.latents.len() / self.latent_shape.iter().product::<usize>()
    }
    fn latent_shape(&self) -> [usize; 3] {
        self.latent_shape
    }
    fn context_shape(&self) -> [usize; 2] {
        self.context_shape
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>), String> {
        let ls: usize = self.latent_shape.iter().product();
        let cs: usize = self.context_shape.iter().product();
        let mut l = Vec::with_capacity(indices.len() * ls);
        let mut c = Vec::with_capacity(indices.len() * cs);
        for &i in indices {
            l.extend_from_slice(&self.latents[i * ls..(i + 1) * ls]);
            c.extend_from_slice(&self.states[i * cs..(i + 1) * cs]);
        }
        let [ch, h, w] = self.latent_shape;
        let [tl, td] = self.context_shape;
        let b = indices.len();
        Ok((
            Tensor::from_data(TensorData::new(l, [b, ch, h, w]), device),
            Tensor::from_data(TensorData::new(c, [b, tl, td]), device),
        ))
    }
    fn null_context(&self, device: &Device) -> Tensor<3> {
        let [tl, td] = self.context_shape;
        Tensor::from_data(TensorData::new(self.null.clone(), [1, tl, td]), device)
    }
    fn key(&self) -> String {
        self.key.clone()
    }
}

/// Encodes images to scaled latents and captions to text states (at most 32 tokens), in memory.
pub fn encode(
    vae: &AutoencoderKL,
    vae_config: &AutoencoderKLConfig,
    text: &TextConditioner,
    examples: &Captioned,
    res: usize,
    key: String,
    device: &Device,
) -> Result<Encoded, String> {
    let length = text.encoder.max_positions().min(stages::text::MAX_TOKENS);
    let states =
        encode_text(text, &examples.captions, length, device).map_err(|e| e.to_string())?;
    let null = encode_text(text, &[String::new()], length, device).map_err(|e| e.to_string())?;
    let f = vae.downsampling_factor();
    Ok(Encoded {
        latents: encode_images(vae, vae_config, &examples.images, res, device),
        latent_shape: [vae_config.latent_channels, res / f, res / f],
        states: states.states,
        context_shape: [length, states.width],
        null: null.states,
        key,
    })
}

/// The sampler named `name` with its default options.
pub fn sampler_kind(name: &str) -> Result<SamplerKind, String> {
    name.parse::<SamplerId>()
        .map(SamplerId::kind)
        .map_err(|e| e.to_string())
}

/// Generates images for prompts `cond` and decodes them to [-1, 1]; also the evaluations.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    unet: &UNet,
    vae: &AutoencoderKL,
    vae_config: &AutoencoderKLConfig,
    sampler: &str,
    steps: u32,
    cfg: f64,
    seed: u64,
    cond: &Tensor<3>,
    null: &Tensor<3>,
    latent_shape: [usize; 3],
) -> Result<(Tensor<4>, usize), String> {
    let sampler = sampler
        .parse()
        .map_err(|e: ldmscale_diffusion::UnknownSampler| e.to_string())?;
    let model = LatentDiffusion {
        unet,
        vae,
        vae_config,
        latent_shape,
    };
    let spec = SamplingSpec {
        sampler,
        steps,
        cfg,
        seed,
    };
    let out = model
        .generate(&spec, cond, null)
        .map_err(|e| e.to_string())?;
    Ok((out.images, out.evaluations))
}
