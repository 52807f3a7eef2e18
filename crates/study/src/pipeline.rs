//! `ldmscale study`: prepare data -> first stage -> text cache -> train family -> sweep ->
//! evaluate -> analyse -> report. Every stage writes its result under the output directory
//! and is skipped when that result exists, so a killed study resumes where it stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_data::{CacheKey, Dataset, DatasetSpec, Split, SplitConfig, SplitDataset, Transform};
use ldmscale_diffusion::{
    Cfg, ConditionalModel, DdimOptions, DdpmOptions, DpmSolverOptions, NoiseSource, SamplerKind,
    SchedulerConfig, SeededNoise, sample,
};
use ldmscale_eval::{GaussianStats, frechet_distance};
use ldmscale_model::text::{TextConditioner, TextEncoder, TinyTextSpec, tiny_text_conditioner};
use ldmscale_model::vae::{load_vae, save_vae};
use ldmscale_model::weights::{WEIGHTS_FILE, load_unet, write_atomic};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNet};
use ldmscale_train::data::rng_for;
use ldmscale_train::optimizer::{AdamW, AdamWConfig};
use ldmscale_train::{ModelConfig, TrainConfig, TrainingData, params};
use rand_distr::{Distribution, StandardNormal};

use crate::bootstrap::{self, FidCi};
use crate::cell::{Cell, CellKey};
use crate::config::{FirstStage, StudyConfig};
use crate::grid::{self, EqualCostGrid, GridRow};
use crate::in_domain;
use crate::latents;
use crate::report::{ReportInputs, render};
use crate::store::{Store, shard_owns};

fn s<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

/// Captioned images of one split, as `[3, H, W]` floats in [-1, 1].
pub struct Captioned {
    /// `N x 3 x H x W` values.
    pub images: Vec<f32>,
    /// `N` captions.
    pub captions: Vec<String>,
}

fn load_split(config: &StudyConfig, split: Split, count: usize) -> Result<Captioned, String> {
    load_images(&config.dataset, config.resolution, split, count)
}

/// The first `count` usable examples of `split` of `dataset` at `resolution` (centre crop).
pub fn load_images(
    dataset: &str,
    resolution: usize,
    split: Split,
    count: usize,
) -> Result<Captioned, String> {
    let spec_text = if dataset == "shapes" {
        format!("shapes:resolution={resolution}")
    } else {
        dataset.to_string()
    };
    let spec: DatasetSpec = spec_text.parse().map_err(s)?;
    let dataset = spec.open().map_err(s)?;
    let split_config = SplitConfig {
        val_fraction: 0.1,
        salt: 0,
    };
    let data = SplitDataset::new(dataset, split, split_config).map_err(s)?;
    let transform = Transform::center(resolution as u32);
    let mut images = Vec::new();
    let mut captions = Vec::new();
    let mut index = 0;
    while captions.len() < count {
        if data.len().is_some_and(|n| index >= n) {
            break;
        }
        match data.get(index) {
            Ok(ex) => {
                images.extend(transform.apply(&ex.image, index as u64).to_chw_f32());
                captions.push(ex.caption);
            }
            Err(err) => eprintln!("warning: skipping example {index}: {err}"),
        }
        index += 1;
    }
    if captions.len() < 2 {
        return Err(format!(
            "{spec_text}: only {} usable {split:?} examples",
            captions.len()
        ));
    }
    Ok(Captioned { images, captions })
}

fn images_tensor(images: &[f32], res: usize, device: &Device) -> Tensor<4> {
    let n = images.len() / (3 * res * res);
    Tensor::from_data(TensorData::new(images.to_vec(), [n, 3, res, res]), device)
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32")
}

/// Trains the small KL autoencoder (L2 reconstruction + a small KL term, as LDM's KL-f models)
/// and sets its scaling factor to 1/std of the training latents, as Stable Diffusion did.
fn train_first_stage(
    images: &[f32],
    res: usize,
    factor: usize,
    width: usize,
    steps: u64,
    seed: u64,
    device: &Device,
) -> (AutoencoderKLConfig, AutoencoderKL, f64) {
    let mut config = AutoencoderKLConfig::small(factor, width);
    let ad = device.clone().autodiff();
    let mut model = params::seeded_init(&ad, seed, || AutoencoderKL::new(&config, &ad));
    let mut adam = AdamW::new(AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    });
    let n = images.len() / (3 * res * res);
    let all = images_tensor(images, res, device);
    let bar = progress(steps, "first stage");
    let batch = 16.min(n);
    for step in 1..=steps {
        let mut rng = rng_for(seed, step, 0xAE);
        let idx: Vec<i64> = (0..batch)
            .map(|_| rand::RngExt::random_range(&mut rng, 0..n) as i64)
            .collect();
        let idx = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(idx, [batch]), device);
        let x = all.clone().select(0, idx).autodiff();
        let posterior = model.encode(x.clone());
        let [b, c, h, w] = posterior.mode().dims();
        let noise: Vec<f32> = (0..b * c * h * w)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let z = posterior.sample(Tensor::<4>::from_data(
            TensorData::new(noise, [b, c, h, w]),
            &ad,
        ));
        let recon = model.decode(z);
        let loss = (recon - x).powi_scalar(2).mean() + posterior.kl().mean() * 1e-6;
        let mut grads =
            params::named_gradients(&model, GradientsParams::from_grads(loss.backward(), &model));
        adam.begin_step();
        let lr = 1e-3 * (step as f64 / 20.0).min(1.0);
        model = params::update(model, &mut |name, p| {
            grads.remove(name).map(|g| adam.update(name, p, g, lr))
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let model = model.valid();
    // Reconstruction PSNR and latent std over (up to) 256 training images.
    let probe = all.narrow(0, 0, n.min(256));
    let z = model.encode(probe.clone()).mode();
    let recon = model.decode(z.clone()).clamp(-1.0, 1.0);
    let mse: f32 = (recon - probe).powi_scalar(2).mean().into_scalar();
    let psnr = 10.0 * (4.0 / mse as f64).log10();
    let zv = vec_of(z);
    let mean = zv.iter().map(|&v| v as f64).sum::<f64>() / zv.len() as f64;
    let std = (zv.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / zv.len() as f64).sqrt();
    config.scaling_factor = 1.0 / std.max(1e-6);
    (config, model, psnr)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix:>14} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("template"),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Encoded examples held in memory for training.
pub struct Encoded {
    latents: Vec<f32>,
    latent_shape: [usize; 3],
    states: Vec<f32>,
    context_shape: [usize; 2],
    null: Vec<f32>,
    mask: Vec<f32>,
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

/// The frozen text encoder `kind` ("tiny-random", "minilm", "dir:DIR", "clip:DIR"), loaded
/// from `dir` when a previous run saved it there, else made (a tiny-random one over the words of
/// `captions`) and saved to `dir`.
pub fn text_encoder(
    kind: &str,
    dir: &Path,
    captions: &[String],
    device: &Device,
) -> Result<TextConditioner, String> {
    if let Ok(t) = TextConditioner::load(dir, None, device) {
        return Ok(t);
    }
    let t = match kind {
        "tiny-random" => {
            let mut made = None;
            params::seeded_init(device, 17, || {
                made = Some(tiny_text_conditioner(
                    captions,
                    &TinyTextSpec::default(),
                    device,
                ));
                made.as_ref()
                    .and_then(|r| r.as_ref().ok())
                    .map(|t| t.encoder.clone())
            });
            made.expect("built").map_err(s)?
        }
        "minilm" => {
            TextConditioner::load(&ldmscale_model::text::default_minilm_dir(), None, device)
                .map_err(|x| format!("{x} (run tools/fetch-assets.sh minilm)"))?
        }
        other => match other.strip_prefix("dir:").or(other.strip_prefix("clip:")) {
            Some(path) => TextConditioner::load(Path::new(path), None, device).map_err(s)?,
            None => {
                return Err(format!(
                    "text_encoder = {other:?}: expected tiny-random, minilm or dir:PATH"
                ));
            }
        },
    };
    t.save(dir).map_err(s)?;
    Ok(t)
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
    let length = text.encoder.max_positions().min(32);
    let width = text.encoder.hidden_size();
    let (states, mask) = encode_text(text, &examples.captions, length, device)?;
    let (null, _) = encode_text(text, &[String::new()], length, device)?;
    let mut latents = Vec::new();
    for chunk in examples.images.chunks(64 * 3 * res * res) {
        let z = vae.encode(images_tensor(chunk, res, device)).mode();
        latents.extend(vec_of(vae_config.vae_to_latents(z)));
    }
    let f = vae.downsampling_factor();
    Ok(Encoded {
        latents,
        latent_shape: [vae_config.latent_channels, res / f, res / f],
        states,
        context_shape: [length, width],
        null,
        mask,
        key,
    })
}

/// Text states of `captions`, `[N, L, D]` with padding positions zeroed, and masks `[N, L]`.
fn encode_text(
    text: &TextConditioner,
    captions: &[String],
    length: usize,
    device: &Device,
) -> Result<(Vec<f32>, Vec<f32>), String> {
    let width = text.encoder.hidden_size();
    let mut states = Vec::with_capacity(captions.len() * length * width);
    let mut masks = Vec::with_capacity(captions.len() * length);
    for chunk in captions.chunks(64) {
        let refs: Vec<&str> = chunk.iter().map(|c| c.as_str()).collect();
        let out = text.encode(&refs, device).map_err(s)?;
        let [b, l, d] = out.hidden.dims();
        let masked = out.hidden * out.mask.clone().reshape([b, l, 1]);
        let h = vec_of(masked);
        let m = vec_of(out.mask);
        for i in 0..b {
            for t in 0..length {
                if t < l {
                    states.extend_from_slice(&h[(i * l + t) * d..(i * l + t + 1) * d]);
                    masks.push(m[i * l + t]);
                } else {
                    states.extend(std::iter::repeat_n(0.0, d));
                    masks.push(0.0);
                }
            }
        }
    }
    Ok((states, masks))
}

/// The UNet seen as the conditional model guidance wraps.
struct UNetModel<'a>(&'a UNet);

impl ConditionalModel for UNetModel<'_> {
    fn forward(&mut self, x: Tensor<4>, t: Tensor<1>, context: &Tensor<3>) -> Tensor<4> {
        let t = vec_of(t);
        self.0.forward(x, &t, context.clone())
    }
}

/// The sampler named in a study config.
pub fn sampler_kind(name: &str) -> Result<SamplerKind, String> {
    Ok(match name {
        "ddim" => SamplerKind::Ddim(DdimOptions::default()),
        "ddpm" => SamplerKind::Ddpm(DdpmOptions::default()),
        "dpmpp-2m" => SamplerKind::DpmSolver(DpmSolverOptions::default()),
        "dpmpp-3m" => SamplerKind::DpmSolver(DpmSolverOptions {
            solver_order: 3,
            ..DpmSolverOptions::default()
        }),
        other => return Err(format!("unknown sampler {other:?}")),
    })
}

/// Generates images for prompts `cond` and decodes them to [-1, 1].
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
    let device = cond.device();
    let [n, _, _] = cond.dims();
    let [c, h, w] = latent_shape;
    let mut images = Vec::new();
    let mut evaluations = 0;
    for start in (0..n).step_by(32) {
        let len = 32.min(n - start);
        let mut sampler_impl = sampler_kind(sampler)?
            .build(&SchedulerConfig::sd(), steps as usize)
            .map_err(s)?;
        let mut noise = SeededNoise::new(seed.wrapping_mul(1000).wrapping_add(start as u64));
        let init = noise.noise([len, c, h, w], &device).map_err(s)?;
        let chunk = cond.clone().narrow(0, start, len);
        let mut guided = Cfg::new(UNetModel(unet), chunk, null.clone(), cfg as f32).map_err(s)?;
        let out = sample(sampler_impl.as_mut(), &mut guided, init, &mut noise, None).map_err(s)?;
        evaluations = out.evaluations;
        images.push(
            vae.decode(vae_config.latents_to_vae(out.latents))
                .clamp(-1.0, 1.0),
        );
    }
    Ok((Tensor::cat(images, 0), evaluations))
}

/// What FID is computed on: the in-domain CLIP's image features, or the FID Inception's pool3
/// features (pytorch-fid mode) when the study asks for them and the weights are present.
enum FidFeatures<'a> {
    InDomain(&'a in_domain::InDomainClip),
    Inception(Box<ldmscale_eval::FidExtractor>),
}

impl FidFeatures<'_> {
    /// Features `[N, dim]` (row-major) of images in [-1, 1], `[N, 3, H, W]`, and `dim`.
    fn features(&self, images: Tensor<4>) -> Result<(Vec<f32>, usize), String> {
        match self {
            FidFeatures::InDomain(clip) => {
                let f = clip.image_features(images);
                let [_, d] = f.dims();
                Ok((vec_of(f), d))
            }
            FidFeatures::Inception(extractor) => {
                let [_, _, h, w] = images.dims();
                // Quantised to 8 bits, as images are saved before pytorch-fid reads them.
                let rgb = vec_of(images)
                    .chunks(3 * h * w)
                    .map(|chw| ldmscale_eval::RgbImage::from_signed_chw(w, h, chw))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(s)?;
                Ok((extractor.features(&rgb), ldmscale_eval::FEATURE_DIM))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            FidFeatures::InDomain(_) => format!(
                "in-domain CLIP image features ({} dims)",
                in_domain::FEATURE_DIM
            ),
            FidFeatures::Inception(_) => "FID Inception pool3 (2048 dims), pytorch-fid mode".into(),
        }
    }
}

/// The reference set's statistics and features, with what cells are measured against it.
struct Evaluator<'a> {
    features: FidFeatures<'a>,
    reference: GaussianStats,
    reference_features: Vec<f32>,
    dim: usize,
    bootstrap: u32,
}

impl Evaluator<'_> {
    /// FID of `images` against the reference, without an interval.
    fn fid_point(&self, images: Tensor<4>) -> Result<f64, String> {
        let (generated, d) = self.features.features(images)?;
        let stats = GaussianStats::from_features(&generated, d).map_err(s)?;
        frechet_distance(&stats, &self.reference).map_err(s)
    }

    /// FID of `images` against the reference, with its bootstrap interval (replicates seeded
    /// by `seed`) when the study asks for one; also the features.
    fn fid(&self, images: Tensor<4>, seed: u64) -> Result<(f64, Option<FidCi>), String> {
        let (generated, d) = self.features.features(images)?;
        let stats = GaussianStats::from_features(&generated, d).map_err(s)?;
        let fid = frechet_distance(&stats, &self.reference).map_err(s)?;
        let ci = if self.bootstrap >= 2 {
            Some(bootstrap::fid_interval(
                &generated,
                &self.reference_features,
                self.dim,
                fid,
                self.bootstrap as usize,
                seed,
            )?)
        } else {
            None
        };
        Ok((fid, ci))
    }
}

/// FNV-1a of a text: a seed stable across platforms and releases.
fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Inception reference statistics and features are cached per dataset, split, resolution,
/// count and mode under `$LDMSCALE_CACHE/stats/` (they do not depend on the study); in-domain
/// ones live in the study directory (they depend on its trained encoder).
fn reference_stats(
    features: &FidFeatures<'_>,
    config: &StudyConfig,
    out: &Path,
    n_val: usize,
    images: Tensor<4>,
) -> Result<(GaussianStats, Vec<f32>, usize), String> {
    let path = match features {
        FidFeatures::InDomain(_) => out.join("eval").join("reference_in_domain.npz"),
        FidFeatures::Inception(_) => {
            let cache = std::env::var_os("LDMSCALE_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ldmscale"))
                })
                .unwrap_or_else(|| PathBuf::from(".cache/ldmscale"));
            let name: String = format!(
                "{}-val-{}px-{}-pytorch-fid.npz",
                config.dataset, config.resolution, n_val
            )
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
            cache.join("stats").join(name)
        }
    };
    let features_path = path.with_extension("features.npy");
    // The in-domain encoder is retrained on resume (deterministically), so its cache is only
    // valid for that encoder: it is rewritten every run, and read by nobody else.
    if matches!(features, FidFeatures::Inception(_))
        && let Ok(stats) = ldmscale_eval::npz::read_stats(&path)
        && let Ok(bytes) = std::fs::read(&features_path)
        && let Ok(array) = ldmscale_eval::npz::parse_npy(&bytes)
        && array.shape.len() == 2
        && array.shape[1] == stats.dim()
    {
        let d = stats.dim();
        return Ok((stats, array.data.iter().map(|&v| v as f32).collect(), d));
    }
    let (feats, d) = features.features(images)?;
    let stats = GaussianStats::from_features(&feats, d).map_err(s)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    ldmscale_eval::npz::write_stats(&path, &stats).map_err(s)?;
    write_atomic(
        &features_path,
        &ldmscale_eval::npz::encode_npy_f32(&[feats.len() / d, d], &feats),
    )
    .map_err(s)?;
    Ok((stats, feats, d))
}

/// What a study run did.
#[derive(Debug)]
pub struct Summary {
    /// Cells stored.
    pub cells: usize,
    /// The HTML report.
    pub report: PathBuf,
    /// Wall seconds.
    pub seconds: f64,
}

/// Runs (or resumes) the study in `out`. `shard = Some((i, n))` measures only the sweep cells
/// shard i of n owns (train the family once, then run shards in parallel and merge stores).
pub fn run(
    config: &StudyConfig,
    out: &Path,
    shard: Option<(usize, usize)>,
) -> Result<Summary, String> {
    config.validate()?;
    let start = Instant::now();
    let device = Device::flex();
    std::fs::create_dir_all(out).map_err(|x| format!("{}: {x}", out.display()))?;
    let config_path = out.join("study.toml");
    if let Ok(text) = std::fs::read_to_string(&config_path) {
        let saved = StudyConfig::from_toml(&text, &config_path.display().to_string())?;
        if &saved != config {
            return Err(format!(
                "{}: this directory holds a study with another config; use a new --out directory",
                config_path.display()
            ));
        }
    }
    write_atomic(&config_path, config.to_toml().as_bytes()).map_err(s)?;
    let res = config.resolution;

    // 1. Data.
    eprintln!("[1/7] data: {} at {res}x{res}", config.dataset);
    let train_split = load_split(config, Split::Train, config.train_examples)?;
    let val_split = load_split(config, Split::Val, config.val_examples)?;

    // 2. First stage.
    let vae_dir = out.join("first_stage");
    let (vae_config, vae, psnr) = match (&config.first_stage, load_vae(&vae_dir, &device)) {
        (_, Ok((c, m))) => {
            let psnr = std::fs::read_to_string(vae_dir.join("psnr.txt"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(f64::NAN);
            (c, m, psnr)
        }
        (FirstStage::Pretrained { path }, Err(_)) => {
            let (c, m) = load_vae(Path::new(path), &device).map_err(s)?;
            (c, m, f64::NAN)
        }
        (
            FirstStage::Train {
                factor,
                width,
                steps,
                ..
            },
            Err(_),
        ) => {
            eprintln!("[2/7] first stage: training a KL-f{factor} autoencoder ({steps} steps)");
            let (c, m, psnr) = train_first_stage(
                &train_split.images,
                res,
                *factor,
                *width,
                *steps,
                0,
                &device,
            );
            save_vae(&vae_dir, &c, &m).map_err(s)?;
            write_atomic(&vae_dir.join("psnr.txt"), format!("{psnr}\n").as_bytes()).map_err(s)?;
            (c, m, psnr)
        }
    };

    // 3. Text encoder and the encoded training set, in the on-disk latent cache.
    let text_dir = out.join("text_encoder");
    let text = text_encoder(
        &config.text_encoder,
        &text_dir,
        &train_split.captions,
        &device,
    )?;
    let length = text.encoder.max_positions().min(32);
    let width = text.encoder.hidden_size();
    let f = vae.downsampling_factor();
    let latent_shape = [vae_config.latent_channels, res / f, res / f];
    let n_train = train_split.captions.len();
    let vae_weights = match &config.first_stage {
        FirstStage::Pretrained { path } if !vae_dir.join(WEIGHTS_FILE).exists() => {
            Path::new(path).join(WEIGHTS_FILE)
        }
        _ => vae_dir.join(WEIGHTS_FILE),
    };
    let text_weights = text_dir.join(ldmscale_model::text::bert::TRANSFORMERS_WEIGHTS_FILE);
    let hash = |p: &Path| ldmscale_data::file_sha256(p).map_err(s);
    let cache_key = CacheKey {
        dataset: config.dataset.clone(),
        split: format!("train (val fraction 0.1, salt 0), first {n_train} usable examples"),
        resolution: [res as u32, res as u32],
        crop: ldmscale_data::Crop::Center,
        image_encoder: match &config.first_stage {
            FirstStage::Train { .. } => format!("KL-f{f} trained by the study"),
            FirstStage::Pretrained { path } => format!("KL-f{f} from {path}"),
        },
        image_encoder_hash: hash(&vae_weights)?,
        text_encoder: config.text_encoder.clone(),
        text_encoder_hash: hash(&text_weights)?,
        latent_shape,
        text_shape: [length, width],
        scaling_factor: vae_config.scaling_factor as f32,
        dtype: ldmscale_data::StorageDtype::F32,
    };
    let cache_dir = out.join("latents").join("train");
    let (cache, origin) =
        latents::open_or_build(&cache_dir, &cache_key, n_train, 256, |start, n| {
            eprintln!(
                "[3/7] encoding training images and captions {start}..{}",
                start + n
            );
            let part = Captioned {
                images: train_split.images[start * 3 * res * res..(start + n) * 3 * res * res]
                    .to_vec(),
                captions: train_split.captions[start..start + n].to_vec(),
            };
            let e = encode(&vae, &vae_config, &text, &part, res, String::new(), &device)?;
            Ok((
                e.latents,
                e.states,
                e.mask.iter().map(|&m| (m > 0.5) as u8).collect(),
            ))
        })?;
    match &origin {
        latents::CacheOrigin::Reused => {
            eprintln!("[3/7] latent cache {} reused", cache_dir.display())
        }
        latents::CacheOrigin::Rebuilt { mismatch } => eprintln!(
            "[3/7] latent cache {} was built for another setting ({mismatch}); rebuilt",
            cache_dir.display()
        ),
        latents::CacheOrigin::Built { .. } => {}
    }
    let all: Vec<usize> = (0..n_train).collect();
    let stored = cache.batch(&all).map_err(s)?;
    let train_states = stored.text_states;
    let train_mask: Vec<f32> = stored.text_mask.iter().map(|&m| m as f32).collect();
    let (val_states, val_mask) = encode_text(&text, &val_split.captions, length, &device)?;
    let (null, _) = encode_text(&text, &[String::new()], length, &device)?;
    let data = latents::CachedTrainingData {
        cache,
        null: null.clone(),
        // As before the cache, so checkpoints of earlier runs still resume.
        key: format!(
            "{}@{res} vae:{} text:{}",
            config.dataset, vae_config.scaling_factor, config.text_encoder
        ),
    };

    // 5. Evaluator: in-domain CLIP on the training pairs, reference statistics on val images.
    eprintln!("[5/7] evaluator: in-domain CLIP");
    let held = (n_train / 8).clamp(2, 64);
    let clip = in_domain::train(
        &images_tensor(&train_split.images, res, &device),
        &Tensor::from_data(
            TensorData::new(train_states, [n_train, length, width]),
            &device,
        ),
        &Tensor::from_data(TensorData::new(train_mask, [n_train, length]), &device),
        held,
        300,
        64,
        0,
        &device,
    );
    let n_val = val_split.captions.len();
    let val_images = images_tensor(&val_split.images, res, &device);
    let features = match config.fid_features.as_str() {
        "inception" => FidFeatures::Inception(Box::new(
            ldmscale_eval::FidExtractor::load(
                &ldmscale_eval::default_inception_path(),
                ldmscale_eval::FidMode::PytorchFid,
                &device,
            )
            .map_err(|e| {
                format!("{e} (fid_features = \"inception\" needs tools/fetch-assets.sh inception)")
            })?,
        )),
        _ => FidFeatures::InDomain(&clip.model),
    };
    let (reference, reference_features, dim) =
        reference_stats(&features, config, out, n_val, val_images)?;
    let evaluator = Evaluator {
        features,
        reference,
        reference_features,
        dim,
        bootstrap: config.sweep.bootstrap,
    };
    let val_states_t =
        Tensor::<3>::from_data(TensorData::new(val_states, [n_val, length, width]), &device);
    let val_mask_t = Tensor::<2>::from_data(TensorData::new(val_mask, [n_val, length]), &device);
    let null_t = Tensor::<3>::from_data(TensorData::new(null, [1, length, width]), &device);
    let per_cell = (config.sweep.samples_per_cell as usize).min(n_val);

    // 4. The family.
    let mut model_dirs = Vec::new();
    for &w in &config.widths {
        let train_config = TrainConfig {
            model: ModelConfig {
                family: if config.family == "paper" {
                    ldmscale_train::Family::Paper
                } else {
                    ldmscale_train::Family::Small
                },
                width: w,
                heads: config.heads,
                norm_groups: config.norm_groups,
            },
            steps: config.recipe.steps,
            batch_size: config.recipe.batch_size,
            grad_accum: 1,
            learning_rate: config.recipe.learning_rate,
            warmup_steps: config.recipe.warmup_steps,
            lr_schedule: ldmscale_train::optimizer::LrSchedule::Constant,
            adamw: AdamWConfig::default(),
            grad_clip: Some(1.0),
            ema: config
                .recipe
                .ema_max_decay
                .map(|d| ldmscale_train::ema::EmaConfig {
                    max_decay: d,
                    ..Default::default()
                }),
            text_dropout: config.recipe.text_dropout,
            objective: ldmscale_train::Objective::Epsilon,
            snr_gamma: None,
            seed: 0,
            checkpoint_every: (config.recipe.steps / 4).max(1),
            keep_last: 1,
            log_every: 10,
            eval_every: config.recipe.eval_every,
            devices: Vec::new(),
        };
        let dir = out.join("models").join(format!("w{w}"));
        eprintln!("[4/7] training width {w} ({} steps)", config.recipe.steps);
        // Fig. 3: FID of a small sample set during training, against training compute.
        let eval_log = dir.join("eval.jsonl");
        let eval_n = per_cell.min(32);
        let eval_cfg = config.sweep.cfg.iter().copied().fold(1.0f64, |a, b| {
            if (b - 3.0).abs() < (a - 3.0).abs() {
                b
            } else {
                a
            }
        });
        let cond = val_states_t.clone().narrow(0, 0, eval_n);
        let mut hook = |unet: &UNet, state: &ldmscale_train::TrainState| -> Result<(), String> {
            let (images, _) = generate(
                unet,
                &vae,
                &vae_config,
                "ddim",
                8,
                eval_cfg,
                99,
                &cond,
                &null_t,
                latent_shape,
            )?;
            let fid = evaluator.fid_point(images)?;
            let line = serde_json::json!({
                "step": state.step,
                "normalized_cost_x_iterations": state.normalized_cost_x_iterations,
                "train_gflops": state.train_gflops,
                "fid": fid,
            });
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&eval_log)
                .map_err(s)?;
            writeln!(f, "{line}").map_err(s)
        };
        let summary = ldmscale_train::train_with_hook(
            &train_config,
            &data,
            &dir,
            &device,
            true,
            Some(&mut hook),
        )?;
        model_dirs.push((w, summary.model_dirs.last().cloned().expect("a model dir")));
    }

    // 6. Sweep.
    let store_path = match shard {
        Some((i, n)) => out.join(format!("results.shard{i}of{n}.sqlite")),
        None => out.join("results.sqlite"),
    };
    let mut store = Store::open(&store_path).map_err(s)?;
    let cells = config.cells();
    let bar = progress((cells.len() * model_dirs.len()) as u64, "sweep");
    for (w, dir) in &model_dirs {
        let (unet_config, unet) = load_unet(dir, &device).map_err(s)?;
        let _ = unet_config;
        let gflops = unet.cost(latent_shape[1], latent_shape[2], length).gflops();
        let params = unet.num_params() as u64;
        let cond = val_states_t.clone().narrow(0, 0, per_cell);
        let text_emb = clip
            .model
            .embed_text(cond.clone(), val_mask_t.clone().narrow(0, 0, per_cell));
        for (sampler, steps, cfg, seed) in &cells {
            let key = CellKey {
                width: *w as u32,
                sampler: sampler.clone(),
                steps: *steps,
                cfg_milli: (cfg * 1000.0).round() as i64,
                seed: *seed,
            };
            bar.inc(1);
            if shard.is_some_and(|(i, n)| !shard_owns(&key, i, n))
                || store.contains(&key).map_err(s)?
            {
                continue;
            }
            bar.set_message(format!("w{w} {sampler} x{steps} cfg {cfg}"));
            let t0 = Instant::now();
            let (images, evaluations) = generate(
                &unet,
                &vae,
                &vae_config,
                sampler,
                *steps,
                *cfg,
                *seed,
                &cond,
                &null_t,
                latent_shape,
            )?;
            let wall = t0.elapsed().as_secs_f64();
            let (fid, fid_ci) = evaluator.fid(images.clone(), stable_hash(&format!("{key:?}")))?;
            let cos: f32 = (clip.model.embed_images(images) * text_emb.clone())
                .sum_dim(1)
                .mean()
                .into_scalar();
            store
                .insert(&Cell {
                    width: *w as u32,
                    params,
                    sampler: sampler.clone(),
                    steps: *steps,
                    cfg: *cfg,
                    seed: *seed,
                    n_samples: per_cell as u32,
                    fid,
                    fid_ci,
                    clip: None,
                    // Unclamped, unlike torchmetrics' CLIP score: an in-domain encoder's cosines centre
                    // near zero and a negative mean is information, not noise.
                    in_domain_clip: Some(100.0 * cos as f64),
                    cmmd: None,
                    evaluations: evaluations as u64,
                    gflops_per_eval: gflops,
                    wall_seconds: wall,
                })
                .map_err(s)?;
        }
    }
    bar.finish_and_clear();

    // 7. Report.
    eprintln!("[7/7] report");
    let stored = store.cells().map_err(s)?;
    let optimal = crate::analysis::optimal_cfg(&crate::analysis::settings(&stored));
    let samples = Samples {
        vae: &vae,
        vae_config: &vae_config,
        prompts: val_states_t.clone().narrow(0, 0, per_cell),
        null: &null_t,
        latent_shape,
        evaluator: &evaluator,
    };
    let grids_dir = out.join("grids");
    let mut equal_cost = Vec::new();
    for &budget in &config.sweep.grid_budgets {
        equal_cost.push(equal_cost_grid(
            budget,
            &model_dirs,
            &optimal,
            &samples,
            &grids_dir,
            length,
            &device,
        )?);
    }
    let learning = learning_check(config, &model_dirs, &optimal, &samples, &grids_dir, &device)?;
    let inputs = ReportInputs {
        title: format!(
            "{} preset: {} at {res}x{res}, widths {:?}",
            config.name, config.dataset, config.widths
        ),
        facts: vec![
            (
                "dataset".into(),
                format!(
                    "{} ({} train / {} val examples)",
                    config.dataset, n_train, n_val
                ),
            ),
            (
                "first stage".into(),
                format!(
                    "KL-f{f} autoencoder, {} latent channels, scaling factor {:.4}, reconstruction PSNR {psnr:.2} dB",
                    vae_config.latent_channels, vae_config.scaling_factor
                ),
            ),
            (
                "text encoder".into(),
                format!("{} ({width} wide, {length} tokens)", config.text_encoder),
            ),
            (
                "training".into(),
                format!(
                    "{} steps of batch {} per width, lr {}",
                    config.recipe.steps, config.recipe.batch_size, config.recipe.learning_rate
                ),
            ),
            (
                "in-domain CLIP".into(),
                format!(
                    "held-out retrieval accuracy {:.1}% (chance {:.1}%)",
                    100.0 * clip.retrieval_accuracy,
                    100.0 * clip.chance
                ),
            ),
            ("learning check".into(), learning),
            (
                "wall time".into(),
                format!("{:.0} s", start.elapsed().as_secs_f64()),
            ),
        ],
        fid_features: format!(
            "{}, {per_cell} samples per cell vs {n_val} held-out images",
            evaluator.features.describe()
        ),
        grids: Vec::new(),
        equal_cost,
        training_curves: model_dirs
            .iter()
            .filter_map(|(w, dir)| {
                let log = dir.parent().expect("a run directory").join("eval.jsonl");
                training_curve(&log).map(|c| (*w as u32, c))
            })
            .collect(),
    };
    let (html, md) = render(&stored, &inputs)?;
    let report_dir = out.join("report");
    std::fs::create_dir_all(&report_dir).map_err(s)?;
    write_atomic(&report_dir.join("report.html"), html.as_bytes()).map_err(s)?;
    write_atomic(&report_dir.join("report.md"), md.as_bytes()).map_err(s)?;
    Ok(Summary {
        cells: stored.len(),
        report: report_dir.join("report.html"),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// (normalised cost x iterations, FID) points of a run's evaluation log, the last entry per step
/// winning (a resumed run re-evaluates the steps after its checkpoint).
fn training_curve(path: &Path) -> Option<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut by_step = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        by_step.insert(
            v["step"].as_u64()?,
            (
                v["normalized_cost_x_iterations"].as_f64()?,
                v["fid"].as_f64()?,
            ),
        );
    }
    (!by_step.is_empty()).then(|| by_step.into_values().collect())
}

/// What sampling for the report needs: the decoder, prompts, null context and the evaluator.
struct Samples<'a> {
    vae: &'a AutoencoderKL,
    vae_config: &'a AutoencoderKLConfig,
    /// The sweep's prompts (`per_cell` of them).
    prompts: Tensor<3>,
    null: &'a Tensor<3>,
    latent_shape: [usize; 3],
    evaluator: &'a Evaluator<'a>,
}

impl Samples<'_> {
    /// Samples every prompt with DDIM and the sweep's seed 0; the images, their FID and interval.
    fn measure(
        &self,
        unet: &UNet,
        steps: u32,
        cfg: f64,
        bootstrap_seed: u64,
    ) -> Result<(Tensor<4>, f64, Option<FidCi>), String> {
        let (images, _) = generate(
            unet,
            self.vae,
            self.vae_config,
            "ddim",
            steps,
            cfg,
            0,
            &self.prompts,
            self.null,
            self.latent_shape,
        )?;
        let (fid, ci) = self.evaluator.fid(images.clone(), bootstrap_seed)?;
        Ok((images, fid, ci))
    }
}

/// Columns of the sample grids.
const GRID_COLUMNS: usize = 8;

/// Fig. 10: one row of samples per width, every width at the DDIM step count that spends
/// `budget` normalised cost x steps (the largest width's evaluations), at its own optimal
/// guidance, with the same prompts and noise; FID of each row's full sample set. Kept in
/// `dir` (JSON + PNG) so a resumed study does not sample it again.
#[allow(clippy::too_many_arguments)]
fn equal_cost_grid(
    budget: f64,
    models: &[(usize, PathBuf)],
    optimal: &[crate::analysis::Setting],
    samples: &Samples<'_>,
    dir: &Path,
    tokens: usize,
    device: &Device,
) -> Result<EqualCostGrid, String> {
    let json_path = dir.join(format!("equal-cost-{budget}.json"));
    let png_path = dir.join(format!("equal-cost-{budget}.png"));
    if let (Ok(text), Ok(png)) = (
        std::fs::read_to_string(&json_path),
        std::fs::read(&png_path),
    ) && let Ok(mut grid) = serde_json::from_str::<EqualCostGrid>(&text)
    {
        grid.png = png;
        return Ok(grid);
    }
    eprintln!("[7/7] samples at equal cost: {budget} normalised cost x steps");
    let [_, h, w] = samples.latent_shape;
    let mut unets = Vec::new();
    for (width, model_dir) in models {
        let (_, unet) = load_unet(model_dir, device).map_err(s)?;
        let gflops = unet.cost(h, w, tokens).gflops();
        unets.push((*width as u32, unet, gflops));
    }
    let largest = unets.iter().map(|u| u.2).fold(0.0, f64::max);
    let mut rows = Vec::new();
    let mut tiles = Vec::new();
    for (width, unet, gflops) in &unets {
        let normalised = gflops / largest;
        // The guidance the sweep found best near the step count a guided run would get.
        let guided_steps = grid::steps_for_budget(budget, normalised, true);
        let cfg = grid::optimal_guidance(optimal, *width, "ddim", guided_steps).unwrap_or(1.0);
        let guided = cfg > 1.0;
        let steps = grid::steps_for_budget(budget, normalised, guided);
        let (images, fid, fid_ci) = samples.measure(
            unet,
            steps,
            cfg,
            stable_hash(&format!("grid {budget} {width}")),
        )?;
        let [n, ..] = images.dims();
        let cols = GRID_COLUMNS.min(n);
        tiles.extend(vec_of(images.narrow(0, 0, cols)));
        let evaluations = steps as f64 * if guided { 2.0 } else { 1.0 };
        rows.push(GridRow {
            width: *width,
            steps,
            cfg,
            cost_gflops: evaluations * gflops,
            normalised: evaluations * normalised,
            fid,
            fid_ci,
            samples: n as u32,
        });
    }
    let res = samples.vae.downsampling_factor() * h;
    let cols = tiles.len() / (rows.len() * 3 * res * res);
    // Tiles of at least 96 pixels, so small images stay visible and a row holds its label.
    let scale = 96usize.div_ceil(res).max(1);
    let gap = 4;
    let png = grid::tiles_png(&tiles, rows.len(), cols, res, scale, gap)?;
    let grid = EqualCostGrid {
        budget,
        sampler: "ddim".into(),
        rows,
        tile_px: (res * scale) as u32,
        gap_px: gap as u32,
        png,
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_atomic(&png_path, &grid.png).map_err(s)?;
    write_atomic(
        &json_path,
        serde_json::to_string_pretty(&grid).map_err(s)?.as_bytes(),
    )
    .map_err(s)?;
    Ok(grid)
}

/// Whether the models learned: the largest width's FID at 50 DDIM steps (its optimal guidance)
/// against the same width untrained (seeded initialisation, as training starts), as a sentence.
/// Kept in `dir` so a resumed study does not sample it again.
fn learning_check(
    config: &StudyConfig,
    models: &[(usize, PathBuf)],
    optimal: &[crate::analysis::Setting],
    samples: &Samples<'_>,
    dir: &Path,
    device: &Device,
) -> Result<String, String> {
    let path = dir.join("learning-check.txt");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().to_string());
    }
    let Some((width, model_dir)) = models.iter().max_by_key(|(w, _)| *w) else {
        return Ok("no model trained".into());
    };
    eprintln!("[7/7] learning check: width {width}, trained and untrained, 50 DDIM steps");
    let steps = 50;
    let cfg = grid::optimal_guidance(optimal, *width as u32, "ddim", steps).unwrap_or(1.0);
    let (unet_config, trained) = load_unet(model_dir, device).map_err(s)?;
    let untrained = params::seeded_init(device, 0, || UNet::new(&unet_config, device));
    let (_, fid_trained, ci_trained) = samples.measure(&trained, steps, cfg, 1)?;
    let (_, fid_untrained, ci_untrained) = samples.measure(&untrained, steps, cfg, 2)?;
    let ci = |c: Option<FidCi>| c.map(|c| format!(" {}", c.text())).unwrap_or_default();
    let text = format!(
        "{width}-filter model, DDIM {steps} steps, guidance {cfg:.1}: FID {fid_trained:.2}{} after {} training steps vs {fid_untrained:.2}{} untrained (trained {:.0}% lower)",
        ci(ci_trained),
        config.recipe.steps,
        ci(ci_untrained),
        100.0 * (1.0 - fid_trained / fid_untrained)
    );
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_atomic(&path, format!("{text}\n").as_bytes()).map_err(s)?;
    Ok(text)
}

/// The plan of a study with its estimated compute, without running anything heavy: models
/// are counted from lazily built UNets, throughput from one timed forward on this machine.
pub fn dry_run(config: &StudyConfig) -> Result<String, String> {
    config.validate()?;
    use std::fmt::Write as _;
    let (factor, latent_channels) = match &config.first_stage {
        FirstStage::Train {
            factor,
            latent_channels,
            ..
        } => (*factor, *latent_channels),
        FirstStage::Pretrained { .. } => (8, 4),
    };
    let (tokens, text_width) = match config.text_encoder.as_str() {
        "tiny-random" => (32, TinyTextSpec::default().width),
        "minilm" => (32, 384),
        _ => (77, 1024),
    };
    let side = config.resolution / factor;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "study {:?}: {} at {}x{}, latents {latent_channels}x{side}x{side}, text {tokens}x{text_width}",
        config.name, config.dataset, config.resolution, config.resolution
    );
    let mut problems = Vec::new();
    if let FirstStage::Pretrained { path } = &config.first_stage
        && !Path::new(path).join("config.json").exists()
    {
        problems.push(format!("first_stage.path {path:?}: no config.json (a diffusers AutoencoderKL directory is needed)"));
    }
    if let Some(dir) = config
        .text_encoder
        .strip_prefix("dir:")
        .or(config.text_encoder.strip_prefix("clip:"))
        && !Path::new(dir).join("config.json").exists()
    {
        problems.push(format!(
            "text_encoder {dir:?}: no config.json (a transformers directory is needed)"
        ));
    }
    if let Some(rest) = config.dataset.strip_prefix("coco:") {
        for part in rest.split(':') {
            if !Path::new(part).exists() {
                problems.push(format!(
                    "dataset: {part:?} does not exist (COCO captions json and image folder)"
                ));
            }
        }
    }
    let device = Device::flex();
    let cells = config.cells();
    let samples = config.sweep.samples_per_cell as f64;
    let mut total_train = 0.0;
    let mut total_sample = 0.0;
    let _ = writeln!(
        out,
        "\n{:>7} {:>14} {:>12} {:>16} {:>16}",
        "width", "params", "GFLOPs/eval", "train GFLOPs", "sweep GFLOPs"
    );
    let mut smallest: Option<UNet> = None;
    for &w in &config.widths {
        let model = ModelConfig {
            family: if config.family == "paper" {
                ldmscale_train::Family::Paper
            } else {
                ldmscale_train::Family::Small
            },
            width: w,
            heads: config.heads,
            norm_groups: config.norm_groups,
        };
        let unet = UNet::new(&model.unet(latent_channels, side, text_width), &device);
        let g = unet.cost(side, side, tokens).gflops();
        let train = 3.0 * g * (config.recipe.batch_size as u64 * config.recipe.steps) as f64;
        let sweep: f64 = cells
            .iter()
            .map(|(_, steps, cfg, _)| {
                samples * *steps as f64 * if *cfg > 1.0 { 2.0 } else { 1.0 } * g
            })
            .sum();
        total_train += train;
        total_sample += sweep;
        let _ = writeln!(
            out,
            "{w:>7} {:>14} {g:>12.3} {train:>16.3e} {sweep:>16.3e}",
            unet.num_params()
        );
        if smallest.is_none() {
            smallest = Some(unet);
        }
    }
    let _ = writeln!(
        out,
        "\n{} sweep cells per width ({} samplers x steps {:?} x guidance {:?} x {} seeds; DPM-Solver++ up to {} steps), {} samples each",
        cells.len(),
        config.sweep.samplers.len(),
        config.sweep.steps,
        config.sweep.cfg,
        config.sweep.seeds.len(),
        config.sweep.dpm_max_steps,
        config.sweep.samples_per_cell
    );
    // Throughput: one timed forward of the smallest model (parameters initialised now).
    let unet = smallest.expect("widths");
    let batch = 8;
    let x = Tensor::<4>::zeros(
        [batch, latent_channels, side.min(64), side.min(64)],
        &device,
    );
    let ctx = Tensor::<3>::zeros([batch, tokens, text_width], &device);
    let t = vec![500.0; batch];
    let _ = unet.forward(x.clone(), &t, ctx.clone());
    let t0 = Instant::now();
    let _ = vec_of(unet.forward(x, &t, ctx));
    let gflops_per_s = unet.cost(side.min(64), side.min(64), tokens).gflops() * batch as f64
        / t0.elapsed().as_secs_f64();
    let hours = |g: f64| g / gflops_per_s / 3600.0;
    let _ = writeln!(
        out,
        "\nestimated compute: training {:.3e} GFLOPs, sweep {:.3e} GFLOPs; at {gflops_per_s:.1} GFLOP/s measured here: {:.2} h training + {:.2} h sampling (evaluation and the first stage extra)",
        total_train,
        total_sample,
        hours(total_train),
        hours(total_sample)
    );
    if problems.is_empty() {
        let _ = writeln!(out, "inputs: all present");
    } else {
        let _ = writeln!(
            out,
            "inputs missing, the study cannot run until they are provided:"
        );
        for p in &problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    Ok(out)
}
