//! The optimizer's per-element work in one pass each: AdamW, the EMA shadow update, and the
//! squared norm gradient clipping needs. Written as burn tensor ops these are a dozen passes
//! over every parameter, each allocating a new buffer, on one core; here they run in place,
//! in parallel over fixed chunks.
//!
//! The arithmetic is the tensor-op formulation step for step in f32 (scalars rounded to f32
//! once), so results do not change with the thread count.

use rayon::prelude::*;

use crate::simd::{Simd, multiversion};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// One AdamW step's scalars (PyTorch's formulation, decoupled weight decay).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// `1 - beta1^t` and `1 - beta2^t` for the step count `t`.
    pub bias1: f64,
    pub bias2: f64,
}

/// Updates `param`, `m` and `v` in place from `grad`. With `fresh` the moments start at zero
/// (their contents are ignored).
pub fn adamw_update(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    fresh: bool,
    step: AdamWStep,
) {
    let n = param.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "AdamW buffers of different lengths"
    );
    let scalars = AdamWScalars::new(&step);
    param
        .par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| adamw_chunk_mv(p, g, m, v, fresh, &scalars));
}

/// [`AdamWStep`]'s scalars as the f32 values the update multiplies by.
struct AdamWScalars {
    decay: f32,
    b1: f32,
    b2: f32,
    one_b1: f32,
    one_b2: f32,
    bias2: f32,
    eps: f32,
    rate: f32,
}

impl AdamWScalars {
    fn new(step: &AdamWStep) -> Self {
        Self {
            decay: (1.0 - step.lr * step.weight_decay) as f32,
            b1: step.beta1 as f32,
            b2: step.beta2 as f32,
            one_b1: (1.0 - step.beta1) as f32,
            one_b2: (1.0 - step.beta2) as f32,
            bias2: step.bias2 as f32,
            eps: step.eps as f32,
            rate: (step.lr / step.bias1) as f32,
        }
    }
}

multiversion!(fn adamw_chunk_mv(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    fresh: bool,
    s: &AdamWScalars,
) => adamw_chunk);

/// One chunk's update. Zipped slices leave no bounds checks, so the loop vectorises (divisions
/// and square roots included) in the copies compiled for AVX2 and AVX-512; each element's
/// arithmetic is the same separate multiplies and adds in every copy (`S` goes unused: a fused
/// multiply-add would round differently), so results do not depend on the instruction set.
#[inline(always)]
fn adamw_chunk<S: Simd>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    fresh: bool,
    s: &AdamWScalars,
) {
    let elements = p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g);
    // Two loops rather than a branch per element, which kept the loop scalar.
    if fresh {
        for (((p, m), v), &g) in elements {
            (*m, *v) = (g * s.one_b1, g * g * s.one_b2);
            *p = p_update(*p, *m, *v, s);
        }
    } else {
        for (((p, m), v), &g) in elements {
            (*m, *v) = (*m * s.b1 + g * s.one_b1, *v * s.b2 + g * g * s.one_b2);
            *p = p_update(*p, *m, *v, s);
        }
    }
}

/// The parameter after decay and the bias-corrected step, in PyTorch's order.
#[inline(always)]
fn p_update(p: f32, m: f32, v: f32, s: &AdamWScalars) -> f32 {
    let denom = (v / s.bias2).sqrt() + s.eps;
    p * s.decay - m / denom * s.rate
}

/// `shadow -= (1 - decay) (shadow - current)`, in place.
pub fn ema_update(shadow: &mut [f32], current: &[f32], one_minus_decay: f64) {
    assert_eq!(
        shadow.len(),
        current.len(),
        "EMA buffers of different lengths"
    );
    let rate = one_minus_decay as f32;
    shadow
        .par_chunks_mut(CHUNK)
        .zip(current.par_chunks(CHUNK))
        .for_each(|(s, c)| {
            for (s, &c) in s.iter_mut().zip(c) {
                *s -= (*s - c) * rate;
            }
        });
}

/// `sum(x^2)`, accumulated in f64 per fixed chunk and the chunks added in order.
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum())
        .collect();
    partials.iter().sum()
}

/// `x *= scale`, in place.
pub fn scale(x: &mut [f32], scale: f64) {
    let s = scale as f32;
    x.par_chunks_mut(CHUNK).for_each(|c| {
        for v in c {
            *v *= s;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_the_formula_in_f64() {
        let n = 3 * CHUNK + 5;
        let mut p: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
        let mut want: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut m, mut v) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        let (mut me, mut ve) = (vec![0f64; n], vec![0f64; n]);
        let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-8, 0.01);
        for t in 1..=3 {
            let g: Vec<f32> = (0..n)
                .map(|i| ((i * 13 + t) % 11) as f32 * 0.1 - 0.5)
                .collect();
            let step = AdamWStep {
                lr,
                beta1: b1,
                beta2: b2,
                eps,
                weight_decay: wd,
                bias1: 1.0 - b1.powi(t as i32),
                bias2: 1.0 - b2.powi(t as i32),
            };
            adamw_update(&mut p, &g, &mut m, &mut v, t == 1, step);
            for i in 0..n {
                let g = g[i] as f64;
                me[i] = b1 * me[i] + (1.0 - b1) * g;
                ve[i] = b2 * ve[i] + (1.0 - b2) * g * g;
                let denom = (ve[i] / step.bias2).sqrt() + eps;
                want[i] = want[i] * (1.0 - lr * wd) - lr / step.bias1 * me[i] / denom;
            }
        }
        for i in 0..n {
            assert!((p[i] as f64 - want[i]).abs() < 1e-5, "element {i}");
            assert!((m[i] as f64 - me[i]).abs() < 1e-6, "first moment {i}");
        }
    }

    /// The update as first written, one element at a time, for the bit-for-bit check.
    fn adamw_scalar(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        fresh: bool,
        step: AdamWStep,
    ) {
        let s = AdamWScalars::new(&step);
        for i in 0..p.len() {
            let mi = if fresh {
                g[i] * s.one_b1
            } else {
                m[i] * s.b1 + g[i] * s.one_b1
            };
            let g2 = g[i] * g[i];
            let vi = if fresh {
                g2 * s.one_b2
            } else {
                v[i] * s.b2 + g2 * s.one_b2
            };
            let denom = (vi / s.bias2).sqrt() + s.eps;
            p[i] = p[i] * s.decay - mi / denom * s.rate;
            (m[i], v[i]) = (mi, vi);
        }
    }

    #[test]
    fn adamw_vector_loops_equal_the_scalar_update_bit_for_bit() {
        // Lengths with vector tails, and one over several chunks.
        for n in [1, 7, 33, 2 * CHUNK + 13] {
            let values = |seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * 7919 + seed) % 1013) as f32 / 97.0 - 5.0)
                    .collect()
            };
            let (mut p, mut m, mut v) = (values(1), values(2), values(3));
            let (mut pe, mut me, mut ve) = (p.clone(), m.clone(), v.clone());
            for t in 1..=3 {
                let g: Vec<f32> = values(10 + t).iter().map(|x| x * 1e-3).collect();
                let step = AdamWStep {
                    lr: 3e-4,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.01,
                    bias1: 1.0 - 0.9f64.powi(t as i32),
                    bias2: 1.0 - 0.999f64.powi(t as i32),
                };
                adamw_update(&mut p, &g, &mut m, &mut v, t == 1, step);
                adamw_scalar(&mut pe, &g, &mut me, &mut ve, t == 1, step);
                for (name, a, b) in [("param", &p, &pe), ("m", &m, &me), ("v", &v, &ve)] {
                    let same = a
                        .iter()
                        .zip(b.iter())
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{name} differs at length {n}, step {t}");
                }
            }
        }
    }

    #[test]
    fn ema_scale_and_norm() {
        let mut s = vec![1.0f32; CHUNK + 3];
        let c = vec![3.0f32; CHUNK + 3];
        ema_update(&mut s, &c, 0.25);
        assert!(s.iter().all(|&x| x == 1.5));
        scale(&mut s, 2.0);
        assert!(s.iter().all(|&x| x == 3.0));
        assert_eq!(sum_squares(&s), 9.0 * (CHUNK + 3) as f64);
    }
}
