//! The latent cache's bytes per example with and without cached text states (issue 23 item 5):
//! writes `--examples` examples (shards of 256, as the study does) for the tiny study's shapes
//! (64 px latents 4x16x16, the tiny encoder's 32 x 64 states) and the paper's (512 px SD-VAE
//! latents 4x64x64, CLIP's states 32 x 1024 as the study keeps them, or its 77 token ids),
//! each with text states in f32, in f16, and as token ids, and prints the shard bytes per
//! example measured on disk, with what 600M examples would take. Latents are f32; values are
//! pseudo-random (sizes do not depend on them).

use anyhow::Result;
use clap::Parser;
use ldmscale_data::{CacheKey, Crop, LatentCacheWriter, StorageDtype, TextStorage, TokenDtype};

#[derive(Parser, Debug)]
struct Args {
    /// Examples written per layout.
    #[arg(long, default_value_t = 1024)]
    examples: usize,
}

/// A layout: name, latent shape, text-state shape, tokens per caption.
type Layout = (&'static str, [usize; 3], [usize; 2], usize);

const LAYOUTS: [Layout; 2] = [
    ("tiny (64 px, 32x64 states)", [4, 16, 16], [32, 64], 32),
    // The study keeps CLIP's states at 32 of its 77 positions (text::state_length), and the
    // tokenizer's 77 token ids.
    (
        "paper (512 px, 32x1024 states)",
        [4, 64, 64],
        [32, 1024],
        77,
    ),
];

fn key(latent: [usize; 3], text: [usize; 2], storage: Option<TextStorage>) -> CacheKey {
    CacheKey {
        dataset: "bench".into(),
        split: "all".into(),
        resolution: [64, 64],
        crop: Crop::Center,
        image_encoder: "bench".into(),
        image_encoder_hash: "0".into(),
        text_encoder: "bench".into(),
        text_encoder_hash: "0".into(),
        latent_shape: latent,
        text_shape: text,
        scaling_factor: 1.0,
        dtype: StorageDtype::F32,
        text_storage: storage,
    }
}

/// Writes `n` examples under `key` and returns the shards' bytes.
fn write(n: usize, key: CacheKey, tokens: usize) -> Result<u64> {
    let dir = tempfile::tempdir()?;
    let [c, h, w] = key.latent_shape;
    let [l, d] = key.text_shape;
    let wave = |len: usize, i: usize| -> Vec<f32> {
        (0..len)
            .map(|k| ((i * len + k) as f32 * 0.618).sin())
            .collect()
    };
    let token_ids = matches!(key.text(), TextStorage::Tokens { .. });
    let mut writer = LatentCacheWriter::create(dir.path(), key, 256)?;
    for i in 0..n {
        let latent = wave(c * h * w, i);
        if token_ids {
            // Captions of 8 to `tokens` ids (the stored row is padded to `tokens` anyway).
            let count = 8 + i % (tokens - 7);
            let ids: Vec<u32> = (0..count)
                .map(|k| ((i * 31 + k * 7) % 49_408) as u32)
                .collect();
            writer.push_tokens(&i.to_string(), &latent, &ids)?;
        } else {
            let mask: Vec<u8> = (0..l).map(|k| (k < 8 + i % (l - 7)) as u8).collect();
            writer.push(&i.to_string(), &latent, &wave(l * d, i), &mask)?;
        }
    }
    let manifest = writer.finish()?;
    let mut bytes = 0;
    for shard in &manifest.shards {
        bytes += std::fs::metadata(dir.path().join(&shard.file))?.len();
    }
    Ok(bytes)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.examples;
    println!(
        "{:<32} {:<22} {:>12} {:>10} {:>14}",
        "shapes", "text kept as", "bytes/example", "vs f32", "at 600M (TB)"
    );
    for (name, latent, text, tokens) in LAYOUTS {
        let storages = [
            ("states f32", None),
            (
                "states f16",
                Some(TextStorage::States {
                    dtype: StorageDtype::F16,
                }),
            ),
            (
                "token ids (u16)",
                Some(TextStorage::Tokens {
                    tokens,
                    ids: TokenDtype::U16,
                }),
            ),
        ];
        let mut f32_bytes = 0.0;
        for (what, storage) in storages {
            let per = write(n, key(latent, text, storage), tokens)? as f64 / n as f64;
            if storage.is_none() {
                f32_bytes = per;
            }
            println!(
                "{name:<32} {what:<22} {per:>12.0} {:>10.3} {:>14.2}",
                per / f32_bytes,
                per * 6e8 / 1e12
            );
        }
        let latent_only = (latent.iter().product::<usize>() * 4) as f64;
        println!(
            "{name:<32} {:<22} {latent_only:>12.0}",
            "(latent alone, f32)"
        );
    }
    Ok(())
}
