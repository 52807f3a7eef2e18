//! Our convolution and dense-layer products against oneDNN's (Debian's libdnnl, OpenMP threads)
//! on the UNet's shapes for the widths given (default 32 64 128: a CFG batch of 16 on 32x32
//! latents, levels [c, 2c, 2c] at 32, 16 and 8 pixels; dense layers on the tokens of the two
//! levels with attention), in f32 and with bf16 products, ours through the calls the model
//! makes (each output a new buffer). Runs alternate between the two sides, oneDNN's
//! OpenMP threads told to sleep when idle; medians.
//! `cargo run --release -p ldmscale-kernels --features onednn --example onednn_bench [reps
//! [width ...]]`.

use std::time::Instant;

#[global_allocator]
static GLOBAL: ldmscale_alloc::TensorAllocator = ldmscale_alloc::TensorAllocator;

use ldmscale_kernels::bf16::{engine, set_products_in_bf16};
use ldmscale_kernels::onednn::{Convolution, MatMul, effective_isa};
use ldmscale_kernels::{ConvShape, LinearShape, conv2d_output, linear_output, run_on_pool};

/// Median milliseconds of `reps` alternating runs of `ours` and `theirs`, after a warm-up each.
fn medians(reps: usize, mut ours: impl FnMut(), mut theirs: impl FnMut()) -> (f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64() * 1e3
    };
    ours();
    theirs();
    let (mut a, mut b): (Vec<f64>, Vec<f64>) = (0..reps)
        .map(|_| (time(&mut ours), time(&mut theirs)))
        .unzip();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    (a[reps / 2], b[reps / 2])
}

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect()
}

fn conv_row(reps: usize, s: ConvShape, bf16: bool) -> Result<(), String> {
    let x = values(s.batch * s.channels_in * s.height * s.width);
    let w = values(s.weight_len());
    let bias = values(s.channels_out);
    let mut theirs = vec![0f32; s.output_len()];
    let mut conv = Convolution::new(s, bf16)?;
    set_products_in_bf16(bf16);
    let (a, b) = medians(
        reps,
        || drop(conv2d_output(&x, &w, Some(&bias), s)),
        || {
            conv.forward(&x, &w, &bias, &mut theirs)
                .expect("oneDNN run")
        },
    );
    let label = format!(
        "conv {}x{}->{} {}px k{}",
        s.batch, s.channels_in, s.channels_out, s.height, s.kernel_h
    );
    print_row(&label, bf16, a, b);
    Ok(())
}

fn linear_row(reps: usize, s: LinearShape, bf16: bool) -> Result<(), String> {
    let x = values(s.input_len());
    let w = values(s.weight_len());
    let mut theirs = vec![0f32; s.output_len()];
    let mut product = MatMul::new(s.rows, s.d_out, s.d_in, bf16)?;
    set_products_in_bf16(bf16);
    let (a, b) = medians(
        reps,
        || drop(linear_output(&x, &w, None, s)),
        || product.forward(&x, &w, &mut theirs).expect("oneDNN run"),
    );
    let label = format!("linear {}x{}->{}", s.rows, s.d_in, s.d_out);
    print_row(&label, bf16, a, b);
    Ok(())
}

fn print_row(label: &str, bf16: bool, ours: f64, theirs: f64) {
    let precision = if bf16 { "bf16" } else { "f32" };
    println!(
        "{label:<28} {precision:<5} ours {ours:8.2} ms  oneDNN {theirs:8.2} ms  oneDNN/ours {:.2}x",
        theirs / ours
    );
}

/// Runs this benchmark again with `OMP_WAIT_POLICY=passive` unless it is set: libgomp reads it
/// when it loads, before `main`, and by default oneDNN's OpenMP threads spin after each call,
/// taking the cores from rayon's threads while the two sides alternate (on a 2-core AMD EPYC
/// Zen 1 that made our dense layers look 1.3-1.8x slower than when run alone).
fn with_passive_openmp_threads() -> Option<std::process::ExitStatus> {
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return None;
    }
    let exe = std::env::current_exe().expect("this benchmark's path");
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("OMP_WAIT_POLICY", "passive")
        .status()
        .expect("rerun with OMP_WAIT_POLICY=passive");
    Some(status)
}

fn main() -> Result<(), String> {
    if let Some(status) = with_passive_openmp_threads() {
        std::process::exit(status.code().unwrap_or(1));
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let reps = args.first().copied().unwrap_or(7);
    let widths = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![32, 64, 128]
    };
    println!(
        "oneDNN isa {}, our bf16 engine {:?}, rayon threads {}",
        effective_isa(),
        engine(),
        rayon::current_num_threads()
    );
    run_on_pool(|| {
        for &c in &widths {
            for bf16 in [false, true] {
                for (c_in, c_out, size) in [(c, c, 32), (2 * c, 2 * c, 16), (2 * c, 2 * c, 8)] {
                    let shape = ConvShape {
                        batch: 16,
                        channels_in: c_in,
                        height: size,
                        width: size,
                        channels_out: c_out,
                        kernel_h: 3,
                        kernel_w: 3,
                        stride: [1, 1],
                        padding: [1, 1],
                    };
                    conv_row(reps, shape, bf16)?;
                }
                // The transformer blocks' projections, feed-forward in and out, at both levels
                // with attention (32x32 latents: 1024 tokens of c, 256 of 2c).
                for (rows, w) in [(16 * 1024, c), (16 * 256, 2 * c)] {
                    for (d_in, d_out) in [(w, w), (w, 8 * w), (4 * w, w)] {
                        linear_row(reps, LinearShape { rows, d_in, d_out }, bf16)?;
                    }
                }
            }
        }
        Ok(())
    })
}
