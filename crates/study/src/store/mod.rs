//! The results store: one SQLite row per cell and one per metric of a cell, written in a
//! transaction per cell, so a killed sweep loses at most the cell in flight and resumes by
//! skipping stored keys. Stores of several shards merge into one.

use std::path::Path;

use ldmscale_diffusion::SamplerId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use crate::bootstrap::{CiMethod, FidCi};
use crate::cell::{Cell, CellKey, Metric, Variant};

mod features;
mod merge;
pub use features::FeatureRows;
pub use merge::{MergeSummary, OnConflict, STUDY_FINGERPRINT};

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
/// had no recorded meaning; 2: `fid_ci_method` and `fid_ci_replicates` say how it was made;
/// 3: a model variant in the key, metrics in their own table.
pub const SCHEMA_VERSION: u32 = 3;

/// The metric names the sweep writes.
pub const FID: &str = "fid";
/// The in-domain CLIP score (x100 cosine).
pub const IN_DOMAIN_CLIP: &str = "in_domain_clip";
/// Kernel inception distance on the FID features (unbiased MMD^2, cubic kernel).
pub const KID: &str = "kid";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cells (
    id INTEGER PRIMARY KEY,
    variant TEXT NOT NULL,
    width INTEGER NOT NULL,
    sampler TEXT NOT NULL,
    steps INTEGER NOT NULL,
    cfg_milli INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    params INTEGER NOT NULL,
    cfg REAL NOT NULL,
    n_samples INTEGER NOT NULL,
    evaluations INTEGER NOT NULL,
    gflops_per_eval REAL NOT NULL,
    sampling_gflops REAL NOT NULL,
    wall_seconds REAL NOT NULL,
    UNIQUE (variant, width, sampler, steps, cfg_milli, seed)
);
CREATE TABLE IF NOT EXISTS metrics (
    cell INTEGER NOT NULL REFERENCES cells(id),
    name TEXT NOT NULL,
    value REAL NOT NULL,
    ci_low REAL,
    ci_high REAL,
    ci_method TEXT,
    ci_replicates INTEGER,
    PRIMARY KEY (cell, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// Cells of width ?2 whose variant is of kind ?1 (`base`, or `super-res@N` for any N).
const KIND_MATCH: &str = "(variant=?1 OR variant LIKE ?1 || '@%') AND width=?2";

const KEY_MATCH: &str =
    "variant=?1 AND width=?2 AND sampler=?3 AND steps=?4 AND cfg_milli=?5 AND seed=?6";

fn fail(file: &str, message: impl Into<String>) -> StoreError {
    StoreError {
        file: file.to_string(),
        message: message.into(),
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path` for writing. Older layouts are upgraded
    /// in place (version 1's intervals marked "unknown"; version 2's FID and CLIP columns moved
    /// to the metrics table, every cell of the base variant); a newer layout, or an SQLite file
    /// that holds other tables and no cells, is an error and is left untouched.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let file = path.display().to_string();
        let mut conn = Connection::open(path).map_err(|e| fail(&file, e.to_string()))?;
        let version = stored_version(&conn, &file)?.unwrap_or(SCHEMA_VERSION);
        upgrade(&mut conn, version, &file)?;
        Ok(Self { conn, file })
    }

    /// Opens an existing store without writing to it (a read-only file or folder works): an
    /// older layout is upgraded in a copy in memory, the file is never changed, and a file
    /// that is not a results store is refused without creating anything.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let file = path.display().to_string();
        if !path.is_file() {
            return Err(fail(&file, "no such results store"));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| fail(&file, e.to_string()))?;
        let version = stored_version(&conn, &file)?.ok_or_else(|| {
            fail(
                &file,
                "not an ldmscale results store (it has no cells table; `ldmscale study` writes results.sqlite)",
            )
        })?;
        if version == SCHEMA_VERSION {
            return Ok(Self { conn, file });
        }
        let mut copy = copy_to_memory(&conn).map_err(|e| fail(&file, e.to_string()))?;
        upgrade(&mut copy, version, &file)?;
        Ok(Self { conn: copy, file })
    }

    /// The database file, as errors name it.
    pub fn file(&self) -> &str {
        &self.file
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        fail(&self.file, e.to_string())
    }

    /// Whether a cell with `key` is stored.
    pub fn contains(&self, key: &CellKey) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT 1 FROM cells WHERE {KEY_MATCH}"),
                key_params(key),
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// Stores a cell (replacing one with the same key) with its metrics, in one transaction.
    pub fn insert(&mut self, cell: &Cell) -> Result<(), StoreError> {
        self.insert_with_features(cell, None)
    }

    /// Stores a cell with its metrics and, where given, its generated features (for paired
    /// comparisons), in one transaction.
    pub fn insert_with_features(
        &mut self,
        cell: &Cell,
        generated: Option<&FeatureRows>,
    ) -> Result<(), StoreError> {
        let file = self.file.clone();
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            insert_cell(&tx, cell)?;
            if let Some(rows) = generated {
                features::put_cell(&tx, &cell.key(), rows)?;
            }
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| fail(&file, e.to_string()))
    }

    /// Removes every cell of `width`'s variants of `variant`'s kind (its model changed; a
    /// super-resolution run's every snapshot); returns how many.
    pub fn remove_width(&mut self, variant: Variant, width: u32) -> Result<usize, StoreError> {
        let file = self.file.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| fail(&file, e.to_string()))?;
        let run = |tx: &Transaction| -> rusqlite::Result<usize> {
            tx.execute(
                &format!(
                    "DELETE FROM metrics WHERE cell IN (SELECT id FROM cells WHERE {KIND_MATCH})"
                ),
                params![variant.kind(), width],
            )?;
            features::forget_width(tx, variant, width)?;
            tx.execute(
                &format!("DELETE FROM cells WHERE {KIND_MATCH}"),
                params![variant.kind(), width],
            )
        };
        let n = run(&tx).map_err(|e| fail(&file, e.to_string()))?;
        tx.commit().map_err(|e| fail(&file, e.to_string()))?;
        Ok(n)
    }

    /// Every stored cell with its metrics, ordered by key.
    pub fn cells(&self) -> Result<Vec<Cell>, StoreError> {
        let mut cells = self.cell_rows()?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT cell, name, value, ci_low, ci_high, ci_method, ci_replicates FROM metrics ORDER BY cell, name",
            )
            .map_err(|e| self.err(e))?;
        let metrics = stmt
            .query_map([], |r| {
                let ci = r.get::<_, Option<f64>>(3)?.zip(r.get::<_, Option<f64>>(4)?);
                let method: Option<String> = r.get(5)?;
                let ci = ci.map(|(low, high)| FidCi {
                    low,
                    high,
                    method: method
                        .as_deref()
                        .and_then(CiMethod::parse)
                        .unwrap_or(CiMethod::Unknown),
                    replicates: r.get::<_, Option<u32>>(6).ok().flatten().unwrap_or(0),
                });
                Ok((
                    r.get::<_, i64>(0)?,
                    Metric {
                        name: r.get(1)?,
                        value: r.get(2)?,
                        ci,
                    },
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        let index: std::collections::HashMap<i64, usize> = cells
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect();
        for (id, metric) in metrics {
            if let Some(&i) = index.get(&id) {
                attach(&mut cells[i].1, metric);
            }
        }
        Ok(cells.into_iter().map(|(_, c)| c).collect())
    }

    /// Cells with their row ids, without metrics.
    fn cell_rows(&self) -> Result<Vec<(i64, Cell)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, variant, width, sampler, steps, cfg, seed, params, n_samples, evaluations,
                        gflops_per_eval, wall_seconds
                 FROM cells ORDER BY variant, width, sampler, steps, cfg_milli, seed",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let text = |i: usize| r.get::<_, String>(i);
                let bad = |i, e: String| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                };
                let variant: Variant = text(1)?.parse().map_err(|e| bad(1, e))?;
                let sampler: SamplerId = text(3)?
                    .parse()
                    .map_err(|e: ldmscale_diffusion::UnknownSampler| bad(3, e.to_string()))?;
                Ok((
                    r.get(0)?,
                    Cell {
                        variant,
                        width: r.get(2)?,
                        sampler,
                        steps: r.get(4)?,
                        cfg: r.get(5)?,
                        seed: r.get::<_, i64>(6)? as u64,
                        params: r.get::<_, i64>(7)? as u64,
                        n_samples: r.get(8)?,
                        fid: f64::NAN,
                        fid_ci: None,
                        in_domain_clip: None,
                        metrics: Vec::new(),
                        evaluations: r.get::<_, i64>(9)? as u64,
                        gflops_per_eval: r.get(10)?,
                        wall_seconds: r.get(11)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
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

/// Puts a stored metric where the cell keeps it.
fn attach(cell: &mut Cell, metric: Metric) {
    match metric.name.as_str() {
        FID => {
            cell.fid = metric.value;
            cell.fid_ci = metric.ci;
        }
        IN_DOMAIN_CLIP => cell.in_domain_clip = Some(metric.value),
        _ => cell.metrics.push(metric),
    }
}

fn key_params(key: &CellKey) -> impl rusqlite::Params + '_ {
    (
        key.variant.name(),
        key.width,
        key.sampler.as_str(),
        key.steps,
        key.cfg_milli,
        key.seed as i64,
    )
}

fn insert_cell(tx: &Transaction, cell: &Cell) -> rusqlite::Result<()> {
    let key = cell.key();
    features::forget_cell(tx, &key)?;
    tx.execute(
        &format!("DELETE FROM metrics WHERE cell IN (SELECT id FROM cells WHERE {KEY_MATCH})"),
        key_params(&key),
    )?;
    tx.execute(
        &format!("DELETE FROM cells WHERE {KEY_MATCH}"),
        key_params(&key),
    )?;
    tx.execute(
        "INSERT INTO cells (variant, width, sampler, steps, cfg_milli, seed, params, cfg, n_samples,
            evaluations, gflops_per_eval, sampling_gflops, wall_seconds)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
        params![
            key.variant.name(),
            key.width,
            key.sampler.as_str(),
            key.steps,
            key.cfg_milli,
            key.seed as i64,
            cell.params as i64,
            cell.cfg,
            cell.n_samples,
            cell.evaluations as i64,
            cell.gflops_per_eval,
            cell.sampling_gflops(),
            cell.wall_seconds,
        ],
    )?;
    let id = tx.last_insert_rowid();
    let fid = Metric {
        name: FID.into(),
        value: cell.fid,
        ci: cell.fid_ci,
    };
    let clip = cell.in_domain_clip.map(|value| Metric {
        name: IN_DOMAIN_CLIP.into(),
        value,
        ci: None,
    });
    for m in std::iter::once(&fid)
        .chain(clip.as_ref())
        .chain(&cell.metrics)
    {
        tx.execute(
            "INSERT INTO metrics VALUES (?1,?2,?3,?4,?5,?6,?7)",
            params![
                id,
                m.name,
                m.value,
                m.ci.map(|c| c.low),
                m.ci.map(|c| c.high),
                m.ci.map(|c| c.method.name()),
                m.ci.map(|c| c.replicates),
            ],
        )?;
    }
    Ok(())
}

/// The layout version of the database `conn` holds; `None` for a database without a cells
/// table: a new, empty file, or (an error) one that holds other tables.
fn stored_version(conn: &Connection, file: &str) -> Result<Option<u32>, StoreError> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| fail(file, format!("not a results store: {e}")))?;
    if !tables.iter().any(|t| t == "cells") {
        if tables.is_empty() {
            return Ok(None);
        }
        return Err(fail(
            file,
            format!(
                "not an ldmscale results store (it holds the tables {}, and no cells table); left unchanged",
                tables.join(", ")
            ),
        ));
    }
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key='schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| fail(file, format!("not a results store (no meta table): {e}")))?;
    match version {
        None => Ok(Some(1)),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            fail(
                file,
                format!("meta.schema_version = {v:?}: expected a whole number (this ldmscale writes {SCHEMA_VERSION})"),
            )
        }),
    }
}

/// Brings `conn` from layout `version` to the current one in one transaction.
fn upgrade(conn: &mut Connection, version: u32, file: &str) -> Result<(), StoreError> {
    if version > SCHEMA_VERSION {
        return Err(fail(
            file,
            format!(
                "results store schema version {version} was written by a newer ldmscale; this one reads versions 1 to {SCHEMA_VERSION}"
            ),
        ));
    }
    let tx = conn.transaction().map_err(|e| fail(file, e.to_string()))?;
    if version < 2 {
        upgrade_to_2(&tx).map_err(|e| fail(file, format!("upgrading to schema 2: {e}")))?;
    }
    if version < 3 {
        upgrade_to_3(&tx).map_err(|e| fail(file, format!("upgrading to schema 3: {e}")))?;
    }
    tx.execute_batch(SCHEMA)
        .and_then(|()| tx.execute_batch(features::FEATURES_SCHEMA))
        .map_err(|e| fail(file, format!("not a results store: {e}")))?;
    tx.execute(
        "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?1)",
        params![SCHEMA_VERSION.to_string()],
    )
    .map_err(|e| fail(file, e.to_string()))?;
    tx.commit().map_err(|e| fail(file, e.to_string()))
}

/// Every table of `source` (layout and rows) in a new in-memory database.
fn copy_to_memory(source: &Connection) -> rusqlite::Result<Connection> {
    let copy = Connection::open_in_memory()?;
    let tables: Vec<(String, String)> = source
        .prepare("SELECT name, sql FROM sqlite_master WHERE type='table'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (name, sql) in tables {
        copy.execute_batch(&sql)?;
        let mut select = source.prepare(&format!("SELECT * FROM \"{name}\""))?;
        let width = select.column_count();
        let marks = vec!["?"; width].join(",");
        let mut insert = copy.prepare(&format!("INSERT INTO \"{name}\" VALUES ({marks})"))?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let values: Vec<rusqlite::types::Value> =
                (0..width).map(|i| row.get(i)).collect::<Result<_, _>>()?;
            insert.execute(rusqlite::params_from_iter(values))?;
        }
    }
    Ok(copy)
}

/// Version 1 to 2: the interval's method and replicates.
fn upgrade_to_2(tx: &Transaction) -> rusqlite::Result<()> {
    let columns: Vec<String> = tx
        .prepare("PRAGMA table_info(cells)")?
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<Result<_, _>>()?;
    for (name, kind) in [("fid_ci_method", "TEXT"), ("fid_ci_replicates", "INTEGER")] {
        if !columns.iter().any(|c| c == name) {
            tx.execute_batch(&format!("ALTER TABLE cells ADD COLUMN {name} {kind}"))?;
        }
    }
    tx.execute(
        "UPDATE cells SET fid_ci_method='unknown' WHERE fid_ci_low IS NOT NULL AND fid_ci_method IS NULL",
        [],
    )?;
    Ok(())
}

/// Version 2 to 3: every cell becomes the base variant's; FID (with its interval) and the
/// CLIP scores move to the metrics table.
fn upgrade_to_3(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE cells RENAME TO cells_v2;")?;
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(
        "INSERT INTO cells (variant, width, sampler, steps, cfg_milli, seed, params, cfg, n_samples,
            evaluations, gflops_per_eval, sampling_gflops, wall_seconds)
         SELECT 'base', width, sampler, steps, cfg_milli, seed, params, cfg, n_samples,
            evaluations, gflops_per_eval, sampling_gflops, wall_seconds FROM cells_v2;",
    )?;
    let join = "FROM cells_v2 v JOIN cells c ON c.variant='base' AND c.width=v.width
        AND c.sampler=v.sampler AND c.steps=v.steps AND c.cfg_milli=v.cfg_milli AND c.seed=v.seed";
    tx.execute_batch(&format!(
        "INSERT INTO metrics SELECT c.id, 'fid', v.fid, v.fid_ci_low, v.fid_ci_high,
            v.fid_ci_method, v.fid_ci_replicates {join};"
    ))?;
    for name in ["in_domain_clip", "clip", "cmmd"] {
        tx.execute_batch(&format!(
            "INSERT INTO metrics SELECT c.id, '{name}', v.{name}, NULL, NULL, NULL, NULL {join}
             WHERE v.{name} IS NOT NULL;"
        ))?;
    }
    tx.execute_batch("DROP TABLE cells_v2;")
}

/// Whether shard `index` of `count` owns `key` (a stable hash of the key, so every process
/// agrees without coordination; base cells hash as before variants existed).
pub fn shard_owns(key: &CellKey, index: usize, count: usize) -> bool {
    let mut fields = vec![
        key.width.to_string(),
        key.sampler.as_str().to_string(),
        key.steps.to_string(),
        key.cfg_milli.to_string(),
        key.seed.to_string(),
    ];
    if key.variant != Variant::Base {
        fields.insert(0, key.variant.name());
    }
    (ldmscale_util::hash::fnv1a(&fields.join("|")) % count as u64) as usize == index
}
