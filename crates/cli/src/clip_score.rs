//! `ldmscale clip-score`: torchmetrics' CLIP score of images against their captions, with a
//! transformers `CLIPModel` directory (ViT-B/32, ViT-L/14, ...) the user supplies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ldmscale_eval::RgbImage;
use ldmscale_eval::clip::{ClipModel, clip_score, pair_scores};
use ldmscale_eval::fid::image_files;

/// Arguments of `ldmscale clip-score`.
#[derive(Args, Debug)]
pub struct ClipScoreArgs {
    /// Folder of images (PNG, JPEG, WebP, BMP; not recursive).
    #[arg(long)]
    pub images: PathBuf,
    /// Captions: lines `FILE<TAB>CAPTION` naming images in the folder, or one caption per line
    /// for the images in sorted file-name order.
    #[arg(long)]
    pub captions: PathBuf,
    /// transformers CLIPModel directory (config.json, model.safetensors, tokenizer.json,
    /// processor_config.json or preprocessor_config.json), e.g. openai/clip-vit-large-patch14
    /// (torchmetrics' default) saved locally.
    #[arg(long)]
    pub clip: PathBuf,
    /// Image-caption pairs per forward.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Print the result (and every pair's score) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

/// Pairs each image file with its caption.
fn pair_captions(files: &[PathBuf], captions_file: &Path) -> Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string(captions_file)
        .with_context(|| format!("reading {}", captions_file.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        bail!("{}: no captions", captions_file.display());
    }
    if lines.iter().all(|l| l.contains('\t')) {
        let by_name: BTreeMap<String, &PathBuf> = files
            .iter()
            .filter_map(|p| Some((p.file_name()?.to_str()?.to_owned(), p)))
            .collect();
        // Line numbers as in the file (blank lines count).
        let numbered = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let mut first_line: BTreeMap<&str, usize> = BTreeMap::new();
        return numbered
            .map(|(i, line)| {
                let (name, caption) = line.split_once('\t').expect("checked");
                let name = name.trim();
                let path = by_name.get(name).with_context(|| {
                    format!(
                        "{} line {}: no image {name:?} in the image folder",
                        captions_file.display(),
                        i + 1
                    )
                })?;
                if let Some(first) = first_line.insert(name, i + 1) {
                    bail!(
                        "{} line {}: a second caption for {name:?} (the first is on line {first}); give one per image",
                        captions_file.display(),
                        i + 1
                    );
                }
                Ok(((*path).clone(), caption.to_owned()))
            })
            .collect();
    }
    if lines.len() != files.len() {
        bail!(
            "{}: {} captions for {} images; give one per image (in file-name order) or FILE<TAB>CAPTION lines",
            captions_file.display(),
            lines.len(),
            files.len()
        );
    }
    Ok(files
        .iter()
        .cloned()
        .zip(lines.iter().map(|l| l.to_string()))
        .collect())
}

/// Every readable pair's score (`100 * cos`) and the CLIP score (their mean, clamped at 0).
fn score_pairs(args: &ClipScoreArgs) -> Result<(f64, Vec<(PathBuf, f64)>)> {
    crate::checks::count(args.batch, crate::fid::MAX_BATCH, "--batch")?;
    let files = image_files(&args.images)?;
    let pairs = pair_captions(&files, &args.captions)?;
    let device = args.device.device()?;
    let model = ClipModel::load(&args.clip, &device)
        .with_context(|| format!("loading the CLIP model in {}", args.clip.display()))?;
    let bar = ProgressBar::new(pairs.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} CLIP score {bar:30} {pos}/{len} pairs [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    let d = model.config.projection_dim;
    let mut scored: Vec<(PathBuf, f64)> = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(args.batch) {
        let mut images = Vec::with_capacity(chunk.len());
        let mut captions = Vec::with_capacity(chunk.len());
        let mut names = Vec::with_capacity(chunk.len());
        for (path, caption) in chunk {
            match RgbImage::open(path) {
                Ok(image) => {
                    images.push(image);
                    captions.push(caption.as_str());
                    names.push(path.clone());
                }
                Err(e) => tracing::warn!("skipped {}: {e}", path.display()),
            }
        }
        if !images.is_empty() {
            let image_embeds = model.image_embeddings(&images)?;
            let text_embeds = model.text_embeddings(&captions)?;
            let to_vec = |t: burn::tensor::Tensor<2>| -> Vec<f32> {
                t.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 embeddings")
            };
            let scores = pair_scores(&to_vec(image_embeds), &to_vec(text_embeds), d);
            scored.extend(names.into_iter().zip(scores));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if scored.is_empty() {
        bail!("{}: no readable images", args.images.display());
    }
    let per_pair: Vec<f64> = scored.iter().map(|(_, s)| *s).collect();
    Ok((clip_score(&per_pair), scored))
}

/// Runs `ldmscale clip-score`.
pub fn run(args: &ClipScoreArgs) -> Result<()> {
    let (score, scored) = score_pairs(args)?;
    if args.json {
        let pairs: Vec<serde_json::Value> = scored
            .iter()
            .map(|(p, s)| serde_json::json!({ "image": p.display().to_string(), "score": s }))
            .collect();
        let out =
            serde_json::json!({ "clip_score": score, "pairs": pairs.len(), "per_pair": pairs });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("CLIP score: {score:.6} ({} pairs)", scored.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip_fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/eval/clip")
    }

    #[test]
    fn scores_the_fixture_pairs_like_torchmetrics() {
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(clip_fixtures().join("manifest.json")).unwrap(),
        )
        .unwrap();
        let args = ClipScoreArgs {
            device: Default::default(),
            images: clip_fixtures().join("images"),
            captions: clip_fixtures().join("captions.tsv"),
            clip: clip_fixtures().join("vit_b32_like"),
            batch: 3,
            json: true,
        };
        let (score, scored) = score_pairs(&args).unwrap();
        let want = manifest["cases"]["vit_b32_like"]["clip_score"]
            .as_f64()
            .unwrap();
        assert!(
            (score - want).abs() < 1e-3,
            "{score} vs torchmetrics {want}"
        );
        for ((_, ours), theirs) in scored.iter().zip(
            manifest["cases"]["vit_b32_like"]["per_pair"]
                .as_array()
                .unwrap(),
        ) {
            assert!((ours - theirs.as_f64().unwrap()).abs() < 1e-3);
        }
        let files = image_files(&args.images).unwrap();
        let pairs = pair_captions(&files, &args.captions).unwrap();
        let expected: Vec<&str> = manifest["captions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let captions: Vec<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(captions, expected);
    }

    #[test]
    fn caption_files_that_do_not_fit_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let files = image_files(&clip_fixtures().join("images")).unwrap();
        let plain = dir.path().join("plain.txt");
        std::fs::write(&plain, "one\ntwo\n").unwrap();
        let err = pair_captions(&files, &plain).unwrap_err().to_string();
        assert!(err.contains("2 captions for 4 images"), "{err}");
        let named = dir.path().join("named.tsv");
        std::fs::write(&named, "a_wide.png\tok\nmissing.png\tno\n").unwrap();
        let err = pair_captions(&files, &named).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("missing.png"),
            "{err}"
        );
        std::fs::write(&named, "a_wide.png\tok\n\na_wide.png\tagain\n").unwrap();
        let err = pair_captions(&files, &named).unwrap_err().to_string();
        assert!(
            err.contains("named.tsv line 3") && err.contains("second caption"),
            "{err}"
        );
    }
}
