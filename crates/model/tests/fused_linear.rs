//! The fused CPU dense layer (forward and gradients) against burn's `Linear::forward`.

mod common;

use burn::nn::{Linear, LinearConfig, LinearLayout};
use burn::tensor::{Device, Distribution, Tensor};
use common::{fast, rel_l2};
use ldmscale_model::init::seeded;
use ldmscale_model::ops::{OpKind, linear};

/// (batch, tokens, d_in, d_out, bias, weight layout): attention's bias-free projections, the
/// feed-forward's widening one, and a weight stored transposed (a strided view).
type Case = (usize, usize, usize, usize, bool, LinearLayout);

const CASES: [Case; 4] = [
    (2, 9, 12, 7, true, LinearLayout::Row),
    (3, 5, 8, 8, false, LinearLayout::Row),
    (1, 70, 16, 96, true, LinearLayout::Row),
    (2, 4, 6, 5, true, LinearLayout::Col),
];

fn layer(case: Case, device: &Device) -> Linear {
    let (_, _, d_in, d_out, bias, layout) = case;
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_layout(layout)
        .init(device)
}

/// `linear(dense, x)`, asserting that the kernels ran.
fn fast_linear<const D: usize>(dense: &Linear, x: Tensor<D>) -> Tensor<D> {
    fast(OpKind::Linear, 1, || linear(dense, x))
}

#[test]
fn forward_matches_burn_without_autodiff() {
    let device = Device::flex();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 1, || {
        for case in CASES {
            let (batch, tokens, d_in, ..) = case;
            let dense = layer(case, &device);
            let x = Tensor::<3>::random(
                [batch, tokens, d_in],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let err = rel_l2(fast_linear(&dense, x.clone()), dense.forward(x.clone()));
            assert!(err < 1e-6, "{case:?}: relative L2 {err}");
            // Any rank: the time embedding's `[batch, d_in]`, and a strided (transposed) input.
            let flat = x.clone().reshape([batch * tokens, d_in]);
            let err = rel_l2(fast_linear(&dense, flat.clone()), dense.forward(flat));
            assert!(err < 1e-6, "{case:?} rank 2: relative L2 {err}");
            let strided = Tensor::<3>::random(
                [batch, d_in, tokens],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .swap_dims(1, 2);
            let err = rel_l2(fast_linear(&dense, strided.clone()), dense.forward(strided));
            assert!(err < 1e-6, "{case:?} strided: relative L2 {err}");
        }
    })
}

#[test]
fn gradients_match_burn_under_autodiff() {
    let device = Device::flex().autodiff();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 2, || {
        for case in CASES {
            let (batch, tokens, d_in, _, bias, _) = case;
            let dense = layer(case, &device);
            let x = Tensor::<3>::random(
                [batch, tokens, d_in],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let run = |fused: bool| {
                let out = if fused {
                    fast_linear(&dense, x.clone())
                } else {
                    dense.forward(x.clone())
                };
                // A nonlinear loss makes every output element matter differently.
                let grads = (out.clone() * out.clone().cos()).sum().backward();
                let dx = x.grad(&grads).expect("input gradient");
                let dw = dense.weight.grad(&grads).expect("weight gradient");
                let db = dense
                    .bias
                    .as_ref()
                    .map(|b| b.grad(&grads).expect("bias gradient"));
                (out.inner(), dx, dw, db)
            };
            let (out_f, dx_f, dw_f, db_f) = run(true);
            let (out_b, dx_b, dw_b, db_b) = run(false);
            assert!(rel_l2(out_f, out_b) < 1e-6, "{case:?} output");
            assert!(rel_l2(dx_f, dx_b) < 1e-5, "{case:?} input gradient");
            assert!(rel_l2(dw_f, dw_b) < 1e-5, "{case:?} weight gradient");
            assert_eq!(db_f.is_some(), bias, "{case:?} bias gradient present");
            if let (Some(db_f), Some(db_b)) = (db_f, db_b) {
                assert!(rel_l2(db_f, db_b) < 1e-5, "{case:?} bias gradient");
            }
        }
    })
}
