//! Times the streaming loader ([`PrefetchLoader`]) on a generated WebDataset, printing one
//! JSON object: images per second decoded (JPEG), resized, randomly cropped and flipped to
//! `--size` px over one pass of `--images` photo-sized sources (`--source` x 3/4 of it), on
//! `--workers` threads. The shards are written to a temporary folder first (not timed).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use ldmscale_data::{Cursor, Extent, LoaderConfig, PrefetchLoader, Transform, WebDataset};

#[derive(Parser, Debug)]
struct Args {
    /// Output side in pixels.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Source width in pixels (height 3/4 of it); 0: 3/2 of the output side.
    #[arg(long, default_value_t = 0)]
    source: u32,
    /// Images in the generated WebDataset.
    #[arg(long, default_value_t = 512)]
    images: usize,
    /// Samples per shard.
    #[arg(long, default_value_t = 128)]
    per_shard: usize,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Batches the loader may hold ahead of the consumer.
    #[arg(long, default_value_t = 4)]
    capacity: usize,
}

/// A JPEG of smooth gradients with a busy texture, so it compresses like a photo, not a flat fill.
fn photo_jpeg(width: u32, height: u32, seed: u32) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let t = (x * 7 + y * 13 + seed * 31) ^ (x * y / 5);
        image::Rgb([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            (t % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

fn member(b: &mut tar::Builder<std::fs::File>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    b.append_data(&mut header, name, bytes)?;
    Ok(())
}

/// Writes the shards; returns their brace pattern.
fn write_shards(dir: &Path, args: &Args, width: u32) -> Result<String> {
    let shards = args.images.div_ceil(args.per_shard);
    for s in 0..shards {
        let path = dir.join(format!("{s:05}.tar"));
        let mut b = tar::Builder::new(std::fs::File::create(&path)?);
        for k in s * args.per_shard..((s + 1) * args.per_shard).min(args.images) {
            member(
                &mut b,
                &format!("{k:08}.jpg"),
                &photo_jpeg(width, width * 3 / 4, k as u32)?,
            )?;
            member(
                &mut b,
                &format!("{k:08}.txt"),
                format!("photo {k}").as_bytes(),
            )?;
        }
        b.into_inner()?.flush()?;
    }
    Ok(format!(
        "{}/{{00000..{:05}}}.tar",
        dir.display(),
        shards - 1
    ))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let width = if args.source == 0 {
        args.size * 3 / 2
    } else {
        args.source
    };
    let dir = tempfile::tempdir()?;
    let pattern = write_shards(dir.path(), &args, width)?;
    let config = LoaderConfig {
        batch_size: args.batch,
        seed: 0,
        shuffle: true,
        workers: args.workers,
    };
    let start = Instant::now();
    let dataset = WebDataset::open(&pattern)?;
    let index_s = start.elapsed().as_secs_f64();
    let transform = Transform::random(args.size, true);
    let stream = PrefetchLoader::new(
        dataset,
        transform,
        config,
        Cursor::default(),
        Extent::OnePass,
        args.capacity,
    )?;
    let mut images = 0;
    for batch in stream {
        images += std::hint::black_box(batch.context("loading")?).len();
    }
    let seconds = start.elapsed().as_secs_f64() - index_s;
    println!(
        "{}",
        serde_json::json!({
            "size": args.size, "source": [width, width * 3 / 4], "images": images,
            "workers": args.workers, "batch": args.batch, "index_s": index_s,
            "seconds": seconds, "images_per_s": images as f64 / seconds,
        })
    );
    Ok(())
}
