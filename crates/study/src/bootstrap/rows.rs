//! Feature rows the bootstrap resamples, held in memory or in an f32 `.npy` file on disk that
//! is memory-mapped: a reference set of 30k Inception features (245 MB) is then file pages the
//! page cache can drop, not memory the process holds, and it is written a batch at a time as
//! the images are measured, never gathered whole.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

/// Row-major f32 feature values shared by resamplers: a `Vec<f32>` or a [`FeatureFile`].
pub type Rows = Arc<dyn AsRef<[f32]> + Send + Sync>;

/// An `rows x dim` f32 `.npy` file (version 1.0, little-endian, C order), memory-mapped.
pub struct FeatureFile {
    map: Mmap,
    offset: usize,
    rows: usize,
    dim: usize,
}

impl FeatureFile {
    /// Maps `path`; an error names it and says what was expected.
    pub fn open(path: &Path) -> Result<Self, String> {
        let bad = |message: String| format!("{}: {message}", path.display());
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        // SAFETY: feature files are written whole through a temporary file and a rename and
        // never modified in place, so the mapped bytes do not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(format!("cannot map: {e}")))?;
        let (offset, shape) = npy_f32_header(&map).map_err(bad)?;
        let [rows, dim] = shape[..] else {
            return Err(bad(format!("shape {shape:?}, expected (rows, dim)")));
        };
        let expected = rows.checked_mul(dim).and_then(|n| n.checked_mul(4));
        if dim == 0 || expected != Some(map.len() - offset) {
            return Err(bad(format!(
                "shape ({rows}, {dim}) of f32 needs {expected:?} bytes of data, the file has {}",
                map.len() - offset
            )));
        }
        if !cfg!(target_endian = "little") || !(map.as_ptr() as usize + offset).is_multiple_of(4) {
            return Err(bad("f32 data not aligned for this machine".into()));
        }
        Ok(Self {
            map,
            offset,
            rows,
            dim,
        })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

impl AsRef<[f32]> for FeatureFile {
    fn as_ref(&self) -> &[f32] {
        let bytes = &self.map[self.offset..];
        // SAFETY: `open` checked the data's length (rows * dim * 4 bytes), its 4-byte
        // alignment and a little-endian machine; every bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), self.rows * self.dim) }
    }
}

/// The data offset and shape of an f32 `.npy` header.
fn npy_f32_header(bytes: &[u8]) -> Result<(usize, Vec<usize>), String> {
    if bytes.len() < 10 || &bytes[..8] != b"\x93NUMPY\x01\x00" {
        return Err("not a version 1.0 .npy file".into());
    }
    let offset = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..offset)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(format!(
            "header {header:?}: expected '<f4' values in C order"
        ));
    }
    let shape = header
        .split_once("'shape': (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(dims, _)| dims)
        .ok_or_else(|| format!("header {header:?} has no shape"))?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension {s:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((offset, shape))
}

/// Writes an `rows x dim` f32 `.npy` file a batch of rows at a time, through a temporary file
/// renamed into place once every row is in (a run stopped midway leaves no file).
pub struct FeatureFileWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished.
    out: Option<BufWriter<std::fs::File>>,
    expected: usize,
    written: usize,
    dim: usize,
}

impl FeatureFileWriter {
    /// Starts `path` for `rows` rows of `dim` values.
    pub fn create(path: &Path, rows: usize, dim: usize) -> Result<Self, String> {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}-{call}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut out = BufWriter::new(file);
        let header = ldmscale_eval::npz::encode_npy_f32(&[rows, dim], &[]);
        out.write_all(&header)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            expected: rows * dim,
            written: 0,
            dim,
        })
    }

    /// Appends whole rows.
    pub fn append(&mut self, values: &[f32]) -> Result<(), String> {
        if self.dim == 0 || !values.len().is_multiple_of(self.dim) {
            return Err(format!(
                "{}: {} values are not whole rows of {}",
                self.path.display(),
                values.len(),
                self.dim
            ));
        }
        if self.written + values.len() > self.expected {
            return Err(format!(
                "{}: more rows than the {} announced",
                self.path.display(),
                self.expected / self.dim
            ));
        }
        let out = self.out.as_mut().expect("a writer is used until finished");
        for v in values {
            out.write_all(&v.to_le_bytes())
                .map_err(|e| format!("{}: {e}", self.tmp.display()))?;
        }
        self.written += values.len();
        Ok(())
    }

    /// Renames the finished file into place and maps it.
    pub fn finish(mut self) -> Result<FeatureFile, String> {
        if self.written != self.expected {
            return Err(format!(
                "{}: {} of {} rows written",
                self.path.display(),
                self.written / self.dim.max(1),
                self.expected / self.dim.max(1)
            ));
        }
        let file = (self.out.take())
            .expect("a writer is finished once")
            .into_inner()
            .map_err(|e| format!("{}: {e}", self.tmp.display()))?;
        file.sync_all()
            .and_then(|()| std::fs::rename(&self.tmp, &self.path))
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        FeatureFile::open(&self.path)
    }
}

impl Drop for FeatureFileWriter {
    /// A writer dropped before `finish` (an error midway) leaves no temporary file behind.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}
