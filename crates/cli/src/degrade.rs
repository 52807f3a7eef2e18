//! `ldmscale degrade`: a folder of high-resolution images to a frozen low-resolution set with the
//! RealESRGAN degradation, each image seeded by its place in the sorted folder, with a manifest of
//! settings and hashes so the set can be checked and reproduced. With `--hr-source` the HR
//! images are first cut as seeded crops of a source (`photos`, `div2k:DIR`, `folder:DIR`) and
//! kept beside the LR set in `hr/`.

mod params;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use image::ImageReader;
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_data::degrade::{FloatImage, RealEsrganParams, realesrgan, set_seed};
use ldmscale_data::image::{Image, MAX_IMAGE_SIDE};
use ldmscale_data::{CropSpec, DataError, Downscale, HrSource, for_each_hr_crop};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use params::ParamsChoice;

/// Extensions read as images (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// Problems listed at most, when many files are wrong.
const MAX_LISTED: usize = 20;

/// Arguments of `ldmscale degrade`.
#[derive(Args, Debug)]
pub struct DegradeArgs {
    /// Folder of high-resolution images (PNG, JPEG, WebP, BMP; not recursive). Files are taken in
    /// byte order of their names: a file's index, and so its seed, is its place in that order.
    #[arg(
        long,
        required_unless_present = "hr_source",
        conflicts_with = "hr_source"
    )]
    pub input: Option<PathBuf>,
    /// Instead of --input: cut --crops seeded HR crops of --crop-size px from `photos`
    /// (`tools/fetch-assets.sh photos`), `div2k:DIR` or `folder:DIR`, kept in `--out/hr/` as
    /// `crop-NNNNN.png` beside their LR images. Crop i's image and place come from (--seed, i).
    #[arg(long)]
    pub hr_source: Option<HrSource>,
    /// With --hr-source: how many crops [default: 100].
    // No clap defaults, so that a value given with --input is refused, not ignored.
    #[arg(long, conflicts_with = "input")]
    pub crops: Option<usize>,
    /// With --hr-source: the HR crop side in pixels, a multiple of the scale [default: 256].
    #[arg(long, conflicts_with = "input")]
    pub crop_size: Option<u32>,
    /// With --hr-source: `off` (full resolution, as the paper's 512 px DIV2K crops), a factor k
    /// (a region k times larger, k x k blocks averaged) or `paper-view` (k = 512 / crop size,
    /// fitted per image: small crops show as much of a photo as a 512 px one).
    /// [default: off]
    #[arg(long, conflicts_with = "input")]
    pub downscale: Option<Downscale>,
    /// Folder to create with one 8-bit RGB PNG per input (same stem) and `manifest.json`. It must
    /// not exist (or be empty): an evaluation set is never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// Set seed, mixed with the split name and each file's index.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Downscaling factor (default 4, or the `scale` of a params file); HR sides must be
    /// multiples of it.
    #[arg(long)]
    pub scale: Option<usize>,
    /// Split name mixed into the seeds, so train and evaluation sets of one folder differ.
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Settings: `scaled` (the paper's, with kernels capped to images under 140 px a side),
    /// `paper` (train_realesrgan_x4plus.yml exactly; smaller images are refused), or a TOML file
    /// whose keys replace the paper's (`blur2_prob = 0`, `[noise1] sigma = [1, 10]`; unknown
    /// keys are refused; the manifest lists every key).
    #[arg(long, default_value = "scaled")]
    pub params: ParamsChoice,
}

/// One input file, checked from its header before any work.
struct Planned {
    index: usize,
    path: PathBuf,
    name: String,
    out_name: String,
    params: RealEsrganParams,
}

/// One line of the manifest.
#[derive(Serialize)]
struct Record {
    index: usize,
    input: String,
    input_sha256: String,
    /// What was done to make the input 8-bit RGB, when anything was.
    conversion: Option<&'static str>,
    hr_size: [u32; 2],
    seed: u64,
    output: String,
    output_sha256: String,
    lr_size: [u32; 2],
}

/// `manifest.json`: enough to reproduce the set and to check a copy of it.
#[derive(Serialize)]
struct Manifest<'a> {
    tool: String,
    degradation: &'static str,
    params_name: String,
    /// Before capping to small images, for `scaled`.
    params: &'a RealEsrganParams,
    seed: u64,
    split: &'a str,
    seed_rule: &'static str,
    /// How the HR images were cut, with --hr-source.
    #[serde(skip_serializing_if = "Option::is_none")]
    hr_crops: Option<CropsRecord>,
    files: Vec<Record>,
}

/// The crops behind `hr/`, enough to cut them again.
#[derive(Serialize)]
struct CropsRecord {
    source: String,
    spec: CropSpec,
    crop_rule: &'static str,
}

const CROP_RULE: &str = "crop i (0-based): image index (uniform over the source's files in \
     relative-path order), then left, then top, drawn from SplitMix64(hash_u64s([hash_str(\"hr-crop\"), \
     seed, i])) (ldmscale_data::hr)";

const SEED_RULE: &str = "image i (0-based, files sorted by name) uses \
     hash_u64s([hash_u64s([hash_str(split), i]), seed]) (ldmscale_data::degrade::set_seed)";

/// Runs the command; `quiet` hides the progress bar.
pub fn run(args: &DegradeArgs, quiet: bool) -> Result<()> {
    let base = args.params.resolve(args.scale)?;
    let staging = Staging::create(&args.out)?;
    let (input, hr_crops) = match &args.hr_source {
        Some(source) => cut_crops(source, args, base.scale as u32, staging.dir())?,
        None => (args.input.clone().expect("clap requires --input"), None),
    };
    let files = image_files(&input)?;
    let planned = plan(&files, &base, &args.params)?;
    let bar = progress(planned.len(), quiet);
    let records = planned
        .par_iter()
        .map(|p| {
            let record = degrade_file(p, args, staging.dir());
            bar.inc(1);
            record
        })
        .collect::<Result<Vec<_>>>();
    bar.finish_and_clear();
    let manifest = Manifest {
        tool: format!("ldmscale {}", env!("CARGO_PKG_VERSION")),
        degradation: "realesrgan",
        params_name: args.params.label(),
        params: &base,
        seed: args.seed,
        split: &args.split,
        seed_rule: SEED_RULE,
        hr_crops,
        files: records?,
    };
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    write_file(&staging.dir().join("manifest.json"), json.as_bytes())?;
    staging.commit()?;
    eprintln!(
        "{}: {} LR images and manifest.json (x{}, params {}, seed {}, split {:?})",
        args.out.display(),
        manifest.files.len(),
        base.scale,
        manifest.params_name,
        args.seed,
        args.split
    );
    Ok(())
}

/// Writes the source's crops into `dir/hr/`, giving that folder and the manifest's record.
fn cut_crops(
    source: &HrSource,
    args: &DegradeArgs,
    scale: u32,
    dir: &Path,
) -> Result<(PathBuf, Option<CropsRecord>)> {
    let (count, size) = (args.crops.unwrap_or(100), args.crop_size.unwrap_or(256));
    if !size.is_multiple_of(scale) || size < 4 * scale {
        bail!(
            "--crop-size {size}: expected a multiple of the scale {scale} of at least {}",
            4 * scale
        );
    }
    if count == 0 {
        bail!("--crops 0: expected at least one crop");
    }
    let spec = CropSpec {
        count,
        size,
        seed: args.seed,
        downscale: args.downscale.unwrap_or_default(),
    };
    let files = source
        .files()
        .with_context(|| format!("--hr-source {source}"))?;
    let hr = dir.join("hr");
    std::fs::create_dir(&hr).with_context(|| format!("{}", hr.display()))?;
    for_each_hr_crop(&files, &spec, |i, crop| {
        let path = hr.join(format!("crop-{i:05}.png"));
        std::fs::write(&path, crop.to_png()).map_err(|e| DataError::Io {
            file: path.display().to_string(),
            message: e.to_string(),
        })
    })
    .with_context(|| format!("--hr-source {source}"))?;
    let record = CropsRecord {
        source: source.to_string(),
        spec,
        crop_rule: CROP_RULE,
    };
    Ok((hr, Some(record)))
}

fn progress(len: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} degrading {bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    )
}

/// The folder's image files in byte order of their names; other files are named in a warning.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("--input {}", dir.display()))?;
    let (mut files, mut skipped) = (Vec::new(), Vec::new());
    for entry in entries {
        let path = entry
            .with_context(|| format!("--input {}", dir.display()))?
            .path();
        if path.is_dir() {
            continue;
        }
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image {
            files.push(path);
        } else {
            skipped.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    if !skipped.is_empty() {
        skipped.sort();
        eprintln!("warning: not images, left out: {}", skipped.join(", "));
    }
    if files.is_empty() {
        bail!(
            "--input {}: no images ({}) in this folder",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    files.sort();
    Ok(files)
}

/// Every file's header checked (size, divisibility, output name), all problems at once.
fn plan(files: &[PathBuf], base: &RealEsrganParams, choice: &ParamsChoice) -> Result<Vec<Planned>> {
    let mut problems = Vec::new();
    let mut planned: Vec<Planned> = Vec::new();
    let mut outputs = std::collections::HashMap::new();
    for (index, path) in files.iter().enumerate() {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let out_name = format!("{stem}.png");
        if let Some(other) = outputs.insert(out_name.clone(), name.clone()) {
            problems.push(format!(
                "{name}: same output {out_name} as {other}; rename one"
            ));
            continue;
        }
        match check_header(path, base, choice) {
            Ok(params) => planned.push(Planned {
                index,
                path: path.clone(),
                name,
                out_name,
                params,
            }),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if problems.is_empty() {
        return Ok(planned);
    }
    let count = problems.len();
    problems.truncate(MAX_LISTED);
    let more = if count > MAX_LISTED {
        format!("\n... and {} more", count - MAX_LISTED)
    } else {
        String::new()
    };
    bail!(
        "{count} of {} images cannot be degraded:\n{}{more}",
        files.len(),
        problems.join("\n")
    )
}

/// The file's settings, after reading its size from the header.
fn check_header(
    path: &Path,
    base: &RealEsrganParams,
    choice: &ParamsChoice,
) -> Result<RealEsrganParams> {
    let file = path.display();
    let (w, h) = reader(path)?
        .into_dimensions()
        .with_context(|| format!("{file}: unreadable image"))?;
    let (scale, min) = (base.scale as u32, 4 * base.scale as u32);
    if w.min(h) < min {
        bail!("{file}: {w}x{h} has a side below the {min} px minimum of x{scale}");
    }
    if w % scale != 0 || h % scale != 0 {
        bail!(
            "{file}: {w}x{h} is not divisible by the scale {scale}; crop it to {}x{} first",
            w / scale * scale,
            h / scale * scale
        );
    }
    let scaled = base.scaled_for(w as usize, h as usize)?;
    if !choice.fits_small_images() && scaled != *base {
        bail!(
            "{file}: {w}x{h} is too small for the kernels of --params {} (PyTorch's reflect \
             padding needs a kernel radius below each side at every stage; the paper's need \
             140 px); use --params scaled, which caps them to the image",
            choice.label()
        );
    }
    Ok(scaled)
}

fn reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let mut reader = ImageReader::open(path)
        .with_context(|| format!("{}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}", path.display()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    Ok(reader)
}

/// Reads, converts, degrades and writes one image.
fn degrade_file(p: &Planned, args: &DegradeArgs, dir: &Path) -> Result<Record> {
    let file = p.path.display();
    let bytes = std::fs::read(&p.path).with_context(|| format!("{file}"))?;
    let (hr, conversion) = Image::decode_opaque(&bytes, &file.to_string())?;
    let seed = set_seed(args.seed, &args.split, p.index as u64);
    let lr = realesrgan(&FloatImage::from_image(&hr), &p.params, seed)
        .with_context(|| format!("{file}: degradation"))?
        .to_image();
    let png = lr.to_png();
    write_file(&dir.join(&p.out_name), &png)?;
    Ok(Record {
        index: p.index,
        input: p.name.clone(),
        input_sha256: sha256(&bytes),
        conversion,
        hr_size: [hr.width(), hr.height()],
        seed,
        output: p.out_name.clone(),
        output_sha256: sha256(&png),
        lr_size: [lr.width(), lr.height()],
    })
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes through a temporary file and a rename.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))
}

/// The output folder, built as a hidden sibling and renamed into place only when complete; on
/// an error (drop before `commit`) the sibling is removed.
struct Staging {
    dir: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(target: &Path) -> Result<Self> {
        let out = target.display();
        if target.exists() {
            let empty = std::fs::read_dir(target)
                .with_context(|| format!("--out {out}"))?
                .next()
                .is_none();
            if !empty {
                bail!(
                    "--out {out} exists and is not empty; an evaluation set is never overwritten"
                );
            }
        }
        let name = target
            .file_name()
            .with_context(|| format!("--out {out}: needs a folder name"))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| format!("{}", parent.display()))?;
        let dir = parent.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::create_dir(&dir).with_context(|| format!("{}", dir.display()))?;
        Ok(Staging {
            dir,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn commit(mut self) -> Result<()> {
        if self.target.exists() {
            // Empty (checked at the start); rename does not replace a folder on every platform.
            std::fs::remove_dir(&self.target)
                .with_context(|| format!("--out {}", self.target.display()))?;
        }
        std::fs::rename(&self.dir, &self.target)
            .with_context(|| format!("--out {}", self.target.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
