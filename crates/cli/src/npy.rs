//! NumPy `.npy` arrays for interop with Python tools (prompt embeddings, latents), through the
//! eval crate's reader and writer: f32 in memory, written as `<f4` atomically.

use std::path::Path;

use anyhow::{Context, Result};
use ldmscale_eval::npz::{encode_npy_f32, parse_npy};

/// An array read from a `.npy` file, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f32>,
}

/// Reads a `.npy` file holding `<f4` or `<f8` data.
pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let array = parse_npy(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a supported .npy array: {e}", path.display()))?;
    Ok(Array {
        shape: array.shape,
        data: array.data.into_iter().map(|v| v as f32).collect(),
    })
}

/// Fails, naming the file and the first index, when a value is NaN or infinite.
pub fn check_finite(array: &Array, path: &Path) -> Result<()> {
    let bad = array.data.iter().position(|v| !v.is_finite());
    if let Some(at) = bad {
        let count = array.data.iter().filter(|v| !v.is_finite()).count();
        anyhow::bail!(
            "{}: value {at} (of {}) is {}; {count} values are not finite",
            path.display(),
            array.data.len(),
            array.data[at]
        );
    }
    Ok(())
}

/// Writes an f32 array to `path` atomically.
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    ldmscale_model::weights::write_atomic(path, &encode_npy_f32(shape, data))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write(&path, &[2, 3, 4], &data).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.shape, vec![2, 3, 4]);
        assert_eq!(back.data, data);
        std::fs::write(&path, b"not an array").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("a.npy") && err.contains("magic"), "{err}");
    }
}
