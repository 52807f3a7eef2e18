//! The asset datasets fetched by `tools/fetch-assets.sh`: Fashion-MNIST (gzipped IDX), MNIST
//! (CSV) and Google's emoji (64x64 RGBA PNG + names), with captions made from class or emoji
//! names.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Example, check_index};
use crate::error::DataError;
use crate::image::Image;
use crate::rng::hash_str;

/// ldmscale's cache: `$LDMSCALE_CACHE`, by default `~/.cache/ldmscale`.
pub fn cache_root() -> PathBuf {
    match std::env::var_os("LDMSCALE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".cache").join("ldmscale")
        }
    }
}

/// Where `tools/fetch-assets.sh` unpacks assets: `$LDMSCALE_CACHE/assets`, by default
/// `~/.cache/ldmscale/assets`.
pub fn assets_dir() -> PathBuf {
    cache_root().join("assets")
}

/// `path`, or a [`DataError::MissingAsset`] naming the asset to fetch.
fn require(asset: &str, path: PathBuf) -> Result<PathBuf, DataError> {
    if path.exists() {
        Ok(path)
    } else {
        Err(DataError::MissingAsset {
            name: asset.to_string(),
            path: path.display().to_string(),
        })
    }
}

/// Which file of a dataset that ships a train and a test file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// The training file (60,000 images for the MNISTs).
    #[default]
    Train,
    /// The test file (10,000 images).
    Test,
}

impl Part {
    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Test => "test",
        }
    }
}

/// How captions are worded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptionStyle {
    /// One template for every example ("a photo of a sneaker", "the digit seven").
    #[default]
    Fixed,
    /// A template chosen per example by a hash of its id, from a few with the same meaning.
    Varied,
}

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// Fashion-MNIST class names as caption nouns, in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// Digit names, in label order.
pub const DIGIT_NAMES: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

fn template_choice(style: CaptionStyle, id: &str, n: usize) -> usize {
    match style {
        CaptionStyle::Fixed => 0,
        CaptionStyle::Varied => (hash_str(id) % n as u64) as usize,
    }
}

/// The caption of a Fashion-MNIST item of class `label`.
pub fn fashion_caption(label: u8, style: CaptionStyle, id: &str) -> String {
    let noun = FASHION_CLASSES[label as usize];
    let a = article(noun);
    match template_choice(style, id, 4) {
        0 => format!("a photo of {a} {noun}"),
        1 => format!("{a} {noun}"),
        2 => format!("a black and white photo of {a} {noun}"),
        _ => format!("a small picture of {a} {noun}"),
    }
}

/// The caption of an MNIST digit `label`.
pub fn digit_caption(label: u8, style: CaptionStyle, id: &str) -> String {
    let word = DIGIT_NAMES[label as usize];
    match template_choice(style, id, 4) {
        0 => format!("the digit {word}"),
        1 => format!("a handwritten {word}"),
        2 => format!("the number {word}, written by hand"),
        _ => format!("a handwritten digit {label}"),
    }
}

/// Which of the two MNIST-like datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fashion,
    Digits,
}

/// 28x28 grey images with class labels, held in memory (47 MB for 60,000).
pub struct GrayClasses {
    kind: Kind,
    part: Part,
    style: CaptionStyle,
    side: u32,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl GrayClasses {
    /// Fashion-MNIST from the `fashion-mnist` asset.
    pub fn fashion_mnist(part: Part, style: CaptionStyle) -> Result<Self, DataError> {
        Self::fashion_mnist_in(&assets_dir().join("fashion-mnist"), part, style)
    }

    /// Fashion-MNIST from `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` in `dir`.
    pub fn fashion_mnist_in(
        dir: &Path,
        part: Part,
        style: CaptionStyle,
    ) -> Result<Self, DataError> {
        let prefix = match part {
            Part::Train => "train",
            Part::Test => "t10k",
        };
        let images = require(
            "fashion-mnist",
            dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        )?;
        let labels = require(
            "fashion-mnist",
            dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        )?;
        let (dims, pixels) = read_idx_gz(&images, 3)?;
        let (label_dims, labels_data) = read_idx_gz(&labels, 1)?;
        if dims[0] != label_dims[0] {
            return Err(DataError::format(
                labels.display(),
                format!(
                    "{} labels for {} images in {}",
                    label_dims[0],
                    dims[0],
                    images.display()
                ),
            ));
        }
        if dims[1] != dims[2] {
            return Err(DataError::format(
                images.display(),
                format!("expected square images, found {}x{}", dims[1], dims[2]),
            ));
        }
        check_labels(&labels, &labels_data)?;
        Ok(GrayClasses {
            kind: Kind::Fashion,
            part,
            style,
            side: dims[1] as u32,
            pixels,
            labels: labels_data,
        })
    }

    /// MNIST from the `mnist` asset.
    pub fn mnist(part: Part, style: CaptionStyle) -> Result<Self, DataError> {
        Self::mnist_in(&assets_dir().join("mnist"), part, style)
    }

    /// MNIST from `mnist_{train,test}.csv` in `dir` (a header line, then `label,p1,...,p784`).
    pub fn mnist_in(dir: &Path, part: Part, style: CaptionStyle) -> Result<Self, DataError> {
        let file = require("mnist", dir.join(format!("mnist_{}.csv", part.name())))?;
        let text = std::fs::read_to_string(&file).map_err(|e| DataError::io(&file, e))?;
        let mut lines = text.lines().enumerate();
        let header = lines.next().map(|(_, l)| l).unwrap_or("");
        if !header.starts_with("label") {
            return Err(DataError::format(
                file.display(),
                format!("expected a header line starting with \"label\", found {header:?}"),
            ));
        }
        const SIDE: usize = 28;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (n, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", file.display(), n + 1);
            let mut fields = line.split(',');
            let mut values = 0usize;
            for (k, field) in fields.by_ref().enumerate() {
                let v: u8 = field.trim().parse().map_err(|_| {
                    DataError::format(at(), format!("field {}: {field:?} is not 0..=255", k + 1))
                })?;
                if k == 0 {
                    labels.push(v);
                } else {
                    pixels.push(v);
                }
                values += 1;
            }
            if values != 1 + SIDE * SIDE {
                return Err(DataError::format(
                    at(),
                    format!(
                        "expected {} fields (label + 28x28 pixels), found {values}",
                        1 + SIDE * SIDE
                    ),
                ));
            }
        }
        check_labels(&file, &labels)?;
        Ok(GrayClasses {
            kind: Kind::Digits,
            part,
            style,
            side: SIDE as u32,
            pixels,
            labels,
        })
    }

    /// The class label of example `index`.
    pub fn label(&self, index: usize) -> u8 {
        self.labels[index]
    }
}

fn check_labels(file: &Path, labels: &[u8]) -> Result<(), DataError> {
    match labels.iter().position(|&l| l > 9) {
        Some(i) => Err(DataError::format(
            file.display(),
            format!("label {} of item {i} is not a class 0..=9", labels[i]),
        )),
        None => Ok(()),
    }
}

/// The largest decompressed IDX file read: Fashion-MNIST's largest is 47 MB.
const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads a gzipped IDX file of unsigned bytes with `rank` dimensions: (dims, data).
fn read_idx_gz(file: &Path, rank: u8) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    read_idx_gz_within(file, rank, MAX_IDX_BYTES)
}

/// [`read_idx_gz`] refusing files that decompress to more than `max_bytes`.
fn read_idx_gz_within(
    file: &Path,
    rank: u8,
    max_bytes: u64,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = std::fs::File::open(file).map_err(|e| DataError::io(file, e))?;
    let mut bytes = Vec::new();
    // Bounded, so a gzip bomb is an error rather than an out-of-memory kill.
    flate2::read::GzDecoder::new(raw)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::format(file.display(), format!("not a readable gzip file: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(DataError::format(
            file.display(),
            format!("decompresses to more than {max_bytes} bytes; not an MNIST-sized IDX file"),
        ));
    }
    let header_len = 4 + 4 * rank as usize;
    if bytes.len() < header_len || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(DataError::format(
            file.display(),
            "not an IDX file of unsigned bytes (magic 0x0000 0x08 ..)",
        ));
    }
    if bytes[3] != rank {
        return Err(DataError::format(
            file.display(),
            format!(
                "expected an IDX array of rank {rank}, found rank {}",
                bytes[3]
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank as usize)
        .map(|d| {
            let b = &bytes[4 + 4 * d..8 + 4 * d];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if expected != Some(bytes.len() - header_len) {
        return Err(DataError::format(
            file.display(),
            format!(
                "dims {dims:?} do not match the {} bytes of data",
                bytes.len() - header_len
            ),
        ));
    }
    bytes.drain(..header_len);
    Ok((dims, bytes))
}

impl Dataset for GrayClasses {
    fn name(&self) -> String {
        let kind = match self.kind {
            Kind::Fashion => "fashion-mnist",
            Kind::Digits => "mnist",
        };
        format!("{kind}:{}", self.part.name())
    }

    fn len(&self) -> Option<usize> {
        Some(self.labels.len())
    }

    fn id(&self, index: usize) -> Result<String, DataError> {
        check_index(&self.name(), index, self.labels.len())?;
        let kind = match self.kind {
            Kind::Fashion => "fashion-mnist",
            Kind::Digits => "mnist",
        };
        Ok(format!("{kind}/{}/{index}", self.part.name()))
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        let id = self.id(index)?;
        let n = (self.side * self.side) as usize;
        let image = Image::from_gray(
            self.side,
            self.side,
            &self.pixels[index * n..(index + 1) * n],
        )
        .expect("side*side bytes");
        let label = self.labels[index];
        let caption = match self.kind {
            Kind::Fashion => fashion_caption(label, self.style, &id),
            Kind::Digits => digit_caption(label, self.style, &id),
        };
        Ok(Example { id, image, caption })
    }
}

/// Google's emoji: 64x64 RGBA PNGs composited over white, captioned with the emoji's lower-case
/// Unicode name ("grinning face"). Only emoji that have both a name and an image are listed.
pub struct Emoji {
    dir: PathBuf,
    items: Vec<EmojiItem>,
}

/// One listed emoji.
#[derive(Clone, Debug)]
struct EmojiItem {
    file: String,
    caption: String,
}

#[derive(Deserialize)]
struct EmojiRecord {
    name: Option<String>,
    image: Option<String>,
}

impl Emoji {
    /// The `emoji` asset.
    pub fn open() -> Result<Self, DataError> {
        Self::open_in(&assets_dir().join("emoji"))
    }

    /// From `emoji.json` and `img/*.png` in `dir`.
    pub fn open_in(dir: &Path) -> Result<Self, DataError> {
        Self::open_excluding(dir, &[])
    }

    /// From `dir`, without the emoji whose image files `exclude` names (DreamBooth subjects
    /// the training captions must never name); a file the asset does not list is an error.
    pub fn open_excluding(dir: &Path, exclude: &[String]) -> Result<Self, DataError> {
        let mut emoji = Self::open_listed(dir)?;
        for file in exclude {
            if !emoji.items.iter().any(|i| &i.file == file) {
                return Err(DataError::setting(
                    "emoji exclude",
                    file,
                    format!(
                        "is not the image file of an emoji listed in {}",
                        dir.display()
                    ),
                ));
            }
        }
        emoji.items.retain(|i| !exclude.contains(&i.file));
        if emoji.items.is_empty() {
            return Err(DataError::Empty {
                dataset: format!("emoji ({})", dir.display()),
                detail: ": every emoji is excluded".into(),
            });
        }
        Ok(emoji)
    }

    fn open_listed(dir: &Path) -> Result<Self, DataError> {
        let json = require("emoji", dir.join("emoji.json"))?;
        let img_dir = require("emoji", dir.join("img"))?;
        let text = std::fs::read_to_string(&json).map_err(|e| DataError::io(&json, e))?;
        let records: Vec<EmojiRecord> = serde_json::from_str(&text).map_err(|e| {
            DataError::format(
                json.display(),
                format!("expected a JSON array of emoji records: {e}"),
            )
        })?;
        let mut items = Vec::new();
        for r in records {
            let (Some(name), Some(file)) = (r.name, r.image) else {
                continue;
            };
            let caption = name.trim().to_lowercase();
            if caption.is_empty() || !img_dir.join(&file).is_file() {
                continue;
            }
            items.push(EmojiItem { file, caption });
        }
        if items.is_empty() {
            return Err(DataError::Empty {
                dataset: format!("emoji ({})", dir.display()),
                detail: ": no emoji has both a name and an image file".into(),
            });
        }
        Ok(Emoji {
            dir: img_dir,
            items,
        })
    }
}

impl Dataset for Emoji {
    fn name(&self) -> String {
        "emoji".into()
    }

    fn len(&self) -> Option<usize> {
        Some(self.items.len())
    }

    fn id(&self, index: usize) -> Result<String, DataError> {
        check_index("emoji", index, self.items.len())?;
        Ok(format!("emoji/{}", self.items[index].file))
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        let id = self.id(index)?;
        let item = &self.items[index];
        Ok(Example {
            id,
            image: Image::open(&self.dir.join(&item.file))?,
            caption: item.caption.clone(),
        })
    }
}

#[cfg(test)]
mod idx_tests {
    use super::*;
    use std::io::Write;

    fn gzipped(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join("t.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        path
    }

    #[test]
    fn idx_files_too_large_or_with_overflowing_dims_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = vec![0, 0, 8, 1, 0, 0, 0, 8];
        idx.extend([7u8; 8]);
        let ok = gzipped(dir.path(), &idx);
        assert_eq!(read_idx_gz_within(&ok, 1, 100).unwrap().1, vec![7u8; 8]);

        let bomb = gzipped(dir.path(), &[0u8; 4096]);
        let err = read_idx_gz_within(&bomb, 1, 1000).unwrap_err().to_string();
        assert!(err.contains("more than 1000 bytes"), "{err}");

        let huge = [
            0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        ];
        let err = read_idx_gz_within(&gzipped(dir.path(), &huge), 3, 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not match"), "{err}");
    }
}
