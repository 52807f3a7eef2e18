//! `ldmscale lpips`: LPIPS v0.1 between two image folders matched by file name, equal to the
//! `lpips` 0.1.4 package with a user-supplied AlexNet / VGG16 trunk.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use ldmscale_eval::lpips::{Lpips, LpipsNet, default_heads_path};

use crate::sr_metrics::{matched_pairs, open_pair};

/// Where the weights come from, printed by `--help`.
const WEIGHTS: &str = "\
Weights (safetensors only):
  * --heads: the v0.1 linear heads from the lpips 0.1.4 wheel; `tools/fetch-assets.sh lpips`
    writes them to the asset cache, where this command finds them by default.
  * --trunk: the ImageNet AlexNet / VGG16 of torchvision, which no package ships. Where torchvision
    has cached them (~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth, vgg16-397923af.pth),
    convert once: `python tools/convert_lpips_trunk.py alexnet-owt-7be5be79.pth alex.safetensors`.
    Without the real trunk there is no LPIPS: the number would mean nothing.
Images are scaled to [-1, 1] as lpips.im2tensor (x / 127.5 - 1); each pair is compared at its own
size (no resizing); grey is replicated to RGB, fully opaque alpha dropped. Lower is more similar;
the mean over images is the last number printed.";

/// Arguments of `ldmscale lpips`.
#[derive(Args, Debug)]
#[command(after_long_help = WEIGHTS)]
pub struct LpipsArgs {
    /// Folder of reference images (PNG, JPEG, WebP, BMP; not recursive).
    pub reference: PathBuf,
    /// Folder of images to compare, with the same file names and sizes.
    pub restored: PathBuf,
    /// Trunk network: `alex` (the lpips default, and what most SR papers report) or `vgg`.
    #[arg(long, default_value = "alex", value_parser = parse_net)]
    pub net: LpipsNet,
    /// The trunk's weights: a torchvision state dict converted by tools/convert_lpips_trunk.py.
    #[arg(long, value_name = "FILE.safetensors")]
    pub trunk: PathBuf,
    /// The v0.1 heads [default: the asset cache's lpips/<net>.safetensors].
    #[arg(long, value_name = "FILE.safetensors")]
    pub heads: Option<PathBuf>,
    /// Print each image's value (file name, tab, value) before the mean.
    #[arg(long)]
    pub per_image: bool,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

fn parse_net(text: &str) -> Result<LpipsNet, String> {
    LpipsNet::parse(text).map_err(|e| e.to_string())
}

/// Runs `ldmscale lpips`.
pub fn run(args: &LpipsArgs) -> Result<()> {
    let pairs = matched_pairs(&args.reference, &args.restored)?;
    let heads = args
        .heads
        .clone()
        .unwrap_or_else(|| default_heads_path(args.net));
    if !heads.exists() {
        bail!(
            "{}: LPIPS heads not found; run tools/fetch-assets.sh lpips or pass --heads",
            heads.display()
        );
    }
    let device = args.device.device()?;
    let lpips = Lpips::load(args.net, &args.trunk, &heads, &device)?;
    let mut sum = 0.0;
    for (name, (a, b)) in &pairs {
        let value = distance(&lpips, a, b)?;
        if args.per_image {
            println!("{name}\t{value:.6}");
        }
        sum += value;
    }
    println!(
        "mean LPIPS-{} over {} images: {:.6}",
        args.net.name(),
        pairs.len(),
        sum / pairs.len() as f64
    );
    Ok(())
}

/// LPIPS of one pair, errors naming the files.
fn distance(lpips: &Lpips, a: &Path, b: &Path) -> Result<f64> {
    let (ia, ib) = open_pair(a, b)?;
    let what = || format!("{} vs {}", a.display(), b.display());
    let (x0, x1) = (lpips.input(&[&ia])?, lpips.input(&[&ib])?);
    let value = lpips.forward(x0, x1).with_context(what)?;
    let v = value
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(v[0] as f64)
}
