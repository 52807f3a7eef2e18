//! GEGLU (`value * gelu(gate)`, exact erf GELU) on the rows of a projection whose last dimension
//! holds `[value | gate]`, forward and backward, with a vectorised `erfc`.
//!
//! Rows are split into fixed chunks; every chunk writes only its own rows, so results do not
//! depend on thread scheduling.

use rayon::prelude::*;

use crate::buffer::filled_in_blocks;
use crate::exp::exp_lanes;
use crate::simd::{LANES, Simd, copy_prefix, multiversion};

/// Rows per parallel task.
const ROW_CHUNK: usize = 16;

/// `erfc(|x|)` per lane: Numerical Recipes' Chebyshev fit (`erfcc`, relative error below
/// 1.2e-7 in exact arithmetic; coefficients rounded to f32), which stays accurate in the tail
/// where `1 - erf` cancels.
#[inline(always)]
fn erfc_abs_lanes<S: Simd>(x: [f32; LANES]) -> [f32; LANES] {
    let mut t = [0f32; LANES];
    let mut arg = [0f32; LANES];
    for l in 0..LANES {
        let z = x[l].abs();
        t[l] = 1.0 / S::fma(0.5, z, 1.0);
        let t = t[l];
        let mut p = 0.170_872_77f32;
        p = S::fma(p, t, -0.822_152_23);
        p = S::fma(p, t, 1.488_515_9);
        p = S::fma(p, t, -1.135_204);
        p = S::fma(p, t, 0.278_868_07);
        p = S::fma(p, t, -0.186_288_06);
        p = S::fma(p, t, 0.096_784_18);
        p = S::fma(p, t, 0.374_091_96);
        p = S::fma(p, t, 1.000_023_7);
        p = S::fma(p, t, -1.265_512_2);
        arg[l] = S::fma(-z, z, p);
    }
    let e = exp_lanes::<S>(arg);
    let mut out = [0f32; LANES];
    for l in 0..LANES {
        out[l] = t[l] * e[l];
    }
    out
}

/// `erf(x)` per lane (absolute error about 2e-7); the kernels use `erfc` directly.
#[cfg(test)]
#[inline(always)]
pub(crate) fn erf_lanes<S: Simd>(x: [f32; LANES]) -> [f32; LANES] {
    let c = erfc_abs_lanes::<S>(x);
    let mut out = [0f32; LANES];
    for l in 0..LANES {
        let e = 1.0 - c[l];
        out[l] = if x[l] < 0.0 { -e } else { e };
    }
    out
}

/// `1 + erf(x / sqrt 2)` per lane, without cancellation for negative `x`.
#[inline(always)]
fn one_plus_erf_lanes<S: Simd>(x: [f32; LANES]) -> [f32; LANES] {
    let mut u = [0f32; LANES];
    for l in 0..LANES {
        u[l] = x[l] * std::f32::consts::FRAC_1_SQRT_2;
    }
    let c = erfc_abs_lanes::<S>(u);
    let mut out = [0f32; LANES];
    for l in 0..LANES {
        out[l] = if x[l] < 0.0 { c[l] } else { 2.0 - c[l] };
    }
    out
}

fn check(projected: &[f32], rows: usize, hidden: usize) {
    assert_eq!(projected.len(), rows * 2 * hidden, "projection size");
}

/// `out[r, j] = projected[r, j] * gelu(projected[r, hidden + j])` for `rows` rows of
/// `2 * hidden`, into a new `[rows, hidden]` buffer, each block of rows initialised in cache just
/// before it is written rather than the whole output beforehand.
pub fn geglu_output(projected: &[f32], rows: usize, hidden: usize) -> Vec<f32> {
    check(projected, rows, hidden);
    if rows * hidden == 0 {
        return Vec::new();
    }
    filled_in_blocks(rows * hidden, ROW_CHUNK * hidden, &[0.0], |chunk, out| {
        let src = &projected[chunk * ROW_CHUNK * 2 * hidden..][..out.len() * 2];
        forward_rows_mv(src, hidden, out);
    })
    .0
}

multiversion!(fn forward_rows_mv(projected: &[f32], hidden: usize, out: &mut [f32]) => forward_rows);

/// Loads up to `LANES` values, zero-padded.
#[inline(always)]
fn load(src: &[f32]) -> [f32; LANES] {
    let mut v = [0f32; LANES];
    copy_prefix(&mut v, src);
    v
}

#[inline(always)]
fn forward_rows<S: Simd>(projected: &[f32], hidden: usize, out: &mut [f32]) {
    for (row, out) in projected
        .chunks_exact(2 * hidden)
        .zip(out.chunks_exact_mut(hidden))
    {
        let (value, gate) = row.split_at(hidden);
        for j in (0..hidden).step_by(LANES) {
            let n = LANES.min(hidden - j);
            let (v, g) = (load(&value[j..j + n]), load(&gate[j..j + n]));
            let phi2 = one_plus_erf_lanes::<S>(g);
            let mut y = [0f32; LANES];
            for l in 0..LANES {
                y[l] = v[l] * (0.5 * g[l] * phi2[l]);
            }
            copy_prefix(&mut out[j..j + n], &y[..n]);
        }
    }
}

/// Gradient of [`geglu_output`] with respect to `projected` (`[rows, 2 * hidden]`,
/// overwritten): `d value = d_out * gelu(gate)`, `d gate = d_out * value * gelu'(gate)`.
pub fn geglu_backward(
    projected: &[f32],
    d_out: &[f32],
    rows: usize,
    hidden: usize,
    d_projected: &mut [f32],
) {
    check(projected, rows, hidden);
    assert_eq!(d_out.len(), rows * hidden, "output gradient size");
    assert_eq!(d_projected.len(), projected.len(), "input gradient size");
    if d_out.is_empty() {
        return;
    }
    d_projected
        .par_chunks_mut(ROW_CHUNK * 2 * hidden)
        .enumerate()
        .for_each(|(chunk, dp)| {
            let start = chunk * ROW_CHUNK * 2 * hidden;
            let src = &projected[start..][..dp.len()];
            let dy = &d_out[start / 2..][..dp.len() / 2];
            backward_rows_mv(src, dy, hidden, dp);
        });
}

multiversion!(fn backward_rows_mv(
    projected: &[f32],
    d_out: &[f32],
    hidden: usize,
    d_projected: &mut [f32],
) => backward_rows);

#[inline(always)]
fn backward_rows<S: Simd>(
    projected: &[f32],
    d_out: &[f32],
    hidden: usize,
    d_projected: &mut [f32],
) {
    // 1 / sqrt(2 pi)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((row, dy), dp) in projected
        .chunks_exact(2 * hidden)
        .zip(d_out.chunks_exact(hidden))
        .zip(d_projected.chunks_exact_mut(2 * hidden))
    {
        let (value, gate) = row.split_at(hidden);
        let (d_value, d_gate) = dp.split_at_mut(hidden);
        for j in (0..hidden).step_by(LANES) {
            let n = LANES.min(hidden - j);
            let (v, g, d) = (
                load(&value[j..j + n]),
                load(&gate[j..j + n]),
                load(&dy[j..j + n]),
            );
            let phi2 = one_plus_erf_lanes::<S>(g);
            let mut neg_half_sq = [0f32; LANES];
            for l in 0..LANES {
                neg_half_sq[l] = -0.5 * g[l] * g[l];
            }
            let density = exp_lanes::<S>(neg_half_sq);
            let (mut dv, mut dg) = ([0f32; LANES], [0f32; LANES]);
            for l in 0..LANES {
                dv[l] = d[l] * (0.5 * g[l] * phi2[l]);
                let slope = S::fma(g[l] * INV_SQRT_2PI, density[l], 0.5 * phi2[l]);
                dg[l] = d[l] * v[l] * slope;
            }
            copy_prefix(&mut d_value[j..j + n], &dv[..n]);
            copy_prefix(&mut d_gate[j..j + n], &dg[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Plain;

    /// `erf` in f64: Taylor series for |x| <= 3, Laplace's continued fraction for `erfc` above.
    fn erf64(x: f64) -> f64 {
        let a = x.abs();
        let r = if a <= 3.0 {
            let (mut term, mut sum, mut k) = (a, a, 0.0);
            while term.abs() > 1e-18 * sum.abs() {
                k += 1.0;
                term *= -a * a / k;
                sum += term / (2.0 * k + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = a;
            for k in (1..80).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
        };
        if x < 0.0 { -r } else { r }
    }

    #[test]
    fn reference_erf_is_right() {
        // Tabulated values.
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.9, 0.999_958_902_121_900_5),
            (3.5, 0.999_999_256_901_627_6),
        ] {
            assert!((erf64(x) - want).abs() < 1e-12, "erf({x}) = {}", erf64(x));
        }
    }

    #[test]
    fn erf_within_1e_6() {
        let mut worst = (0f64, 0f32);
        let mut x = -9.0f32;
        while x < 9.0 {
            let lanes: [f32; LANES] = std::array::from_fn(|l| x + l as f32 * 0.00071);
            let got = erf_lanes::<Plain>(lanes);
            for l in 0..LANES {
                let err = (got[l] as f64 - erf64(lanes[l] as f64)).abs();
                if err > worst.0 {
                    worst = (err, lanes[l]);
                }
            }
            x += 0.0117;
        }
        assert!(worst.0 < 1e-6, "worst absolute error {worst:?}");
    }

    fn gelu64(g: f64) -> f64 {
        0.5 * g * (1.0 + erf64(g / std::f64::consts::SQRT_2))
    }

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                scale * (2.0 * ((s >> 40) as f32 / (1u64 << 24) as f32) - 1.0)
            })
            .collect()
    }

    #[test]
    fn geglu_matches_f64_reference() {
        // Widths with and without a lane tail; more rows than one parallel chunk.
        for (rows, hidden) in [(37, 19), (3, 16), (1, 1), (20, 40)] {
            let projected = values(rows * 2 * hidden, 11, 6.0);
            let d_out = values(rows * hidden, 12, 1.0);
            let out = geglu_output(&projected, rows, hidden);
            let mut d_projected = vec![0f32; projected.len()];
            geglu_backward(&projected, &d_out, rows, hidden, &mut d_projected);
            let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
            for r in 0..rows {
                for j in 0..hidden {
                    let v = projected[r * 2 * hidden + j] as f64;
                    let g = projected[r * 2 * hidden + hidden + j] as f64;
                    let d = d_out[r * hidden + j] as f64;
                    let want = v * gelu64(g);
                    let slope = 0.5 * (1.0 + erf64(g / std::f64::consts::SQRT_2))
                        + g * inv_sqrt_2pi * (-0.5 * g * g).exp();
                    let checks = [
                        ("out", out[r * hidden + j], want, v.abs() * g.abs().max(1.0)),
                        (
                            "d value",
                            d_projected[r * 2 * hidden + j],
                            d * gelu64(g),
                            g.abs().max(1.0),
                        ),
                        (
                            "d gate",
                            d_projected[r * 2 * hidden + hidden + j],
                            d * v * slope,
                            v.abs().max(1.0),
                        ),
                    ];
                    for (name, got, want, scale) in checks {
                        let err = (got as f64 - want).abs();
                        assert!(
                            err < 1e-6 * scale,
                            "{rows}x{hidden} [{r},{j}] {name}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
