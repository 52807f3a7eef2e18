//! The fused CPU attention (forward and gradients) against burn's own attention.

mod common;

use burn::tensor::{Device, Distribution, Tensor};
use common::{fallback, fast, rel_l2};
use ldmscale_model::init::seeded;
use ldmscale_model::ops::{OpKind, attention, burn_attention};

/// Self-attention-like (as many keys as queries) and cross-attention-like shapes, head widths
/// with and without a lane remainder.
const CASES: [(usize, usize, usize, usize); 3] = [(2, 70, 70, 4), (3, 33, 16, 2), (1, 20, 7, 5)];

#[test]
fn forward_matches_burn_without_autodiff() {
    let device = Device::flex();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 1, || {
        for (batch, queries, keys, heads) in CASES {
            let width = heads * 8;
            let q = Tensor::<3>::random(
                [batch, queries, width],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let k = Tensor::<3>::random(
                [batch, keys, width],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let v = Tensor::<3>::random(
                [batch, keys, width],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let fused = fast(OpKind::Attention, 1, || {
                attention(q.clone(), k.clone(), v.clone(), heads)
            });
            let reference = fallback(OpKind::Attention, || burn_attention(q, k, v, heads));
            let err = rel_l2(fused, reference);
            assert!(
                err < 1e-6,
                "{batch}x{queries}x{keys}x{heads}: relative L2 {err}"
            );
        }
    })
}

#[test]
fn gradients_match_burn_under_autodiff() {
    let device = Device::flex().autodiff();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 2, || {
        for (batch, queries, keys, heads) in CASES {
            let width = heads * 6;
            let make = |n| {
                Tensor::<3>::random([batch, n, width], Distribution::Normal(0.0, 1.0), &device)
                    .require_grad()
            };
            let (q, k, v) = (make(queries), make(keys), make(keys));
            // A weighting makes every output element matter differently to the loss.
            let weight = Tensor::<3>::random(
                [batch, queries, width],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |f: fn(Tensor<3>, Tensor<3>, Tensor<3>, usize) -> Tensor<3>| {
                let out = f(q.clone(), k.clone(), v.clone(), heads);
                let grads = (out.clone() * weight.clone()).sum().backward();
                let g = |t: &Tensor<3>| t.grad(&grads).expect("gradient");
                (out.inner(), [g(&q), g(&k), g(&v)])
            };
            let (out_fused, grads_fused) = fast(OpKind::Attention, 1, || run(attention));
            let (out_burn, grads_burn) = fallback(OpKind::Attention, || run(burn_attention));
            let err = rel_l2(out_fused, out_burn);
            assert!(err < 1e-6, "output: relative L2 {err}");
            for (name, a, b) in [
                ("q", &grads_fused[0], &grads_burn[0]),
                ("k", &grads_fused[1], &grads_burn[1]),
                ("v", &grads_fused[2], &grads_burn[2]),
            ] {
                let err = rel_l2(a.clone(), b.clone());
                assert!(
                    err < 1e-5,
                    "d{name} {batch}x{queries}x{keys}x{heads}: relative L2 {err}"
                );
            }
        }
    })
}
