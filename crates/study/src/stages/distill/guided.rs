//! The distill stage's guided distillation (App. C): per width, stage 1 (a w-conditioned
//! student of the teacher's CFG output) and progressive rounds halving its steps, each run
//! resumable and its compute accounted; the students named in `[distill.guided]` are sampled
//! with guided DDIM (1 evaluation per step) over the sweep's guidance grid, beside the
//! undistilled models at the same steps.

use std::path::{Path, PathBuf};

use ldmscale_diffusion::SamplerId;
use ldmscale_model::weights::{load_unet, write_atomic};
use ldmscale_train::tasks::{
    GuidedDistill, ProgressiveDistill, guided_distill, progressive_distill,
};
use ldmscale_train::{DeviceThreads, RunSummary, TrainConfig, TrainError, TrainTask, train_task};

use super::{DIR, DistillStage, FINGERPRINT_FILE, grid, read_fingerprint};
use crate::cell::{CellKey, GUIDED, Variant};
use crate::config::distill::GuidedStudy;
use crate::config::{DistillConfig, StudyConfig, SweepCell};
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::stage::Estimate;
use crate::stages::family;
use crate::stages::sweep;
use crate::store::Store;

/// A round's student: its sampling steps, its model and the compute of every run behind it
/// (normalised cost x iterations, GFLOPs).
pub(super) struct Student {
    pub steps: u32,
    pub model: PathBuf,
    pub compute: (f64, f64),
}

/// One run's directory: `distill/guided/w{width}/stage1`, or `/s{steps}` for a round.
pub fn run_dir(out: &Path, width: usize, round: Option<u32>) -> PathBuf {
    let name = round.map_or("stage1".to_string(), |s| format!("s{s}"));
    out.join(DIR)
        .join(GUIDED)
        .join(format!("w{width}"))
        .join(name)
}

/// Stage 1's and every round's training: `[distill]`'s optimizer at `guided.steps`.
fn train_config(
    config: &StudyConfig,
    d: &DistillConfig,
    g: &GuidedStudy,
    width: usize,
) -> TrainConfig {
    let base = super::train_config(config, d, width);
    TrainConfig {
        steps: g.steps,
        warmup_steps: d.warmup_steps.min(g.steps),
        checkpoint_every: (g.steps / super::CHECKPOINTS_PER_RUN).max(1),
        ..base
    }
}

/// What each run of a width's chain depends on, stage 1 first: its teacher's (the chain so
/// far), the recipe and its own options.
pub fn run_fingerprints(config: &StudyConfig, width: usize) -> Vec<Fingerprint> {
    let Some((d, g)) = config
        .distill
        .as_ref()
        .and_then(|d| Some((d, d.guided.as_ref()?)))
    else {
        return Vec::new();
    };
    let recipe = (train_config(config, d, g, width), g.stage1());
    let mut chain = vec![Fingerprint::of(
        "guided-stage1",
        &(family::width_fingerprint(config, width), recipe),
    )];
    for s in g.rounds() {
        let previous = chain.last().cloned();
        chain.push(Fingerprint::of("guided-round", &(previous, g.round(s))));
    }
    chain
}

/// What a width's guided cells depend on: the chain and what the sweep measures with.
pub fn cells_fingerprint(config: &StudyConfig, width: usize) -> Fingerprint {
    Fingerprint::of(
        "guided-cells",
        &(
            run_fingerprints(config, width),
            sweep::width_fingerprint(config, width),
        ),
    )
}

pub fn meta_key(width: usize) -> String {
    format!("fingerprint:{GUIDED}:w{width}")
}

/// The cells of width `width`'s guided students: every student at its own steps, the sweep's
/// guidance grid and seeds.
pub fn student_keys(
    g: &GuidedStudy,
    config: &StudyConfig,
    width: usize,
) -> Vec<(CellKey, SweepCell)> {
    let cells = g
        .students
        .iter()
        .flat_map(|&s| grid(config, SamplerId::GuidedDdim, s));
    cells
        .map(|cell| {
            let key = CellKey {
                variant: Variant::Guided { steps: g.steps },
                ..sweep::cell_key(width, &cell)
            };
            (key, cell)
        })
        .collect()
}

/// The undistilled cells the students are compared with: the teacher sampler at every
/// student's steps.
pub fn teacher_keys(
    d: &DistillConfig,
    g: &GuidedStudy,
    config: &StudyConfig,
    width: usize,
) -> Vec<CellKey> {
    g.students
        .iter()
        .flat_map(|&s| grid(config, d.teacher_sampler, s))
        .map(|c| sweep::cell_key(width, &c))
        .collect()
}

/// Drops a width's guided cells measured for another chain or evaluator.
pub(super) fn refresh(
    cx: &StudyContext,
    store: &mut Store,
    width: usize,
) -> Result<(), StudyError> {
    let current = cells_fingerprint(cx.config, width);
    let key = meta_key(width);
    if store.meta(&key)?.as_deref() != Some(current.as_str()) {
        let removed = store.remove_width(Variant::Guided { steps: 0 }, width as u32)?;
        if removed > 0 {
            tracing::info!("guided width {width}: {removed} stale cells measured again");
        }
        store.set_meta(&key, current.as_str())?;
    }
    Ok(())
}

impl DistillStage<'_> {
    /// Width `width`'s chain: stage 1 from `teacher`, then every round; every run's student
    /// (stage 1's at `base_steps`).
    pub(super) fn guided_chain(
        &self,
        cx: &StudyContext,
        (d, g): (&DistillConfig, &GuidedStudy),
        (width, teacher): (usize, &Path),
    ) -> Result<Vec<Student>, StudyError> {
        let config = train_config(cx.config, d, g, width);
        let fingerprints = run_fingerprints(cx.config, width);
        let mut model = teacher.to_path_buf();
        let mut compute = (0.0, 0.0);
        let mut students = Vec::new();
        let stages = std::iter::once(None).chain(g.rounds().into_iter().map(Some));
        for (round, fingerprint) in stages.zip(&fingerprints) {
            let run = run_dir(&cx.out, width, round);
            let summary = self.guided_run(cx, (&config, g, round), (&model, &run), fingerprint)?;
            let state = &summary.state;
            compute.0 += state.normalized_cost_x_iterations;
            compute.1 += state.train_gflops;
            model = summary
                .model_dirs
                .last()
                .cloned()
                .unwrap_or_else(|| run.join("unet"));
            let steps = round.unwrap_or(g.base_steps);
            students.push(Student {
                steps,
                model: model.clone(),
                compute,
            });
        }
        Ok(students)
    }

    /// One run of the chain (resumed; moved aside when made for another chain).
    fn guided_run(
        &self,
        cx: &StudyContext,
        (config, g, round): (&TrainConfig, &GuidedStudy, Option<u32>),
        (teacher, run): (&Path, &Path),
        fingerprint: &Fingerprint,
    ) -> Result<RunSummary, StudyError> {
        match read_fingerprint(run) {
            Some(old) if &old != fingerprint => cx.retire(run, old.as_str())?,
            _ => {}
        }
        let (teacher_config, unet) = load_unet(teacher, &cx.device)?;
        let what = round.map_or("stage 1".to_string(), |s| format!("round to {s} steps"));
        tracing::info!(
            "distill: guided {what} of width {} ({} steps)",
            config.model.width,
            g.steps
        );
        let data = &self.latents.train;
        let teacher = (&teacher_config, unet);
        let device = &cx.device;
        let width = config.model.width;
        let summary = match round {
            None => GuidedDistill::new(config, data, teacher, g.stage1(), device)
                .and_then(|task| run_task(config, &task, (run, device))),
            Some(s) => ProgressiveDistill::new(config, data, teacher, g.round(s), device)
                .and_then(|task| run_task(config, &task, (run, device))),
        }
        .map_err(|source| StudyError::Train { width, source })?;
        write_atomic(
            &run.join(FINGERPRINT_FILE),
            format!("{fingerprint}\n").as_bytes(),
        )?;
        Ok(summary)
    }
}

fn run_task<T: TrainTask>(
    config: &TrainConfig,
    task: &T,
    (run, device): (&Path, &burn::tensor::Device),
) -> Result<RunSummary, TrainError> {
    let sync = DeviceThreads::new(std::slice::from_ref(device))?;
    train_task(config, task, &sync, run, true, None)
}

/// Adds the guided chains and their cells to a `--dry-run` estimate (`gflops`: per
/// evaluation, per width of `config.widths`).
pub(super) fn estimate(config: &StudyConfig, gflops: &[f64], e: &mut Estimate) {
    let Some((d, g)) = config
        .distill
        .as_ref()
        .and_then(|d| Some((d, d.guided.as_ref()?)))
    else {
        return;
    };
    let widths = g.distilled_widths(config);
    let samples = (d.batch_size as u64 * g.steps) as f64;
    let runs = 1 + g.rounds().len();
    let per_image = config.sweep.samples_per_cell as f64;
    for (w, &per_eval) in config.widths.iter().zip(gflops) {
        if !widths.contains(w) {
            continue;
        }
        let passes = guided_distill::FORWARD_PASSES.max(progressive_distill::FORWARD_PASSES);
        e.train_gflops += passes * samples * runs as f64 * per_eval;
        let students: f64 = student_keys(g, config, *w)
            .iter()
            .map(|(_, c)| c.steps as f64)
            .sum();
        let teachers: f64 = teacher_keys(d, g, config, *w)
            .iter()
            .map(|k| k.steps as f64 * if k.cfg_milli > 1000 { 2.0 } else { 1.0 })
            .sum();
        e.sample_gflops += per_image * (students + teachers) * per_eval;
    }
    e.lines.push(format!(
        "\nguided distillation (App. C): widths {widths:?}, stage 1 from {} steps and {} rounds of {} steps of batch {}; students {:?} (1 evaluation per step) and the undistilled models at their steps x guidance {:?}",
        g.base_steps,
        g.rounds().len(),
        g.steps,
        d.batch_size,
        g.students,
        config.sweep.cfg
    ));
}
