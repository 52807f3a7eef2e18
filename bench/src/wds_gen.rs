//! Writes a WebDataset of `--images` captioned JPEGs of `--size` px into `--dir` (shards of
//! `--per-shard`), for the data-path memory benchmark (bench/data_rss.sh), and prints the
//! shards' brace pattern. Images and captions are a pure function of the index and `--seed`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Output folder (created).
    #[arg(long)]
    dir: PathBuf,
    /// Images to write.
    #[arg(long)]
    images: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    per_shard: usize,
    /// Seed of the pictures and captions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

const COLOURS: [&str; 6] = ["red", "green", "blue", "yellow", "purple", "white"];
const THINGS: [&str; 4] = ["square", "circle", "stripe", "blob"];

/// Image `k`: a colour wash with a square of another colour, and its caption.
fn example(k: u64, size: u32) -> Result<(Vec<u8>, String)> {
    let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let (colour, thing) = (
        (h >> 8) as usize % COLOURS.len(),
        (h >> 16) as usize % THINGS.len(),
    );
    let (x0, y0) = ((h >> 24) as u32 % (size / 2), (h >> 32) as u32 % (size / 2));
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        let inside = (x0..x0 + size / 3).contains(&x) && (y0..y0 + size / 3).contains(&y);
        let c = colour as u8 * 40;
        match inside {
            true => image::Rgb([255 - c, c, (thing as u8) * 60]),
            false => image::Rgb([c, (x * 255 / size) as u8, (y * 255 / size) as u8]),
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Jpeg)?;
    let caption = format!("a {} {}", COLOURS[colour], THINGS[thing]);
    Ok((out.into_inner(), caption))
}

fn member(b: &mut tar::Builder<std::fs::File>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    b.append_data(&mut header, name, bytes)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let shards = args.images.div_ceil(args.per_shard.max(1));
    for s in 0..shards {
        let path = args.dir.join(format!("{s:05}.tar"));
        let mut b = tar::Builder::new(std::fs::File::create(&path)?);
        for k in s * args.per_shard..((s + 1) * args.per_shard).min(args.images) {
            let (jpeg, caption) = example(k as u64 ^ args.seed.rotate_left(40), args.size)?;
            member(&mut b, &format!("{k:09}.jpg"), &jpeg)?;
            member(&mut b, &format!("{k:09}.txt"), caption.as_bytes())?;
        }
        b.into_inner()?.flush()?;
    }
    println!("{}/{{00000..{:05}}}.tar", args.dir.display(), shards - 1);
    Ok(())
}
