//! Where bf16 products pay: each convolution of the UNet's shapes (a CFG batch of 16 on 32x32
//! latents, levels [c, 2c, 2c] at 32, 16 and 8 pixels; the training batch of 8 for the
//! backward), forward and backward, with f32 and with bf16 products, runs alternating; medians.
//! `cargo run --release -p ldmscale-kernels --example bf16_conv_bench [reps [width ...]]`.

use std::time::Instant;

use ldmscale_kernels::bf16::{engine, set_products_in_bf16};
use ldmscale_kernels::{ConvShape, conv2d_backward, conv2d_forward, run_on_pool};

/// Median milliseconds of `f` with f32 and with bf16 products, `reps` alternating runs each
/// after a warm-up.
fn medians(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut time = |bf16: bool| {
        set_products_in_bf16(bf16);
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64() * 1e3
    };
    time(false);
    time(true);
    let (mut a, mut b): (Vec<f64>, Vec<f64>) = (0..reps).map(|_| (time(false), time(true))).unzip();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    (a[reps / 2], b[reps / 2])
}

fn shape(batch: usize, channels: usize, size: usize, kernel: usize) -> ConvShape {
    ConvShape {
        batch,
        channels_in: channels,
        height: size,
        width: size,
        channels_out: channels,
        kernel_h: kernel,
        kernel_w: kernel,
        stride: [1, 1],
        padding: [kernel / 2, kernel / 2],
    }
}

fn row(label: &str, s: ConvShape, (f32_ms, bf16_ms): (f64, f64)) {
    println!(
        "{label:<9} {}x{}->{} {:>2}px k{}: f32 {f32_ms:8.2} ms  bf16 {bf16_ms:8.2} ms  f32/bf16 {:.2}x",
        s.batch,
        s.channels_in,
        s.channels_out,
        s.height,
        s.kernel_h,
        f32_ms / bf16_ms
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let reps = args.first().copied().unwrap_or(9);
    let widths = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![32, 64, 128]
    };
    println!("bf16 engine {:?}", engine());
    run_on_pool(|| {
        for &c in &widths {
            for (channels, size) in [(c, 32), (2 * c, 16), (2 * c, 8)] {
                let values = |len: usize| (0..len).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
                let s = shape(16, channels, size, 3);
                let (x, w, bias): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                    values(s.batch * channels * size * size),
                    values(s.weight_len()),
                    values(channels),
                );
                let mut out = vec![0f32; s.output_len()];
                row(
                    "forward",
                    s,
                    medians(reps, || conv2d_forward(&x, &w, Some(&bias), s, &mut out)),
                );
                let s = shape(8, channels, size, 3);
                let (x, d_out): (Vec<f32>, Vec<f32>) = (
                    values(s.batch * channels * size * size),
                    values(s.output_len()),
                );
                let (mut dx, mut dw, mut db) = (
                    vec![0f32; x.len()],
                    vec![0f32; w.len()],
                    vec![0f32; channels],
                );
                row(
                    "backward",
                    s,
                    medians(reps, || {
                        conv2d_backward(&x, &w, &d_out, s, Some(&mut dx), &mut dw, Some(&mut db))
                    }),
                );
            }
        }
    });
}
