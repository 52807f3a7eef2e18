//! `ldmscale fid`: Fréchet Inception Distance between two image folders or `.npz` statistics,
//! numerically equal to pytorch-fid 0.3.0 or clean-fid 0.1.35 (`--mode`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_eval::fid::image_files;
use ldmscale_eval::npz::{read_stats, write_stats};
use ldmscale_eval::stats::kernel_inception_distance;
use ldmscale_eval::{
    FEATURE_DIM, FidExtractor, FidMode, GaussianStats, KidOptions, default_inception_path,
    folder_statistics, frechet_distance,
};

/// Arguments of `ldmscale fid`.
#[derive(Args, Debug)]
pub struct FidArgs {
    /// First image folder (PNG, JPEG, WebP, BMP; not recursive) or `.npz` statistics (mu, sigma).
    pub first: PathBuf,
    /// Second image folder or `.npz` statistics; leave out to only write `--save-stats`.
    pub second: Option<PathBuf>,
    /// Preprocessing: `pytorch-fid` (bilinear resize, as pytorch-fid 0.3.0) or `clean`
    /// (PIL bicubic of float channels, as clean-fid 0.1.35).
    #[arg(long, default_value = "pytorch-fid")]
    pub mode: FidMode,
    /// Images per network forward.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Write the first input's statistics (float64 mu, sigma) to this `.npz`, readable by
    /// pytorch-fid and clean-fid.
    #[arg(long, value_name = "OUT.npz")]
    pub save_stats: Option<PathBuf>,
    /// FID Inception weights: the TorchScript `pt_inception-2015-12-05.pt` or a safetensors copy
    /// [default: the asset cache, see tools/fetch-assets.sh]
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Also report KID (clean-fid's estimator: 100 subsets of up to 1000); needs two folders.
    #[arg(long)]
    pub kid: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

/// The largest `--batch`: 4096 Inception inputs are 4 GiB of f32 already.
pub const MAX_BATCH: usize = 4096;

fn is_stats_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// Statistics of one input, and its features when they were computed and asked for.
struct Input {
    label: String,
    stats: GaussianStats,
    features: Option<Vec<f32>>,
    images: Option<usize>,
}

fn load_extractor(args: &FidArgs, device: &Device) -> Result<FidExtractor> {
    let path = args
        .inception
        .clone()
        .unwrap_or_else(default_inception_path);
    if !path.exists() {
        bail!(
            "{}: FID Inception weights not found; run tools/fetch-assets.sh inception or pass --inception",
            path.display()
        );
    }
    crate::checks::input_file(&path, "--inception")?;
    Ok(FidExtractor::load(&path, args.mode, device)?)
}

fn folder_input(extractor: &FidExtractor, dir: &Path, args: &FidArgs) -> Result<Input> {
    let total = image_files(dir)?.len();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg} {bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_message(format!("features of {}", dir.display()));
    let start = Instant::now();
    let result = folder_statistics(extractor, dir, args.batch, args.kid, &mut |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let found = result?;
    for (_, reason) in &found.skipped {
        tracing::warn!("skipped an unreadable image: {reason}");
    }
    let seconds = start.elapsed().as_secs_f64();
    tracing::info!(
        "{}: {} images in {seconds:.1} s ({:.2} images/s)",
        dir.display(),
        found.images,
        found.images as f64 / seconds
    );
    Ok(Input {
        label: dir.display().to_string(),
        stats: found.stats,
        features: found.features,
        images: Some(found.images),
    })
}

fn read_input(
    path: &Path,
    extractor: &mut Option<FidExtractor>,
    args: &FidArgs,
    device: &Device,
) -> Result<Input> {
    if is_stats_file(path) {
        let stats = read_stats(path)?;
        return Ok(Input {
            label: path.display().to_string(),
            stats,
            features: None,
            images: None,
        });
    }
    if !path.is_dir() {
        bail!(
            "{}: not a folder of images or an .npz statistics file",
            path.display()
        );
    }
    // An empty or unreadable folder is reported before the weights are loaded.
    image_files(path)?;
    if extractor.is_none() {
        *extractor = Some(load_extractor(args, device)?);
    }
    folder_input(extractor.as_ref().expect("loaded"), path, args)
}

/// What `ldmscale fid` computed: the distance (when there was a second input), KID when asked,
/// and each input's label and image count.
struct Outcome {
    fid: Option<f64>,
    kid: Option<ldmscale_eval::Kid>,
    first: (String, Option<usize>),
    second: Option<(String, Option<usize>)>,
}

fn compute(args: &FidArgs) -> Result<Outcome> {
    crate::checks::count(args.batch, MAX_BATCH, "--batch")?;
    if let Some(out) = &args.save_stats {
        crate::checks::output_file(out, "--save-stats")?;
    }
    if args.second.is_none() && args.save_stats.is_none() {
        bail!("give a second folder or .npz to compare with, or --save-stats OUT.npz");
    }
    if args.kid && (is_stats_file(&args.first) || args.second.as_deref().is_none_or(is_stats_file))
    {
        bail!("--kid needs two image folders: KID is computed from features, not from mu/sigma");
    }
    let device = args.device.device()?;
    let mut extractor = None;
    let first = read_input(&args.first, &mut extractor, args, &device)?;
    if let Some(out) = &args.save_stats {
        write_stats(out, &first.stats)
            .with_context(|| format!("saving the statistics of {}", first.label))?;
        tracing::info!("wrote {}", out.display());
    }
    let Some(second_path) = &args.second else {
        return Ok(Outcome {
            fid: None,
            kid: None,
            first: (first.label, first.images),
            second: None,
        });
    };
    let second = read_input(second_path, &mut extractor, args, &device)?;
    if first.stats.dim() != second.stats.dim() {
        bail!(
            "{} has {}-wide statistics but {} has {}-wide ones",
            first.label,
            first.stats.dim(),
            second.label,
            second.stats.dim()
        );
    }
    let fid = frechet_distance(&first.stats, &second.stats)?;
    let kid = match (&first.features, &second.features) {
        (Some(a), Some(b)) if args.kid => Some(kernel_inception_distance(
            a,
            b,
            FEATURE_DIM,
            KidOptions::default(),
        )?),
        _ => None,
    };
    Ok(Outcome {
        fid: Some(fid),
        kid,
        first: (first.label, first.images),
        second: Some((second.label, second.images)),
    })
}

/// Runs `ldmscale fid`.
pub fn run(args: &FidArgs) -> Result<()> {
    let outcome = compute(args)?;
    let Some(fid) = outcome.fid else {
        return Ok(()); // statistics only, written by compute
    };
    if args.json {
        let input = |(path, images): &(String, Option<usize>)| serde_json::json!({ "path": path, "images": images });
        let mut out = serde_json::json!({
            "fid": fid,
            "mode": args.mode.name(),
            "first": input(&outcome.first),
            "second": outcome.second.as_ref().map(input),
        });
        if let Some(kid) = outcome.kid {
            out["kid"] = serde_json::json!({ "mean": kid.mean, "std": kid.std });
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("FID ({} preprocessing): {fid:.6}", args.mode.name());
        if let Some(kid) = outcome.kid {
            println!("KID: {:.6e} +- {:.6e}", kid.mean, kid.std);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldmscale_eval::FidInception;
    use ldmscale_eval::weights::{NamedTensor, WeightMap};

    fn args(first: &Path, second: Option<&Path>) -> FidArgs {
        FidArgs {
            device: Default::default(),
            first: first.to_path_buf(),
            second: second.map(Path::to_path_buf),
            mode: FidMode::Clean,
            batch: 2,
            save_stats: None,
            inception: Some(PathBuf::from("/nonexistent/inception.pt")),
            kid: false,
            json: true,
        }
    }

    /// An Inception with constant weights (features without meaning; the pipeline is what is
    /// tested here).
    fn constant_inception(dir: &Path) -> PathBuf {
        let tensors = FidInception::tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.iter().product();
                // 1/fan_in keeps activations of order one through the 94 layers.
                let value = if name.ends_with(".var") {
                    1.0
                } else if name.ends_with(".weight") {
                    1.0 / shape[1..].iter().product::<usize>() as f32
                } else {
                    0.01
                };
                (
                    name,
                    NamedTensor {
                        shape,
                        values: vec![value; n],
                    },
                )
            })
            .collect();
        let path = dir.join("constant.safetensors");
        WeightMap::from_tensors("constant", tensors)
            .save_safetensors(&path)
            .unwrap();
        path
    }

    #[test]
    fn folders_without_images_fail_before_loading_weights() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let mut a = args(dir.path(), None);
        a.save_stats = Some(dir.path().join("out.npz"));
        let err = run(&a).unwrap_err().to_string();
        assert!(
            err.contains("no images") && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
        let err = run(&args(&dir.path().join("missing"), Some(dir.path()))).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn unreadable_images_are_skipped_and_stats_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/eval/fid/images/a");
        for name in ["00.png", "01.png", "02.png"] {
            std::fs::copy(fixtures.join(name), images.join(name)).unwrap();
        }
        std::fs::write(images.join("03.png"), b"not a png").unwrap();
        let stats = dir.path().join("a.npz");
        let mut a = args(&images, None);
        a.inception = Some(constant_inception(dir.path()));
        a.save_stats = Some(stats.clone());
        let only_stats = compute(&a).unwrap();
        assert_eq!(only_stats.first.1, Some(3), "the broken file is skipped");
        assert!(only_stats.fid.is_none());
        let saved = read_stats(&stats).unwrap();
        assert_eq!(saved.dim(), FEATURE_DIM);
        // The folder against its own saved statistics: distance zero up to the rounding of a
        // rank-2 covariance's null space (2046 eigenvalues of order 1e-18, square-rooted).
        let mut b = args(&images, Some(&stats));
        b.inception = a.inception.clone();
        let fid = compute(&b).unwrap().fid.unwrap();
        let scale: f64 = (0..FEATURE_DIM)
            .map(|i| saved.sigma[i * FEATURE_DIM + i])
            .sum();
        assert!(
            fid.abs() < 1e-4 && fid.abs() < 1e-3 * scale,
            "{fid} (trace {scale})"
        );
    }

    #[test]
    fn mismatched_statistics_and_kid_without_features_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.npz");
        let large = dir.path().join("large.npz");
        write_stats(
            &small,
            &GaussianStats {
                mu: vec![0.0; 2],
                sigma: vec![1.0, 0.0, 0.0, 1.0],
            },
        )
        .unwrap();
        write_stats(
            &large,
            &GaussianStats {
                mu: vec![0.0; 3],
                sigma: vec![0.0; 9],
            },
        )
        .unwrap();
        let err = run(&args(&small, Some(&large))).unwrap_err().to_string();
        assert!(
            err.contains("small.npz has 2-wide") && err.contains("large.npz has 3-wide"),
            "{err}"
        );
        let mut k = args(&small, Some(&small));
        k.kid = true;
        assert!(
            run(&k)
                .unwrap_err()
                .to_string()
                .contains("--kid needs two image folders")
        );
    }
}
