//! The fused CPU convolution (forward and gradients) against burn's `Conv2d::forward`.

mod common;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Distribution, Tensor};
use common::{fast, rel_l2};
use ldmscale_model::init::seeded;
use ldmscale_model::ops::{OpKind, conv2d};

/// (batch, c_in, c_out, height, width, kernel, stride, padding): the UNet's 3x3 "same"
/// convolution, its stride-2 downsampler, the 1x1 shortcut, and an unpadded odd case.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: [Case; 4] = [
    (2, 5, 7, 9, 6, 3, 1, 1),
    (3, 4, 4, 8, 7, 3, 2, 1),
    (2, 6, 3, 5, 5, 1, 1, 0),
    (1, 3, 2, 6, 7, 2, 1, 0),
];

fn layer(case: Case, device: &Device) -> Conv2d {
    let (_, c_in, c_out, _, _, k, stride, p) = case;
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .init(device)
}

/// `conv2d(conv, x)`, asserting that the kernels ran.
fn fast_conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    fast(OpKind::Conv2d, 1, || conv2d(conv, x))
}

#[test]
fn forward_matches_burn_without_autodiff() {
    let device = Device::flex();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 1, || {
        for case in CASES {
            let (batch, c_in, _, h, w, ..) = case;
            let conv = layer(case, &device);
            let x =
                Tensor::<4>::random([batch, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
            let err = rel_l2(fast_conv(&conv, x.clone()), conv.forward(x));
            assert!(err < 1e-6, "{case:?}: relative L2 {err}");
        }
    })
}

#[test]
fn gradients_match_burn_under_autodiff() {
    let device = Device::flex().autodiff();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 2, || {
        for case in CASES {
            let (batch, c_in, ..) = case;
            let conv = layer(case, &device);
            let x = Tensor::<4>::random(
                [batch, c_in, case.3, case.4],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let run = |fused: bool| {
                let out = if fused {
                    fast_conv(&conv, x.clone())
                } else {
                    conv.forward(x.clone())
                };
                // A nonlinear loss makes every output element matter differently.
                let grads = (out.clone() * out.clone().cos()).sum().backward();
                let dx = x.grad(&grads).expect("input gradient");
                let dw = conv.weight.grad(&grads).expect("weight gradient");
                let db = conv
                    .bias
                    .as_ref()
                    .unwrap()
                    .grad(&grads)
                    .expect("bias gradient");
                (out.inner(), dx, dw, db)
            };
            let (out_f, dx_f, dw_f, db_f) = run(true);
            let (out_b, dx_b, dw_b, db_b) = run(false);
            assert!(rel_l2(out_f, out_b) < 1e-6, "{case:?} output");
            assert!(rel_l2(dx_f, dx_b) < 1e-5, "{case:?} input gradient");
            assert!(rel_l2(dw_f, dw_b) < 1e-5, "{case:?} weight gradient");
            assert!(rel_l2(db_f, db_b) < 1e-5, "{case:?} bias gradient");
        }
    })
}
