//! bf16 products (`ldmscale_kernels::bf16::matmul_bf16`, parallel) against f32 `gemm::gemm`
//! (`Parallelism::Rayon(0)`) on the convolution and linear-layer shapes of the UNet; row-major
//! operands, min over repeated runs (the machine is shared). `cargo run --release -p
//! ldmscale-kernels --example bf16_bench [repeats [m n k]]`.

use std::time::Instant;

use ldmscale_kernels::bf16::{available, matmul_bf16};

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Minimum seconds of `repeats` runs of `a` and of `b` after one warm-up run each; the runs
/// alternate so that both see the same spells of load from other processes.
fn min_seconds(repeats: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    a();
    b();
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    (0..repeats).fold((f64::INFINITY, f64::INFINITY), |(min_a, min_b), _| {
        (min_a.min(time(&mut a)), min_b.min(time(&mut b)))
    })
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let repeats = args.first().copied().unwrap_or(20);
    println!(
        "avx512-bf16 available: {}, rayon threads: {}",
        available(),
        rayon::current_num_threads()
    );
    println!(
        "{:>6} {:>5} {:>5} | {:>9} {:>8} | {:>9} {:>8} | {:>7} | {:>9}",
        "m", "n", "k", "f32 ms", "GFLOP/s", "bf16 ms", "GFLOP/s", "speedup", "max rel"
    );
    let shapes = match args[..] {
        [_, m, n, k] => vec![(m, n, k)],
        _ => vec![
            (128, 1024, 1152),
            (256, 256, 2304),
            (128, 1152, 1024),
            (1152, 1024, 128),
            (16 * 1024, 128, 128),
            (16 * 1024, 512, 128),
        ],
    };
    for (m, n, k) in shapes {
        let lhs = values(m * k, 1);
        let rhs = values(k * n, 2);
        let mut dst_f32 = vec![0f32; m * n];
        let mut dst_bf16 = vec![0f32; m * n];
        let f32_gemm = || unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst_f32.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            )
        };
        let bf16 = || {
            matmul_bf16(
                m,
                n,
                k,
                &mut dst_bf16,
                n,
                false,
                &lhs,
                k,
                1,
                &rhs,
                n,
                1,
                true,
            )
        };
        let (f32_seconds, bf16_seconds) = min_seconds(repeats, f32_gemm, bf16);
        // Largest difference from f32, relative to the largest f32 result.
        let scale = dst_f32.iter().fold(0f32, |a, x| a.max(x.abs()));
        let max_diff = dst_f32
            .iter()
            .zip(&dst_bf16)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        let flop = 2.0 * (m * n * k) as f64;
        println!(
            "{:>6} {:>5} {:>5} | {:>9.3} {:>8.1} | {:>9.3} {:>8.1} | {:>6.2}x | {:>9.2e}",
            m,
            n,
            k,
            f32_seconds * 1e3,
            flop / f32_seconds * 1e-9,
            bf16_seconds * 1e3,
            flop / bf16_seconds * 1e-9,
            f32_seconds / bf16_seconds,
            max_diff / scale
        );
    }
}
