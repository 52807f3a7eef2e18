//! `exp` on a vector of lanes: Cephes' single-precision range reduction and polynomial (about
//! 2 ulp), written branch-free so that it compiles to vector instructions.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Plain;

    #[test]
    fn matches_libm_within_a_few_ulp() {
        let mut worst = (0f64, 0f32);
        let mut x = -87.0f32;
        while x < 87.0 {
            let mut lanes = [0f32; LANES];
            for (l, v) in lanes.iter_mut().enumerate() {
                *v = x + l as f32 * 0.0037;
            }
            let got = exp_lanes::<Plain>(lanes);
            for l in 0..LANES {
                let want = (lanes[l] as f64).exp();
                let err = ((got[l] as f64 - want) / want).abs();
                if err > worst.0 {
                    worst = (err, lanes[l]);
                }
            }
            x += 0.0613;
        }
        assert!(worst.0 < 5e-7, "worst relative error {worst:?}");
    }
}
