//! `exp` and `exp2` on a vector of lanes, written branch-free so that they compile to vector
//! instructions: `exp` by Cephes' single-precision range reduction and polynomial (about 2 ulp),
//! `exp2` with no reduction beyond its argument's nearest integer (about 4 ulp, a third fewer
//! instructions: where attention's softmax spends its time at small head widths).

use crate::simd::{LANES, Simd};

/// `e^x` for each lane; lanes below -87 give about 1e-38 rather than denormals or zero.
#[inline(always)]
pub fn exp_lanes<S: Simd>(x: [f32; LANES]) -> [f32; LANES] {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let mut out = [0f32; LANES];
    for l in 0..LANES {
        let x = x[l].clamp(-87.0, 88.0);
        let t = S::fma(x, LOG2E, ROUND);
        let n = t - ROUND;
        let r = S::fma(n, -LN2_HI, x);
        let r = S::fma(n, -LN2_LO, r);
        let mut p = 1.987_569_1e-4;
        p = S::fma(p, r, 1.398_199_9e-3);
        p = S::fma(p, r, 8.333_452e-3);
        p = S::fma(p, r, 4.166_579_6e-2);
        p = S::fma(p, r, 1.666_666_5e-1);
        p = S::fma(p, r, 0.5);
        let y = S::fma(p, r * r, r) + 1.0;
        // 2^n from the rounded integer's bits.
        let bits = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
        out[l] = y * f32::from_bits(bits as u32);
    }
    out
}

/// `2^x` for each lane; lanes below -125 give `2^-125` (about 2e-38) rather than denormals.
#[inline(always)]
pub fn exp2_lanes<S: Simd>(x: [f32; LANES]) -> [f32; LANES] {
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // 2^f on [-1/2, 1/2], fitted for relative error with the constant term 1 so that integers
    // are exact (1.9e-7 in f32 Horner steps). The linear term is fitted, not ln 2.
    #[allow(clippy::approx_constant)]
    const C: [f32; 6] = [
        1.0,
        0.693_147,
        0.240_222_42,
        0.055_507_336,
        0.009_671_507,
        0.001_326_471_1,
    ];
    let mut out = [0f32; LANES];
    for l in 0..LANES {
        let x = x[l].clamp(-125.0, 127.0);
        let t = x + ROUND;
        // Exact: x and its nearest integer lie within a factor of two of each other or f is x.
        let f = x - (t - ROUND);
        let mut p = C[5];
        for &c in C[..5].iter().rev() {
            p = S::fma(p, f, c);
        }
        // Scale by 2^n in the exponent bits: ROUND's own bits vanish in the shift.
        out[l] = f32::from_bits(p.to_bits().wrapping_add(t.to_bits() << 23));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Plain;

    /// The largest relative error of `lanes_fn` against `reference` (in f64), and where, over
    /// vectors starting every `step` from `from` while below `to`, lanes `spacing` apart.
    fn worst_relative_error(
        lanes_fn: fn([f32; LANES]) -> [f32; LANES],
        reference: fn(f64) -> f64,
        (from, to, step): (f32, f32, f32),
        spacing: f32,
    ) -> (f64, f32) {
        let mut worst = (0f64, 0f32);
        let mut x = from;
        while x < to {
            let lanes: [f32; LANES] = std::array::from_fn(|l| x + l as f32 * spacing);
            let got = lanes_fn(lanes);
            for l in 0..LANES {
                let want = reference(lanes[l] as f64);
                let err = ((got[l] as f64 - want) / want).abs();
                if err > worst.0 {
                    worst = (err, lanes[l]);
                }
            }
            x += step;
        }
        worst
    }

    #[test]
    fn matches_libm_within_a_few_ulp() {
        let worst =
            worst_relative_error(exp_lanes::<Plain>, f64::exp, (-87.0, 87.0, 0.0613), 0.0037);
        assert!(worst.0 < 5e-7, "worst relative error {worst:?}");
    }

    #[test]
    fn exp2_matches_libm_within_a_few_ulp() {
        let worst = worst_relative_error(
            exp2_lanes::<Plain>,
            f64::exp2,
            (-125.0, 126.5, 0.0437),
            0.0311,
        );
        assert!(worst.0 < 4e-7, "worst relative error {worst:?}");
        // Integers are exact; far below the range gives the floor, not zero or a denormal.
        let edges = exp2_lanes::<Plain>(std::array::from_fn(|l| [0.0, -1.0, 3.0, -200.0][l % 4]));
        assert_eq!(&edges[..4], &[1.0, 0.5, 8.0, (-125f32).exp2()]);
    }
}
