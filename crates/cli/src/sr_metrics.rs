//! `ldmscale psnr` and `ldmscale ssim`: super-resolution metrics between two image folders,
//! equal to BasicSR 1.4.2's `calculate_psnr` / `calculate_ssim`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use ldmscale_eval::RgbImage;
use ldmscale_eval::fid::image_files;
use ldmscale_eval::sr_metrics::{RgbView, SrMetricOptions, open_rgb8, psnr, ssim};

/// Conventions printed by `--help`.
const CONVENTIONS: &str = "\
Conventions (BasicSR 1.4.2, basicsr/metrics/psnr_ssim.py):
  * Values are 8-bit in [0, 255], compared in float64. PSNR = 10 log10(255^2 / MSE) over all
    channels (inf for identical images); SSIM uses an 11x11 Gaussian window (sigma 1.5) over the
    valid region, averaged over channels.
  * --crop-border N cuts N pixels from every side first (BasicSR's crop_border).
  * --y-channel compares the BT.601 luma Y = 16 + 65.481 R + 128.553 G + 24.966 B (RGB in
    [0, 1]), unrounded, as BasicSR's test_y_channel.
  * Which to use: Real-ESRGAN's configs validate with crop 4 on RGB (`--crop-border 4`); most SR
    papers report Y with the crop equal to the scale (x4: `--y-channel --crop-border 4`).
  * Images are matched by file name; the mean over images is the last number printed.
  * Grey images are replicated to RGB (as cv2.imread hands them to BasicSR); RGBA is accepted
    only when fully opaque (alpha dropped); 16-bit images are refused. Use lossless files (PNG):
    JPEG decoders differ by a few levels.";

/// Arguments of `ldmscale psnr` and `ldmscale ssim`.
#[derive(Args, Debug)]
#[command(after_long_help = CONVENTIONS)]
pub struct SrMetricArgs {
    /// Folder of reference images (e.g. the HR ground truth; PNG, JPEG, WebP, BMP; not recursive).
    pub reference: PathBuf,
    /// Folder of images to measure (e.g. SR outputs), with the same file names.
    pub restored: PathBuf,
    /// Pixels cut from each side before measuring (BasicSR's crop_border).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub crop_border: usize,
    /// Compare the BT.601 luma (Y of YCbCr) only, as BasicSR's test_y_channel.
    #[arg(long)]
    pub y_channel: bool,
    /// Print each image's value (file name, tab, value) before the mean.
    #[arg(long)]
    pub per_image: bool,
}

/// Which metric a command computes.
#[derive(Clone, Copy, Debug)]
pub enum SrMetric {
    Psnr,
    Ssim,
}

impl SrMetric {
    fn name(self) -> &'static str {
        match self {
            SrMetric::Psnr => "PSNR",
            SrMetric::Ssim => "SSIM",
        }
    }
}

/// Runs `ldmscale psnr` or `ldmscale ssim`.
pub fn run(metric: SrMetric, args: &SrMetricArgs) -> Result<()> {
    let pairs = matched_pairs(&args.reference, &args.restored)?;
    let options = SrMetricOptions {
        crop_border: args.crop_border,
        y_channel: args.y_channel,
    };
    let mut sum = 0.0;
    for (name, (a, b)) in &pairs {
        let value = measure(metric, a, b, options)?;
        if args.per_image {
            println!("{name}\t{}", format_value(value));
        }
        sum += value;
    }
    let mean = sum / pairs.len() as f64;
    let channels = if args.y_channel { "Y" } else { "RGB" };
    println!(
        "mean {} over {} images ({channels}, crop border {}): {}",
        metric.name(),
        pairs.len(),
        args.crop_border,
        format_value(mean)
    );
    Ok(())
}

fn format_value(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v:.6}")
    }
}

/// Two images of one size as 8-bit RGB, errors naming the files.
pub(crate) fn open_pair(a: &Path, b: &Path) -> Result<(RgbImage, RgbImage)> {
    let (ia, ib) = (open_rgb8(a)?, open_rgb8(b)?);
    if (ia.width, ia.height) != (ib.width, ib.height) {
        bail!(
            "{} is {}x{} but {} is {}x{}: the images must have the same size",
            a.display(),
            ia.width,
            ia.height,
            b.display(),
            ib.width,
            ib.height
        );
    }
    Ok((ia, ib))
}

/// One image pair's metric, errors naming both files.
fn measure(metric: SrMetric, a: &Path, b: &Path, options: SrMetricOptions) -> Result<f64> {
    let (ia, ib) = open_pair(a, b)?;
    let va = RgbView::new(&ia.data, ia.width, ia.height);
    let vb = RgbView::new(&ib.data, ib.width, ib.height);
    let value = match metric {
        SrMetric::Psnr => psnr(va, vb, options),
        SrMetric::Ssim => ssim(va, vb, options),
    };
    value.map_err(|e| anyhow::anyhow!("{} vs {}: {e}", a.display(), b.display()))
}

/// The files of both folders paired by file name; a name in only one folder is an error.
pub(crate) fn matched_pairs(
    first: &Path,
    second: &Path,
) -> Result<BTreeMap<String, (PathBuf, PathBuf)>> {
    let (a, b) = (by_name(first)?, by_name(second)?);
    for (have, dir, other) in [(&a, second, first), (&b, first, second)] {
        let missing: Vec<&str> = have
            .keys()
            .filter(|k| !a.contains_key(*k) || !b.contains_key(*k))
            .map(String::as_str)
            .collect();
        if let Some(name) = missing.first() {
            bail!(
                "{}: no image named {name} (it is in {}){}",
                dir.display(),
                other.display(),
                more(missing.len())
            );
        }
    }
    Ok(a.into_iter()
        .map(|(name, pa)| {
            let pb = b[&name].clone();
            (name, (pa, pb))
        })
        .collect())
}

fn more(count: usize) -> String {
    match count {
        1 => String::new(),
        n => format!("; {} names in all lack a match", n),
    }
}

fn by_name(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    Ok(image_files(dir)?
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            Some((name, p))
        })
        .collect())
}
