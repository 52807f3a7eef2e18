//! NumPy `.npy` arrays and `.npz` archives (a zip of `.npy` files), enough for FID statistics
//! files: pytorch-fid / clean-fid write `np.savez_compressed(path, mu=mu, sigma=sigma)` in
//! float64, and read them with `np.load(path)['mu']`.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use crate::error::EvalError;
use crate::stats::GaussianStats;

/// An array of f64 values read from `.npy` data (stored as `<f8` or `<f4`).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f64>,
}

/// The most data one `.npy` array may hold: 4 GiB (FID statistics hold 32 MB).
pub const MAX_NPY_BYTES: u64 = 4 << 30;

/// The most dimensions an array may have (NumPy's own limit).
const MAX_NPY_DIMS: usize = 64;

/// The dimensions in the text after `'shape':`, e.g. `(2, 3), ...`.
fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|rest| rest.split_once(')'))
        .map(|(inner, _)| inner)
        .ok_or_else(|| {
            format!(
                "malformed 'shape' {:?}",
                text.chars().take(40).collect::<String>()
            )
        })?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension {s:?} in 'shape'"))
        })
        .collect::<Result<_, _>>()?;
    if shape.len() > MAX_NPY_DIMS {
        return Err(format!(
            "'shape' has {} dimensions, more than {MAX_NPY_DIMS}",
            shape.len()
        ));
    }
    Ok(shape)
}

/// Bytes of data `shape` needs at `width` bytes per value, checked against overflow and
/// [`MAX_NPY_BYTES`].
fn data_bytes(shape: &[usize], width: usize) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(width, |n, &d| n.checked_mul(d))
        .filter(|&n| n as u64 <= MAX_NPY_BYTES)
        .ok_or_else(|| format!("'shape' {shape:?} needs more than {MAX_NPY_BYTES} bytes of data"))
}

/// Parses `.npy` bytes holding little-endian f64 or f32 values, C or Fortran order.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("missing the .npy magic bytes".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(|| {
        format!(
            "header declares {header_len} bytes, the file has {} after the preamble",
            bytes.len() - start.min(bytes.len())
        )
    })?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let field = |name: &str| -> Result<&str, String> {
        let key = format!("'{name}':");
        let at = header
            .find(&key)
            .ok_or_else(|| format!("the .npy header has no {name:?}"))?;
        Ok(header[at + key.len()..].trim_start())
    };
    let descr = field("descr")?;
    let width = if descr.starts_with("'<f8'") {
        8
    } else if descr.starts_with("'<f4'") {
        4
    } else {
        return Err(format!(
            "dtype {} is not supported; expected '<f8' or '<f4'",
            descr.split(',').next().unwrap_or("")
        ));
    };
    let fortran = field("fortran_order")?.starts_with("True");
    let shape = parse_shape(field("shape")?)?;
    let expected = data_bytes(&shape, width)?;
    let body = &bytes[start + header_len..];
    if body.len() != expected {
        return Err(format!(
            "expected {expected} bytes of data for shape {shape:?}, found {}",
            body.len()
        ));
    }
    let mut data: Vec<f64> = if width == 8 {
        body.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    } else {
        body.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect()
    };
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&data, &shape);
    }
    Ok(NpyArray { shape, data })
}

/// Reorders column-major values to row-major.
fn fortran_to_c(data: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = data.len();
    let mut out = vec![0.0; n];
    let mut index = vec![0usize; shape.len()];
    for value in data {
        // Fortran order: the first index varies fastest.
        let mut c_offset = 0;
        for (d, &i) in index.iter().enumerate() {
            c_offset = c_offset * shape[d] + i;
        }
        out[c_offset] = *value;
        for d in 0..shape.len() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// The `.npy` version 1.0 preamble and header for `descr` ('<f8', '<f4') and `shape`, padded so
/// the data starts on a 64-byte boundary.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Encodes an f64 array as `.npy` version 1.0, C order.
pub fn encode_npy(shape: &[usize], data: &[f64]) -> Vec<u8> {
    let mut out = npy_header("<f8", shape);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Encodes an f32 array as `.npy` version 1.0, C order (latents, text states).
pub fn encode_npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = npy_header("<f4", shape);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Reads every array of an `.npz` file (stored or deflated entries), by name without `.npy`.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| EvalError::stats(path.display(), format!("not an .npz archive: {e}")))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| EvalError::stats(path.display(), e.to_string()))?;
        let name = entry.name().to_owned();
        let Some(key) = name.strip_suffix(".npy") else {
            continue;
        };
        let declared = entry.size();
        // The header block is small; anything past the data limit is refused before reading.
        if declared > MAX_NPY_BYTES + (1 << 20) {
            return Err(EvalError::stats(
                path.display(),
                format!("{name}: declares {declared} bytes, more than {MAX_NPY_BYTES} of data"),
            ));
        }
        // Grown as bytes arrive, and never past the declared size, whatever a deflated
        // member really holds.
        let mut data = Vec::new();
        (&mut entry)
            .take(declared)
            .read_to_end(&mut data)
            .map_err(|e| EvalError::stats(path.display(), format!("{name}: {e}")))?;
        if data.len() as u64 != declared {
            return Err(EvalError::stats(
                path.display(),
                format!(
                    "{name}: holds {} bytes, its header declares {declared}",
                    data.len()
                ),
            ));
        }
        let array = parse_npy(&data)
            .map_err(|e| EvalError::stats(path.display(), format!("{name}: {e}")))?;
        out.insert(key.to_owned(), array);
    }
    Ok(out)
}

/// Writes arrays as an uncompressed `.npz` (what `np.savez` writes), atomically.
pub fn write_npz(path: &Path, arrays: &[(&str, &[usize], &[f64])]) -> Result<(), EvalError> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, shape, data) in arrays {
        zip.start_file(format!("{name}.npy"), options)
            .and_then(|_| zip.write_all(&encode_npy(shape, data)).map_err(Into::into))
            .map_err(|e| EvalError::io(path, e))?;
    }
    let bytes = zip
        .finish()
        .map_err(|e| EvalError::io(path, e))?
        .into_inner();
    ldmscale_model::weights::write_atomic(path, &bytes).map_err(|e| EvalError::Io {
        file: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Reads FID statistics (`mu`, `sigma`) from an `.npz` file as pytorch-fid and clean-fid write
/// them, checking that `sigma` is square and fits `mu`.
pub fn read_stats(path: &Path) -> Result<GaussianStats, EvalError> {
    let mut arrays = read_npz(path)?;
    let missing = |k: &str| {
        EvalError::stats(
            path.display(),
            format!("no {k:?} array (an FID statistics file holds \"mu\" and \"sigma\")"),
        )
    };
    let mu = arrays.remove("mu").ok_or_else(|| missing("mu"))?;
    let sigma = arrays.remove("sigma").ok_or_else(|| missing("sigma"))?;
    if mu.shape.len() != 1 {
        return Err(EvalError::stats(
            path.display(),
            format!("mu has shape {:?}; expected one dimension", mu.shape),
        ));
    }
    let d = mu.shape[0];
    if sigma.shape != [d, d] {
        return Err(EvalError::stats(
            path.display(),
            format!(
                "sigma has shape {:?}; expected [{d}, {d}] to match mu",
                sigma.shape
            ),
        ));
    }
    let stats = GaussianStats {
        mu: mu.data,
        sigma: sigma.data,
    };
    stats.validate(&path.display().to_string())?;
    Ok(stats)
}

/// Writes FID statistics as `mu` (float64 `[d]`) and `sigma` (float64 `[d, d]`), atomically.
pub fn write_stats(path: &Path, stats: &GaussianStats) -> Result<(), EvalError> {
    let d = stats.dim();
    write_npz(
        path,
        &[("mu", &[d], &stats.mu), ("sigma", &[d, d], &stats.sigma)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_fortran_order() {
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let back = parse_npy(&encode_npy(&[2, 3], &data)).unwrap();
        assert_eq!(back.shape, vec![2, 3]);
        assert_eq!(back.data, data);
        let mut f = encode_npy(&[2, 3], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let at = f.windows(5).position(|w| w == b"False").unwrap();
        f.splice(at..at + 5, b"True ".iter().copied());
        assert_eq!(parse_npy(&f).unwrap().data, data);
        assert!(parse_npy(b"nope").is_err());
    }

    #[test]
    fn stats_files_round_trip_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let stats = GaussianStats {
            mu: vec![1.0, 2.0],
            sigma: vec![2.0, 0.5, 0.5, 1.0],
        };
        let path = dir.path().join("s.npz");
        write_stats(&path, &stats).unwrap();
        assert_eq!(read_stats(&path).unwrap(), stats);
        let bad = dir.path().join("bad.npz");
        write_npz(
            &bad,
            &[("mu", &[2], &[0.0, 0.0]), ("sigma", &[3], &[0.0; 3])],
        )
        .unwrap();
        let err = read_stats(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.npz") && err.contains("sigma has shape [3]"),
            "{err}"
        );
        write_npz(&bad, &[("m", &[2], &[0.0, 0.0])]).unwrap();
        assert!(
            read_stats(&bad)
                .unwrap_err()
                .to_string()
                .contains("no \"mu\"")
        );
    }
}
