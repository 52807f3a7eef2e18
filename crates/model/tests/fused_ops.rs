//! The fused CPU GroupNorm(+SiLU), LayerNorm and GEGLU (forward and gradients) against burn's
//! own ops.

mod common;

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Distribution, Tensor};
use common::{fast, l2, rel_l2, rel_l2_with_floor};
use ldmscale_model::init::seeded;
use ldmscale_model::ops::{OpKind, burn_geglu, burn_group_norm, geglu, group_norm, layer_norm};

/// The fused ops, asserting that their kernels ran.
fn fast_group_norm(norm: &GroupNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    fast(OpKind::GroupNorm, 1, || group_norm(norm, x, with_silu))
}

fn fast_layer_norm<const D: usize>(norm: &LayerNorm, epsilon: f64, x: Tensor<D>) -> Tensor<D> {
    fast(OpKind::LayerNorm, 1, || layer_norm(norm, epsilon, x))
}

fn fast_geglu(projected: Tensor<3>) -> Tensor<3> {
    fast(OpKind::Geglu, 1, || geglu(projected))
}

/// `(batch, channels, groups, h, w)`: channels not a multiple of 16, one group, `h * w = 1`,
/// and a UNet-like shape.
const NORM_CASES: [(usize, usize, usize, usize, usize); 5] = [
    (2, 6, 3, 5, 7),
    (3, 10, 1, 4, 4),
    (2, 12, 4, 1, 1),
    (1, 5, 5, 3, 2),
    (2, 64, 32, 8, 8),
];

/// A GroupNorm with random affine parameters (burn initialises them to ones and zeros).
fn random_norm(channels: usize, groups: usize, device: &Device) -> GroupNorm {
    let mut norm = GroupNormConfig::new(groups, channels)
        .with_epsilon(1e-6)
        .init(device);
    let param = |mean| {
        Param::from_tensor(Tensor::<1>::random(
            [channels],
            Distribution::Normal(mean, 0.5),
            device,
        ))
    };
    norm.gamma = Some(param(1.0));
    norm.beta = Some(param(0.0));
    norm
}

fn input(dims: [usize; 4], device: &Device) -> Tensor<4> {
    // An offset larger than the spread exercises the variance's cancellation.
    Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), device) * 2.0 + 3.0
}

#[test]
fn group_norm_forward_matches_burn_without_autodiff() {
    let device = Device::flex();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 1, || {
        for (batch, channels, groups, h, w) in NORM_CASES {
            let norm = random_norm(channels, groups, &device);
            let x = input([batch, channels, h, w], &device);
            for with_silu in [false, true] {
                let fused = fast_group_norm(&norm, x.clone(), with_silu);
                let reference = burn_group_norm(&norm, x.clone(), with_silu);
                let err = rel_l2(fused, reference);
                assert!(
                    err < 1e-5,
                    "{batch}x{channels}x{h}x{w}/{groups} silu {with_silu}: relative L2 {err}"
                );
            }
        }
    })
}

#[test]
fn group_norm_gradients_match_burn_under_autodiff() {
    let device = Device::flex().autodiff();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 2, || {
        for (batch, channels, groups, h, w) in NORM_CASES {
            let norm = random_norm(channels, groups, &device);
            let x = input([batch, channels, h, w], &device).require_grad();
            // A weighting makes every output element matter differently to the loss.
            let weight = Tensor::<4>::random(
                [batch, channels, h, w],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            for with_silu in [false, true] {
                let run = |f: fn(&GroupNorm, Tensor<4>, bool) -> Tensor<4>| {
                    let out = f(&norm, x.clone(), with_silu);
                    let grads = (out.clone() * weight.clone()).sum().backward();
                    let gamma = norm.gamma.as_ref().expect("affine").val();
                    let beta = norm.beta.as_ref().expect("affine").val();
                    (
                        out.inner(),
                        x.grad(&grads).expect("x gradient"),
                        gamma.grad(&grads).expect("gamma gradient"),
                        beta.grad(&grads).expect("beta gradient"),
                    )
                };
                let (out_f, dx_f, dgamma_f, dbeta_f) = run(fast_group_norm);
                let (out_b, dx_b, dgamma_b, dbeta_b) = run(burn_group_norm);
                let case = format!("{batch}x{channels}x{h}x{w}/{groups} silu {with_silu}");
                let errs = [
                    ("output", rel_l2(out_f, out_b)),
                    ("x", rel_l2(dx_f, dx_b)),
                    ("gamma", rel_l2(dgamma_f, dgamma_b)),
                    ("beta", rel_l2(dbeta_f, dbeta_b)),
                ];
                for (name, err) in errs {
                    assert!(err < 1e-5, "{case}: {name} relative L2 {err}");
                }
            }
        }
    })
}

/// `(batch, tokens, features, epsilon)`: features off and on the lane width, a single row, rows
/// across the kernel's 64-row blocks, and an epsilon large enough to change the output.
const LAYER_NORM_CASES: [(usize, usize, usize, f64); 5] = [
    (2, 7, 19, 1e-5),
    (1, 1, 5, 1e-5),
    (3, 70, 64, 1e-5),
    (2, 40, 128, 1e-5),
    (2, 9, 24, 0.5),
];

/// A LayerNorm with random affine parameters (burn initialises them to ones and zeros).
fn random_layer_norm(features: usize, epsilon: f64, device: &Device) -> LayerNorm {
    let mut norm = LayerNormConfig::new(features)
        .with_epsilon(epsilon)
        .init(device);
    let param = |mean| {
        Param::from_tensor(Tensor::<1>::random(
            [features],
            Distribution::Normal(mean, 0.5),
            device,
        ))
    };
    norm.gamma = param(1.0);
    norm.beta = Some(param(0.0));
    norm
}

fn burn_layer_norm(norm: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
    norm.forward(x)
}

#[test]
fn layer_norm_forward_matches_burn_without_autodiff() {
    let device = Device::flex();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 3, || {
        for (batch, tokens, features, epsilon) in LAYER_NORM_CASES {
            let norm = random_layer_norm(features, epsilon, &device);
            // An offset larger than the spread exercises the variance's cancellation.
            let x = Tensor::<3>::random(
                [batch, tokens, features],
                Distribution::Normal(3.0, 1.0),
                &device,
            );
            let err = rel_l2(
                fast_layer_norm(&norm, epsilon, x.clone()),
                norm.forward(x.clone()),
            );
            assert!(
                err < 1e-5,
                "{batch}x{tokens}x{features} eps {epsilon}: relative L2 {err}"
            );
            // Any rank: the same values as rows of a matrix.
            let x2 = x.reshape([batch * tokens, features]);
            let err = rel_l2(
                fast_layer_norm(&norm, epsilon, x2.clone()),
                norm.forward(x2),
            );
            assert!(
                err < 1e-5,
                "{batch}x{tokens}x{features} as a matrix: relative L2 {err}"
            );
        }
    })
}

#[test]
fn layer_norm_gradients_match_burn_under_autodiff() {
    let device = Device::flex().autodiff();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 4, || {
        for (batch, tokens, features, epsilon) in LAYER_NORM_CASES {
            let norm = random_layer_norm(features, epsilon, &device);
            let x = Tensor::<3>::random(
                [batch, tokens, features],
                Distribution::Normal(3.0, 1.0),
                &device,
            )
            .require_grad();
            let run = |f: &dyn Fn(&LayerNorm, Tensor<3>) -> Tensor<3>| {
                let out = f(&norm, x.clone());
                // Nonlinear, so that every output element matters differently to the loss.
                let grads = (out.clone() * out.clone().cos()).sum().backward();
                let beta = norm.beta.as_ref().expect("bias").val();
                (
                    out.inner(),
                    x.grad(&grads).expect("x gradient"),
                    norm.gamma.val().grad(&grads).expect("gamma gradient"),
                    beta.grad(&grads).expect("beta gradient"),
                )
            };
            let (out_f, dx_f, dgamma_f, dbeta_f) = run(&|n, x| fast_layer_norm(n, epsilon, x));
            let (out_b, dx_b, dgamma_b, dbeta_b) = run(&burn_layer_norm);
            let case = format!("{batch}x{tokens}x{features} eps {epsilon}");
            let errs = [
                ("output", rel_l2(out_f, out_b)),
                ("x", rel_l2(dx_f, dx_b)),
                ("gamma", rel_l2(dgamma_f, dgamma_b)),
                ("beta", rel_l2(dbeta_f, dbeta_b)),
            ];
            for (name, err) in errs {
                assert!(err < 1e-5, "{case}: {name} relative L2 {err}");
            }
        }
    })
}

/// A strided view (not contiguous) goes through the same fused op, forward and backward.
#[test]
fn layer_norm_accepts_a_transposed_input() {
    let device = Device::flex().autodiff();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 5, || {
        let norm = random_layer_norm(6, 1e-5, &device);
        let base =
            Tensor::<3>::random([2, 6, 11], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let run = |f: &dyn Fn(&LayerNorm, Tensor<3>) -> Tensor<3>| {
            let out = f(&norm, base.clone().swap_dims(1, 2));
            let grads = (out.clone() * out.clone().cos()).sum().backward();
            (out.inner(), base.grad(&grads).expect("gradient"))
        };
        let (out_f, d_f) = run(&|n, x| fast_layer_norm(n, 1e-5, x));
        let (out_b, d_b) = run(&burn_layer_norm);
        let err = rel_l2(out_f, out_b);
        assert!(err < 1e-5, "output relative L2 {err}");
        let err = rel_l2(d_f, d_b);
        assert!(err < 1e-5, "gradient relative L2 {err}");
    })
}

/// `(batch, tokens, hidden)`: hidden widths with and without a lane remainder.
const GEGLU_CASES: [(usize, usize, usize); 3] = [(2, 7, 19), (1, 1, 1), (3, 40, 64)];

#[test]
fn geglu_forward_matches_burn_without_autodiff() {
    let device = Device::flex();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 6, || {
        for (batch, tokens, hidden) in GEGLU_CASES {
            let p = Tensor::<3>::random(
                [batch, tokens, 2 * hidden],
                Distribution::Normal(0.0, 2.0),
                &device,
            );
            // A single output can be a GELU near zero: the error is taken against the input's size.
            let scale = l2(p.clone());
            let err = rel_l2_with_floor(fast_geglu(p.clone()), burn_geglu(p), scale);
            assert!(err < 1e-5, "{batch}x{tokens}x{hidden}: relative L2 {err}");
        }
    })
}

#[test]
fn geglu_gradients_match_burn_under_autodiff() {
    let device = Device::flex().autodiff();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 7, || {
        for (batch, tokens, hidden) in GEGLU_CASES {
            let p = Tensor::<3>::random(
                [batch, tokens, 2 * hidden],
                Distribution::Normal(0.0, 2.0),
                &device,
            )
            .require_grad();
            let weight = Tensor::<3>::random(
                [batch, tokens, hidden],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |f: fn(Tensor<3>) -> Tensor<3>| {
                let out = f(p.clone());
                let grads = (out.clone() * weight.clone()).sum().backward();
                (out.inner(), p.grad(&grads).expect("gradient"))
            };
            let (out_f, dp_f) = run(fast_geglu);
            let (out_b, dp_b) = run(burn_geglu);
            let case = format!("{batch}x{tokens}x{hidden}");
            // As in the forward test: errors against the inputs' size where a result is near zero.
            let err = rel_l2_with_floor(out_f, out_b, l2(p.clone().inner()));
            assert!(err < 1e-5, "{case}: output relative L2 {err}");
            let err = rel_l2_with_floor(dp_f, dp_b, l2(weight.clone().inner()));
            assert!(err < 1e-5, "{case}: gradient relative L2 {err}");
        }
    })
}

/// A projection that is a strided view (not contiguous) goes through the same fused op.
#[test]
fn geglu_accepts_a_transposed_input() {
    let device = Device::flex();
    // Seeded: the same inputs every run (rounding limits the tolerances).
    seeded(&device, 8, || {
        let p =
            Tensor::<3>::random([2, 8, 5], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
        let err = rel_l2(fast_geglu(p.clone()), burn_geglu(p));
        assert!(err < 1e-5, "relative L2 {err}");
    })
}

/// Timings on width-128 UNet shapes, fused vs burn (min of several runs):
/// `cargo test --release -p ldmscale-model --test fused_ops -- --ignored --nocapture`.
#[test]
#[ignore]
fn timings() {
    use std::time::Instant;
    fn min_ms(mut f: impl FnMut()) -> f64 {
        f();
        (0..7)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    }
    for autodiff in [false, true] {
        let device = if autodiff {
            Device::flex().autodiff()
        } else {
            Device::flex()
        };
        for dims in [[16, 128, 32, 32], [16, 256, 16, 16]] {
            let norm = random_norm(dims[1], 32, &device);
            let x = input(dims, &device);
            let x = if autodiff { x.require_grad() } else { x };
            let time = |f: fn(&GroupNorm, Tensor<4>, bool) -> Tensor<4>| {
                min_ms(|| {
                    let out = f(&norm, x.clone(), true);
                    if autodiff {
                        let _ = out.sum().backward();
                    } else {
                        let _ = out.into_data();
                    }
                })
            };
            let (fused, burn) = (time(fast_group_norm), time(burn_group_norm));
            println!(
                "group_norm+silu {dims:?} autodiff {autodiff}: fused {fused:.1} ms, burn {burn:.1} ms"
            );
        }
        let p = Tensor::<3>::random([16, 256, 2048], Distribution::Normal(0.0, 1.0), &device);
        let p = if autodiff { p.require_grad() } else { p };
        let time = |f: fn(Tensor<3>) -> Tensor<3>| {
            min_ms(|| {
                let out = f(p.clone());
                if autodiff {
                    let _ = out.sum().backward();
                } else {
                    let _ = out.into_data();
                }
            })
        };
        let (fused, burn) = (time(fast_geglu), time(burn_geglu));
        println!(
            "geglu [16, 256, 2048] autodiff {autodiff}: fused {fused:.1} ms, burn {burn:.1} ms"
        );
    }
}
