//! A shard's sample index kept on disk instead of in memory: one index file per shard, written
//! once (atomically) when the shard is first indexed and read back by any later open, keyed by
//! the shard's size and modification time (a changed shard is indexed again). Opening reads
//! only each file's header (its sample count), so memory grows with shards, not images; a
//! sample is read by two small reads of its fixed-size record and its text.
//!
//! The file sits beside its shard (`part-00001.tar.ldmscale-index`), or, where the shard's
//! folder is not writable, under `$LDMSCALE_CACHE/wds-index`. Layout, little-endian u64s: a
//! 64-byte header (magic, shard length, mtime seconds and nanoseconds, sample count, where the
//! skipped list starts, file length, 0), one 32-byte record per sample (image offset and size
//! in the shard, text offset and length in this file), the texts (key length u32, member
//! length u32, key, member, caption), then the samples left out as JSON.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use crate::dataset::Skipped;
use crate::error::DataError;

/// What an index file's name adds to its shard's.
pub const INDEX_SUFFIX: &str = ".ldmscale-index";
const MAGIC: &[u8; 8] = b"LDMWDSI1";
const HEADER_LEN: u64 = 64;
const RECORD_LEN: u64 = 32;

/// One indexed sample of a shard.
pub(super) struct Sample {
    pub key: String,
    pub member: String,
    pub offset: u64,
    pub size: u64,
    pub caption: String,
}

/// What keys an index file to its shard: a shard rewritten since changes one or the other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    len: u64,
    mtime_secs: u64,
    mtime_nanos: u64,
}

impl Stamp {
    fn of(shard: &Path) -> Result<Stamp, DataError> {
        let meta = std::fs::metadata(shard).map_err(|e| DataError::io(shard, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        Ok(Stamp {
            len: meta.len(),
            mtime_secs: mtime.as_secs(),
            mtime_nanos: u64::from(mtime.subsec_nanos()),
        })
    }
}

/// The index file beside `shard`.
pub fn index_file(shard: &Path) -> PathBuf {
    let mut name = shard.as_os_str().to_owned();
    name.push(INDEX_SUFFIX);
    PathBuf::from(name)
}

/// The index file of `shard` under `$LDMSCALE_CACHE/wds-index`, for read-only shard folders:
/// named by a hash of the shard's absolute path, then its file name.
fn cached_index_file(shard: &Path) -> PathBuf {
    let absolute = std::path::absolute(shard).unwrap_or_else(|_| shard.to_path_buf());
    let hash = ldmscale_util::hash::fnv1a(&absolute.to_string_lossy());
    let name = shard.file_name().unwrap_or_default().to_string_lossy();
    crate::mnist::cache_root()
        .join("wds-index")
        .join(format!("{hash:016x}-{name}{INDEX_SUFFIX}"))
}

/// A shard's index as opened: where its file is, how many samples, which were left out.
pub(super) struct ShardIndex {
    pub file: PathBuf,
    pub samples: u64,
    pub skipped: Vec<Skipped>,
}

/// The index of `shard`: read from its index file when one matches the shard, else built by
/// `build` (which reads the whole shard) and written for the next open.
pub(super) fn open_or_build(
    shard: &Path,
    build: impl FnOnce() -> Result<(Vec<Sample>, Vec<Skipped>), DataError>,
) -> Result<ShardIndex, DataError> {
    let stamp = Stamp::of(shard)?;
    let places = [index_file(shard), cached_index_file(shard)];
    for file in &places {
        if let Some(found) = read_matching(file, stamp) {
            return Ok(found);
        }
    }
    let (samples, skipped) = build()?;
    let bytes = encode(stamp, &samples, &skipped);
    let file = write_first_writable(&places, &bytes)?;
    Ok(ShardIndex {
        file,
        samples: samples.len() as u64,
        skipped,
    })
}

/// Writes `bytes` to the first of `places` that takes them; an error names every place tried.
fn write_first_writable(places: &[PathBuf], bytes: &[u8]) -> Result<PathBuf, DataError> {
    let mut failures = Vec::new();
    for file in places {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match write_atomic(file, bytes) {
            Ok(()) => return Ok(file.clone()),
            Err(e) => failures.push(format!("{}: {e}", file.display())),
        }
    }
    Err(DataError::Io {
        file: places[0].display().to_string(),
        message: format!(
            "cannot write the shard's index file anywhere (set LDMSCALE_CACHE to a writable \
             folder): {}",
            failures.join("; ")
        ),
    })
}

/// Writes through a temporary file unique to this process and call, then renames, so
/// processes indexing the same shard at once each leave a whole file.
fn write_atomic(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut tmp = file.as_os_str().to_owned();
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    tmp.push(format!(".tmp{}-{call}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn encode(stamp: Stamp, samples: &[Sample], skipped: &[Skipped]) -> Vec<u8> {
    let mut records = Vec::with_capacity(samples.len() * RECORD_LEN as usize);
    let mut texts = Vec::new();
    let text_start = HEADER_LEN + RECORD_LEN * samples.len() as u64;
    for s in samples {
        let at = text_start + texts.len() as u64;
        texts.extend((s.key.len() as u32).to_le_bytes());
        texts.extend((s.member.len() as u32).to_le_bytes());
        texts.extend(s.key.as_bytes());
        texts.extend(s.member.as_bytes());
        texts.extend(s.caption.as_bytes());
        let len = text_start + texts.len() as u64 - at;
        for v in [s.offset, s.size, at, len] {
            records.extend(v.to_le_bytes());
        }
    }
    let skipped_json = serde_json::to_vec(skipped).expect("skipped samples serialise");
    let skipped_at = text_start + texts.len() as u64;
    let file_len = skipped_at + skipped_json.len() as u64;
    let header = [
        stamp.len,
        stamp.mtime_secs,
        stamp.mtime_nanos,
        samples.len() as u64,
        skipped_at,
        file_len,
        0,
    ];
    let mut out = Vec::with_capacity(file_len as usize);
    out.extend(MAGIC);
    for v in header {
        out.extend(v.to_le_bytes());
    }
    out.extend(records);
    out.extend(texts);
    out.extend(skipped_json);
    out
}

/// The index in `file` when it is whole and matches `stamp`; `None` when it is absent, stale
/// or damaged (the shard is then indexed again and the file replaced).
fn read_matching(file: &Path, stamp: Stamp) -> Option<ShardIndex> {
    let mut f = std::fs::File::open(file).ok()?;
    let mut header = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut header).ok()?;
    let field = |i: usize| u64::from_le_bytes(header[8 + 8 * i..16 + 8 * i].try_into().unwrap());
    let found = Stamp {
        len: field(0),
        mtime_secs: field(1),
        mtime_nanos: field(2),
    };
    let (samples, skipped_at, file_len) = (field(3), field(4), field(5));
    let actual_len = f.metadata().ok()?.len();
    let records_end = samples.checked_mul(RECORD_LEN)?.checked_add(HEADER_LEN)?;
    if &header[..8] != MAGIC
        || found != stamp
        || file_len != actual_len
        || skipped_at < records_end
        || skipped_at > file_len
    {
        return None;
    }
    let mut json = Vec::new();
    f.seek(SeekFrom::Start(skipped_at)).ok()?;
    f.read_to_end(&mut json).ok()?;
    let skipped: Vec<Skipped> = serde_json::from_slice(&json).ok()?;
    Some(ShardIndex {
        file: file.to_path_buf(),
        samples,
        skipped: skipped
            .into_iter()
            .map(|s| Skipped::warn(s.what, s.reason))
            .collect(),
    })
}

/// Sample `i` of the index in `file`.
pub(super) fn read_sample(file: &Path, i: u64) -> Result<Sample, DataError> {
    let damaged = |message: String| {
        DataError::format(
            file.display(),
            format!("damaged shard index ({message}); delete it to index the shard again"),
        )
    };
    let mut f = std::fs::File::open(file).map_err(|e| DataError::io(file, e))?;
    let mut record = [0u8; RECORD_LEN as usize];
    f.seek(SeekFrom::Start(HEADER_LEN + RECORD_LEN * i))
        .and_then(|_| f.read_exact(&mut record))
        .map_err(|e| damaged(format!("record {i}: {e}")))?;
    let field = |k: usize| u64::from_le_bytes(record[8 * k..8 * k + 8].try_into().unwrap());
    let (offset, size, text_at, text_len) = (field(0), field(1), field(2), field(3));
    let file_len = f.metadata().map_err(|e| DataError::io(file, e))?.len();
    if text_len < 8
        || text_at
            .checked_add(text_len)
            .is_none_or(|end| end > file_len)
    {
        return Err(damaged(format!(
            "record {i}: text of {text_len} bytes at {text_at}, the file has {file_len}"
        )));
    }
    let mut text = vec![0u8; text_len as usize];
    f.seek(SeekFrom::Start(text_at))
        .and_then(|_| f.read_exact(&mut text))
        .map_err(|e| damaged(format!("text of record {i}: {e}")))?;
    let key_len = u32::from_le_bytes(text[0..4].try_into().unwrap()) as usize;
    let member_len = u32::from_le_bytes(text[4..8].try_into().unwrap()) as usize;
    let body = &text[8..];
    if key_len + member_len > body.len() {
        return Err(damaged(format!("record {i}: names longer than its text")));
    }
    let utf8 = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| damaged(format!("record {i}: not UTF-8")))
    };
    Ok(Sample {
        key: utf8(&body[..key_len])?,
        member: utf8(&body[key_len..key_len + member_len])?,
        offset,
        size,
        caption: utf8(&body[key_len + member_len..])?,
    })
}
