//! High-resolution sources for the super-resolution study and seeded random crops of them.
//!
//! [`HrSource`] names where HR images come from, as a string in configs and on command lines:
//!
//! | string | images |
//! |---|---|
//! | `study` | the study's own dataset images (the caller holds them: [`hr_crops_of_images`]) |
//! | `photos` | the offline real-photo set of `tools/fetch-assets.sh photos` (17 photographs) |
//! | `div2k:DIR` | the real DIV2K: `DIR/DIV2K_valid_HR/*.png`, or `DIR/*.png` |
//! | `folder:DIR` | every image under `DIR`, recursively, sorted by relative path |
//!
//! Crop `i` of a [`CropSpec`] draws everything from its own generator seeded by `(seed, i)`:
//! first its image, uniformly among all (so crop sets of different lengths agree on their common
//! prefix), then its position. Images are read once each and converted as
//! [`Image::decode_opaque`] does (grey and opaque alpha converted, transparency refused).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::folder::{IMAGE_EXTENSIONS, relative, walk};
use crate::image::Image;
use crate::mnist::assets_dir;
use crate::rng::{SplitMix64, hash_str, hash_u64s};

/// The HR side of the paper's crops (512 px crops of DIV2K at full resolution).
pub const PAPER_CROP: u32 = 512;

/// What the CLI and configs accept, for error messages.
const FORMS: &str = "expected `study`, `photos`, `div2k:DIR` or `folder:DIR`";

/// Where high-resolution images come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HrSource {
    /// The study's own dataset images, given by the caller.
    Study,
    /// The offline photographs under `assets/photos` (`tools/fetch-assets.sh photos`).
    Photos,
    /// DIV2K: a folder holding `DIV2K_valid_HR/*.png`, or the PNGs themselves.
    Div2k(PathBuf),
    /// Any folder of images, read recursively.
    Folder(PathBuf),
}

impl FromStr for HrSource {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        let spec_error = |message: String| DataError::setting("HR source", s, message);
        let (kind, dir) = match s.split_once(':') {
            Some((kind, dir)) => (kind, Some(dir)),
            None => (s, None),
        };
        match (kind, dir) {
            ("study", None) => Ok(HrSource::Study),
            ("photos", None) => Ok(HrSource::Photos),
            ("div2k" | "folder", None | Some("")) => {
                Err(spec_error(format!("`{kind}` needs a folder: `{kind}:DIR`")))
            }
            ("div2k", Some(dir)) => Ok(HrSource::Div2k(dir.into())),
            ("folder", Some(dir)) => Ok(HrSource::Folder(dir.into())),
            ("study" | "photos", Some(_)) => {
                Err(spec_error(format!("`{kind}` takes no argument; {FORMS}")))
            }
            _ => Err(spec_error(format!("unknown HR source `{kind}`; {FORMS}"))),
        }
    }
}

impl std::fmt::Display for HrSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HrSource::Study => f.write_str("study"),
            HrSource::Photos => f.write_str("photos"),
            HrSource::Div2k(dir) => write!(f, "div2k:{}", dir.display()),
            HrSource::Folder(dir) => write!(f, "folder:{}", dir.display()),
        }
    }
}

impl TryFrom<String> for HrSource {
    type Error = DataError;
    fn try_from(s: String) -> Result<Self, DataError> {
        s.parse()
    }
}

impl From<HrSource> for String {
    fn from(source: HrSource) -> String {
        source.to_string()
    }
}

impl HrSource {
    /// The source's image files in their fixed order; the photos are looked for under
    /// [`assets_dir`].
    pub fn files(&self) -> Result<Vec<PathBuf>, DataError> {
        self.files_in(&assets_dir())
    }

    /// The source's image files, the photos looked for under `assets/photos`. `study` has no
    /// files: its images come from the caller.
    pub fn files_in(&self, assets: &Path) -> Result<Vec<PathBuf>, DataError> {
        match self {
            HrSource::Study => Err(DataError::setting(
                "HR source",
                "study",
                "the study's images come from its dataset, not from files; \
                 crop them with hr_crops_of_images",
            )),
            HrSource::Photos => photo_files(&assets.join("photos")),
            HrSource::Div2k(dir) => div2k_files(dir),
            HrSource::Folder(dir) => folder_files(dir),
        }
    }
}

fn photo_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    if !dir.join(".complete").exists() {
        return Err(DataError::MissingAsset {
            name: "photos".into(),
            path: dir.display().to_string(),
        });
    }
    folder_files(dir)
}

/// DIV2K's PNGs: in `DIV2K_valid_HR/` when the folder has one, else in the folder itself.
fn div2k_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let sub = dir.join("DIV2K_valid_HR");
    let dir = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))? {
        let path = entry.map_err(|e| DataError::io(&dir, e))?.path();
        let png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if png && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(DataError::format(
            dir.display(),
            "no .png images; expected DIV2K's DIR/DIV2K_valid_HR/*.png or DIR/*.png",
        ));
    }
    files.sort();
    Ok(files)
}

/// Every image under `dir`, sorted by path relative to it (the same on every file system).
fn folder_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    if files.is_empty() {
        return Err(DataError::format(
            dir.display(),
            format!(
                "no images in this folder or below; expected files ending in {}",
                IMAGE_EXTENSIONS.join(", ")
            ),
        ));
    }
    files.sort_by_cached_key(|p| relative(dir, p));
    Ok(files)
}

/// How an HR crop is taken from its image.
///
/// At study scale (32-64 px HR crops) a full-resolution crop of a 2560 px photograph shows a
/// patch under 3% of its width: nearly flat, unlike the paper's 512 px crops of ~2000 px DIV2K
/// images. A factor `k` crops a `size * k` region and averages each `k x k` block into one pixel
/// (area downsampling: exact for integer factors, no aliasing, no filter to match), so a crop
/// shows as much of the scene as a larger one would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Downscale {
    /// Crops at full resolution, as the paper's DIV2K crops (`off`).
    #[default]
    Off,
    /// A `size * k` region averaged down by `k` (`2`, `4`, ...); an image smaller than the region
    /// is an error.
    Factor(u32),
    /// `k = max(1, 512 / size)`, lowered per image to the largest that fits: each crop shows the
    /// scene at the scale of the paper's 512 px crop where the image allows (`paper-view`).
    PaperView,
}

impl FromStr for Downscale {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "off" => Ok(Downscale::Off),
            "paper-view" => Ok(Downscale::PaperView),
            _ => match s.parse::<u32>() {
                Ok(0) | Err(_) => Err(DataError::setting(
                    "downscale",
                    s,
                    "expected `off`, `paper-view` or a factor 1, 2, 3, ...",
                )),
                Ok(1) => Ok(Downscale::Off),
                Ok(k) => Ok(Downscale::Factor(k)),
            },
        }
    }
}

impl std::fmt::Display for Downscale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Downscale::Off => f.write_str("off"),
            Downscale::Factor(k) => write!(f, "{k}"),
            Downscale::PaperView => f.write_str("paper-view"),
        }
    }
}

impl Serialize for Downscale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Downscale::Factor(k) => s.serialize_u32(*k),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

// A factor may be written as a TOML integer (`downscale = 4`) or a string.
impl<'de> Deserialize<'de> for Downscale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Downscale;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`off`, `paper-view` or a downscale factor 1, 2, 3, ...")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Downscale, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Downscale, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Downscale, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Which crops to take: `count` crops of `size x size` pixels, seeded by `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CropSpec {
    /// How many crops.
    pub count: usize,
    /// The side of each crop, in pixels.
    pub size: u32,
    /// The seed mixed with each crop's index.
    pub seed: u64,
    /// Full resolution, or a larger region averaged down.
    #[serde(default)]
    pub downscale: Downscale,
}

impl CropSpec {
    fn check(&self) -> Result<(), DataError> {
        if self.size == 0 {
            return Err(DataError::setting(
                "crop size",
                0,
                "expected a side of at least 1 px",
            ));
        }
        if self.downscale == Downscale::Factor(0) {
            return Err(DataError::setting(
                "downscale",
                0,
                "expected a factor of at least 1",
            ));
        }
        Ok(())
    }

    /// The largest downscale factor wanted, before fitting to an image.
    fn factor(&self) -> u32 {
        match self.downscale {
            Downscale::Off => 1,
            Downscale::Factor(k) => k,
            Downscale::PaperView => (PAPER_CROP / self.size).max(1),
        }
    }

    /// The factor used on a `width x height` image named `name`, or why it cannot be cropped.
    fn factor_for(&self, name: &str, width: u32, height: u32) -> Result<u32, DataError> {
        let side = width.min(height);
        let k = match self.downscale {
            Downscale::PaperView => self.factor().min(side / self.size).max(1),
            _ => self.factor(),
        };
        let region = self.size as u64 * k as u64;
        if region > side as u64 {
            let what = if k == 1 {
                format!("a {0}x{0} crop", self.size)
            } else {
                format!(
                    "a {region}x{region} region (crop {} x downscale {k})",
                    self.size
                )
            };
            return Err(DataError::format(
                name,
                format!("{width}x{height} image is smaller than {what}"),
            ));
        }
        Ok(k)
    }
}

/// The generator of crop `index`: its image, then its position, come from it.
fn crop_rng(seed: u64, index: usize) -> SplitMix64 {
    SplitMix64::new(hash_u64s(&[hash_str("hr-crop"), seed, index as u64]))
}

/// Crop `index`'s image among `images`, and its generator ready for the position.
fn draw_image(seed: u64, index: usize, images: usize) -> (usize, SplitMix64) {
    let mut rng = crop_rng(seed, index);
    (rng.below(images as u64) as usize, rng)
}

/// Cuts one crop from `image` with the position drawn from `rng`.
fn cut(
    image: &Image,
    name: &str,
    spec: &CropSpec,
    rng: &mut SplitMix64,
) -> Result<Image, DataError> {
    let k = spec.factor_for(name, image.width(), image.height())?;
    let region = spec.size * k;
    let left = rng.below((image.width() - region + 1) as u64) as u32;
    let top = rng.below((image.height() - region + 1) as u64) as u32;
    Ok(area_downsample(&image.crop(left, top, region, region), k))
}

/// Each `k x k` block averaged into one pixel, rounded half up (PyTorch's `area` mode for an
/// integer factor, then 8-bit rounding).
pub fn area_downsample(image: &Image, k: u32) -> Image {
    assert!(k > 0, "area_downsample by 0");
    if k == 1 {
        return image.clone();
    }
    let (w, h) = (image.width() / k, image.height() / k);
    let (src, stride, k) = (image.as_bytes(), image.width() as usize * 3, k as usize);
    let (area, mut out) = (
        (k * k) as u32,
        Vec::with_capacity(w as usize * h as usize * 3),
    );
    for y in 0..h as usize {
        for x in 0..w as usize {
            let mut sum = [0u32; 3];
            for row in src[y * k * stride..].chunks(stride).take(k) {
                for px in row[x * k * 3..(x + 1) * k * 3].chunks_exact(3) {
                    for c in 0..3 {
                        sum[c] += px[c] as u32;
                    }
                }
            }
            out.extend(sum.map(|s| ((s + area / 2) / area) as u8));
        }
    }
    Image::from_rgb(w, h, out).expect("w x h x 3 bytes")
}

/// `spec.count` crops of the caller's images (the `study` source), in index order.
pub fn hr_crops_of_images(images: &[Image], spec: &CropSpec) -> Result<Vec<Image>, DataError> {
    spec.check()?;
    if images.is_empty() && spec.count > 0 {
        return Err(DataError::format("study", "no HR images to crop"));
    }
    (0..spec.count)
        .map(|i| {
            let (j, mut rng) = draw_image(spec.seed, i, images.len());
            cut(&images[j], &format!("study image {j}"), spec, &mut rng)
        })
        .collect()
}

/// `spec.count` crops of the image files (from [`HrSource::files`]), in index order. They are
/// held in memory together; [`for_each_hr_crop`] streams them instead.
pub fn hr_crops(files: &[PathBuf], spec: &CropSpec) -> Result<Vec<Image>, DataError> {
    let mut crops = vec![None; spec.count];
    for_each_hr_crop(files, spec, |i, crop| {
        crops[i] = Some(crop);
        Ok(())
    })?;
    Ok(crops
        .into_iter()
        .map(|c| c.expect("every crop visited"))
        .collect())
}

/// Calls `visit(i, crop)` for every crop, grouped by image (each image decoded once, one in
/// memory at a time). Every used image's header is checked against the crop size first, so a
/// too-small image stops the run before any crop is made.
pub fn for_each_hr_crop(
    files: &[PathBuf],
    spec: &CropSpec,
    mut visit: impl FnMut(usize, Image) -> Result<(), DataError>,
) -> Result<(), DataError> {
    spec.check()?;
    if files.is_empty() && spec.count > 0 {
        return Err(DataError::format("HR source", "no image files to crop"));
    }
    let mut by_image: BTreeMap<usize, Vec<(usize, SplitMix64)>> = BTreeMap::new();
    for i in 0..spec.count {
        let (j, rng) = draw_image(spec.seed, i, files.len());
        by_image.entry(j).or_default().push((i, rng));
    }
    check_headers(files, by_image.keys().copied(), spec)?;
    for (j, crops) in by_image {
        let name = files[j].display().to_string();
        let bytes = std::fs::read(&files[j]).map_err(|e| DataError::io(&files[j], e))?;
        let (image, note) = Image::decode_opaque(&bytes, &name)?;
        if let Some(note) = note {
            tracing::info!("{name}: {note}");
        }
        for (i, mut rng) in crops {
            visit(i, cut(&image, &name, spec, &mut rng)?)?;
        }
    }
    Ok(())
}

/// Every used file's size read from its header; all problems reported together.
fn check_headers(
    files: &[PathBuf],
    used: impl Iterator<Item = usize>,
    spec: &CropSpec,
) -> Result<(), DataError> {
    let mut problems = Vec::new();
    for j in used {
        let name = files[j].display().to_string();
        let size = image::ImageReader::open(&files[j])
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| DataError::io(&files[j], e))
            .and_then(|r| {
                r.into_dimensions().map_err(|e| DataError::Image {
                    file: name.clone(),
                    message: e.to_string(),
                })
            });
        if let Err(e) = size.and_then(|(w, h)| spec.factor_for(&name, w, h)) {
            problems.push(e);
        }
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(problems.remove(0)),
        n => Err(DataError::format(
            format!("{n} HR images"),
            format!(
                "cannot be cropped:\n{}",
                problems
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        )),
    }
}
