//! User data: a folder of images with captions, and COCO captions files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Example, Skipped, check_index};
use crate::error::DataError;
use crate::image::Image;

/// File extensions read as images (lower case).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

pub(crate) fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The name of the captions index file in an image folder.
pub const CAPTIONS_JSONL: &str = "captions.jsonl";

/// A folder of images with captions, either
/// - listed in `captions.jsonl` at its root, one `{"file": "relative/path.jpg", "caption":
///   "..."}` per line (this wins when present), or
/// - as sidecars: every image under the folder (recursively) with a `.txt` file of the same stem
///   beside it holding its caption.
///
/// Images without a caption and listed files that do not exist are skipped with a warning and
/// listed in [`ImageFolder::skipped`]. Examples are ordered by their relative path (sidecars)
/// or by line (jsonl); the id is the relative path.
pub struct ImageFolder {
    root: PathBuf,
    items: Vec<Captioned>,
    skipped: Vec<Skipped>,
}

/// (relative path, caption)
type Captioned = (String, String);

/// What indexing a folder found: captioned images, and files left out.
type Indexed = (Vec<Captioned>, Vec<Skipped>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlRecord {
    file: String,
    caption: String,
}

impl ImageFolder {
    /// Indexes the folder `root`.
    pub fn open(root: &Path) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::Io {
                file: root.display().to_string(),
                message: "not a folder (expected a folder of images with captions.jsonl or \
                          .txt caption files)"
                    .into(),
            });
        }
        let index = root.join(CAPTIONS_JSONL);
        let (items, skipped) = if index.is_file() {
            Self::from_jsonl(root, &index)?
        } else {
            Self::from_sidecars(root)?
        };
        if items.is_empty() {
            return Err(DataError::Empty {
                dataset: format!("folder:{}", root.display()),
                detail: format!(
                    ": no captioned images ({} skipped; expected {CAPTIONS_JSONL} or IMAGE.txt \
                     caption files beside images with extensions {IMAGE_EXTENSIONS:?})",
                    skipped.len()
                ),
            });
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            items,
            skipped,
        })
    }

    fn from_jsonl(root: &Path, index: &Path) -> Result<Indexed, DataError> {
        let text = std::fs::read_to_string(index).map_err(|e| DataError::io(index, e))?;
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: JsonlRecord = serde_json::from_str(line).map_err(|e| {
                DataError::format(
                    format!("{}:{}", index.display(), n + 1),
                    format!("expected {{\"file\": \"...\", \"caption\": \"...\"}}: {e}"),
                )
            })?;
            if root.join(&record.file).is_file() {
                items.push((record.file, record.caption.trim().to_string()));
            } else {
                skipped.push(Skipped::warn(
                    root.join(&record.file).display().to_string(),
                    format!("listed in {} line {} but not found", index.display(), n + 1),
                ));
            }
        }
        Ok((items, skipped))
    }

    fn from_sidecars(root: &Path) -> Result<Indexed, DataError> {
        let mut images = Vec::new();
        walk(root, &mut images)?;
        images.sort();
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for path in images {
            let sidecar = path.with_extension("txt");
            let rel = relative(root, &path);
            match std::fs::read_to_string(&sidecar) {
                Ok(caption) => items.push((rel, caption.trim().to_string())),
                Err(_) => skipped.push(Skipped::warn(
                    path.display().to_string(),
                    format!("no caption file {}", sidecar.display()),
                )),
            }
        }
        Ok((items, skipped))
    }

    /// Files left out while indexing, with why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

/// `path` relative to `root`, with `/` separators.
pub(crate) fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Collects image files under `dir`, recursively (hidden entries skipped). Symlinks are
/// followed, except into a folder already on the way down (a loop) or one that cannot be
/// resolved; those are skipped with a warning naming the link.
pub(crate) fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let root = std::fs::canonicalize(dir).map_err(|e| DataError::io(dir, e))?;
    walk_below(dir, &mut vec![root], out)
}

/// `ancestors`: the canonical folders from the root down to `dir`.
fn walk_below(
    dir: &Path,
    ancestors: &mut Vec<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if kind.is_symlink() {
            match std::fs::canonicalize(&path) {
                Err(e) => tracing::warn!("skipping symlink {}: {e}", path.display()),
                Ok(target) if ancestors.contains(&target) => tracing::warn!(
                    "skipping symlink {}: it loops back to {}",
                    path.display(),
                    target.display()
                ),
                Ok(target) if target.is_dir() => {
                    ancestors.push(target);
                    walk_below(&path, ancestors, out)?;
                    ancestors.pop();
                }
                Ok(_) if is_image(&path) => out.push(path),
                Ok(_) => {}
            }
        } else if kind.is_dir() {
            ancestors.push(std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone()));
            walk_below(&path, ancestors, out)?;
            ancestors.pop();
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl Dataset for ImageFolder {
    fn name(&self) -> String {
        format!("folder:{}", self.root.display())
    }

    fn len(&self) -> Option<usize> {
        Some(self.items.len())
    }

    fn id(&self, index: usize) -> Result<String, DataError> {
        check_index(&self.name(), index, self.items.len())?;
        Ok(self.items[index].0.clone())
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        let id = self.id(index)?;
        let image = Image::open(&self.root.join(&id))?;
        Ok(Example {
            id,
            image,
            caption: self.items[index].1.clone(),
        })
    }
}

/// Which captions of a COCO image become examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CocoCaptions {
    /// One example per image, with its first caption in the file (the usual evaluation set:
    /// one prompt per reference image).
    #[default]
    First,
    /// One example per caption (about five per image); all captions of an image share its
    /// split side.
    Every,
}

/// A COCO captions file (`captions_train2014.json` / `captions_val2014.json` layout: `images`
/// with `id` and `file_name`, `annotations` with `image_id` and `caption`) over a folder of
/// images. Images without captions are left out; captions of unknown images are skipped with a
/// warning.
pub struct Coco {
    captions_file: PathBuf,
    images_dir: PathBuf,
    /// (image id, file name, caption index, caption)
    items: Vec<(u64, String, usize, String)>,
    per: CocoCaptions,
    skipped: Vec<Skipped>,
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    caption: String,
}

impl Coco {
    /// Reads `captions_file` (images under `images_dir`).
    pub fn open(
        captions_file: &Path,
        images_dir: &Path,
        per: CocoCaptions,
    ) -> Result<Self, DataError> {
        let text =
            std::fs::read_to_string(captions_file).map_err(|e| DataError::io(captions_file, e))?;
        let parsed: CocoFile = serde_json::from_str(&text).map_err(|e| {
            DataError::format(
                captions_file.display(),
                format!(
                    "expected COCO captions JSON (\"images\": [{{\"id\", \"file_name\"}}], \
                     \"annotations\": [{{\"image_id\", \"caption\"}}]): {e}"
                ),
            )
        })?;
        if !images_dir.is_dir() {
            return Err(DataError::Io {
                file: images_dir.display().to_string(),
                message: "COCO image folder not found".into(),
            });
        }
        let mut captions: HashMap<u64, Vec<String>> = HashMap::new();
        let known: HashMap<u64, usize> = parsed
            .images
            .iter()
            .enumerate()
            .map(|(i, im)| (im.id, i))
            .collect();
        let mut skipped = Vec::new();
        for a in parsed.annotations {
            if known.contains_key(&a.image_id) {
                captions
                    .entry(a.image_id)
                    .or_default()
                    .push(a.caption.trim().to_string());
            } else {
                skipped.push(Skipped::warn(
                    format!(
                        "{} annotation for image {}",
                        captions_file.display(),
                        a.image_id
                    ),
                    "caption of an image not listed in \"images\"",
                ));
            }
        }
        let mut items = Vec::new();
        for im in parsed.images {
            let Some(caps) = captions.remove(&im.id) else {
                continue;
            };
            match per {
                CocoCaptions::First => items.push((im.id, im.file_name, 0, caps[0].clone())),
                CocoCaptions::Every => {
                    for (k, c) in caps.into_iter().enumerate() {
                        items.push((im.id, im.file_name.clone(), k, c));
                    }
                }
            }
        }
        if items.is_empty() {
            return Err(DataError::Empty {
                dataset: format!("coco:{}", captions_file.display()),
                detail: ": no image has a caption".into(),
            });
        }
        Ok(Coco {
            captions_file: captions_file.to_path_buf(),
            images_dir: images_dir.to_path_buf(),
            items,
            per,
            skipped,
        })
    }

    /// Records left out while indexing, with why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

impl Dataset for Coco {
    fn name(&self) -> String {
        format!(
            "coco:{}:{}",
            self.captions_file.display(),
            self.images_dir.display()
        )
    }

    fn len(&self) -> Option<usize> {
        Some(self.items.len())
    }

    fn id(&self, index: usize) -> Result<String, DataError> {
        check_index(&self.name(), index, self.items.len())?;
        let (image_id, _, k, _) = &self.items[index];
        Ok(match self.per {
            CocoCaptions::First => format!("coco/{image_id}"),
            CocoCaptions::Every => format!("coco/{image_id}/{k}"),
        })
    }

    fn split_key(&self, index: usize) -> Result<String, DataError> {
        check_index(&self.name(), index, self.items.len())?;
        Ok(format!("coco/{}", self.items[index].0))
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        let id = self.id(index)?;
        let (_, file, _, caption) = &self.items[index];
        Ok(Example {
            id,
            image: Image::open(&self.images_dir.join(file))?,
            caption: caption.clone(),
        })
    }
}
