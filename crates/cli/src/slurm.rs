//! `ldmscale study --submit slurm`: a whole study as dependent Slurm jobs.
//!
//! prepare (data, first stage, text encoder, latent cache, evaluator, super-resolution data)
//! -> an array training one width per task -> side by side, an array of sweep shards and one
//! array per downstream section (super-resolution finetunes, distillation, DreamBooth), each
//! training its widths -> merge the shard stores and measure and report the rest in one job.
//! Each job starts after the jobs it needs succeeded (`afterok`; a failure cancels the jobs
//! after it). Every task calls this binary by
//! its absolute path on the study's absolute output directory, and skips what is stored, so a
//! resubmitted study does only what is left. Each task writes its exit code to
//! `OUT/slurm/status/`, which is how `--wait` tells which one failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ldmscale_model::weights::write_atomic;

/// The schedulers a study can be submitted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scheduler {
    /// Slurm, through `sbatch` and `squeue` on PATH.
    Slurm,
}

/// How a study is submitted to a scheduler.
#[derive(Args, Debug, Clone, Default)]
pub struct SubmitArgs {
    /// Submit the study as dependent batch jobs instead of running it here: prepare, a
    /// training array over widths, then a sweep array of shards beside one training array
    /// per downstream section, then merge, measure and report. Scripts
    /// go to OUT/slurm/, logs to OUT/slurm/logs/. With --dry-run: write and print the
    /// scripts, submit nothing.
    #[arg(long, value_enum, value_name = "SCHEDULER")]
    pub submit: Option<Scheduler>,
    /// Slurm partition of every job (default: the cluster's default).
    #[arg(long, value_name = "P", requires = "submit")]
    pub partition: Option<String>,
    /// GPUs per task (`#SBATCH --gpus-per-task`); pair with --device cuda:0 (Slurm shows
    /// each task its own GPUs, numbered from 0).
    #[arg(long, value_name = "G", requires = "submit")]
    pub gpus_per_task: Option<usize>,
    /// At most K tasks of an array at once (`--array=0-N%K`).
    #[arg(long, value_name = "K", requires = "submit")]
    pub array_limit: Option<usize>,
    /// Sweep shards, one array task each (default: the number of widths).
    #[arg(long, value_name = "N", requires = "submit")]
    pub sweep_shards: Option<usize>,
    /// Build the latent cache in N ranges of whole shards, one array task each
    /// (`--only latents --shard i/N`), joined by the job after them (default: the prepare job
    /// builds it in one process).
    #[arg(long, value_name = "N", requires = "submit")]
    pub latent_shards: Option<usize>,
    /// More `#SBATCH` lines for every job, e.g. --sbatch-arg=--time=2:00:00
    /// --sbatch-arg=--mem=16G (repeatable).
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "submit"
    )]
    pub sbatch_arg: Vec<String>,
    /// Block until the last job ends; exit non-zero naming the failed job and its log.
    #[arg(long, requires = "submit")]
    pub wait: bool,
    /// The ldmscale binary the tasks run (default: this one, by absolute path).
    #[arg(long, value_name = "FILE", requires = "submit")]
    pub binary: Option<PathBuf>,
}

/// One job of a submitted study.
struct Job {
    /// Short name: prepare, latents, join, train, sweep, super-res, distill, dreambooth,
    /// report.
    name: &'static str,
    /// The jobs (indices into the list) that must succeed first.
    after: Vec<usize>,
    /// Array tasks (None: a single job).
    tasks: Option<usize>,
    /// The shell lines the job (each task) runs.
    commands: Vec<String>,
    /// What it does, for the script's header.
    about: String,
}

/// What every task's command line shares.
pub struct StudyCall<'a> {
    /// The study's config, written beside the scripts.
    pub config_toml: String,
    /// The study's widths (one training task each).
    pub widths: &'a [usize],
    /// The downstream stages that train per width, with their widths' count.
    pub width_arrays: Vec<(&'static str, usize)>,
    /// Whether the study has a super-resolution section (its data is prepared first).
    pub super_res: bool,
    /// The output directory (made absolute here).
    pub out: &'a Path,
    /// `--device` of every task.
    pub device: &'a str,
}

/// Writes the scripts and, unless `dry_run`, submits them (and waits with `--wait`).
pub fn submit(args: &SubmitArgs, call: &StudyCall, dry_run: bool) -> Result<()> {
    for (flag, value) in [
        ("--sweep-shards", args.sweep_shards),
        ("--latent-shards", args.latent_shards),
        ("--array-limit", args.array_limit),
    ] {
        if value == Some(0) {
            bail!("{flag} 0: expected at least 1");
        }
    }
    if !dry_run {
        // Before anything is written: a missing client is the commonest mistake.
        find_on_path("sbatch")?;
    }
    std::fs::create_dir_all(call.out)
        .with_context(|| format!("--out {}: creating it", call.out.display()))?;
    let out =
        std::fs::canonicalize(call.out).with_context(|| format!("--out {}", call.out.display()))?;
    let binary = match &args.binary {
        Some(b) => std::fs::canonicalize(b).with_context(|| format!("--binary {}", b.display()))?,
        None => std::env::current_exe().context("finding this ldmscale binary")?,
    };
    let dir = out.join("slurm");
    for sub in ["logs", "status"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let config = dir.join("study.toml");
    write_atomic(&config, call.config_toml.as_bytes())?;
    let base = format!(
        "{} study --config {} --out {} --device {}",
        quote(&binary.display().to_string()),
        quote(&config.display().to_string()),
        quote(&out.display().to_string()),
        quote(call.device)
    );
    let jobs = jobs(&base, &binary, &out, call, args);
    let mut scripts = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let path = dir.join(format!("{}-{}.sbatch", i + 1, job.name));
        let text = script(job, i, jobs.len(), &dir, args);
        write_atomic(&path, text.as_bytes())?;
        if dry_run {
            println!("# ===== {} =====\n{text}", path.display());
        }
        scripts.push(path);
    }
    if dry_run {
        println!("# dry run: nothing submitted; submit with the same command without --dry-run");
        return Ok(());
    }
    clear_status(&dir.join("status"))?;
    let ids = submit_all(&jobs, &scripts)?;
    for (job, id) in jobs.iter().zip(&ids) {
        println!("submitted {} as Slurm job {id}", job.name);
    }
    if args.wait {
        wait(&jobs, &ids, &dir)?;
        println!(
            "all {} jobs succeeded; report: {}",
            jobs.len(),
            out.join("report").display()
        );
    }
    Ok(())
}

/// The study's jobs in submission order, each naming the jobs it waits for.
fn jobs(base: &str, binary: &Path, out: &Path, call: &StudyCall, args: &SubmitArgs) -> Vec<Job> {
    let widths = call.widths.len();
    let shards = args.sweep_shards.unwrap_or(widths);
    let stores: Vec<String> = (0..shards)
        .map(|i| {
            quote(
                &out.join(format!("results.shard{i}of{shards}.sqlite"))
                    .display()
                    .to_string(),
            )
        })
        .collect();
    let mut jobs = prepare_jobs(base, call, args);
    let train = jobs.len();
    jobs.extend([
        Job {
            name: "train",
            after: vec![train - 1],
            tasks: Some(widths),
            commands: vec![format!("{base} --only family --shard auto")],
            about: format!("array task i trains width i of the {widths} widths"),
        },
        Job {
            name: "sweep",
            after: vec![train],
            tasks: Some(shards),
            commands: vec![format!("{base} --only sweep --shard auto")],
            about: format!("array task i measures sweep shard i of {shards}"),
        },
    ]);
    for &(stage, count) in &call.width_arrays {
        jobs.push(Job {
            name: stage,
            after: vec![train],
            tasks: Some(count),
            commands: vec![format!("{base} --only {stage} --shard auto")],
            about: format!("array task i trains the {stage} models of widths j = i mod {count}"),
        });
    }
    jobs.push(Job {
        name: "report",
        after: (train + 1..jobs.len()).collect(),
        tasks: None,
        commands: vec![
            // keep: on a resubmission the study's store holds these cells already, with
            // what later stages added to them.
            format!(
                "{} results merge --on-conflict keep {} {}",
                quote(&binary.display().to_string()),
                quote(&out.join("results.sqlite").display().to_string()),
                stores.join(" ")
            ),
            base.to_string(),
        ],
        about: "merge the shard stores, then adaptive sampling, grids, learning check, the \
                downstream sections' measurements and the report"
            .into(),
    });
    jobs
}

/// The jobs before training: one prepare job, or with --latent-shards N > 1 a prepare job
/// (data, first stage, text encoder), an array building the latent cache's N ranges and a job
/// joining them (building what a failed task left) and running the evaluator.
fn prepare_jobs(base: &str, call: &StudyCall, args: &SubmitArgs) -> Vec<Job> {
    let sr_data = if call.super_res { ",sr-data" } else { "" };
    let one = |only: &str, about: &str, after: Vec<usize>| Job {
        name: if after.is_empty() { "prepare" } else { "join" },
        after,
        tasks: None,
        commands: vec![format!("{base} --only {only}{sr_data}")],
        about: about.into(),
    };
    match args.latent_shards {
        Some(n) if n > 1 => vec![
            Job {
                commands: vec![format!("{base} --only data,first-stage,text-encoder")],
                ..one("", "data, first stage and text encoder", Vec::new())
            },
            Job {
                name: "latents",
                after: vec![0],
                tasks: Some(n),
                commands: vec![format!("{base} --only latents --shard auto")],
                about: format!("array task i encodes range i of the latent cache's {n}"),
            },
            one(
                "latents,evaluator",
                "join the latent cache's ranges (building what a failed task left) and evaluator",
                vec![1],
            ),
        ],
        _ => vec![one(
            "data,first-stage,text-encoder,latents,evaluator",
            "data, first stage, text encoder, latent cache and evaluator",
            Vec::new(),
        )],
    }
}

/// A readable sbatch script for job `index` of `count`.
fn script(job: &Job, index: usize, count: usize, dir: &Path, args: &SubmitArgs) -> String {
    let log = match job.tasks {
        Some(_) => format!("{}/logs/{}-%A_%a.out", dir.display(), job.name),
        None => format!("{}/logs/{}-%j.out", dir.display(), job.name),
    };
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!(
            "# ldmscale study, job {} of {count}: {}.",
            index + 1,
            job.about
        ),
        "# Written by `ldmscale study --submit slurm`, which submits it after the jobs it needs"
            .into(),
        "# (--dependency=afterok); stored results are skipped, so it can be resubmitted.".into(),
        format!("#SBATCH --job-name=ldmscale-{}", job.name),
        format!("#SBATCH --output={log}"),
        "#SBATCH --ntasks=1".into(),
    ];
    if let Some(n) = job.tasks {
        let limit = args
            .array_limit
            .map(|k| format!("%{k}"))
            .unwrap_or_default();
        lines.push(format!("#SBATCH --array=0-{}{limit}", n - 1));
    }
    if let Some(p) = &args.partition {
        lines.push(format!("#SBATCH --partition={p}"));
    }
    if let Some(g) = args.gpus_per_task {
        lines.push(format!("#SBATCH --gpus-per-task={g}"));
    }
    lines.extend(args.sbatch_arg.iter().map(|a| format!("#SBATCH {a}")));
    let status = dir.join("status").join(format!("{}-", job.name));
    lines.push(String::new());
    lines.push(format!(
        "status={}\"${{SLURM_ARRAY_TASK_ID:-0}}\"",
        quote(&status.display().to_string())
    ));
    lines.push(format!("( set -e\n  {}\n)", job.commands.join("\n  ")));
    lines.push("rc=$?".into());
    lines.push("echo \"$rc\" > \"$status\"".into());
    lines.push("exit \"$rc\"".into());
    lines.join("\n") + "\n"
}

/// Submits the scripts in order, each after the jobs it needs succeeded; returns the job ids.
fn submit_all(jobs: &[Job], scripts: &[PathBuf]) -> Result<Vec<String>> {
    let mut ids: Vec<String> = Vec::new();
    for (job, script) in jobs.iter().zip(scripts) {
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable");
        if !job.after.is_empty() {
            let before: Vec<&str> = job.after.iter().map(|&j| ids[j].as_str()).collect();
            cmd.arg(format!("--dependency=afterok:{}", before.join(":")))
                .arg("--kill-on-invalid-dep=yes");
        }
        let output = cmd
            .arg(script)
            .output()
            .with_context(|| format!("running sbatch {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "sbatch {} failed ({}): {}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let id = text
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            bail!(
                "sbatch {}: expected a job id, got {text:?}",
                script.display()
            );
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Waits until none of `ids` is queued or running, then names the first job that failed.
fn wait(jobs: &[Job], ids: &[String], dir: &Path) -> Result<()> {
    find_on_path("squeue")?;
    loop {
        let output = Command::new("squeue")
            .args(["-h", "-o", "%A"])
            .output()
            .context("running squeue")?;
        if !output.status.success() {
            bail!(
                "squeue failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let queued = String::from_utf8_lossy(&output.stdout);
        if !queued.lines().any(|l| ids.iter().any(|id| l.trim() == id)) {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    match first_failure(jobs, ids, dir) {
        Some(problem) => bail!("{problem}"),
        None => Ok(()),
    }
}

/// The first failed task in job order ("job sweep (Slurm 12, task 1) failed with exit code 1;
/// log: ..."), else the first that never finished (cancelled or killed).
fn first_failure(jobs: &[Job], ids: &[String], dir: &Path) -> Option<String> {
    let mut unfinished = None;
    for (job, id) in jobs.iter().zip(ids) {
        for task in 0..job.tasks.unwrap_or(1) {
            let (what, log) = match job.tasks {
                Some(_) => (
                    format!("job {} (Slurm {id}, array task {task})", job.name),
                    format!("{}/logs/{}-{id}_{task}.out", dir.display(), job.name),
                ),
                None => (
                    format!("job {} (Slurm {id})", job.name),
                    format!("{}/logs/{}-{id}.out", dir.display(), job.name),
                ),
            };
            let status = dir.join("status").join(format!("{}-{task}", job.name));
            match std::fs::read_to_string(&status).map(|s| s.trim().to_string()) {
                Ok(rc) if rc == "0" => {}
                Ok(rc) => return Some(format!("{what} failed with exit code {rc}; log: {log}")),
                Err(_) => {
                    unfinished.get_or_insert(format!(
                        "{what} did not finish (cancelled, out of time, or killed); log: {log}"
                    ));
                }
            }
        }
    }
    unfinished
}

/// Removes the exit codes of an earlier submission.
fn clear_status(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// The path of program `name` on PATH, or an error saying what is missing.
fn find_on_path(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "--submit slurm: `{name}` is not on PATH; run on a Slurm login node (or install \
                 Slurm's client tools), or pass --dry-run to only write the scripts"
            )
        })
}

/// `text` as one shell word.
fn quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=,+@%".contains(c))
    {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(quote("/a/b.toml"), "/a/b.toml");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_first_failure_is_named_with_its_log() {
        let dir = std::env::temp_dir().join(format!("ldmscale-slurm-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("status")).unwrap();
        let args = SubmitArgs::default();
        let call = StudyCall {
            config_toml: String::new(),
            widths: &[8, 16],
            width_arrays: Vec::new(),
            super_res: false,
            out: &dir,
            device: "cpu",
        };
        let jobs = jobs("ldmscale study", Path::new("ldmscale"), &dir, &call, &args);
        let ids: Vec<String> = ["10", "11", "12", "13"].map(String::from).to_vec();
        let write =
            |name: &str, rc: &str| std::fs::write(dir.join("status").join(name), rc).unwrap();
        write("prepare-0", "0");
        write("train-0", "0");
        write("train-1", "3");
        let err = first_failure(&jobs, &ids, &dir).unwrap();
        assert!(
            err.starts_with("job train (Slurm 11, array task 1) failed with exit code 3"),
            "{err}"
        );
        assert!(err.ends_with("logs/train-11_1.out"), "{err}");
        write("train-1", "0");
        let err = first_failure(&jobs, &ids, &dir).unwrap();
        assert!(
            err.starts_with("job sweep (Slurm 12, array task 0) did not finish"),
            "{err}"
        );
        for name in ["sweep-0", "sweep-1", "report-0"] {
            write(name, "0");
        }
        assert_eq!(first_failure(&jobs, &ids, &dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn downstream_arrays_wait_for_the_family_and_the_report_for_everything() {
        let call = StudyCall {
            config_toml: String::new(),
            widths: &[8, 16, 32],
            width_arrays: vec![("super-res", 3), ("distill", 2)],
            super_res: true,
            out: Path::new("/s"),
            device: "cpu",
        };
        let jobs = jobs(
            "ldmscale study",
            Path::new("ldmscale"),
            Path::new("/s"),
            &call,
            &SubmitArgs::default(),
        );
        let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
        assert_eq!(
            names,
            [
                "prepare",
                "train",
                "sweep",
                "super-res",
                "distill",
                "report"
            ]
        );
        let after: Vec<Vec<usize>> = jobs.iter().map(|j| j.after.clone()).collect();
        assert_eq!(
            after,
            [vec![], vec![0], vec![1], vec![1], vec![1], vec![2, 3, 4]]
        );
        assert_eq!(jobs[4].tasks, Some(2));
        assert!(jobs[4].commands[0].ends_with("--only distill --shard auto"));
        assert!(jobs[0].commands[0].ends_with(",evaluator,sr-data"));
    }

    /// --latent-shards N: the latent cache is built by an array of N tasks between the prepare
    /// job and the job that joins it, and everything after waits for the join.
    #[test]
    fn latent_shards_build_the_cache_as_an_array() {
        let call = StudyCall {
            config_toml: String::new(),
            widths: &[8, 16],
            width_arrays: vec![("distill", 2)],
            super_res: true,
            out: Path::new("/s"),
            device: "cpu",
        };
        let args = SubmitArgs {
            latent_shards: Some(3),
            ..SubmitArgs::default()
        };
        let plan = jobs(
            "ldmscale study",
            Path::new("ldmscale"),
            Path::new("/s"),
            &call,
            &args,
        );
        let names: Vec<&str> = plan.iter().map(|j| j.name).collect();
        let want = [
            "prepare", "latents", "join", "train", "sweep", "distill", "report",
        ];
        assert_eq!(names, want);
        let after: Vec<Vec<usize>> = plan.iter().map(|j| j.after.clone()).collect();
        let want = [
            vec![],
            vec![0],
            vec![1],
            vec![2],
            vec![3],
            vec![3],
            vec![4, 5],
        ];
        assert_eq!(after, want);
        assert_eq!(plan[1].tasks, Some(3));
        assert!(plan[0].commands[0].ends_with("--only data,first-stage,text-encoder"));
        assert!(plan[1].commands[0].ends_with("--only latents --shard auto"));
        assert!(plan[2].commands[0].ends_with("--only latents,evaluator,sr-data"));
        // One range is the one-process build.
        let one = SubmitArgs {
            latent_shards: Some(1),
            ..SubmitArgs::default()
        };
        let single = jobs(
            "ldmscale study",
            Path::new("ldmscale"),
            Path::new("/s"),
            &call,
            &one,
        );
        assert_eq!(single[0].name, "prepare");
        assert_eq!(single[1].name, "train");
    }
}
