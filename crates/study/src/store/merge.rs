//! Joining stores (the shards of one study): only stores of the same study merge, and a cell
//! both hold with different values is a conflict, never silently overwritten.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::params;

use super::features::{self, FeatureRows};
use super::{Store, StoreError, fail, insert_cell};
use crate::cell::{Cell, CellKey};

/// The `meta` key holding the fingerprint of what makes cells comparable: the data, the
/// first stage, the text encoder and the evaluator (reference statistics and features).
pub const STUDY_FINGERPRINT: &str = "study_fingerprint";

/// The `meta` keys holding each width's model fingerprint start with this.
const WIDTH_FINGERPRINT: &str = "fingerprint:";

/// What a merge does with a cell both stores hold with different values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// Refuse the merge and change nothing.
    #[default]
    Refuse,
    /// Keep the value already in the output store.
    Keep,
    /// Take the incoming store's value.
    Replace,
}

/// What a merge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeSummary {
    /// Cells new to the output store.
    pub added: usize,
    /// Cells both stores hold with the same measurements.
    pub identical: usize,
    /// Cells both hold with different measurements.
    pub conflicting: usize,
    /// Conflicting cells whose incoming value was written.
    pub replaced: usize,
}

impl Store {
    /// Copies the cells of the store at `other` into this one, in one transaction. Refused,
    /// with nothing written, when the stores come from different studies or a width's model
    /// differs, and (under [`OnConflict::Refuse`]) when a cell is held with other values.
    pub fn merge_from(
        &mut self,
        other: &Path,
        on_conflict: OnConflict,
    ) -> Result<MergeSummary, StoreError> {
        let source = Store::open_read_only(other)?;
        let meta = self.meta_to_adopt(&source)?;
        let existing: HashMap<CellKey, Cell> =
            self.cells()?.into_iter().map(|c| (c.key(), c)).collect();
        let mut summary = MergeSummary::default();
        let mut writes = Vec::new();
        let mut conflicts = Vec::new();
        for cell in source.cells()? {
            match existing.get(&cell.key()) {
                None => writes.push(cell),
                Some(old) if same_measurement(old, &cell) => summary.identical += 1,
                Some(_) => conflicts.push(cell),
            }
        }
        summary.added = writes.len();
        summary.conflicting = conflicts.len();
        match (on_conflict, conflicts.first()) {
            (OnConflict::Refuse, Some(first)) => {
                return Err(fail(
                    &self.file,
                    format!(
                        "{} cells of {} hold other values here (the first: {}); nothing merged. \
                         Pass --on-conflict keep or --on-conflict replace to choose",
                        conflicts.len(),
                        source.file,
                        describe(first)
                    ),
                ));
            }
            (OnConflict::Replace, _) => {
                summary.replaced = conflicts.len();
                writes.extend(conflicts);
            }
            _ => {}
        }
        let features = features_to_copy(&source, &writes, self)?;
        self.write_merge(&meta, &writes, &features)?;
        Ok(summary)
    }

    /// Refuses, as [`Store::merge_from`] would, a `source` of another study or another model
    /// of a shared width; reads only, so a read-only store can be checked before anything is
    /// opened for writing.
    pub fn check_mergeable(&self, source: &Store) -> Result<(), StoreError> {
        self.meta_to_adopt(source).map(drop)
    }

    /// The identity entries of `source` this store lacks, after checking that the two stores
    /// hold the same study and the same model of every width they share.
    fn meta_to_adopt(&self, source: &Store) -> Result<Vec<(String, String)>, StoreError> {
        let theirs = source.identity()?;
        if !theirs.iter().any(|(k, _)| k == STUDY_FINGERPRINT) {
            return Err(fail(
                &source.file,
                "records no study fingerprint (written by an older ldmscale, or not by `ldmscale \
                 study`): its cells cannot be shown to belong to this study; nothing merged",
            ));
        }
        let ours: HashMap<String, String> = self.identity()?.into_iter().collect();
        if ours.is_empty() && !self.cells()?.is_empty() {
            return Err(fail(
                &self.file,
                "holds cells but records no study fingerprint; nothing merged",
            ));
        }
        let mut adopt = Vec::new();
        for (key, value) in theirs {
            match ours.get(&key) {
                None => adopt.push((key, value)),
                Some(v) if *v == value => {}
                Some(v) => return Err(mismatch(self, source, &key, v, &value)),
            }
        }
        Ok(adopt)
    }

    /// The study and width fingerprints in `meta`.
    fn identity(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM meta WHERE key=?1 OR key LIKE ?2 ORDER BY key")
            .map_err(|e| self.err(e))?;
        stmt.query_map(
            params![STUDY_FINGERPRINT, format!("{WIDTH_FINGERPRINT}%")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    fn write_merge(
        &mut self,
        meta: &[(String, String)],
        cells: &[Cell],
        features: &Copied,
    ) -> Result<(), StoreError> {
        let file = self.file.clone();
        let run = |conn: &mut rusqlite::Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for (key, value) in meta {
                tx.execute("INSERT INTO meta VALUES (?1, ?2)", params![key, value])?;
            }
            for cell in cells {
                insert_cell(&tx, cell)?;
            }
            for (key, rows) in &features.cells {
                features::put_cell(&tx, key, rows)?;
            }
            for (name, rows) in &features.references {
                features::put(&tx, name, rows)?;
            }
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| fail(&file, e.to_string()))
    }
}

/// The feature rows a merge copies along with its cells.
struct Copied {
    cells: Vec<(CellKey, FeatureRows)>,
    /// (name, rows) of reference sets.
    references: Vec<(String, FeatureRows)>,
}

/// The kept features of the cells being written, and the reference sets' (the sweep's, a
/// downstream variant's) where `into` lacks them: stores of one study share them.
fn features_to_copy(source: &Store, cells: &[Cell], into: &Store) -> Result<Copied, StoreError> {
    let mut copied = Vec::new();
    for cell in cells {
        if let Some(rows) = source.cell_features(&cell.key())? {
            copied.push((cell.key(), rows));
        }
    }
    let mut references = Vec::new();
    for name in features::reference_names() {
        if into.features_named(&name)?.is_none()
            && let Some(rows) = source.features_named(&name)?
        {
            references.push((name, rows));
        }
    }
    Ok(Copied {
        cells: copied,
        references,
    })
}

fn mismatch(ours: &Store, theirs: &Store, key: &str, a: &str, b: &str) -> StoreError {
    let what = match key.strip_prefix(WIDTH_FINGERPRINT) {
        Some(width) => format!("their {width} cells were measured with different models"),
        None => {
            "they come from different studies (other data, first stage, text encoder or evaluator)"
                .into()
        }
    };
    fail(
        &ours.file,
        format!(
            "cannot merge {}: {what} ({key} {a} here, {b} there); nothing merged",
            theirs.file
        ),
    )
}

/// Whether two cells of one key hold the same measurements (wall time aside).
fn same_measurement(a: &Cell, b: &Cell) -> bool {
    Cell {
        wall_seconds: 0.0,
        ..a.clone()
    } == Cell {
        wall_seconds: 0.0,
        ..b.clone()
    }
}

fn describe(cell: &Cell) -> String {
    format!(
        "{} w{} {} x{} cfg {} seed {}",
        cell.variant, cell.width, cell.sampler, cell.steps, cell.cfg, cell.seed
    )
}
