//! Row primitives of the filters: reflect-101 padded rows and weighted sums of whole rows.
//!
//! A filter's output row is a weighted sum of shifted input rows. [`weighted_sum`] adds the taps
//! in the order given, starting from zero, exactly as a per-pixel loop over the same taps would:
//! the same bits, while the compiler vectorises across the row (AVX-512 or AVX2 chosen at run
//! time; `*` and `+` stay separate operations, never fused, so every width rounds alike) and
//! keeps a block of sums in registers through all the taps.

use super::kernels::reflect;

/// One tap: a weight and its source row, aligned with the output.
pub(super) type Tap<'a> = (f64, &'a [f64]);

/// `out[i] = sum over taps (in order) of w * src[i]`.
pub(super) fn weighted_sum(out: &mut [f64], taps: &[Tap]) {
    assert!(taps.iter().all(|(_, src)| src.len() >= out.len()));
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { weighted_sum_avx512(out, taps) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { weighted_sum_avx2(out, taps) };
        }
    }
    weighted_sum_portable(out, taps);
}

/// Sums kept in registers per block; 32 f64 are 4 AVX-512 or 8 AVX2 registers.
const BLOCK: usize = 32;

#[inline(always)]
fn weighted_sum_portable(out: &mut [f64], taps: &[Tap]) {
    let n = out.len();
    let blocks = n / BLOCK * BLOCK;
    for start in (0..blocks).step_by(BLOCK) {
        let mut acc = [0.0f64; BLOCK];
        for &(w, src) in taps {
            let src: &[f64; BLOCK] = src[start..start + BLOCK].try_into().expect("block");
            for (a, s) in acc.iter_mut().zip(src) {
                *a += w * s;
            }
        }
        out[start..start + BLOCK].copy_from_slice(&acc);
    }
    for (i, o) in out.iter_mut().enumerate().skip(blocks) {
        let mut acc = 0.0f64;
        for &(w, src) in taps {
            acc += w * src[i];
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weighted_sum_avx512(out: &mut [f64], taps: &[Tap]) {
    weighted_sum_portable(out, taps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn weighted_sum_avx2(out: &mut [f64], taps: &[Tap]) {
    weighted_sum_portable(out, taps);
}

/// Row `y` of an interleaved RGB image (`width x 3` values), widened to f64 and padded by
/// `half` pixels on each side with reflect-101: `(width + 2 half) x 3` values.
pub(super) fn padded_row(pixels: &[f32], width: usize, y: usize, half: usize, out: &mut Vec<f64>) {
    out.clear();
    let row = &pixels[y * width * 3..(y + 1) * width * 3];
    for p in 0..width + 2 * half {
        let x = reflect(p as isize - half as isize, width);
        out.extend(row[x * 3..x * 3 + 3].iter().map(|&v| v as f64));
    }
}

/// Writes an f64 row into f32 pixels.
pub(super) fn store_row(dst: &mut [f32], acc: &[f64]) {
    for (d, a) in dst.iter_mut().zip(acc) {
        *d = *a as f32;
    }
}
