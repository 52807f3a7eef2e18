//! What every stage of a study shares: the config, the output directory, the device, and the
//! record of which stage results are stored for which fingerprint (`stages.json`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use ldmscale_model::weights::write_atomic;
use ldmscale_util::lock::DirLock;
use serde::{Deserialize, Serialize};

use crate::config::StudyConfig;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::stage::Stage;

/// The stages in the order a study runs them.
pub const STAGES: [&str; 15] = [
    "data",
    "first-stage",
    "text-encoder",
    "latents",
    "evaluator",
    "sr-data",
    "family",
    "sweep",
    "adaptive",
    "grids",
    "learning-check",
    "super-res",
    "distill",
    "dreambooth",
    "report",
];

/// The file recording each stored stage result's fingerprint.
pub const MANIFEST: &str = "stages.json";

/// How a study is run, beside its config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Measure only sweep shard i of n.
    pub shard: Option<(usize, usize)>,
    /// Compute only these stages (the ones before them must be stored).
    pub only: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Manifest {
    stages: BTreeMap<String, Fingerprint>,
}

/// The shared state of one study run.
pub struct StudyContext<'a> {
    /// The config.
    pub config: &'a StudyConfig,
    /// The study directory.
    pub out: PathBuf,
    /// Where models run.
    pub device: Device,
    /// Measure only sweep shard i of n.
    pub shard: Option<(usize, usize)>,
    /// When the run started.
    pub started: Instant,
    only: Option<Vec<usize>>,
    manifest: RefCell<Manifest>,
    /// Held while the run lasts.
    _lock: Option<DirLock>,
}

impl<'a> StudyContext<'a> {
    /// A context for `config` in `out`, reading what earlier runs stored. A directory of a
    /// release before per-stage fingerprints (a `study.toml` and no manifest) is adopted:
    /// its results were all made by its saved config.
    pub fn open(
        config: &'a StudyConfig,
        out: &Path,
        device: Device,
        options: &RunOptions,
    ) -> Result<Self, StudyError> {
        let only = match &options.only {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| stage_index(n))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let manifest = read_manifest(out)?;
        Ok(StudyContext {
            config,
            out: out.to_path_buf(),
            device,
            shard: options.shard,
            started: Instant::now(),
            only,
            manifest: RefCell::new(manifest),
            _lock: None,
        })
    }

    /// Takes the output directory (creating it) for this run alone (a shard: beside the other
    /// shards), and reads its record again under the lock; another run there is an error
    /// naming its process.
    pub fn locked(mut self) -> Result<Self, StudyError> {
        let command = "ldmscale study";
        self._lock = Some(match self.shard {
            Some(shard) => DirLock::acquire_shard(&self.out, command, self.part(), shard)?,
            None => DirLock::acquire(&self.out, command)?,
        });
        self.manifest = RefCell::new(read_manifest(&self.out)?);
        Ok(self)
    }

    /// What a sharded run works on, for its lock: the last stage `--only` names, else the
    /// whole study.
    fn part(&self) -> &'static str {
        let last = self.only.as_ref().and_then(|o| o.iter().max().copied());
        last.map_or("study", |i| STAGES[i])
    }

    /// Whether this run trains width `index` of `config.widths` in the family stage.
    pub fn trains_width(&self, index: usize) -> bool {
        self.array_task("family")
            .is_none_or(|(i, n)| index % n == i)
    }

    /// `Some((i, n))` when this run is task i of an array over widths for training stage
    /// `stage` (`--shard i/N` with `stage` the last stage `--only` names): the stage trains
    /// the widths j with j mod N = i and stops; the run that measures them comes later.
    pub fn array_task(&self, stage: &str) -> Option<(usize, usize)> {
        let last = self.only.as_ref()?.iter().max().copied();
        (last == STAGES.iter().position(|s| *s == stage))
            .then_some(self.shard)
            .flatten()
    }

    /// Whether a run with this `--only` needs any of the `stages`: their results feed only
    /// the report, so a run that names neither them nor the report skips them (an array
    /// task of one downstream section does not wait for the others).
    pub fn needs(&self, stages: &[&str]) -> bool {
        let Some(only) = &self.only else {
            return true;
        };
        let named = |name: &str| {
            STAGES
                .iter()
                .position(|s| *s == name)
                .is_some_and(|i| only.contains(&i))
        };
        named("report") || stages.iter().any(|s| named(s))
    }

    /// `out/relative`.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.out.join(relative)
    }

    /// The stage's result: loaded when stored for its current fingerprint, else computed.
    pub fn ensure<S: Stage>(&self, stage: &S) -> Result<S::Output, StudyError> {
        let index = stage_index(S::NAME)?;
        if self
            .only
            .as_ref()
            .is_some_and(|o| o.iter().all(|&i| i < index))
        {
            return Err(StudyError::OnlyDone);
        }
        let label = format!("[{}/{}] {}", index + 1, STAGES.len(), S::NAME);
        let fingerprint = stage.fingerprint(self);
        if self.recorded(S::NAME) == Some(fingerprint.clone())
            && let Some(output) = stage.load(self)?
        {
            tracing::info!("{label}: stored result reused");
            return Ok(output);
        }
        if self.only.as_ref().is_some_and(|o| !o.contains(&index)) {
            return Err(StudyError::NotRun { stage: S::NAME });
        }
        tracing::info!("{label}");
        let output = stage.run(self)?;
        self.record(S::NAME, fingerprint)?;
        Ok(output)
    }

    /// The fingerprint stored with stage `name`'s result, if any.
    pub fn recorded(&self, name: &str) -> Option<Fingerprint> {
        self.manifest.borrow().stages.get(name).cloned()
    }

    /// Records that stage `name`'s result is stored for `fingerprint`.
    pub fn record(&self, name: &str, fingerprint: Fingerprint) -> Result<(), StudyError> {
        let mut manifest = self.manifest.borrow_mut();
        manifest.stages.insert(name.to_string(), fingerprint);
        write_manifest(&self.out, &manifest)
    }

    /// Moves a stale result aside (`NAME.stale-FINGERPRINT`) so nothing is lost and the stage
    /// can start over in its place.
    pub fn retire(&self, path: &Path, fingerprint: &str) -> Result<(), StudyError> {
        if !path.exists() {
            return Ok(());
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let aside = path.with_file_name(format!("{name}.stale-{fingerprint}"));
        if aside.exists() {
            remove_path(&aside)?;
        }
        tracing::info!(
            "{} was made for another config: moved to {}",
            path.display(),
            aside.display()
        );
        std::fs::rename(path, &aside).map_err(StudyError::io(path))
    }

    /// Adopts a directory written before per-stage fingerprints: every stage's result there
    /// was made by `saved` (older releases refused any other config).
    pub fn adopt_legacy(&self, saved: &StudyConfig) -> Result<(), StudyError> {
        if !self.manifest.borrow().stages.is_empty() {
            return Ok(());
        }
        let mut manifest = self.manifest.borrow_mut();
        for (name, fingerprint) in crate::stages::fingerprints(saved) {
            manifest.stages.insert(name.to_string(), fingerprint);
        }
        write_manifest(&self.out, &manifest)
    }
}

fn stage_index(name: &str) -> Result<usize, StudyError> {
    STAGES
        .iter()
        .position(|s| *s == name)
        .ok_or_else(|| StudyError::UnknownStage(name.to_string()))
}

fn read_manifest(out: &Path) -> Result<Manifest, StudyError> {
    let path = out.join(MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            StudyError::Config(format!("{}: not a stage manifest: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(StudyError::io(&path)(e)),
    }
}

fn write_manifest(out: &Path, manifest: &Manifest) -> Result<(), StudyError> {
    let path = out.join(MANIFEST);
    let text = serde_json::to_string_pretty(manifest).expect("manifest serialises");
    write_atomic(&path, text.as_bytes())?;
    Ok(())
}

fn remove_path(path: &Path) -> Result<(), StudyError> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(StudyError::io(path))
}
