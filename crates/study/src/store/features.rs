//! Feature rows kept beside the cells: each cell's generated features and the reference's, so
//! two cells can be compared with a paired bootstrap after the sweep (and after a merge).
//! Rows are f32, little-endian, row-major; a few KB per cell at the small presets.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Store, StoreError, fail};
use crate::cell::{CellKey, SUPER_RES, Variant};

/// The table; created by `Store::open`, absent from stores written before it existed.
pub(super) const FEATURES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS features (
    name TEXT PRIMARY KEY,
    rows INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    data BLOB NOT NULL
);";

/// The name of the reference set's rows.
pub(super) const REFERENCE: &str = "reference";

/// The stored names of every reference set: the sweep's and each downstream variant's.
pub(super) fn reference_names() -> [String; 2] {
    [REFERENCE.to_string(), format!("{REFERENCE}:{SUPER_RES}")]
}

/// Feature rows `rows x dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureRows {
    /// Rows (images).
    pub rows: usize,
    /// Feature width.
    pub dim: usize,
    /// `rows * dim` values, row-major.
    pub data: Vec<f32>,
}

impl FeatureRows {
    /// Rows of `dim` values; an error when `data` is not whole rows.
    pub fn new(data: Vec<f32>, dim: usize) -> Result<Self, String> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(format!("{} values are not whole rows of {dim}", data.len()));
        }
        Ok(Self {
            rows: data.len() / dim,
            dim,
            data,
        })
    }
}

/// The stored name of a cell's rows: `base/w16/ddim/8/cfg3000/seed0`.
fn cell_name(key: &CellKey) -> String {
    format!(
        "{}/w{}/{}/{}/cfg{}/seed{}",
        key.variant.name(),
        key.width,
        key.sampler.as_str(),
        key.steps,
        key.cfg_milli,
        key.seed
    )
}

/// Removes a cell's rows (it is being measured again or deleted).
pub(super) fn forget_cell(tx: &Transaction, key: &CellKey) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM features WHERE name=?1",
        params![cell_name(key)],
    )?;
    Ok(())
}

/// Removes the rows of every cell of a width's variants of `variant`'s kind.
pub(super) fn forget_width(tx: &Transaction, variant: Variant, width: u32) -> rusqlite::Result<()> {
    let kind = variant.kind();
    for pattern in [format!("{kind}/w{width}/%"), format!("{kind}@%/w{width}/%")] {
        tx.execute("DELETE FROM features WHERE name LIKE ?1", params![pattern])?;
    }
    Ok(())
}

pub(super) fn put(tx: &Transaction, name: &str, rows: &FeatureRows) -> rusqlite::Result<()> {
    let bytes: Vec<u8> = rows.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tx.execute(
        "INSERT OR REPLACE INTO features VALUES (?1, ?2, ?3, ?4)",
        params![name, rows.rows as i64, rows.dim as i64, bytes],
    )?;
    Ok(())
}

pub(super) fn put_cell(
    tx: &Transaction,
    key: &CellKey,
    rows: &FeatureRows,
) -> rusqlite::Result<()> {
    put(tx, &cell_name(key), rows)
}

impl Store {
    /// Whether this store has the features table (stores written before it do not).
    fn has_features(&self) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='features'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    pub(super) fn features_named(&self, name: &str) -> Result<Option<FeatureRows>, StoreError> {
        if !self.has_features()? {
            return Ok(None);
        }
        let row = self
            .conn
            .query_row(
                "SELECT rows, dim, data FROM features WHERE name=?1",
                params![name],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((rows, dim, bytes)) = row else {
            return Ok(None);
        };
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if rows < 0 || dim < 0 || data.len() as i64 != rows * dim || bytes.len() % 4 != 0 {
            return Err(fail(
                &self.file,
                format!(
                    "features {name:?}: {rows} x {dim} declared, {} bytes stored",
                    bytes.len()
                ),
            ));
        }
        Ok(Some(FeatureRows {
            rows: rows as usize,
            dim: dim as usize,
            data,
        }))
    }

    /// The generated features of the cell `key`, where the sweep kept them.
    pub fn cell_features(&self, key: &CellKey) -> Result<Option<FeatureRows>, StoreError> {
        self.features_named(&cell_name(key))
    }

    /// The reference set's features, where the sweep kept them.
    pub fn reference_features(&self) -> Result<Option<FeatureRows>, StoreError> {
        self.features_named(REFERENCE)
    }

    /// Stores the reference set's features (replacing earlier ones).
    pub fn set_reference_features(&mut self, rows: &FeatureRows) -> Result<(), StoreError> {
        self.set_features_named(REFERENCE, rows)
    }

    /// The features of the reference set a downstream variant's cells are measured against
    /// (`kind`, e.g. "super-res": its HR images), where kept.
    pub fn variant_reference_features(
        &self,
        kind: &str,
    ) -> Result<Option<FeatureRows>, StoreError> {
        self.features_named(&format!("{REFERENCE}:{kind}"))
    }

    /// Stores a downstream variant's reference features (replacing earlier ones).
    pub fn set_variant_reference_features(
        &mut self,
        kind: &str,
        rows: &FeatureRows,
    ) -> Result<(), StoreError> {
        self.set_features_named(&format!("{REFERENCE}:{kind}"), rows)
    }

    fn set_features_named(&mut self, name: &str, rows: &FeatureRows) -> Result<(), StoreError> {
        let file = self.file.clone();
        let run = |conn: &mut rusqlite::Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            put(&tx, name, rows)?;
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| fail(&file, e.to_string()))
    }
}
