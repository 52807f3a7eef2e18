//! WebDataset shards: tar files whose members are grouped into samples by key (the member path
//! up to the first dot of its file name): `000123.jpg` + `000123.txt` (or `000123.json` with a
//! `"caption"` or `"text"` field) is one sample.
//!
//! The first open indexes every shard (headers only, seeking over image data) into an index
//! file per shard (see [`index`]); later opens read each file's sample count, so memory grows
//! with the number of shards, not of images. `get` reads a sample's record and caption from
//! its shard's index file, then its image by offset.
//!
//! Bad shard sets: missing shards (gaps in a brace range) are an error naming them, before
//! anything is read; a corrupt shard (truncated or malformed tar, gzip-compressed, unreadable)
//! is left out whole with a counted warning, up to [`MAX_CORRUPT_SHARD_FRACTION`] of the shards.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Example, Skipped, check_index};
use crate::error::DataError;
use crate::folder::IMAGE_EXTENSIONS;
use crate::image::Image;

pub mod index;

pub use index::{INDEX_SUFFIX, index_file};
use index::{Sample, ShardIndex};

/// Expands shell-style braces: `{000..009}` (numeric range, zero padding kept from the wider
/// end) and `{a,b,c}` (alternatives); several braces give their product, in order.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, DataError> {
    let bad = |message: String| DataError::Spec {
        spec: pattern.to_string(),
        message,
    };
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(bad("'}' without '{'".into()));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| bad("'{' without '}'".into()))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let parse = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(format!("{{{body}}}: range ends must be numbers")))
        };
        let (lo, hi) = (parse(a)?, parse(b)?);
        if lo > hi {
            return Err(bad(format!("{{{body}}}: empty range")));
        }
        if hi - lo > 1_000_000 {
            return Err(bad(format!("{{{body}}}: more than a million shards")));
        }
        let width = a.len().max(b.len());
        (lo..=hi).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let rest = expand_braces(tail)?;
    let mut out = Vec::with_capacity(choices.len() * rest.len());
    for c in &choices {
        for r in &rest {
            out.push(format!("{head}{c}{r}"));
        }
    }
    Ok(out)
}

/// The largest image member read (a 16384 x 16384 RGBA PNG stored raw is 1 GiB; real ones
/// are a few MB).
pub const MAX_IMAGE_MEMBER_BYTES: u64 = 1 << 30;
/// The largest caption member read.
pub const MAX_TEXT_MEMBER_BYTES: u64 = 1 << 20;

/// The share of shards that may be corrupt before opening fails: at most 1% (rounded down, so
/// a set of fewer than 100 shards tolerates none). Large downloads (img2dataset, LAION mirrors)
/// lose a few shards to interrupted transfers, and losing under 1% of the data leaves the
/// sample statistics as they were; more than that points at a systematic fault (a wrong format,
/// a half-finished copy) that skipping would hide.
pub const MAX_CORRUPT_SHARD_FRACTION: f64 = 0.01;

/// How many names an error lists before summarising the rest as a count.
const MAX_NAMES_LISTED: usize = 20;

/// A readable shard: its path, its index file, and the index of its first sample in the set.
struct Shard {
    path: PathBuf,
    index: PathBuf,
    first: usize,
}

/// A set of WebDataset tar shards.
pub struct WebDataset {
    pattern: String,
    /// Shards with at least one sample, in order (corrupt and empty ones left out).
    shards: Vec<Shard>,
    len: usize,
    skipped: Vec<Skipped>,
    corrupt_shards: Vec<Skipped>,
}

/// A sample being gathered while members stream past.
#[derive(Default)]
struct Pending {
    key: String,
    image: Option<(String, u64, u64)>,
    txt: Option<String>,
    json_caption: Option<String>,
    json_error: Option<String>,
    image_error: Option<String>,
}

impl WebDataset {
    /// Indexes the shards named by `pattern` (see [`expand_braces`]), tolerating up to
    /// [`MAX_CORRUPT_SHARD_FRACTION`] corrupt shards.
    pub fn open(pattern: &str) -> Result<Self, DataError> {
        Self::open_tolerating(pattern, MAX_CORRUPT_SHARD_FRACTION)
    }

    /// Indexes the shards named by `pattern`, leaving out corrupt shards while they are at
    /// most `max_corrupt_fraction` of all shards (rounded down); past that, an error names
    /// every corrupt shard (up to a listing limit) and why.
    pub fn open_tolerating(pattern: &str, max_corrupt_fraction: f64) -> Result<Self, DataError> {
        if !(0.0..=1.0).contains(&max_corrupt_fraction) {
            return Err(DataError::setting(
                "corrupt shard fraction",
                max_corrupt_fraction,
                "must lie in [0, 1]",
            ));
        }
        let shards: Vec<PathBuf> = expand_braces(pattern)?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        check_all_present(pattern, &shards)?;
        let mut readable = Vec::new();
        let mut len = 0;
        let mut skipped = Vec::new();
        let mut faults = Vec::new();
        for shard in &shards {
            // A shard is left out whole: what preceded a fault may be damaged too.
            match index::open_or_build(shard, || index_shard(shard)) {
                Ok(ShardIndex {
                    file,
                    samples,
                    skipped: left_out,
                }) => {
                    skipped.extend(left_out);
                    if samples > 0 {
                        readable.push(Shard {
                            path: shard.clone(),
                            index: file,
                            first: len,
                        });
                    }
                    len += samples as usize;
                }
                Err(e) => faults.push((shard, e)),
            }
        }
        check_corrupt_within(pattern, shards.len(), &faults, max_corrupt_fraction)?;
        let corrupt_shards: Vec<Skipped> = faults
            .iter()
            .map(|(shard, e)| {
                Skipped::warn(
                    shard.display().to_string(),
                    format!("corrupt shard left out: {e}"),
                )
            })
            .collect();
        if len == 0 {
            return Err(DataError::Empty {
                dataset: format!("wds:{pattern}"),
                detail: format!(
                    ": no sample with both an image ({IMAGE_EXTENSIONS:?}) and a caption (.txt, \
                     or .json with \"caption\"/\"text\") in {} shard(s); {} skipped, {} corrupt \
                     shard(s) left out",
                    shards.len(),
                    skipped.len(),
                    corrupt_shards.len()
                ),
            });
        }
        skipped.extend(corrupt_shards.iter().cloned());
        Ok(WebDataset {
            pattern: pattern.to_string(),
            shards: readable,
            len,
            skipped,
            corrupt_shards,
        })
    }

    /// The shard holding sample `index` and the sample read from its index file.
    fn sample(&self, index: usize) -> Result<(&Shard, Sample), DataError> {
        check_index(&self.name(), index, self.len)?;
        let s = self.shards.partition_point(|shard| shard.first <= index) - 1;
        let shard = &self.shards[s];
        let sample = index::read_sample(&shard.index, (index - shard.first) as u64)?;
        Ok((shard, sample))
    }

    /// Samples left out while indexing, with why, followed by the corrupt shards left out.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The corrupt shards left out whole, with why.
    pub fn corrupt_shards(&self) -> &[Skipped] {
        &self.corrupt_shards
    }
}

/// `names` as a comma-separated list, the ones past [`MAX_NAMES_LISTED`] summarised as a count.
fn name_list(names: impl ExactSizeIterator<Item = String>) -> String {
    let total = names.len();
    let mut listed: Vec<String> = names.take(MAX_NAMES_LISTED).collect();
    if total > listed.len() {
        listed.push(format!("and {} more", total - listed.len()));
    }
    listed.join(", ")
}

/// Every shard must exist before any is read: a gap in a brace range is a wrong pattern or an
/// unfinished download, not corruption to skip.
fn check_all_present(pattern: &str, shards: &[PathBuf]) -> Result<(), DataError> {
    let missing: Vec<String> = shards
        .iter()
        .filter(|p| !std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DataError::Spec {
        spec: format!("wds:{pattern}"),
        message: format!(
            "{} of {} shard(s) missing (a gap in the list, or a file that is not there): {}",
            missing.len(),
            shards.len(),
            name_list(missing.into_iter())
        ),
    })
}

/// Fails when more than `max_fraction` of `total` shards (rounded down) were corrupt.
fn check_corrupt_within(
    pattern: &str,
    total: usize,
    corrupt: &[(&PathBuf, DataError)],
    max_fraction: f64,
) -> Result<(), DataError> {
    let tolerated = (total as f64 * max_fraction).floor() as usize;
    if corrupt.len() <= tolerated {
        return Ok(());
    }
    Err(DataError::Format {
        file: format!("wds:{pattern}"),
        message: format!(
            "{} of {total} shard(s) corrupt, more than the {tolerated} tolerated ({}% of the \
             shards, rounded down); fix or drop them: {}",
            corrupt.len(),
            max_fraction * 100.0,
            name_list(corrupt.iter().map(|(_, e)| e.to_string()))
        ),
    })
}

/// Splits a member path into (key, extension): the key ends at the first dot of the file name.
fn split_member(path: &str) -> (&str, &str) {
    let name_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[name_start..].find('.') {
        Some(dot) => (&path[..name_start + dot], &path[name_start + dot + 1..]),
        None => (path, ""),
    }
}

/// Reads every member header of `shard` (and its captions): its samples in order, and the
/// ones left out with why.
fn index_shard(shard: &Path) -> Result<(Vec<Sample>, Vec<Skipped>), DataError> {
    let (mut samples, mut skipped) = (Vec::new(), Vec::new());
    let file = std::fs::File::open(shard).map_err(|e| DataError::io(shard, e))?;
    let shard_len = file.metadata().map_err(|e| DataError::io(shard, e))?.len();
    refuse_gzip(shard, &file)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let entries = archive
        .entries_with_seek()
        .map_err(|e| DataError::format(shard.display(), format!("not a tar file: {e}")))?;
    let mut pending = Pending::default();
    let finish = |p: Pending, samples: &mut Vec<Sample>, skipped: &mut Vec<Skipped>| {
        if p.key.is_empty() {
            return;
        }
        let at = format!("{}:{}", shard.display(), p.key);
        let caption = p.txt.or(p.json_caption);
        match (p.image, caption) {
            (Some((member, offset, size)), Some(caption)) => samples.push(Sample {
                key: p.key,
                member,
                offset,
                size,
                caption,
            }),
            (None, _) => skipped.push(Skipped::warn(
                at,
                p.image_error
                    .unwrap_or_else(|| "sample has no image member".into()),
            )),
            (Some(_), None) => skipped.push(Skipped::warn(
                at,
                p.json_error
                    .unwrap_or_else(|| "sample has no caption (.txt or .json)".into()),
            )),
        }
    };
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            DataError::format(shard.display(), format!("corrupt or truncated tar: {e}"))
        })?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| DataError::format(shard.display(), format!("bad member name: {e}")))?
            .to_string_lossy()
            .into_owned();
        let (key, ext) = split_member(&path);
        if key != pending.key {
            let done = std::mem::take(&mut pending);
            finish(done, &mut samples, &mut skipped);
            pending.key = key.to_string();
        }
        // The type is the last extension (`seg.png` is a PNG); a plain `png` beats a compound
        // one when a sample has both.
        let ext = ext.to_ascii_lowercase();
        let plain = !ext.contains('.');
        let kind = ext.rsplit('.').next().unwrap_or("");
        let at = || format!("{}:{path}", shard.display());
        check_member_size(&entry, shard_len, kind).map_err(|e| DataError::format(at(), e))?;
        if IMAGE_EXTENSIONS.contains(&kind) {
            if plain || pending.image.is_none() {
                let (offset, size) = (entry.raw_file_position(), entry.size());
                match sniff_image(&mut entry) {
                    Ok(()) => pending.image = Some((path.clone(), offset, size)),
                    Err(e) => pending.image_error = Some(format!("{}: {e}", at())),
                }
            }
        } else if kind == "txt" || kind == "json" {
            let mut text = String::new();
            entry
                .take(MAX_TEXT_MEMBER_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| DataError::format(at(), format!("unreadable text member: {e}")))?;
            if kind == "txt" {
                pending.txt = Some(text.trim().to_string());
            } else {
                match json_caption(&text) {
                    Ok(c) => pending.json_caption = Some(c),
                    Err(e) => pending.json_error = Some(format!("{}: {e}", at())),
                }
            }
        }
    }
    finish(pending, &mut samples, &mut skipped);
    Ok((samples, skipped))
}

/// Gzip-compressed shards cannot be read by offset; say so instead of "corrupt tar".
fn refuse_gzip(shard: &Path, file: &std::fs::File) -> Result<(), DataError> {
    let mut magic = [0u8; 2];
    let read = (&*file)
        .read(&mut magic)
        .and_then(|n| (&*file).seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(|e| DataError::io(shard, e))?;
    if read == 2 && magic == [0x1f, 0x8b] {
        return Err(DataError::format(
            shard.display(),
            "gzip-compressed; images are read by offset, so shards must be plain tar (gunzip them)",
        ));
    }
    Ok(())
}

/// Checks an image member's first bytes name a format this build decodes, so members that are
/// not images at all (an HTML error page saved as .jpg) are skipped while indexing.
fn sniff_image(entry: &mut impl Read) -> Result<(), String> {
    let mut head = Vec::with_capacity(32);
    entry
        .take(32)
        .read_to_end(&mut head)
        .map_err(|e| format!("unreadable image member: {e}"))?;
    match image::guess_format(&head) {
        Ok(format) if format.reading_enabled() => Ok(()),
        Ok(format) => Err(format!("{format:?} images are not decoded by this build")),
        Err(_) => Err("not an image: its first bytes match no known format".into()),
    }
}

/// A member's declared size must fit in the shard after its header, and within the limit for
/// its kind, before anything is allocated for it (a header may declare up to 8 GiB, or any size
/// through a PAX record).
fn check_member_size<R: Read>(
    entry: &tar::Entry<'_, R>,
    shard_len: u64,
    kind: &str,
) -> Result<(), String> {
    let size = entry.size();
    let left = shard_len.saturating_sub(entry.raw_file_position());
    if size > left {
        return Err(format!(
            "header declares {size} bytes, the shard has {left} after it (truncated or corrupt tar)"
        ));
    }
    let limit = if IMAGE_EXTENSIONS.contains(&kind) {
        MAX_IMAGE_MEMBER_BYTES
    } else {
        MAX_TEXT_MEMBER_BYTES
    };
    if size > limit && (IMAGE_EXTENSIONS.contains(&kind) || kind == "txt" || kind == "json") {
        return Err(format!(
            "{size} bytes, more than the {limit} read for a .{kind} member"
        ));
    }
    Ok(())
}

/// The `"caption"` (or else `"text"`) string of a JSON object.
fn json_caption(text: &str) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    ["caption", "text"]
        .iter()
        .find_map(|k| v.get(k).and_then(|c| c.as_str()))
        .map(|c| c.trim().to_string())
        .ok_or_else(|| "JSON has no \"caption\" or \"text\" string".to_string())
}

impl Dataset for WebDataset {
    fn name(&self) -> String {
        format!("wds:{}", self.pattern)
    }

    fn len(&self) -> Option<usize> {
        Some(self.len)
    }

    fn id(&self, index: usize) -> Result<String, DataError> {
        let (shard, sample) = self.sample(index)?;
        Ok(sample_id(shard, &sample))
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        let (shard, sample) = self.sample(index)?;
        let id = sample_id(shard, &sample);
        let path = &shard.path;
        let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut bytes = vec![0u8; sample.size as usize];
        file.seek(SeekFrom::Start(sample.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| DataError::io(path, e))?;
        let image = Image::decode(&bytes, &format!("{}:{}", path.display(), sample.member))?;
        Ok(Example {
            id,
            image,
            caption: sample.caption,
        })
    }
}

/// `shard file name/key`.
fn sample_id(shard: &Shard, sample: &Sample) -> String {
    let name = shard.path.file_name().unwrap_or_default().to_string_lossy();
    format!("{name}/{}", sample.key)
}
