//! `ldmscale distill`: distil a text-to-image teacher into a few-step student on a run file's
//! data, resumable exactly like `train`. Methods: `lcm` (latent consistency distillation),
//! `codi` (CoDi-style consistency distillation with guidance inside the loss; the student the
//! whole UNet or, `--student adapter`, an encoder adapter on the frozen teacher), `guided` and
//! `progressive` (guided distillation's two stages).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ldmscale_model::UNetConfig;
use ldmscale_model::weights::load_unet;
use ldmscale_train::tasks::codi_distill::EVALUATIONS_PER_STEP;
use ldmscale_train::tasks::{
    CodiOptions, CodiStudent, GuidedDistill, GuidedOptions, LcmOptions, ProgressiveDistill,
    ProgressiveOptions,
};
use ldmscale_train::{CodiDistill, LcmDistill, RunSummary, TrainConfig};
use serde::Deserialize;

use crate::device::DeviceArgs;
use crate::finetune_sr::model_table;
use crate::launch::{LaunchArgs, Rank};
use crate::train::{DataConfig, encode_data};

/// The distillation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Latent consistency distillation (LCM): the student reads the guidance as an
    /// embedding and samples with `sample --sampler lcm`.
    Lcm,
    /// CoDi-style consistency distillation: the whole UNet, guided inside the loss; the
    /// student samples with classifier-free guidance (2 evaluations per step).
    Codi,
    /// Guided distillation, stage 1: a student reading the guidance as an embedding learns
    /// the teacher's CFG output (samples with `sample --sampler guided-ddim`).
    Guided,
    /// Guided distillation, stage 2: one round of progressive distillation of a
    /// w-conditioned teacher (a `guided` or `progressive` student) to half its steps.
    Progressive,
}

/// What a CoDi run trains (`--student`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Student {
    /// The whole UNet, initialised as the teacher.
    Unet,
    /// A ControlNet-style encoder adapter on the frozen teacher (saved as `unet/adapter/`
    /// beside the teacher's own files; its parameters and GFLOPs count in the cost).
    Adapter,
}

impl From<Student> for CodiStudent {
    fn from(student: Student) -> Self {
        match student {
            Student::Unet => CodiStudent::Unet,
            Student::Adapter => CodiStudent::Adapter,
        }
    }
}

/// The recipe of the chosen method.
enum Recipe {
    Lcm(LcmOptions),
    Codi(CodiOptions, CodiStudent),
    Guided(GuidedOptions),
    Progressive(ProgressiveOptions),
}

/// Arguments of `ldmscale distill`.
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher: a text-to-image UNet in diffusers layout (e.g. `RUN/unet` of `train`).
    /// The text encoder of its run (`text_encoder/` beside it) encodes the captions when
    /// present.
    #[arg(long, value_name = "DIR")]
    pub teacher: PathBuf,
    /// Distillation method.
    #[arg(long, value_enum)]
    pub method: Method,
    /// Run file (TOML): `[data]` as for `train` (the teacher's data and encoders), `[train]`
    /// (the optimizer recipe; `[train.model]` may be left out, it is the teacher's) and,
    /// optionally, `[guided]` (w_min, w_max, embedding_dim) for `--method guided`,
    /// `[progressive]` (student_steps, w_min, w_max; required) for `--method progressive`, or
    /// `[lcm]` (w_min, w_max, embedding_dim, ddim_steps, ema_decay, loss = "l2" |
    /// "huber", huber_c, timestep_scaling) for `--method lcm` or `[codi]` (w_min, w_max,
    /// ddim_steps, ema_decay, timestep_scaling) for `--method codi`. Unknown keys and the
    /// other method's table are errors.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Output directory; a run there resumes from its newest checkpoint.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// `--method codi`: the whole UNet (default) or an encoder adapter on the frozen teacher.
    #[arg(long, value_enum)]
    pub student: Option<Student>,
    /// Overrides `train.steps` (a finished run can be extended).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Where the steps run.
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// A distillation run file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DistillFile {
    data: DataConfig,
    train: toml::Value,
    lcm: Option<LcmOptions>,
    codi: Option<CodiOptions>,
    guided: Option<GuidedOptions>,
    progressive: Option<ProgressiveOptions>,
}

/// The methods' optional tables; each is refused with another method.
struct Tables {
    lcm: Option<LcmOptions>,
    codi: Option<CodiOptions>,
    guided: Option<GuidedOptions>,
    progressive: Option<ProgressiveOptions>,
}

/// Runs the command.
pub fn run(args: &DistillArgs, quiet: bool) -> Result<()> {
    crate::checks::output_dir(&args.out, "--out")?;
    let (device, ranks, gpu) = crate::launch::resolve(&args.device.device, &args.launch)?;
    let (teacher_config, teacher) = load_unet(&args.teacher, &device)
        .with_context(|| format!("--teacher {}", args.teacher.display()))?;
    let (data_config, config, recipe) = load(args, &teacher_config)?;
    let rank = Rank::join(ranks, device, gpu, config.batch_size)?;
    let quiet = quiet || !rank.writes();
    let plain = rank.devices(&config)?[0].clone().inner();
    // Taken once the arguments are known good, so a refused run leaves no --out behind.
    let _lock = rank.lock(&args.out, "ldmscale distill")?;
    let encoded = encode_data(&data_config, text_encoder_home(args), &plain)?;
    let in_teacher = || format!("--teacher {}", args.teacher.join("config.json").display());
    let teacher = (&teacher_config, teacher);
    let summary = match recipe {
        Recipe::Lcm(options) => {
            let task = LcmDistill::new(&config, &encoded.data, teacher, options, &plain)
                .with_context(in_teacher)?;
            rank.train_task(&config, &task, &args.out, !quiet)?
        }
        Recipe::Codi(options, student) => {
            let recipe = (options, student);
            let task = CodiDistill::with_student(&config, &encoded.data, teacher, recipe, &plain)
                .with_context(in_teacher)?;
            rank.train_task(&config, &task, &args.out, !quiet)?
        }
        Recipe::Guided(options) => {
            let task = GuidedDistill::new(&config, &encoded.data, teacher, options, &plain)
                .with_context(in_teacher)?;
            rank.train_task(&config, &task, &args.out, !quiet)?
        }
        Recipe::Progressive(options) => {
            let task = ProgressiveDistill::new(&config, &encoded.data, teacher, options, &plain)
                .with_context(in_teacher)?;
            rank.train_task(&config, &task, &args.out, !quiet)?
        }
    };
    if rank.writes() {
        report(&config, &summary, args.method, args.student);
    }
    Ok(())
}

/// Where the text encoder lives: beside the teacher when its run kept one, else in `--out`.
fn text_encoder_home(args: &DistillArgs) -> &Path {
    match args.teacher.parent() {
        Some(run) if run.join("text_encoder").join("config.json").exists() => run,
        _ => &args.out,
    }
}

/// The run file's data, recipe (`[train.model]` filled in from the teacher) and options.
fn load(args: &DistillArgs, teacher: &UNetConfig) -> Result<(DataConfig, TrainConfig, Recipe)> {
    if args.student.is_some() && args.method != Method::Codi {
        anyhow::bail!("--student is for --method codi");
    }
    let origin = args.config.display().to_string();
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("reading {origin}"))?;
    let file: DistillFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let mut train = file.train;
    let table = train
        .as_table_mut()
        .with_context(|| format!("{origin}: [train] must be a table"))?;
    if let Some(steps) = args.steps {
        table.insert("steps".into(), toml::Value::Integer(steps as i64));
    }
    if !table.contains_key("model") {
        table.insert("model".into(), model_table(teacher).into());
    }
    let config = TrainConfig::from_toml(&toml::to_string(&train)?, &format!("{origin} [train]"))?;
    file.data.validate(&origin)?;
    let tables = Tables {
        lcm: file.lcm,
        codi: file.codi,
        guided: file.guided,
        progressive: file.progressive,
    };
    let mut recipe = recipe(args.method, tables, &origin)?;
    if let (Recipe::Codi(_, student), Some(chosen)) = (&mut recipe, args.student) {
        *student = chosen.into();
    }
    Ok((file.data, config, recipe))
}

/// The method's options, validated; another method's table is refused (it would be
/// silently ignored).
fn recipe(method: Method, t: Tables, origin: &str) -> Result<Recipe> {
    let given = [
        ("lcm", t.lcm.is_some(), Method::Lcm),
        ("codi", t.codi.is_some(), Method::Codi),
        ("guided", t.guided.is_some(), Method::Guided),
        ("progressive", t.progressive.is_some(), Method::Progressive),
    ];
    if let Some((name, ..)) = given
        .iter()
        .find(|(_, present, m)| *present && *m != method)
    {
        anyhow::bail!("{origin}: [{name}] is for --method {name}");
    }
    let table = |name: &str| format!("{origin} [{name}]");
    Ok(match method {
        Method::Lcm => {
            let options = t.lcm.unwrap_or_default();
            options.validate().with_context(|| table("lcm"))?;
            Recipe::Lcm(options)
        }
        Method::Codi => {
            let options = t.codi.unwrap_or_default();
            options.validate().with_context(|| table("codi"))?;
            Recipe::Codi(options, CodiStudent::Unet)
        }
        Method::Guided => {
            let options = t.guided.unwrap_or_default();
            options.validate().with_context(|| table("guided"))?;
            Recipe::Guided(options)
        }
        Method::Progressive => {
            let options = t.progressive.with_context(|| {
                format!("{origin}: --method progressive needs a [progressive] table (student_steps, w_min, w_max)")
            })?;
            options.validate().with_context(|| table("progressive"))?;
            Recipe::Progressive(options)
        }
    })
}

fn report(config: &TrainConfig, summary: &RunSummary, method: Method, student: Option<Student>) {
    let sampling = match method {
        Method::Lcm => "sample it with --sampler lcm (1 evaluation per step)".to_string(),
        Method::Guided | Method::Progressive => {
            "sample it with --sampler guided-ddim (1 evaluation per step)".to_string()
        }
        Method::Codi => format!(
            "{}sample it with classifier-free guidance ({EVALUATIONS_PER_STEP} evaluations per step)",
            match student {
                Some(Student::Adapter) =>
                    "an encoder adapter on the frozen teacher (unet/adapter); ",
                _ => "",
            }
        ),
    };
    println!(
        "distilled width {}: step {} loss {:.4e}; training compute {:.3e} GFLOPs (student \
         forward and backward, teacher and target forwards) = {:.2} normalised cost x \
         iterations; {} steps in {:.1} s; models: {}; {sampling}",
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
}
