//! Stage: consistency distillation (Sec. 3.6, Fig. 13). Every distilled width's final model is
//! the teacher of one student per method, trained with one recipe (resumable, its compute
//! accounted); each student is sampled at `sample_steps` over the sweep's guidance grid and
//! seeds, and so is its teacher with the undistilled sampler, all measured like sweep cells
//! against the sweep's reference set (so the two sides pair). Guided distillation (App. C)
//! is in [`guided`].

mod guided;

use std::path::{Path, PathBuf};

use burn::module::Module;
use ldmscale_model::weights::{load_unet, write_atomic};
use ldmscale_train::optimizer::{AdamWConfig, LrSchedule};
use ldmscale_train::tasks::{CodiStudent, codi_distill, lcm_distill};
use ldmscale_train::{
    CodiDistill, DeviceThreads, LcmDistill, RunSummary, TrainConfig, TrainError, train_task,
};

use super::evaluator::Evaluator;
use super::family::{self, Family};
use super::first_stage::FirstStageModel;
use super::latents::Latents;
use super::sweep::{self, SweepStage};
use crate::cell::{Cell, CellKey, Metric, Variant};
use crate::config::{DistillConfig, DistillMethod, StudyConfig, SweepCell};
use crate::context::StudyContext;
use crate::distill::{DISTILL_COST, DISTILL_GFLOPS, DistillResults};
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::pairing::Pairing;
use crate::stage::{Estimate, Stage};
use crate::store::{Store, shard_owns};

/// The stage's directory in the study: `distill/{method}/w{width}` per student.
pub const DIR: &str = "distill";
/// The file in a run directory naming the fingerprint it was distilled for.
const FINGERPRINT_FILE: &str = "fingerprint";
/// Checkpoints per distillation run.
const CHECKPOINTS_PER_RUN: u64 = 4;

/// Distils and measures every width the config names.
pub struct DistillStage<'a> {
    /// The teachers.
    pub family: &'a Family,
    /// The training data and prompts.
    pub latents: &'a Latents,
    /// FID and CLIP score.
    pub evaluator: &'a Evaluator,
    /// The decoder.
    pub first: &'a FirstStageModel,
}

/// The `[distill]` section (the pipeline runs the stage only when there is one).
fn section<'c>(cx: &StudyContext<'c>) -> Result<&'c DistillConfig, StudyError> {
    cx.config
        .distill
        .as_ref()
        .ok_or_else(|| StudyError::Config("the study has no [distill] section".into()))
}

/// One student's run directory.
pub fn run_dir(out: &Path, method: DistillMethod, width: usize) -> PathBuf {
    out.join(DIR)
        .join(method.as_str())
        .join(format!("w{width}"))
}

/// One student's distillation as the study configures it (no EMA of the student: the task's
/// EMA target is its own; no caption dropout: the null caption is the unconditional half).
pub fn train_config(config: &StudyConfig, d: &DistillConfig, width: usize) -> TrainConfig {
    TrainConfig {
        steps: d.steps,
        batch_size: d.batch_size,
        learning_rate: d.learning_rate,
        warmup_steps: d.warmup_steps,
        lr_schedule: LrSchedule::Constant,
        adamw: AdamWConfig::default(),
        ema: None,
        text_dropout: 0.0,
        seed: d.seed,
        checkpoint_every: (d.steps / CHECKPOINTS_PER_RUN).max(1),
        keep_last: 1,
        snapshot_steps: Vec::new(),
        eval_every: 0,
        ..family::train_config(config, width)
    }
}

/// What one student depends on: its teacher, the recipe and the method's options.
pub fn run_fingerprint(config: &StudyConfig, method: DistillMethod, width: usize) -> Fingerprint {
    let recipe = config.distill.as_ref().map(|d| {
        let options = match method {
            DistillMethod::Lcm => serde_json::to_value(&d.lcm),
            DistillMethod::Codi => codi_recipe(d),
        };
        (train_config(config, d, width), options.ok())
    });
    Fingerprint::of(
        "distill-run",
        &(family::width_fingerprint(config, width), method, recipe),
    )
}

/// The CoDi options, with the student when it is the adapter (a whole-UNet run's
/// fingerprint is the one it had before adapters existed).
fn codi_recipe(d: &DistillConfig) -> serde_json::Result<serde_json::Value> {
    let mut options = serde_json::to_value(&d.codi)?;
    if d.codi_student == CodiStudent::Adapter {
        options["student"] = d.codi_student.as_str().into();
    }
    Ok(options)
}

/// What one student's cells depend on: the student and what the sweep measures with.
fn cells_fingerprint(config: &StudyConfig, method: DistillMethod, width: usize) -> Fingerprint {
    Fingerprint::of(
        "distill-cells",
        &(
            run_fingerprint(config, method, width),
            sweep::width_fingerprint(config, width),
        ),
    )
}

fn meta_key(method: DistillMethod, width: usize) -> String {
    format!("fingerprint:{method}:w{width}")
}

/// The sampling grid of a student or teacher at `steps`: the sweep's guidance rates and seeds.
fn grid(
    config: &StudyConfig,
    sampler: ldmscale_diffusion::SamplerId,
    steps: u32,
) -> Vec<SweepCell> {
    let mut cells = Vec::new();
    for &cfg in &config.sweep.cfg {
        for &seed in &config.sweep.seeds {
            cells.push(SweepCell {
                sampler,
                steps,
                cfg,
                seed,
            });
        }
    }
    cells
}

/// The key of a student's cell.
fn student_key(
    d: &DistillConfig,
    method: DistillMethod,
    width: usize,
    cell: &SweepCell,
) -> CellKey {
    CellKey {
        variant: Variant::Distilled {
            method,
            steps: d.steps,
        },
        ..sweep::cell_key(width, cell)
    }
}

/// Every key of the consistency students and their teachers.
fn consistency_keys(config: &StudyConfig, d: &DistillConfig) -> Vec<CellKey> {
    let mut keys = Vec::new();
    for w in d.distilled_widths(config) {
        let teacher = grid(config, d.teacher_sampler, d.sample_steps);
        keys.extend(teacher.iter().map(|c| sweep::cell_key(w, c)));
        for &method in &d.methods {
            let cells = grid(config, method.sampler(), d.sample_steps);
            keys.extend(cells.iter().map(|c| student_key(d, method, w, c)));
        }
    }
    keys
}

/// Every key of the guided students and of the undistilled models at their steps.
fn guided_keys(config: &StudyConfig, d: &DistillConfig) -> Vec<CellKey> {
    let Some(g) = &d.guided else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for w in g.distilled_widths(config) {
        keys.extend(guided::teacher_keys(d, g, config, w));
        keys.extend(guided::student_keys(g, config, w).into_iter().map(|k| k.0));
    }
    keys
}

/// Every key the config asks for: the students' and their teachers'.
fn all_keys(config: &StudyConfig, d: &DistillConfig) -> Vec<CellKey> {
    [consistency_keys(config, d), guided_keys(config, d)].concat()
}

fn owns(cx: &StudyContext, key: &CellKey) -> bool {
    cx.shard.is_none_or(|(i, n)| shard_owns(key, i, n))
}

/// What the stage's result depends on: every student's and teacher's cells and the grid.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    let Some(d) = &config.distill else {
        return Fingerprint::of("distill", &());
    };
    let mut parts = Vec::new();
    for w in d.distilled_widths(config) {
        parts.push(sweep::width_fingerprint(config, w));
        for &m in &d.methods {
            parts.push(cells_fingerprint(config, m, w));
        }
    }
    for w in d.guided.iter().flat_map(|g| g.distilled_widths(config)) {
        parts.push(sweep::width_fingerprint(config, w));
        parts.push(guided::cells_fingerprint(config, w));
    }
    Fingerprint::of("distill", &(parts, all_keys(config, d)))
}

impl Stage for DistillStage<'_> {
    type Output = DistillResults;
    const NAME: &'static str = "distill";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<DistillResults>, StudyError> {
        let d = section(cx)?;
        let store = Store::open(&sweep::store_path(cx))?;
        for w in d.distilled_widths(cx.config) {
            for &m in &d.methods {
                let current = cells_fingerprint(cx.config, m, w);
                if store.meta(&meta_key(m, w))?.as_deref() != Some(current.as_str()) {
                    return Ok(None);
                }
            }
        }
        for w in d.guided.iter().flat_map(|g| g.distilled_widths(cx.config)) {
            let current = guided::cells_fingerprint(cx.config, w);
            if store.meta(&guided::meta_key(w))?.as_deref() != Some(current.as_str()) {
                return Ok(None);
            }
        }
        for key in all_keys(cx.config, d) {
            if owns(cx, &key) && !store.contains(&key)? {
                return Ok(None);
            }
        }
        Ok(Some(results(cx, d, &store)?))
    }

    fn run(&self, cx: &StudyContext) -> Result<DistillResults, StudyError> {
        let d = section(cx)?;
        if let Some(task) = cx.array_task(Self::NAME) {
            return self.train_share(cx, d, task);
        }
        let mut store = Store::open(&sweep::store_path(cx))?;
        for w in d.distilled_widths(cx.config) {
            let teacher = self.teacher(w)?;
            self.measure_teacher(cx, d, &mut store, (w, &teacher), d.sample_steps)?;
            for &method in &d.methods {
                let summary = self.distil(cx, d, method, (w, &teacher))?;
                refresh(cx, &mut store, method, w)?;
                let student = summary.model_dirs.last().cloned();
                let student = student.unwrap_or_else(|| run_dir(&cx.out, method, w).join("unet"));
                self.measure_student(cx, d, &mut store, (method, w), (&student, &summary))?;
            }
        }
        if let Some(g) = &d.guided {
            for w in g.distilled_widths(cx.config) {
                self.guided(cx, (d, g), &mut store, w)?;
            }
        }
        results(cx, d, &store)
    }
}

impl DistillStage<'_> {
    /// An array task's share: the students of the widths j with j mod n = i (of each list:
    /// the consistency-distilled and the guided widths); measuring waits for the run after
    /// the array.
    fn train_share(
        &self,
        cx: &StudyContext,
        d: &DistillConfig,
        (i, n): (usize, usize),
    ) -> Result<DistillResults, StudyError> {
        for w in d.distilled_widths(cx.config).into_iter().skip(i).step_by(n) {
            let teacher = self.teacher(w)?;
            for &method in &d.methods {
                self.distil(cx, d, method, (w, &teacher))?;
            }
        }
        if let Some(g) = &d.guided {
            for w in g.distilled_widths(cx.config).into_iter().skip(i).step_by(n) {
                self.guided_chain(cx, (d, g), (w, &self.teacher(w)?))?;
            }
        }
        Err(StudyError::OnlyDone)
    }

    /// Width `width`'s final model.
    fn teacher(&self, width: usize) -> Result<PathBuf, StudyError> {
        let found = self.family.models.iter().find(|(w, _)| *w == width);
        found.map(|(_, dir)| dir.clone()).ok_or_else(|| {
            StudyError::Config(format!("distill.widths: width {width} was not trained"))
        })
    }

    /// The sweep's measuring of cells, for this stage's models.
    fn sweep(&self) -> SweepStage<'_> {
        SweepStage {
            family: self.family,
            latents: self.latents,
            evaluator: self.evaluator,
            first: self.first,
        }
    }

    /// Distils (or resumes) one student; a run made for another recipe is moved aside.
    fn distil(
        &self,
        cx: &StudyContext,
        d: &DistillConfig,
        method: DistillMethod,
        (width, teacher): (usize, &Path),
    ) -> Result<RunSummary, StudyError> {
        let run = run_dir(&cx.out, method, width);
        let fingerprint = run_fingerprint(cx.config, method, width);
        match read_fingerprint(&run) {
            Some(old) if old != fingerprint => cx.retire(&run, old.as_str())?,
            _ => {}
        }
        let config = train_config(cx.config, d, width);
        let loaded = load_unet(teacher, &cx.device)?;
        tracing::info!(
            "distill: {method} student of width {width} ({} steps)",
            d.steps
        );
        let summary = self
            .train(d, method, &config, loaded, (&run, &cx.device))
            .map_err(|source| StudyError::Train { width, source })?;
        write_atomic(
            &run.join(FINGERPRINT_FILE),
            format!("{fingerprint}\n").as_bytes(),
        )?;
        Ok(summary)
    }

    /// The method's task over the latent cache, trained to `config.steps`.
    fn train(
        &self,
        d: &DistillConfig,
        method: DistillMethod,
        config: &TrainConfig,
        (teacher_config, teacher): (ldmscale_model::UNetConfig, ldmscale_model::UNet),
        (run, device): (&Path, &burn::tensor::Device),
    ) -> Result<RunSummary, TrainError> {
        let data = &self.latents.train;
        let sync = DeviceThreads::new(std::slice::from_ref(device))?;
        let teacher = (&teacher_config, teacher);
        match method {
            DistillMethod::Lcm => {
                let task = LcmDistill::new(config, data, teacher, d.lcm.clone(), device)?;
                train_task(config, &task, &sync, run, true, None)
            }
            DistillMethod::Codi => {
                let recipe = (d.codi.clone(), d.codi_student);
                let task = CodiDistill::with_student(config, data, teacher, recipe, device)?;
                train_task(config, &task, &sync, run, true, None)
            }
        }
    }

    /// The teacher at the students' steps: base cells, measured as the sweep would (and reused
    /// where the sweep's grid has them).
    fn measure_teacher(
        &self,
        cx: &StudyContext,
        d: &DistillConfig,
        store: &mut Store,
        (width, teacher): (usize, &Path),
        steps: u32,
    ) -> Result<(), StudyError> {
        let missing: Vec<SweepCell> = grid(cx.config, d.teacher_sampler, steps)
            .into_iter()
            .filter(|c| {
                let key = sweep::cell_key(width, c);
                owns(cx, &key) && !store.contains(&key).unwrap_or(false)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let (_, unet) = load_unet(teacher, &cx.device)?;
        let sweep = self.sweep();
        let inputs = sweep.width_inputs(cx, &unet);
        for cell in missing {
            tracing::info!(
                "distill: teacher w{width} {} x{} cfg {}",
                cell.sampler,
                cell.steps,
                cell.cfg
            );
            let (measured, features) =
                sweep.measure(&inputs, sweep::cell_key(width, &cell), &cell)?;
            store.insert_with_features(&measured, features.as_ref())?;
        }
        Ok(())
    }

    /// Every missing cell of one student, with its distillation compute.
    fn measure_student(
        &self,
        cx: &StudyContext,
        d: &DistillConfig,
        store: &mut Store,
        (method, width): (DistillMethod, usize),
        (student, summary): (&Path, &RunSummary),
    ) -> Result<(), StudyError> {
        let cells = grid(cx.config, method.sampler(), d.sample_steps);
        let keyed = cells
            .into_iter()
            .map(|c| (student_key(d, method, width, &c), c))
            .collect();
        let state = &summary.state;
        let compute = (state.normalized_cost_x_iterations, state.train_gflops);
        self.measure_model(cx, store, keyed, (student, compute))
    }

    /// Width `width`'s guided chain, its undistilled cells at the students' steps and every
    /// missing cell of its students.
    fn guided(
        &self,
        cx: &StudyContext,
        (d, g): (&DistillConfig, &crate::config::distill::GuidedStudy),
        store: &mut Store,
        width: usize,
    ) -> Result<(), StudyError> {
        let teacher = self.teacher(width)?;
        for &s in &g.students {
            self.measure_teacher(cx, d, store, (width, &teacher), s)?;
        }
        let students = self.guided_chain(cx, (d, g), (width, &teacher))?;
        guided::refresh(cx, store, width)?;
        let keys = guided::student_keys(g, cx.config, width);
        for student in students.iter().filter(|s| g.students.contains(&s.steps)) {
            let keyed = keys
                .iter()
                .filter(|(_, cell)| cell.steps == student.steps)
                .cloned()
                .collect();
            self.measure_model(cx, store, keyed, (&student.model, student.compute))?;
        }
        Ok(())
    }

    /// Every missing cell of `keyed` sampled from `model`, with the distillation compute
    /// (normalised cost x iterations, GFLOPs) behind it.
    fn measure_model(
        &self,
        cx: &StudyContext,
        store: &mut Store,
        keyed: Vec<(CellKey, SweepCell)>,
        (model, compute): (&Path, (f64, f64)),
    ) -> Result<(), StudyError> {
        let missing: Vec<(CellKey, SweepCell)> = keyed
            .into_iter()
            .filter(|(key, _)| owns(cx, key) && !store.contains(key).unwrap_or(false))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let (_, unet) = load_unet(model, &cx.device)?;
        let sweep = self.sweep();
        let inputs = sweep.width_inputs(cx, &unet);
        for (key, cell) in missing {
            tracing::info!(
                "distill: {} student w{} {} x{} cfg {}",
                key.variant,
                key.width,
                cell.sampler,
                cell.steps,
                cell.cfg
            );
            let (mut measured, features) = sweep.measure(&inputs, key, &cell)?;
            measured.params = unet.num_params() as u64;
            for (name, value) in [(DISTILL_COST, compute.0), (DISTILL_GFLOPS, compute.1)] {
                let ci = None;
                measured.metrics.push(Metric {
                    name: name.into(),
                    value,
                    ci,
                });
            }
            store.insert_with_features(&measured, features.as_ref())?;
        }
        Ok(())
    }
}

/// Drops a student's cells measured for another student or evaluator.
fn refresh(
    cx: &StudyContext,
    store: &mut Store,
    method: DistillMethod,
    width: usize,
) -> Result<(), StudyError> {
    let current = cells_fingerprint(cx.config, method, width);
    let key = meta_key(method, width);
    if store.meta(&key)?.as_deref() != Some(current.as_str()) {
        let variant = Variant::Distilled { method, steps: 0 };
        let removed = store.remove_width(variant, width as u32)?;
        if removed > 0 {
            tracing::info!("distill {method} width {width}: {removed} stale cells measured again");
        }
        store.set_meta(&key, current.as_str())?;
    }
    Ok(())
}

/// The stored cells of the config's students and teachers, with the sweep's grid (the
/// undistilled frontier), all paired against the sweep's reference set.
fn results(
    cx: &StudyContext,
    d: &DistillConfig,
    store: &Store,
) -> Result<DistillResults, StudyError> {
    let cells = store.cells()?;
    let split = |keys: Vec<CellKey>| -> (Vec<Cell>, Vec<Cell>) {
        let keys: std::collections::HashSet<CellKey> = keys.into_iter().collect();
        cells
            .iter()
            .filter(|c| keys.contains(&c.key()))
            .cloned()
            .partition(|c| c.variant != Variant::Base)
    };
    let (students, teachers) = split(consistency_keys(cx.config, d));
    let (guided, guided_teachers) = split(guided_keys(cx.config, d));
    let mut results = DistillResults {
        sweep: sweep::grid_cells(cx, store)?,
        students,
        teachers,
        guided,
        guided_teachers,
        pairing: None,
        sample_steps: d.sample_steps,
    };
    results.pairing = Pairing::from_store(store, &results.cells())?;
    Ok(results)
}

fn read_fingerprint(run: &Path) -> Option<Fingerprint> {
    let text = std::fs::read_to_string(run.join(FINGERPRINT_FILE)).ok()?;
    Some(Fingerprint(text.trim().to_string()))
}

/// The distillation runs and the students' and teachers' cells, for `--dry-run`
/// (`gflops`: per evaluation, per width of `config.widths`); empty without a `[distill]`.
pub fn estimate(config: &StudyConfig, gflops: &[f64]) -> Estimate {
    let Some(d) = &config.distill else {
        return Estimate::default();
    };
    let samples = (d.batch_size as u64 * d.steps) as f64;
    let mut e = Estimate::default();
    for (&w, &g) in config.widths.iter().zip(gflops) {
        if !d.distilled_widths(config).contains(&w) {
            continue;
        }
        let guided = |c: &SweepCell| c.steps as f64 * if c.cfg > 1.0 { 2.0 } else { 1.0 };
        let teacher: f64 = grid(config, d.teacher_sampler, d.sample_steps)
            .iter()
            .map(guided)
            .sum();
        e.sample_gflops += config.sweep.samples_per_cell as f64 * teacher * g;
        for &m in &d.methods {
            // A CoDi adapter student costs its teacher plus the adapter per evaluation.
            let student = match (m, d.codi_student) {
                (DistillMethod::Codi, CodiStudent::Adapter) => adapter_cost_ratio(config, w),
                _ => 1.0,
            };
            let passes = match m {
                DistillMethod::Lcm => lcm_distill::FORWARD_PASSES,
                DistillMethod::Codi => (codi_distill::FORWARD_PASSES - 1.0) * student + 1.0,
            };
            e.train_gflops += passes * samples * g;
            let evaluations: f64 = grid(config, m.sampler(), d.sample_steps)
                .iter()
                .map(|c| c.steps as f64 * per_step(m, c.cfg))
                .sum();
            e.sample_gflops += config.sweep.samples_per_cell as f64 * evaluations * g * student;
        }
    }
    guided::estimate(config, gflops, &mut e);
    e.lines.push(format!(
        "\ndistillation: widths {:?} x methods {:?}, {} steps of batch {} each; students and teachers at {} steps x guidance {:?}",
        d.distilled_widths(config),
        d.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        d.steps,
        d.batch_size,
        d.sample_steps,
        config.sweep.cfg
    ));
    e
}

/// GFLOPs of width `width` with an encoder adapter over those without (lazily built models:
/// nothing is allocated).
fn adapter_cost_ratio(config: &StudyConfig, width: usize) -> f64 {
    let (latent, _) = config.latent_layout();
    let (_, text) = super::text::estimate(config);
    let teacher = family::model_config(config, width).unet(latent[0], latent[1], text[1]);
    let Ok(student) = teacher.with_encoder_adapter() else {
        return 1.0;
    };
    let device = burn::tensor::Device::flex();
    let gflops = |c: &ldmscale_model::UNetConfig| {
        let unet = ldmscale_model::UNet::new(c, &device);
        unet.cost(latent[1], latent[2], text[0]).gflops()
    };
    gflops(&student) / gflops(&teacher)
}

/// Evaluations per sampling step of a method's student at guidance `cfg`.
fn per_step(method: DistillMethod, cfg: f64) -> f64 {
    match method {
        DistillMethod::Codi if cfg > 1.0 => 2.0,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_student_costs_more_in_the_estimate() {
        let mut config = StudyConfig::preset("tiny").unwrap();
        let whole = estimate(&config, &[0.01, 0.02]);
        let d = config.distill.as_mut().unwrap();
        d.codi_student = CodiStudent::Adapter;
        let ratio = adapter_cost_ratio(&config, config.widths[0]);
        assert!(ratio > 1.0 && ratio < 2.0, "{ratio}");
        let adapter = estimate(&config, &[0.01, 0.02]);
        assert!(adapter.train_gflops > whole.train_gflops);
        assert!(adapter.sample_gflops > whole.sample_gflops);
    }
}
