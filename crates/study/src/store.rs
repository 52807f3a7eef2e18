//! The results store: one SQLite row per cell, written in a transaction per cell, so a killed
//! sweep loses at most the cell in flight and resumes by skipping stored keys. Stores of
//! several shards merge into one.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

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
    PRIMARY KEY (width, sampler, steps, cfg_milli, seed)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let file = path.display().to_string();
        let err = |e: rusqlite::Error| StoreError {
            file: file.clone(),
            message: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(|e| StoreError {
            file: file.clone(),
            message: format!("not a results store: {e}"),
        })?;
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
            "INSERT OR REPLACE INTO cells VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)",
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
                cell.fid_ci.map(|c| c.0),
                cell.fid_ci.map(|c| c.1),
                cell.clip,
                cell.in_domain_clip,
                cell.cmmd,
                cell.evaluations as i64,
                cell.gflops_per_eval,
                cell.sampling_gflops(),
                cell.wall_seconds,
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
                        clip, in_domain_clip, cmmd, evaluations, gflops_per_eval, wall_seconds
                 FROM cells ORDER BY width, sampler, steps, cfg_milli, seed",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let low: Option<f64> = r.get(8)?;
                let high: Option<f64> = r.get(9)?;
                Ok(Cell {
                    width: r.get(0)?,
                    params: r.get::<_, i64>(1)? as u64,
                    sampler: r.get(2)?,
                    steps: r.get(3)?,
                    cfg: r.get(4)?,
                    seed: r.get::<_, i64>(5)? as u64,
                    n_samples: r.get(6)?,
                    fid: r.get(7)?,
                    fid_ci: low.zip(high),
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
