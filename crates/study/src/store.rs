//! The results store: one SQLite row per cell, written in a transaction per cell, so a killed
//! sweep loses at most the cell in flight and resumes by skipping stored keys. Stores of
//! several shards merge into one.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::bootstrap::{CiMethod, FidCi};
use crate::cell::{Cell, CellKey};

/// Errors of the store, naming the database file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct StoreError {
    /// The database.
    pub file: String,
    /// What failed.
    pub message: String,
}

/// An open results store.
pub struct Store {
    conn: Connection,
    file: String,
}

/// Layout version of the store, in `meta.schema_version`. 1 (no version row): the FID interval
/// had no recorded meaning; 2: `fid_ci_method` and `fid_ci_replicates` say how it was made.
pub const SCHEMA_VERSION: u32 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cells (
    width INTEGER NOT NULL,
    params INTEGER NOT NULL,
    sampler TEXT NOT NULL,
    steps INTEGER NOT NULL,
    cfg_milli INTEGER NOT NULL,
    cfg REAL NOT NULL,
    seed INTEGER NOT NULL,
    n_samples INTEGER NOT NULL,
    fid REAL NOT NULL,
    fid_ci_low REAL,
    fid_ci_high REAL,
    clip REAL,
    in_domain_clip REAL,
    cmmd REAL,
    evaluations INTEGER NOT NULL,
    gflops_per_eval REAL NOT NULL,
    sampling_gflops REAL NOT NULL,
    wall_seconds REAL NOT NULL,
    fid_ci_method TEXT,
    fid_ci_replicates INTEGER,
    PRIMARY KEY (width, sampler, steps, cfg_milli, seed)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

impl Store {
    /// Opens (creating if needed) the store at `path`. A version-1 store (before FID intervals
    /// recorded their method) is upgraded in place, its stored intervals marked "unknown"; a
    /// store from a newer layout is an error.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let file = path.display().to_string();
        let fail = |message: String| StoreError {
            file: file.clone(),
            message,
        };
        let mut conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        let existed: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='cells'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| fail(format!("not a results store: {e}")))?;
        let version: Option<String> = if existed {
            conn.query_row(
                "SELECT value FROM meta WHERE key='schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| fail(format!("not a results store (no meta table): {e}")))?
        } else {
            None
        };
        let version: u32 = match (&version, existed) {
            (None, false) => SCHEMA_VERSION,
            (None, true) => 1,
            (Some(v), _) => v.trim().parse().map_err(|_| {
                fail(format!(
                    "meta.schema_version = {v:?}: expected a whole number (this ldmscale writes {SCHEMA_VERSION})"
                ))
            })?,
        };
        if version > SCHEMA_VERSION {
            return Err(fail(format!(
                "results store schema version {version} was written by a newer ldmscale; this one reads versions 1 to {SCHEMA_VERSION}"
            )));
        }
        let tx = conn.transaction().map_err(|e| fail(e.to_string()))?;
        tx.execute_batch(SCHEMA)
            .map_err(|e| fail(format!("not a results store: {e}")))?;
        if version < 2 {
            let columns: Vec<String> = {
                let mut stmt = tx
                    .prepare("PRAGMA table_info(cells)")
                    .map_err(|e| fail(e.to_string()))?;
                stmt.query_map([], |r| r.get::<_, String>(1))
                    .and_then(|rows| rows.collect())
                    .map_err(|e| fail(e.to_string()))?
            };
            for (name, kind) in [("fid_ci_method", "TEXT"), ("fid_ci_replicates", "INTEGER")] {
                if !columns.iter().any(|c| c == name) {
                    tx.execute_batch(&format!("ALTER TABLE cells ADD COLUMN {name} {kind}"))
                        .map_err(|e| fail(format!("upgrading to schema 2: {e}")))?;
                }
            }
            tx.execute(
                "UPDATE cells SET fid_ci_method='unknown' WHERE fid_ci_low IS NOT NULL AND fid_ci_method IS NULL",
                [],
            )
            .map_err(|e| fail(format!("upgrading to schema 2: {e}")))?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| fail(e.to_string()))?;
        tx.commit().map_err(|e| fail(e.to_string()))?;
        Ok(Self { conn, file })
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError {
            file: self.file.clone(),
            message: e.to_string(),
        }
    }

    /// Whether a cell with `key` is stored.
    pub fn contains(&self, key: &CellKey) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM cells WHERE width=?1 AND sampler=?2 AND steps=?3 AND cfg_milli=?4 AND seed=?5",
                params![key.width, key.sampler, key.steps, key.cfg_milli, key.seed as i64],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// Stores a cell (replacing one with the same key) in its own transaction.
    pub fn insert(&mut self, cell: &Cell) -> Result<(), StoreError> {
        let key = cell.key();
        let tx = self.conn.transaction().map_err(|e| StoreError {
            file: self.file.clone(),
            message: e.to_string(),
        })?;
        tx.execute(
            "INSERT OR REPLACE INTO cells (width, params, sampler, steps, cfg_milli, cfg, seed, n_samples, fid,
                fid_ci_low, fid_ci_high, clip, in_domain_clip, cmmd, evaluations, gflops_per_eval,
                sampling_gflops, wall_seconds, fid_ci_method, fid_ci_replicates)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)",
            params![
                cell.width,
                cell.params as i64,
                cell.sampler,
                cell.steps,
                key.cfg_milli,
                cell.cfg,
                cell.seed as i64,
                cell.n_samples,
                cell.fid,
                cell.fid_ci.map(|c| c.low),
                cell.fid_ci.map(|c| c.high),
                cell.clip,
                cell.in_domain_clip,
                cell.cmmd,
                cell.evaluations as i64,
                cell.gflops_per_eval,
                cell.sampling_gflops(),
                cell.wall_seconds,
                cell.fid_ci.map(|c| c.method.name()),
                cell.fid_ci.map(|c| c.replicates),
            ],
        )
        .map_err(|e| StoreError {
            file: self.file.clone(),
            message: e.to_string(),
        })?;
        tx.commit().map_err(|e| StoreError {
            file: self.file.clone(),
            message: e.to_string(),
        })
    }

    /// Every stored cell, ordered by key.
    pub fn cells(&self) -> Result<Vec<Cell>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT width, params, sampler, steps, cfg, seed, n_samples, fid, fid_ci_low, fid_ci_high,
                        clip, in_domain_clip, cmmd, evaluations, gflops_per_eval, wall_seconds,
                        fid_ci_method, fid_ci_replicates
                 FROM cells ORDER BY width, sampler, steps, cfg_milli, seed",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let low: Option<f64> = r.get(8)?;
                let high: Option<f64> = r.get(9)?;
                let method: Option<String> = r.get(16)?;
                let replicates: Option<u32> = r.get(17)?;
                let fid_ci = low.zip(high).map(|(low, high)| FidCi {
                    low,
                    high,
                    method: method
                        .as_deref()
                        .and_then(CiMethod::parse)
                        .unwrap_or(CiMethod::Unknown),
                    replicates: replicates.unwrap_or(0),
                });
                Ok(Cell {
                    width: r.get(0)?,
                    params: r.get::<_, i64>(1)? as u64,
                    sampler: r.get(2)?,
                    steps: r.get(3)?,
                    cfg: r.get(4)?,
                    seed: r.get::<_, i64>(5)? as u64,
                    n_samples: r.get(6)?,
                    fid: r.get(7)?,
                    fid_ci,
                    clip: r.get(10)?,
                    in_domain_clip: r.get(11)?,
                    cmmd: r.get(12)?,
                    evaluations: r.get::<_, i64>(13)? as u64,
                    gflops_per_eval: r.get(14)?,
                    wall_seconds: r.get(15)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Copies every cell of the store at `other` into this one (later values win on equal keys).
    /// Returns the number of cells copied.
    pub fn merge_from(&mut self, other: &Path) -> Result<usize, StoreError> {
        let source = Store::open(other)?;
        let cells = source.cells()?;
        for cell in &cells {
            self.insert(cell)?;
        }
        Ok(cells.len())
    }

    /// Sets a metadata value (e.g. the study config).
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta VALUES (?1, ?2)",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key=?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }
}

/// Whether shard `index` of `count` owns `key` (a stable hash of the key, so every process
/// agrees without coordination).
pub fn shard_owns(key: &CellKey, index: usize, count: usize) -> bool {
    let text = format!(
        "{}|{}|{}|{}|{}",
        key.width, key.sampler, key.steps, key.cfg_milli, key.seed
    );
    // FNV-1a: stable across platforms and releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % count as u64) as usize == index
}
