//! WebDataset shards: tar files whose members are grouped into samples by key (the member path
//! up to the first dot of its file name): `000123.jpg` + `000123.txt` (or `000123.json` with a
//! `"caption"` or `"text"` field) is one sample.
//!
//! Opening indexes every shard once (headers only, seeking over image data; captions are read
//! and kept in memory); `get` then reads one image by offset.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Example, Skipped, check_index};
use crate::error::DataError;
use crate::folder::IMAGE_EXTENSIONS;
use crate::image::Image;

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

/// One indexed sample.
struct Sample {
    shard: usize,
    key: String,
    member: String,
    offset: u64,
    size: u64,
    caption: String,
}

/// A set of WebDataset tar shards.
pub struct WebDataset {
    pattern: String,
    shards: Vec<PathBuf>,
    samples: Vec<Sample>,
    skipped: Vec<Skipped>,
}

/// A sample being gathered while members stream past.
#[derive(Default)]
struct Pending {
    key: String,
    image: Option<(String, u64, u64)>,
    txt: Option<String>,
    json_caption: Option<String>,
    json_error: Option<String>,
}

impl WebDataset {
    /// Indexes the shards named by `pattern` (see [`expand_braces`]).
    pub fn open(pattern: &str) -> Result<Self, DataError> {
        let shards: Vec<PathBuf> = expand_braces(pattern)?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let mut samples = Vec::new();
        let mut skipped = Vec::new();
        for (s, shard) in shards.iter().enumerate() {
            index_shard(s, shard, &mut samples, &mut skipped)?;
        }
        if samples.is_empty() {
            return Err(DataError::Empty {
                dataset: format!("wds:{pattern}"),
                detail: format!(
                    ": no sample with both an image ({IMAGE_EXTENSIONS:?}) and a caption (.txt, \
                     or .json with \"caption\"/\"text\") in {} shard(s); {} skipped",
                    shards.len(),
                    skipped.len()
                ),
            });
        }
        Ok(WebDataset {
            pattern: pattern.to_string(),
            shards,
            samples,
            skipped,
        })
    }

    /// Samples left out while indexing, with why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

/// Splits a member path into (key, extension): the key ends at the first dot of the file name.
fn split_member(path: &str) -> (&str, &str) {
    let name_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[name_start..].find('.') {
        Some(dot) => (&path[..name_start + dot], &path[name_start + dot + 1..]),
        None => (path, ""),
    }
}

fn index_shard(
    s: usize,
    shard: &Path,
    samples: &mut Vec<Sample>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), DataError> {
    let file = std::fs::File::open(shard).map_err(|e| DataError::io(shard, e))?;
    let shard_len = file.metadata().map_err(|e| DataError::io(shard, e))?.len();
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
                shard: s,
                key: p.key,
                member,
                offset,
                size,
                caption,
            }),
            (None, _) => skipped.push(Skipped::warn(at, "sample has no image member")),
            (Some(_), None) => skipped.push(Skipped::warn(
                at,
                p.json_error
                    .unwrap_or_else(|| "sample has no caption (.txt or .json)".into()),
            )),
        }
    };
    for entry in entries {
        let entry =
            entry.map_err(|e| DataError::format(shard.display(), format!("corrupt tar: {e}")))?;
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
            finish(done, samples, skipped);
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
                pending.image = Some((path.clone(), entry.raw_file_position(), entry.size()));
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
    finish(pending, samples, skipped);
    Ok(())
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
        Some(self.samples.len())
    }

    fn id(&self, index: usize) -> Result<String, DataError> {
        check_index(&self.name(), index, self.samples.len())?;
        let sample = &self.samples[index];
        let shard = self.shards[sample.shard]
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(format!("{shard}/{}", sample.key))
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        let id = self.id(index)?;
        let sample = &self.samples[index];
        let path = &self.shards[sample.shard];
        let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut bytes = vec![0u8; sample.size as usize];
        file.seek(SeekFrom::Start(sample.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| DataError::io(path, e))?;
        let image = Image::decode(&bytes, &format!("{}:{}", path.display(), sample.member))?;
        Ok(Example {
            id,
            image,
            caption: sample.caption.clone(),
        })
    }
}
