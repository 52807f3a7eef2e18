//! Deterministic inputs, error measures and thread pools for the kernels' tests.

/// `n` values `offset + scale * (2u - 1)`, `u` uniform in [0, 1) from a seeded LCG.
pub fn pseudo_random(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            offset + scale * (2.0 * u - 1.0)
        })
        .collect()
}

/// The largest error of `got` relative to the largest reference magnitude (at least 1e-6).
pub fn max_rel(got: &[f32], want: &[f64]) -> f64 {
    max_rel_floor(got, want, 1e-6)
}

/// The largest error of `got` relative to the largest reference magnitude, or to `floor` if
/// that is larger.
pub fn max_rel_floor(got: &[f32], want: &[f64], floor: f64) -> f64 {
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

/// `work`, run on a fresh rayon pool of `threads` threads.
pub fn on_threads<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(work)
}
