//! Times the RealESRGAN degradation (`ldmscale_data::degrade::realesrgan`, x4plus settings) on
//! this machine, printing one JSON object: images per second over `--images` HR images of
//! `--size` px (kernels drawn per image, as in `ldmscale degrade`), images spread over
//! `--threads` threads. `--stages` instead times each operation once on one image, the profile
//! behind the filter work. `bench/degrade.sh` runs it beside Real-ESRGAN's PyTorch pipeline.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use ldmscale_data::degrade::{
    FloatImage, Kernel, KernelShape, Noise, RealEsrganParams, ResizeMode, ResizeTo, UsmParams,
    filter2d, jpeg, realesrgan, resize, seed_for, usm_sharp,
};
use ldmscale_data::rng::SplitMix64;
use rayon::prelude::*;

#[derive(Parser, Debug)]
struct Args {
    /// HR side in pixels (LR = size / 4).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Images per timed round.
    #[arg(long, default_value_t = 32)]
    images: usize,
    /// Threads the images are spread over.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed rounds after one warm-up image; the best round is reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Time each operation on one image instead.
    #[arg(long)]
    stages: bool,
}

/// `pattern_image` of tools/fixtures/make_degradation_fixtures.py (the peer builds the same HR):
/// a ramp on the left, a busy integer texture on the right.
fn pattern_image(size: usize) -> FloatImage {
    let mut img = FloatImage::zeros(size, size);
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let v = if x < size / 2 {
                    (x * 2 + y + c * 40) % 256
                } else {
                    (x * x * 7 + y * 13 + c * 101 + x * y * 3) % 256
                };
                img.set(x, y, c, v as f32 / 255.0);
            }
        }
    }
    img
}

fn round(hr: &FloatImage, args: &Args, offset: usize) -> f64 {
    let params = RealEsrganParams::x4plus();
    let start = Instant::now();
    (0..args.images).into_par_iter().for_each(|i| {
        let seed = seed_for("bench", (offset + i) as u64);
        std::hint::black_box(realesrgan(hr, &params, seed).expect("degrades"));
    });
    start.elapsed().as_secs_f64()
}

fn throughput(args: &Args) -> serde_json::Value {
    let hr = pattern_image(args.size);
    let params = RealEsrganParams::x4plus();
    realesrgan(&hr, &params, 0).expect("warm-up");
    let best = (0..args.rounds)
        .map(|r| round(&hr, args, r * args.images))
        .fold(f64::INFINITY, f64::min);
    serde_json::json!({
        "size": args.size,
        "images": args.images,
        "threads": args.threads,
        "seconds": best,
        "images_per_s": args.images as f64 / best,
    })
}

/// Milliseconds of `f`, best of 3.
fn ms<T>(mut f: impl FnMut() -> T) -> f64 {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn stages(args: &Args) -> serde_json::Value {
    let hr = pattern_image(args.size);
    let shape = KernelShape {
        sigma_x: 2.0,
        sigma_y: 0.8,
        theta: 0.5,
        isotropic: false,
    };
    let k21 = Kernel::gaussian(21, shape);
    let k7 = Kernel::gaussian(7, shape);
    let mut rng = SplitMix64::new(1);
    serde_json::json!({
        "size": args.size,
        "usm_ms": ms(|| usm_sharp(&hr, UsmParams::default())),
        "filter2d_21_ms": ms(|| filter2d(&hr, &k21)),
        "filter2d_7_ms": ms(|| filter2d(&hr, &k7)),
        "resize_bicubic_half_ms": ms(|| resize(&hr, ResizeTo::Scale(0.5), ResizeMode::Bicubic)),
        "resize_area_quarter_ms": ms(|| resize(&hr, ResizeTo::Scale(0.25), ResizeMode::Area)),
        "jpeg_ms": ms(|| jpeg(&hr, 60.0)),
        "gaussian_noise_ms": ms(|| Noise::Gaussian { sigma: 10.0, gray: false }.apply(&hr, &mut rng)),
        "poisson_noise_ms": ms(|| Noise::Poisson { scale: 1.0, gray: false }.apply(&hr, &mut rng)),
        "whole_pipeline_ms": ms(|| realesrgan(&hr, &RealEsrganParams::x4plus(), 3)),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()?;
    let report = if args.stages {
        stages(&args)
    } else {
        throughput(&args)
    };
    println!("{report}");
    Ok(())
}
