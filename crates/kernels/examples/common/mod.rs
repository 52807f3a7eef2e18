//! Timing and inputs shared by the kernel benchmarks.

use std::time::Instant;

/// The fastest of `reps` runs of `f`, in milliseconds, after one warm-up run.
pub fn min_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// The repetition count from the first command-line argument, else `default`.
pub fn reps_arg(default: usize) -> usize {
    std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("reps: a count"))
        .unwrap_or(default)
}
