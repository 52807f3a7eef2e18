//! Checkpoints: a directory per step, written under a temporary name and renamed into place,
//! so a run killed at any moment leaves only complete checkpoints.
//!
//! `checkpoints/step-000100/` holds `unet/` and `unet_ema/` (diffusers layout),
//! `optimizer.safetensors` (AdamW moments, EMA shadow and the task's extra state, such as a
//! distillation's target, by parameter name) and `state.json`.
//! `snapshots/step-000050/` (the config's `snapshot_steps`) holds the models and `state.json`
//! only, and is never deleted: quality against training compute from one run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ldmscale_model::weights::write_atomic;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optimizer::AdamW;
use crate::params::{self, Named};

/// The scalar state of a run at a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Samples consumed (the data cursor).
    pub samples: u64,
    /// AdamW's step counter.
    pub adamw_step: u64,
    /// Training compute so far: forward+backward GFLOPs (3x the forward).
    pub train_gflops: f64,
    /// The paper's training-compute axis: normalised cost x iterations.
    pub normalized_cost_x_iterations: f64,
    /// Loss at the last step.
    pub last_loss: f64,
    /// The data key the run was trained on.
    pub data_key: String,
}

/// `checkpoints/` under a run directory.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// The directory of the checkpoint at `step`.
pub fn step_dir(run: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run).join(format!("step-{step:08}"))
}

/// Complete checkpoints, oldest first.
pub fn list(run: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = step_dirs(&checkpoints_dir(run));
    out.retain(|(_, dir)| dir.join("state.json").exists());
    out
}

/// The `step-N` directories in `dir`, by step.
fn step_dirs(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Writes a checkpoint through `write(tmp_dir)`, then renames it into place and deletes all but
/// the newest `keep` checkpoints.
pub fn commit(
    run: &Path,
    step: u64,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    let dir = step_dir(run, step);
    let tmp = checkpoints_dir(run).join(format!(".tmp-step-{step:08}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let placed = write_then_rename(&tmp, &dir, write);
    if placed.is_err() {
        // A failed save (disk full, say) must not leave its half-written copy on that disk.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    placed?;
    let all = list(run);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_dir_all(old);
    }
    // Temporary directories of killed runs.
    if let Ok(entries) = std::fs::read_dir(checkpoints_dir(run)) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(".tmp-") && e.path() != tmp {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dir)
}

/// Writes the checkpoint into `tmp`, then moves it to `dir`, replacing an older copy.
fn write_then_rename(
    tmp: &Path,
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(tmp).map_err(|e| TrainError::io(tmp, e))?;
    write(tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| TrainError::io(dir, e))
}

/// `snapshots/` under a run directory.
pub fn snapshots_dir(run: &Path) -> PathBuf {
    run.join("snapshots")
}

/// Complete snapshots (`snapshot_steps`), oldest first.
pub fn snapshots(run: &Path) -> Vec<(u64, PathBuf)> {
    step_dirs(&snapshots_dir(run))
}

/// Writes snapshot `step` through `write(tmp_dir)` and renames it into place (a resumed run
/// that passes the step again writes the same bits).
pub fn commit_snapshot(
    run: &Path,
    step: u64,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    let parent = snapshots_dir(run);
    let dir = parent.join(format!("step-{step:08}"));
    let tmp = parent.join(format!(".tmp-step-{step:08}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let placed = write_then_rename(&tmp, &dir, write);
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    placed.map(|_| dir)
}

/// What a checkpoint restores besides its model directories.
pub struct Saved {
    /// The checkpoint's `optimizer.safetensors`.
    pub path: PathBuf,
    /// Weights by parameter name.
    pub weights: Named,
    /// AdamW's first moments.
    pub m: Named,
    /// AdamW's second moments.
    pub v: Named,
    /// The EMA shadow (empty without EMA).
    pub ema: Named,
    /// The task's extra state (empty for tasks without one).
    pub task: Named,
    /// The scalar state.
    pub state: TrainState,
}

/// The newest complete checkpoint of `run`, read onto `device`; one trained on data other than
/// `data_key` is refused.
pub fn read_latest(
    run: &Path,
    data_key: &str,
    device: &Device,
) -> Result<Option<Saved>, TrainError> {
    let Some((_, dir)) = list(run).pop() else {
        return Ok(None);
    };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|source| TrainError::State {
        path: state_path.clone(),
        source,
    })?;
    if state.data_key != data_key {
        return Err(TrainError::DataChanged {
            path: state_path,
            saved: state.data_key,
            current: data_key.into(),
        });
    }
    let path = dir.join("optimizer.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let group = |prefix| {
        params::read_named(&bytes, prefix, device).map_err(|source| TrainError::Tensors {
            path: path.clone(),
            source,
        })
    };
    Ok(Some(Saved {
        weights: group("param/")?,
        m: group("m/")?,
        v: group("v/")?,
        ema: group("ema/")?,
        task: group("task/")?,
        state,
        path,
    }))
}

/// Writes `optimizer.safetensors` (weights, AdamW moments, EMA and the task's extra state by
/// name) and `state.json` into checkpoint directory `dir`.
pub fn write_state(
    dir: &Path,
    weights: &Named,
    adam: &AdamW,
    (ema, task): (&Named, &Named),
    state: &TrainState,
) -> Result<(), TrainError> {
    let bytes = params::write_named(
        &[
            ("param/", weights),
            ("m/", &adam.m),
            ("v/", &adam.v),
            ("ema/", ema),
            ("task/", task),
        ],
        BTreeMap::from([("step".to_string(), state.step.to_string())]),
    );
    write_atomic(&dir.join("optimizer.safetensors"), &bytes)?;
    write_state_json(dir, state)
}

/// Writes `state.json` into `dir`.
pub fn write_state_json(dir: &Path, state: &TrainState) -> Result<(), TrainError> {
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    Ok(write_atomic(&dir.join("state.json"), json.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(run: &Path) -> Vec<String> {
        std::fs::read_dir(checkpoints_dir(run))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect()
    }

    #[test]
    fn a_failed_save_leaves_no_temporary_directory() {
        let run = tempfile::tempdir().unwrap();
        let failing = |tmp: &Path| {
            std::fs::write(tmp.join("unet.safetensors"), b"half").unwrap();
            Err(TrainError::io(tmp, std::io::Error::other("disk full")))
        };
        assert!(commit(run.path(), 7, 2, failing).is_err());
        assert_eq!(leftovers(run.path()), Vec::<String>::new());

        let written = |tmp: &Path| {
            std::fs::write(tmp.join("state.json"), b"{}").map_err(|e| TrainError::io(tmp, e))
        };
        commit(run.path(), 8, 2, written).unwrap();
        assert_eq!(leftovers(run.path()), vec!["step-00000008".to_string()]);
    }
}
